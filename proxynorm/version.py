"""The distribution's name and version, from the installed package's metadata (pyproject.toml is
the one place the version is written; a test checks that the two agree)."""

from __future__ import annotations

from importlib import metadata

#: The distribution (``pip install torch-proxynorm``). Not the unrelated ``proxynorm`` package on
#: the public index, which also imports as ``proxynorm``.
DISTRIBUTION = "torch-proxynorm"


def installed_version() -> str:
    """The installed version of :data:`DISTRIBUTION`; ``"0+unknown"`` when the source tree is
    imported without being installed (``pip install -e .`` records it)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = installed_version()
