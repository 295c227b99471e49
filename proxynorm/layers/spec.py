"""Norm specs: the one place where strings such as ``"gn+pn"`` are parsed.

A spec names one "normalization step + activation step" of Labatie et al., "Proxy-Normalizing
Activations to Match Batch Normalization while Removing Batch Dependence" (NeurIPS 2021):
a base norm (``bn``, ``ln``, ``in``, ``gn``) optionally followed by ``+pn`` (the activation step is
proxy-normalized, Eq. 7) and/or ``+ws`` (the preceding conv is weight-standardized), or one of the
norm-and-activation replacements ``evos0`` and ``frn`` (FRN+TLU). Everything else in the package
receives a :class:`NormSpec`, never a raw string.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Base norms, with whether their statistics depend on the batch.
BASE_NORMS: dict[str, bool] = {
    "bn": True,
    "ln": False,
    "in": False,
    "gn": False,
    "evos0": False,
    "frn": False,
}
#: Bases that replace both the norm and the activation step, so PN cannot follow them.
NORM_AND_ACT = ("evos0", "frn")
#: Bases with channel groups.
GROUPED = ("gn", "evos0")
_ALIASES = {"frn+tlu": "frn", "evo-s0": "evos0", "evonorm_s0": "evos0"}

#: Every spec the factory documents (``+ws`` may be added to any of them).
KNOWN_SPECS = ("bn", "ln", "in", "gn", "bn+pn", "ln+pn", "gn+pn", "in+pn", "evos0", "frn")


@dataclass(frozen=True)
class NormSpec:
    """A parsed norm spec.

    Attributes:
        base: ``"bn"``, ``"ln"``, ``"in"``, ``"gn"``, ``"evos0"`` or ``"frn"``.
        pn: the activation step is proxy-normalized.
        ws: convolutions feeding the norm are weight-standardized (a conv option).
    """

    base: str
    pn: bool = False
    ws: bool = False

    @property
    def uses_ws(self) -> bool:
        """Whether model builders should use weight-standardized convs."""
        return self.ws

    @property
    def batch_dependent(self) -> bool:
        """Whether outputs for one sample depend on the other samples of the batch (train mode)."""
        return BASE_NORMS[self.base]

    @property
    def takes_groups(self) -> bool:
        """Whether the norm has channel groups (``groups`` / ``group_size`` apply): GN, EvoNorm."""
        return self.base in GROUPED

    @property
    def replaces_act(self) -> bool:
        """Whether the layer replaces both the norm and the activation step (EvoNorm-S0,
        FRN+TLU): it takes no ``act`` and cannot be proxy-normalized."""
        return self.base in NORM_AND_ACT

    @property
    def takes_norm_batch(self) -> bool:
        """Whether ``norm_batch`` (ghost batches) applies: BN."""
        return self.base == "bn"

    def applies(self, option: str) -> bool:
        """Whether a layer option concerns this norm: ``groups``/``group_size`` (GN, EvoNorm),
        ``norm_batch`` (BN's ghost batches), ``proxy_affine``/``proxy_scale`` (PN), ``act``
        (not EvoNorm/FRN, which bring their own). Every other option (``eps``, ``device``...)
        applies to every norm. The one place that decides which option goes where."""
        rule = _OPTION_RULES.get(option)
        return True if rule is None else rule(self)

    def select(self, **options: object) -> dict[str, object]:
        """The ``options`` that are given (not ``None``) and :meth:`applies` to this norm."""
        return {k: v for k, v in options.items() if v is not None and self.applies(k)}

    @property
    def name(self) -> str:
        """Canonical spec string, e.g. ``"gn+pn+ws"``."""
        return "+".join([self.base] + ["pn"] * self.pn + ["ws"] * self.ws)

    def __str__(self) -> str:
        return self.name


_OPTION_RULES = {
    "groups": lambda s: s.takes_groups,
    "group_size": lambda s: s.takes_groups,
    "norm_batch": lambda s: s.takes_norm_batch,
    "proxy_affine": lambda s: s.pn,
    "proxy_scale": lambda s: s.pn,
    "act": lambda s: not s.replaces_act,
}


def parse_spec(spec: str | NormSpec) -> NormSpec:
    """Parse a norm spec string (case-insensitive) into a :class:`NormSpec`.

    Args:
        spec: e.g. ``"bn"``, ``"GN+PN"``, ``"ln+ws"``, ``"gn+pn+ws"``, ``"evos0"``, ``"frn"``;
            a :class:`NormSpec` is returned unchanged.

    Raises:
        TypeError: ``spec`` is neither a string nor a NormSpec.
        ValueError: unknown or contradictory spec; the message lists the valid ones.
    """
    if isinstance(spec, NormSpec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a str or NormSpec, got {type(spec).__name__}")
    text = spec.strip().lower().replace(" ", "")
    text = _ALIASES.get(text, text)
    tokens = [_ALIASES.get(t, t) for t in text.split("+")]
    bases = [t for t in tokens if t in BASE_NORMS]
    options = [t for t in tokens if t not in BASE_NORMS]
    valid = ", ".join(KNOWN_SPECS) + " (each may add +ws)"
    unknown = [t for t in options if t not in ("pn", "ws")]
    if len(bases) != 1 or unknown or len(set(options)) != len(options):
        raise ValueError(f"unknown norm spec {spec!r}; valid specs: {valid}")
    base = bases[0]
    pn = "pn" in options
    if pn and base in NORM_AND_ACT:
        raise ValueError(
            f"norm spec {spec!r}: {base} replaces the activation step, so it cannot be combined "
            f"with +pn; valid specs: {valid}"
        )
    return NormSpec(base=base, pn=pn, ws="ws" in options)
