"""A traced model cut into blocks that can be run one after the other, each from the output of the
one before (the streaming that makes calibration and reconstruction linear in depth).

A *cut* is a node after which the only value still needed by the rest of the graph is that node's
own output: a residual block's output (``relu(x + f(x))``), a stage's, the stem's. Values that do
not depend on the input (``get_attr`` constants, a module's training flag) do not count: a block
recomputes them when it needs them. Between two consecutive cuts lies a :class:`Block`; running
the blocks in order on the previous block's output computes exactly the model's forward, so a
calibration can keep one block's inputs in memory instead of re-running the model from its input
for every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx, nn

from proxynorm.conversion.fold import passes_shift


@dataclass
class Block:
    """The nodes after cut ``start`` up to and including cut ``end`` (node names), and the
    names of the modules they call."""

    start: str
    end: str
    nodes: list[fx.Node]
    modules: list[str]

    def parameters(self, gm: fx.GraphModule) -> list[nn.Parameter]:
        """The parameters of the modules this block calls (each once)."""
        seen: dict[int, nn.Parameter] = {}
        for name in self.modules:
            for p in gm.get_submodule(name).parameters():
                seen.setdefault(id(p), p)
        return list(seen.values())


def _free(graph: fx.Graph) -> set[fx.Node]:
    """Nodes that do not depend on the input (constants, flags): any block can recompute them."""
    free: set[fx.Node] = set()
    for node in graph.nodes:
        if (
            node.op != "placeholder"
            and node.op != "output"
            and all(a in free for a in node.all_input_nodes)
        ):
            free.add(node)
    return free


def cuts(gm: fx.GraphModule) -> list[fx.Node]:
    """The cut nodes of ``gm`` in graph order, its input placeholder first.

    Raises:
        ValueError: the model takes more than one input.
    """
    nodes = list(gm.graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise ValueError(f"block streaming needs a model with one input, got {len(inputs)}")
    free = _free(gm.graph)
    index = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((index[u] for u in n.users), default=index[n]) for n in nodes}
    out, live = [], set()
    for i, node in enumerate(nodes):
        if node.op == "output":
            break
        if node not in free:
            live.add(node)
        live = {n for n in live if last_use[n] > i}
        if live == {node}:
            out.append(node)
    return out


def split(gm: fx.GraphModule, ends: list[str]) -> list[Block]:
    """``gm`` as consecutive blocks from its input, one ending at each cut named in ``ends`` (in
    graph order; names that are not cuts of ``gm`` are refused) and the last at the output."""
    nodes = list(gm.graph.nodes)
    bounds = cuts(gm)
    known = {n.name for n in bounds[1:]}
    if not set(ends) <= known:
        raise ValueError(f"not cuts of the graph: {sorted(set(ends) - known)}")
    free = _free(gm.graph)
    blocks, start, body = [], bounds[0], []
    for node in nodes[nodes.index(bounds[0]) + 1 :]:
        if node in free:
            continue  # recomputed where used
        body.append(node)
        if node.name in ends or node.op == "output":
            blocks.append(Block(start.name, node.name, body, _called(body)))
            start, body = node, []
    return blocks


def plan(converted: fx.GraphModule, teacher: fx.GraphModule, layers: set[str]) -> list[str]:
    """Where to cut both models: the cuts they share (same node name and call), except the
    outputs of converted layers and what pools, flattens or drops them out. Those are not meant
    to equal the teacher's: the calibration moves PN's per-channel scale and shift into the
    layers that read them, and the teacher's value there may be before its activation node.
    Blocks are merged so that each one holds at least one of the converted ``layers``."""
    modules = dict(converted.named_modules())
    moved: set[fx.Node] = set()  # converted layers' outputs and what passes them on unchanged
    for node in converted.graph.nodes:
        if (
            node.op == "call_module"
            and node.target in layers
            or (
                node.all_input_nodes
                and node.all_input_nodes[0] in moved
                and passes_shift(node, modules)
            )
        ):
            moved.add(node)
    t_nodes = {n.name: n for n in cuts(teacher)}
    shared = []
    for node in cuts(converted)[1:]:
        t = t_nodes.get(node.name)
        if t is not None and t.op == node.op and t.target == node.target and node not in moved:
            shared.append(node.name)
    ends, pending = [], False
    for block in split(converted, shared):
        pending = pending or any(name in layers for name in block.modules)
        if pending and block.end in shared:
            ends.append(block.end)
            pending = False
    if ends and not pending:  # the output block has no converted layer: one block with the last
        ends.pop()
    return ends


def _called(nodes: list[fx.Node]) -> list[str]:
    return list(dict.fromkeys(str(n.target) for n in nodes if n.op == "call_module"))


class BlockRunner(fx.Interpreter):
    """Runs one :class:`Block` of ``gm`` from the value of its start cut. Module calls go through
    ``nn.Module.__call__``, so forward hooks on the block's modules fire as in the whole model."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.by_name = {n.name: n for n in gm.graph.nodes}

    def block(self, block: Block, x):
        """The value of ``block.end`` (the model's output for the last block) given ``x``.

        Each value is dropped after its last use in the block, and none is kept after it (as
        ``fx.Interpreter.run`` does): only the live activations are in memory."""
        last = {n: i for i, node in enumerate(block.nodes) for n in node.all_input_nodes}
        self.env = {self.by_name[block.start]: x}
        try:
            for i, node in enumerate(block.nodes):
                self._fill(node.all_input_nodes)
                if node.op == "output":
                    return self.run_node(node)
                value = self.run_node(node)
                for n in node.all_input_nodes:
                    if last[n] == i:
                        del self.env[n]
                if node is block.nodes[-1]:
                    return value
                self.env[node] = value
        finally:
            self.env = {}
        raise AssertionError("unreachable: a block ends at its last node")

    def _fill(self, needed) -> None:
        """Compute the input-independent values a node reads and the block has not seen."""
        for n in needed:
            if n not in self.env:
                self._fill(n.all_input_nodes)
                self.env[n] = self.run_node(n)
