import json

from PIL import Image

from proxynorm.cli import main
from tests.fake_data import write_cifar10


def test_compare_writes_summaries_and_skips_finished_runs(tmp_path, capsys):
    data = write_cifar10(tmp_path / "data")
    out = tmp_path / "cmp"
    argv = [
        "compare",
        "--norms",
        "bn,gn+pn",
        "--seeds",
        "2",
        "--model",
        "resnet20",
        "--width-mult",
        "0.25",
        "--data-dir",
        str(data),
        "--no-download",
        "--epochs",
        "1",
        "--batch-size",
        "40",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["norms"]) == {"bn", "gn+pn"} and summary["failures"] == {}
    bn = summary["norms"]["bn"]
    assert bn["test_acc"]["n"] == 2 and bn["seeds"] == [0, 1]
    md = (out / "summary.md").read_text()
    assert "| BN |" in md and "| GN+PN |" in md and " ± " in md
    with Image.open(out / "accuracy.png") as img:
        assert img.format == "PNG"
    finals = sorted(out.glob("*/seed*/final.json"))
    assert len(finals) == 4
    mtimes = [f.stat().st_mtime_ns for f in finals]
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("finished earlier") == 4
    assert [f.stat().st_mtime_ns for f in finals] == mtimes


def test_train_cli_and_errors(tmp_path, capsys):
    data = write_cifar10(tmp_path / "data")
    argv = [
        "train",
        "--model",
        "resnet20",
        "--norm",
        "ln+pn",
        "--width-mult",
        "0.25",
        "--data-dir",
        str(data),
        "--no-download",
        "--epochs",
        "1",
        "--batch-size",
        "40",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(argv) == 0
    assert "final test accuracy" in capsys.readouterr().out
    assert main(argv) == 2  # exists, no --resume
    assert "--resume" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0  # finished: returns its summary
    assert (
        main(
            [
                "train",
                "--out",
                str(tmp_path / "x"),
                "--data-dir",
                str(tmp_path / "none"),
                "--no-download",
            ]
        )
        == 2
    )
    assert "not found" in capsys.readouterr().err
