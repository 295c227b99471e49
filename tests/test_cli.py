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


def _valid_png(path):
    from PIL import Image

    with Image.open(path) as img:
        img.verify()
        return img.format == "PNG"


def test_power_command_random_nets(tmp_path, capsys):
    import json

    out = tmp_path / "power"
    assert (
        main(
            [
                "power",
                "--norms",
                "bn,ln+pn",
                "--depth",
                "4",
                "--width",
                "8",
                "--realizations",
                "2",
                "--batch",
                "8",
                "--data",
                str(tmp_path / "missing.zip"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "SYNTHETIC" in capsys.readouterr().out
    payload = json.loads((out / "power.json").read_text())
    assert set(payload["panels"]) == {"bn", "ln+pn"} and "SYNTHETIC" in payload["inputs"]
    bn = payload["panels"]["bn"]
    assert len(bn["dataset mean"]["mean"]) == 4
    assert _valid_png(out / "power.png")


def test_power_command_on_checkpoints(tmp_path):
    import json

    from proxynorm.checkpoint import save_model
    from proxynorm.models import create_model

    for norm in ("bn", "gn+pn"):
        save_model(tmp_path / f"{norm}.pt", create_model("resnet20", norm=norm, width_mult=0.25))
    out = tmp_path / "ckpt"
    assert (
        main(
            [
                "power",
                "--checkpoint",
                str(tmp_path / "bn.pt"),
                str(tmp_path / "gn+pn.pt"),
                "--batch",
                "4",
                "--data",
                "none",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    payload = json.loads((out / "power.json").read_text())
    assert list(payload["panels"]) == ["resnet20 bn", "resnet20 gn+pn"]
    assert len(payload["panels"]["resnet20 bn"]["dataset mean"]["mean"]) == 19
    assert _valid_png(out / "power.png")


def test_theory_command(tmp_path):
    import json

    out = tmp_path / "theory"
    assert (
        main(
            [
                "theory",
                "--depth",
                "4",
                "--width",
                "8",
                "--realizations",
                "2",
                "--batch",
                "8",
                "--linearity-norms",
                "ln,ln+pn",
                "--data",
                "none",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    payload = json.loads((out / "theory.json").read_text())
    assert set(payload["theorem1"]) == {"relu", "identity"}
    assert len(payload["theorem1"]["relu"]["bound"]) == 4
    assert set(payload["linearity"]) == {"ln", "ln+pn"}
    assert _valid_png(out / "theory.png")


def test_power_command_reports_bad_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert (
        main(
            [
                "power",
                "--checkpoint",
                str(bad),
                "--data",
                "none",
                "--batch",
                "2",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "cannot load checkpoint" in capsys.readouterr().err
