"""The command line's bad inputs: one clear line naming the input and what is expected.

Table-driven: each row is an input and the message fragment it must produce. The rows run the
real command line in a subprocess (all rows at once, a few at a time) and check the exit code
(2 for usage errors) and that no traceback is printed. The library's own bad inputs are tested
where the library is: layers in tests/layers/test_errors.py, models in tests/models, data in
tests/data.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.fake_data import write_cifar10, write_image_folder_zip

TRAIN = ["train", "--data-dir", "{cifar}", "--no-download", "--width-mult", "0.25"]
TRAIN += ["--out", "{tmp}/r"]

# (id, argv, message fragment, exit code). {cifar}, {tmp}, {ckpt}... are filled in below.
CLI_ROWS = [
    ("decay<0", [*TRAIN, "--decay", "-1"], "decay=-1.0: must be in (0, 1]", 2),
    ("lr<0", [*TRAIN, "--lr", "-0.1"], "lr=-0.1: must be > 0", 2),
    ("subset=0", [*TRAIN, "--subset", "0"], "subset=0: must be >= 1", 2),
    ("width=0", [*TRAIN, "--width-mult", "0"], "width_mult=0.0: must be > 0", 2),
    ("augment", [*TRAIN, "--augment", "foo"],
     "augment='foo': must be one of cifar, imagenet, none", 2),
    ("ema>1", [*TRAIN, "--ema-decay", "2"], "ema_decay=2.0: must be in [0, 1)", 2),
    ("smoothing>1", [*TRAIN, "--label-smoothing", "5"],
     "label_smoothing=5.0: must be in [0, 1)", 2),
    ("smoothing<0", [*TRAIN, "--label-smoothing=-3"],
     "label_smoothing=-3.0: must be in [0, 1)", 2),
    ("norm_batch=0", [*TRAIN, "--norm", "bn", "--norm-batch", "0"],
     "norm_batch=0: must be >= 1", 2),
    ("milestones<0", [*TRAIN, "--milestones=-5,10"],
     "milestones=[-5.0, 10.0]: must be each >= 0", 2),
    ("epochs=0", [*TRAIN, "--out", "{tmp}/epochs0", "--epochs", "0"], "epochs=0: must be >= 1", 2),
    ("yaml", [*TRAIN, "--recipe", "{bad_yaml}"], "is not valid YAML (line", 2),
    ("recipe epochs=0", [*TRAIN, "--recipe", "{zero_epochs}"],
     "recipe {zero_epochs}: epochs=0: must be >= 1", 2),
    ("recipe list", [*TRAIN, "--recipe", "{list_recipe}"],
     "must be a mapping of training options", 2),
    ("recipe lr", [*TRAIN, "--recipe", "{abc_recipe}"],
     "lr='abc': expected a finite number", 2),
    ("no data, no network", ["train", "--data-dir", "{tmp}/missing/cifar", "--out", "{tmp}/r2"],
     "cifar10 not found: expected {tmp}/missing/cifar/cifar-10-batches-py", 2),
    ("truncated zip", ["train", "--data", "imagefolder", "--data-dir", "{truncated}",
                       "--out", "{tmp}/r3", "--image-size", "8"],
     "is not a readable zip archive (truncated or corrupt?)", 2),
    ("seeds=0", ["compare", "--seeds", "0", "--out", "{tmp}/c"],
     "argument --seeds: must be >= 1, got 0", 2),
    ("demo batch=1", ["demo", "--batch", "1"], "argument --batch: must be >= 2, got 1", 2),
    ("demo batch=0", ["demo", "--batch", "0"], "argument --batch: must be >= 2, got 0", 2),
    ("power kernel=0", ["power", "--kernel-size", "0"], "argument --kernel-size: must be >= 1", 2),
    ("power realizations=0", ["power", "--realizations", "0"],
     "argument --realizations: must be >= 1", 2),
    ("power batch=0", ["power", "--batch", "0"], "argument --batch: must be >= 2, got 0", 2),
    ("bench repeats=0", ["bench", "--repeats", "0"], "argument --repeats: must be >= 1", 2),
    ("export onto input", ["export", "--checkpoint", "{ckpt}", "--out", "{ckpt}",
                           "--format", "torchscript"], "is the input checkpoint", 2),
    ("export exists", ["export", "--checkpoint", "{ckpt}", "--out", "{existing}",
                       "--format", "torchscript"], "exists; pass --force to overwrite it", 2),
    ("export no onnx", ["export", "--checkpoint", "{ckpt}", "--out", "{tmp}/m.onnx"],
     'ONNX export needs onnx: pip install -e ".[export]"', 2),
    ("export no-fold torchscript", ["export", "--checkpoint", "{ckpt}", "--out", "{tmp}/nf.pt",
                                    "--format", "torchscript", "--no-fold"], "", 0),
]  # fmt: skip

# Runs the CLI with `import onnx` failing, as on a machine without the [export] extra.
_LAUNCH = (
    "import sys\n"
    "if sys.argv[1] == 'no-onnx':\n    sys.modules['onnx'] = None\n"
    "from proxynorm.cli import main\nsys.exit(main(sys.argv[2:]))"
)


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    from proxynorm.checkpoint import save_model
    from proxynorm.models import create_model

    ckpt = tmp / "ckpt.pt"
    save_model(ckpt, create_model("resnet20", norm="gn+pn", width_mult=0.25))
    (tmp / "existing.pt").write_text("keep me")
    (tmp / "bad.yaml").write_text("lr: [0.1\nepochs: 3\n")
    (tmp / "zero.yaml").write_text("epochs: 0\n")
    (tmp / "list.yaml").write_text("- lr\n- 0.1\n")
    (tmp / "abc.yaml").write_text("lr: abc\n")
    full = write_image_folder_zip(tmp / "full.zip", n_train=8, n_test=4)
    data = full.read_bytes()
    (tmp / "truncated.zip").write_bytes(data[: len(data) // 2])
    values = {
        "tmp": str(tmp),
        "cifar": str(write_cifar10(tmp / "cifar")),
        "ckpt": str(ckpt),
        "existing": str(tmp / "existing.pt"),
        "bad_yaml": str(tmp / "bad.yaml"),
        "zero_epochs": str(tmp / "zero.yaml"),
        "list_recipe": str(tmp / "list.yaml"),
        "abc_recipe": str(tmp / "abc.yaml"),
        "truncated": str(tmp / "truncated.zip"),
    }
    # No network: a proxy that refuses connections at once.
    env = {"PATH": "/usr/bin:/bin", "https_proxy": "http://127.0.0.1:9", "OMP_NUM_THREADS": "1"}

    def run(row):
        name, argv, fragment, code = row
        argv = [a.format(**values) for a in argv]
        mode = "no-onnx" if name == "export no onnx" else "-"
        proc = subprocess.run(
            [sys.executable, "-c", _LAUNCH, mode, *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        return name, proc, fragment.format(**values), code

    with ThreadPoolExecutor(4) as pool:
        results = {name: rest for name, *rest in pool.map(run, CLI_ROWS)}
    return results, values


@pytest.mark.parametrize("row", CLI_ROWS, ids=[r[0] for r in CLI_ROWS])
def test_cli_bad_input_gives_one_clear_line_and_exit_code(cli_results, row):
    results, _ = cli_results
    proc, fragment, code = results[row[0]]
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out
    assert fragment in proc.stderr, out
    assert "Traceback" not in out, out


def test_refused_inputs_leave_nothing_behind(cli_results):
    _, values = cli_results
    tmp = Path(values["tmp"])
    assert not (tmp / "epochs0").exists()  # --epochs 0: refused before anything is written
    assert not (tmp / "missing").exists()  # the failed download created no directory
    assert (tmp / "existing.pt").read_text() == "keep me"  # not overwritten
    assert (tmp / "ckpt.pt").stat().st_size > 1000  # the input checkpoint is intact
    assert (tmp / "nf.pt").exists()  # --no-fold torchscript export works on a PN checkpoint
