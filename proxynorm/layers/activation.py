"""The activation registry: every way to name an activation φ resolves here to one canonical
:class:`Act`.

A name (``"relu"``, ``"swish"``), a function (``F.relu6``, ``torch.sigmoid``), an ``nn.Module``
class (timm's ``act_layer=nn.ReLU`` convention) or instance (``nn.LeakyReLU(0.2)``,
``nn.GELU(approximate="tanh")``) all resolve to the same :class:`Act`, which knows φ, its
in-place form, its derivative (the fused PN path's backward), whether φ(c·u) = c·φ(u) for c > 0,
and an equivalent ``nn.Module``. Activation modules of other libraries (timm's ``Swish``,
``HardSwish``...) that hold no state are recognized by their values on a fixed grid. Anything
else callable is used as given (PN then runs its reference path).

Labatie et al., NeurIPS 2021: PN's activation step ``φ(γ y + β)`` and its proxy ``φ(γ Y~ + β)``
use the same φ; the fused path needs φ' in closed form, which is why this table exists.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Activation = str | Callable[[Tensor], Tensor] | type | None
aten = torch.ops.aten


@dataclass(frozen=True)
class _Kind:
    fn: Callable[..., Tensor]  # φ(u, **params), out of place
    fn_: Callable[..., Tensor]  # φ in place on a fresh tensor (no autograd recorded)
    grad: Callable[..., Tensor]  # (g, u, **params) -> g φ'(u)
    module: Callable[..., nn.Module]  # an equivalent nn.Module, from **params
    defaults: tuple[tuple[str, Any], ...] = ()
    # φ's in-place form is safe under autograd (its derivative reads the result, not the input)
    autograd_inplace: bool = False


def _identity(u: Tensor, **_: Any) -> Tensor:
    return u


_KINDS: dict[str, _Kind] = {
    "identity": _Kind(_identity, _identity, lambda g, u: g, nn.Identity, autograd_inplace=True),
    "relu": _Kind(
        F.relu, torch.relu_, lambda g, u: aten.threshold_backward(g, u, 0.0), nn.ReLU,
        autograd_inplace=True,
    ),
    "relu6": _Kind(
        F.relu6, lambda u: F.relu6(u, inplace=True),
        lambda g, u: aten.hardtanh_backward(g, u, 0.0, 6.0), nn.ReLU6, autograd_inplace=True,
    ),
    "leaky_relu": _Kind(
        F.leaky_relu, F.leaky_relu_,
        lambda g, u, negative_slope: aten.leaky_relu_backward(g, u, negative_slope, False),
        nn.LeakyReLU, (("negative_slope", 0.01),),
    ),
    "elu": _Kind(
        F.elu, F.elu_, lambda g, u, alpha: aten.elu_backward(g, alpha, 1.0, 1.0, False, u),
        nn.ELU, (("alpha", 1.0),),
    ),
    "silu": _Kind(
        F.silu, lambda u: F.silu(u, inplace=True), aten.silu_backward, nn.SiLU
    ),
    "gelu": _Kind(
        F.gelu, F.gelu, lambda g, u, approximate: aten.gelu_backward(g, u, approximate=approximate),
        nn.GELU, (("approximate", "none"),),
    ),
    "hardswish": _Kind(
        F.hardswish, lambda u: F.hardswish(u, inplace=True), aten.hardswish_backward, nn.Hardswish
    ),
    "hardsigmoid": _Kind(
        F.hardsigmoid, lambda u: F.hardsigmoid(u, inplace=True), aten.hardsigmoid_backward,
        nn.Hardsigmoid,
    ),
    "mish": _Kind(F.mish, lambda u: F.mish(u, inplace=True), aten.mish_backward, nn.Mish),
    "sigmoid": _Kind(
        torch.sigmoid, torch.sigmoid_, lambda g, u: aten.sigmoid_backward(g, torch.sigmoid(u)),
        nn.Sigmoid, autograd_inplace=True,
    ),
    "tanh": _Kind(
        torch.tanh, torch.tanh_, lambda g, u: aten.tanh_backward(g, torch.tanh(u)), nn.Tanh,
        autograd_inplace=True,
    ),
}  # fmt: skip

#: Other names of the canonical activations (``"gelu_tanh"`` is GELU's tanh approximation).
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "swish": ("silu", {}),
    "linear": ("identity", {}),
    "none": ("identity", {}),
    "hard_swish": ("hardswish", {}),
    "hswish": ("hardswish", {}),
    "hard_sigmoid": ("hardsigmoid", {}),
    "gelu_tanh": ("gelu", {"approximate": "tanh"}),
    "lrelu": ("leaky_relu", {}),
}


@dataclass(frozen=True)
class Act:
    """One canonical activation φ with its parameters, e.g. ``Act("leaky_relu",
    (("negative_slope", 0.2),))``. Build it with :func:`get_act`, never by hand.

    Calling it applies φ out of place; :meth:`apply_` works in place on a fresh tensor (no
    autograd); :meth:`grad` gives ``g · φ'(u)``; :attr:`homogeneous` says whether
    ``φ(c u) = c φ(u)`` for every c > 0 (then PN's scale folds into the preceding affine).
    """

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def _kind(self) -> _Kind:
        return _KINDS[self.name]

    def __call__(self, u: Tensor) -> Tensor:
        return self._kind.fn(u, **dict(self.params))

    def apply_(self, u: Tensor) -> Tensor:
        """φ(u) computed in place where φ has an in-place form (``u`` must be a fresh tensor that
        nothing else reads)."""
        return self._kind.fn_(u, **dict(self.params))

    def grad(self, g: Tensor, u: Tensor) -> Tensor:
        """``g · φ'(u)`` (the same kernels autograd uses, so the fused path matches it exactly)."""
        return self._kind.grad(g, u, **dict(self.params))

    @property
    def autograd_inplace(self) -> bool:
        """φ may run in place on a tensor autograd recorded (its derivative reads its result)."""
        return self._kind.autograd_inplace

    @property
    def homogeneous(self) -> bool:
        """φ(c u) = c φ(u) for c > 0: identity, ReLU, and LeakyReLU with a positive slope."""
        p = dict(self.params)
        return self.name in ("identity", "relu") or (
            self.name == "leaky_relu" and p["negative_slope"] > 0
        )

    def module(self) -> nn.Module:
        """An equivalent ``nn.Module`` (e.g. for export or display)."""
        return self._kind.module(**dict(self.params))

    def __str__(self) -> str:
        changed = [(k, v) for k, v in self.params if (k, v) not in self._kind.defaults]
        args = ", ".join(f"{k}={v!r}" for k, v in changed)
        return f"{self.name}({args})" if args else self.name


def _make(name: str, **params: Any) -> Act:
    kind = _KINDS[name]
    unknown = set(params) - {k for k, _ in kind.defaults}
    if unknown:
        raise ValueError(f"activation {name!r} takes no parameter(s) {sorted(unknown)}")
    values = {**dict(kind.defaults), **params}
    return Act(name, tuple((k, values[k]) for k, _ in kind.defaults))


#: The canonical activations with their default parameters, by name.
ACTIVATIONS: dict[str, Act] = {name: _make(name) for name in _KINDS}

# torch.nn classes -> (name, params read from an instance)
_MODULES: dict[type, tuple[str, Callable[[nn.Module], dict[str, Any]]]] = {
    nn.Identity: ("identity", lambda m: {}),
    nn.ReLU: ("relu", lambda m: {}),
    nn.ReLU6: ("relu6", lambda m: {}),
    nn.LeakyReLU: ("leaky_relu", lambda m: {"negative_slope": float(m.negative_slope)}),
    nn.ELU: ("elu", lambda m: {"alpha": float(m.alpha)}),
    nn.SiLU: ("silu", lambda m: {}),
    nn.GELU: ("gelu", lambda m: {"approximate": m.approximate}),
    nn.Hardswish: ("hardswish", lambda m: {}),
    nn.Hardsigmoid: ("hardsigmoid", lambda m: {}),
    nn.Mish: ("mish", lambda m: {}),
    nn.Sigmoid: ("sigmoid", lambda m: {}),
    nn.Tanh: ("tanh", lambda m: {}),
}
# Functions (and Tensor method names) -> name; their parameters are read from the call.
_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu",
    F.relu6: "relu6", F.leaky_relu: "leaky_relu", F.leaky_relu_: "leaky_relu",
    F.elu: "elu", F.elu_: "elu", F.silu: "silu", F.gelu: "gelu", F.hardswish: "hardswish",
    F.hardsigmoid: "hardsigmoid", F.mish: "mish", torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh",
}  # fmt: skip
_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid",
            "tanh": "tanh", "tanh_": "tanh"}  # fmt: skip

