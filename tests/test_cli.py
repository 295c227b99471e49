import shutil
import subprocess
import sys

import pytest

from proxynorm.cli import main


def test_console_script_help():
    exe = shutil.which("proxynorm")
    cmd = [exe] if exe else [sys.executable, "-m", "proxynorm.cli"]
    out = subprocess.run(cmd + ["--help"], capture_output=True, text=True, check=True).stdout
    assert "demo" in out and "specs" in out


def test_demo_shows_collapse_and_its_fix(capsys):
    assert (
        main(
            [
                "demo",
                "--specs",
                "bn,ln,ln+pn",
                "--depth",
                "12",
                "--width",
                "32",
                "--batch",
                "8",
                "--size",
                "8",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    rows = {
        line.split("|")[1].strip(): line.split("|")[2:4]
        for line in out.splitlines()
        if line.startswith("| ") and not line.startswith("| spec")
    }
    assert set(rows) == {"bn", "ln", "ln+pn"}
    share = {k: float(v[0]) for k, v in rows.items()}
    assert share["bn"] < 1e-6 and share["ln"] > 0.3 and share["ln+pn"] < 0.1
    assert rows["bn"][1].strip() == "no" and rows["ln+pn"][1].strip() == "yes"


def test_specs_and_errors(capsys):
    assert main(["specs"]) == 0
    assert "gn+pn" in capsys.readouterr().out
    assert main(["demo", "--specs", "nope"]) == 2
    assert "unknown norm spec" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--version"])
