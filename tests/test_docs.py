"""What the README and docs/ tell a user to run exists as written: every ``proxynorm ...``
command parses with the real parser (flags, choices, types), every script a command names is in
the repository, and every relative link points at a file."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from proxynorm.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _commands(text: str) -> list[str]:
    """Shell commands of code blocks and inline code, continuation lines joined."""
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S)
    inline = re.findall(r"`([^`\n]*(?:\n[^`\n]+)?)`", re.sub(r"```.*?```", "", text, flags=re.S))
    lines = []
    for chunk in [*blocks, *inline]:
        lines += chunk.replace("\\\n", " ").replace("\n--", " --").splitlines()
    out = []
    for line in lines:
        for part in re.split(r"&&|;|\|", line.split("#")[0]):
            words = part.strip()
            words = re.sub(r"^(\w+=\S+\s+)+", "", words)  # environment assignments
            if words:
                out.append(words)
    return out


def _documented(prefix: str) -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for cmd in _commands(doc.read_text()):
            if cmd.startswith(prefix):
                found.append((doc.name, cmd))
    return found


CLI = _documented("proxynorm ")


@pytest.mark.parametrize("doc,cmd", CLI, ids=[f"{d}: {c[:60]}" for d, c in CLI])
def test_documented_cli_commands_parse(doc, cmd):
    argv = shlex.split(cmd)[1:]
    if len(argv) < 2 and argv != ["--version"]:  # the command's name in prose
        pytest.skip("a name, not a command")
    if any(a.startswith("[") or "<" in a or a in ("...", "…") for a in argv):  # a template
        pytest.skip("template")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as err:
        if err.code == 0:  # --version
            return
        pytest.fail(f"{doc}: `{cmd}` does not parse (exit {err.code})")
    assert callable(args.func)


SCRIPTS = _documented("python ") + _documented("bash ")


@pytest.mark.parametrize("doc,cmd", SCRIPTS, ids=[f"{d}: {c[:60]}" for d, c in SCRIPTS])
def test_documented_scripts_exist(doc, cmd):
    words = shlex.split(cmd)[1:]
    if words and words[0] == "-m":
        module = words[1]
        assert (ROOT / Path(*module.split("."))).with_suffix(".py").exists() or module in (
            "pytest", "pip", "venv", "torch.distributed.run",
        ), f"{doc}: module {module} not found"  # fmt: skip
        return
    script = next((w for w in words if w.endswith((".py", ".sh"))), None)
    if script is not None:
        assert (ROOT / script).exists(), f"{doc}: {script} not found"


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_relative_links_resolve(doc):
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text())
    missing = [link for link in links if "://" not in link and not (doc.parent / link).exists()]
    assert not missing, f"{doc.name}: broken links {missing}"