_GRID = torch.cat([torch.linspace(-8, 8, 321, dtype=torch.float64), torch.tensor([-0.3, 0.7])])


def _probe(m: nn.Module) -> Act | None:
    """A stateless module (no parameters, buffers or children) recognized by its values on a
    fixed grid of inputs (e.g. timm's ``Swish``/``HardSwish``), else ``None``."""
    if any(True for _ in m.parameters()) or any(True for _ in m.buffers()) or any(m.children()):
        return None
    try:
        with torch.no_grad():
            out = m(_GRID.clone())
    except Exception:
        return None
    if not isinstance(out, Tensor) or out.shape != _GRID.shape:
        return None
    slope = float(out[0] / _GRID[0])  # a leaky ReLU's slope, read at u = -8
    # Not identity: a stateless module that returns its input (Dropout in eval mode) is no
    # activation.
    candidates = [a for n, a in ACTIVATIONS.items() if n != "identity"]
    candidates.append(_make("gelu", approximate="tanh"))
    if 0 < slope < 1:
        candidates.append(_make("leaky_relu", negative_slope=slope))
    for act in candidates:
        if torch.allclose(out.to(torch.float64), act(_GRID), rtol=1e-6, atol=1e-7):
            return act
    return None


def get_act(act: Any) -> Act | None:
    """The canonical :class:`Act` of ``act``, or ``None`` for a callable this registry does not
    know (which is then used as given).

    Args:
        act: ``None`` (identity), a name or alias (case-insensitive), an :class:`Act`, an
            ``nn.Module`` instance or class (a class is instantiated with no arguments, timm's
            ``act_layer`` convention), or a function such as ``F.relu6``.

    Raises:
        ValueError: unknown activation name (the message lists the valid ones).
        TypeError: ``act`` is not a name, module, class or callable.
    """
    if act is None:
        return ACTIVATIONS["identity"]
    if isinstance(act, Act):
        return act
    if isinstance(act, str):
        key = act.strip().lower()
        if key in ACTIVATIONS:
            return ACTIVATIONS[key]
        if key in ALIASES:
            name, params = ALIASES[key]
            return _make(name, **params)
        valid = ", ".join([*ACTIVATIONS, *ALIASES])
        raise ValueError(f"unknown act {act!r}; valid activations: {valid}")
    if isinstance(act, type):
        if not issubclass(act, nn.Module):
            raise TypeError(f"act must be a name, an nn.Module or a callable, got class {act}")
        act = act()
    if isinstance(act, nn.Module):
        if type(act) in _MODULES:  # exact type: a subclass may change forward (probed instead)
            name, read = _MODULES[type(act)]
            return _make(name, **read(act))
        return _probe(act)
    if callable(act):
        name = _FUNCTIONS.get(act)
        return _make(name) if name is not None else None
    raise TypeError(f"act must be a name, an nn.Module or a callable, got {type(act).__name__}")


def act_from_call(target: Any, args: tuple, kwargs: dict, method: bool = False) -> Act | None:
    """The :class:`Act` a traced call applies to its first argument, with the call's own
    parameters (``F.leaky_relu(x, 0.2)``, ``F.gelu(x, approximate="tanh")``), or ``None``."""
    name = _METHODS.get(target) if method else _FUNCTIONS.get(target)
    if name is None:
        return None
    params: dict[str, Any] = {}
    if not method:
        try:
            bound = inspect.signature(target).bind(*args, **kwargs)
        except (TypeError, ValueError):  # builtins without a Python signature take no parameters
            return _make(name) if len(args) == 1 and not kwargs else None
        keys = {k for k, _ in _KINDS[name].defaults}
        params = {k: v for k, v in bound.arguments.items() if k in keys}
    try:
        return _make(name, **params)
    except ValueError:
        return None


def resolve_act(act: Activation) -> Act | Callable[[Tensor], Tensor]:
    """``act`` as a function ``Tensor -> Tensor``: its canonical :class:`Act` when the registry
    knows it, otherwise the callable itself (a module class is instantiated).

    Raises:
        ValueError: unknown activation name.
        TypeError: ``act`` is not a name, module or callable.
    """
    known = get_act(act)
    if known is not None:
        return known
    return act() if isinstance(act, type) else act


def act_name(act: Activation) -> str:
    """A short printable name: the canonical one (``"leaky_relu(negative_slope=0.2)"``) or the
    callable's own."""
    fn = resolve_act(act)
    if isinstance(fn, Act):
        return str(fn)
    if isinstance(fn, nn.Module):
        return type(fn).__name__
    return getattr(fn, "__name__", type(fn).__name__)
