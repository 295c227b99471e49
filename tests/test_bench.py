import json

import pytest

from proxynorm.bench import bench_layers, bench_models, markdown, run_benchmarks
from proxynorm.cli import main


def test_layer_and_model_benchmarks_report_ratios_and_memory():
    layers = bench_layers((2, 16, 4, 4), repeats=2, warmup=1)
    assert layers["BN+ReLU"]["ratio"] == 1.0 and layers["act: affine+ReLU"]["ratio"] == 1.0
    assert layers["GN+PN (reference)"]["saved_mib"] > layers["GN+PN (fused)"]["saved_mib"]
    models = bench_models("resnet20", batch=2, size=16, repeats=1, warmup=0)
    assert set(models) == {"bn", "gn", "gn+pn (reference)", "gn+pn (fused)"}
    assert all(r["ms"] > 0 and r["runs"] == 1 for r in models.values())
    text = markdown(
        {
            "environment": {"torch": "x", "threads": 1, "processor": "p"},
            "tables": [{"kind": "model", "what": "w", "rows": models}],
        }
    )
    assert "| gn+pn (fused) |" in text


def test_rounds_run_the_variants_in_a_new_random_order_each():
    """A fixed order biases the timings (the variant timed right after another pays for what
    that one left behind); every variant still runs once per round."""
    from proxynorm.bench import Variant, time_rounds

    calls = []
    variants = [Variant(n, lambda n=n: calls.append(n), None) for n in "abcd"]
    times = time_rounds(variants, repeats=30, warmup=0, desc="t")
    rounds = [tuple(calls[i : i + 4]) for i in range(0, len(calls), 4)]
    assert all(sorted(r) == list("abcd") for r in rounds) and len(rounds) == 30
    assert len(set(rounds)) > 5 and {r[0] for r in rounds} == set("abcd")
    assert all(len(times[n]) == 30 for n in "abcd")


def test_run_benchmarks_rejects_unknown_models(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark model"):
        run_benchmarks(tmp_path, ["vgg"], repeats=1)
    with pytest.raises(ValueError, match="unknown benchmark model 'resnet20-b0'"):
        run_benchmarks(tmp_path, ["resnet20-b0"], repeats=1)
    with pytest.raises(ValueError, match="compiled ones must be benchmarked"):
        run_benchmarks(tmp_path, ["resnet20"], repeats=1, compiled=["resnet50"])


def test_bench_command_writes_json_and_markdown(tmp_path, monkeypatch):
    import proxynorm.bench.suite as bench

    calls = []
    monkeypatch.setattr(bench, "bench_layers", lambda *a, **k: calls.append("l") or {})
    monkeypatch.setattr(bench, "bench_models", lambda *a, **k: calls.append(k["compiled"]) or {})
    assert (
        main(["bench", "--models", "resnet20", "--compile", "resnet20", "--out", str(tmp_path)])
        == 0
    )
    assert calls.count("l") == 2 and calls.count(True) == 2 and calls.count(False) == 2
    assert json.loads((tmp_path / "bench.json").read_text())["tables"]
    assert (tmp_path / "bench.md").read_text().startswith("# proxynorm bench")


def test_small_batch_setting_benchmarks_resnet20_at_batch_8(tmp_path, monkeypatch):
    import proxynorm.bench.suite as bench

    calls = []
    monkeypatch.setattr(bench, "bench_layers", lambda *a, **k: {})
    monkeypatch.setattr(bench, "bench_models", lambda *a, **k: calls.append(a) or {})
    results = run_benchmarks(tmp_path, ["resnet20-b8"], repeats=1)
    assert calls == [("resnet20", 8, 32)] * 2  # contiguous and channels_last
    assert "resnet20 batch 8 32x32 channels_last" in [t["what"] for t in results["tables"]]
    calls.clear()
    results = run_benchmarks(tmp_path, ["resnet20-b1", "resnet50r-b2"], repeats=1)
    assert calls == [("resnet20", 1, 32), ("resnet50", 2, 64)] * 2
    assert "resnet50 x0.25 batch 2 64x64 contiguous" in [t["what"] for t in results["tables"]]


def test_gpu_benchmark_script_runs_on_cpu_at_tiny_sizes(tmp_path):
    """benchmarks/gpu_bench.py (behind run_gpu.sh) at tiny sizes: eager and compiled tables with
    ratios to BN and to GN."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_bench.py"
    cmd = [sys.executable, str(script), "--device", "cpu", "--tiny", "--compile-backend",
           "eager", "--out", str(tmp_path)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    results = json.loads((tmp_path / "bench.json").read_text())
    assert [t["what"].endswith("compiled, bf16 autocast") for t in results["tables"]] == [
        False,
        True,
    ]
    for table in results["tables"]:
        assert set(table["rows"]) == {"bn", "gn", "gn+pn (reference)", "gn+pn (fused)"}
        assert all("ratio_2" in r for r in table["rows"].values())
    assert "| variant | ms | ratio | × GN |" in (tmp_path / "bench.md").read_text()


def test_per_layer_overhead_script_prints_one_row_per_input_and_number_of_quantiles():
    """benchmarks/pn_overhead.py (behind run_cpu.sh) with two numbers of quantiles, few calls."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "pn_overhead.py"
    cmd = [sys.executable, str(script), "--n-samples", "2,16", "--calls", "2"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout
    rows = [line for line in out.splitlines() if line.startswith("| (")]
    assert [r.split(" | ")[1] for r in rows] == ["2", "16"] * 4
    assert out.splitlines()[0] == "| input | n | GN+ReLU µs | GN+PN µs | GN+PN − GN+ReLU µs |"


def test_compiled_cost_script_times_every_variant_against_gn_relu(tmp_path):
    """benchmarks/compiled_layer_cost.py on a 2-layer stack with the aot_eager backend (no C++
    compiler needed), two rounds: one row per variant, GN+ReLU the baseline."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "compiled_layer_cost.py"
    out = tmp_path / "cost.json"
    cmd = [sys.executable, str(script), "--layers", "2", "--rounds", "2", "--backend",
           "aot_eager", "--json", str(out)]  # fmt: skip
    text = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout
    rows = json.loads(out.read_text())["rows"]
    assert list(rows) == ["GN+ReLU", "GN+PN", "GN+PN C×n one-pass", "GN+PN quantiles per layer",
                          "GN+PN two-pass moments", "GN+PN before", "GN+PN n=16",
                          "GN+PN no proxy affine", "GN+PN γ~β~ packed"]  # fmt: skip
    assert rows["GN+ReLU"]["x_gn_relu"] == 1.0 and rows["GN+ReLU"]["over_gn_per_layer_us"] == 0
    assert "| GN+PN before |" in text
    bad = subprocess.run([*cmd, "--variants", "GN+PN,nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown variants ['nope']" in bad.stderr
    bad = subprocess.run([*cmd, "--inductor", "size_asserts"], capture_output=True, text=True)
    assert bad.returncode == 2 and "takes KEY=VALUE" in bad.stderr


def test_optimizer_step_script_times_each_norm_with_each_sgd(tmp_path):
    """benchmarks/optimizer_step.py, eager resnet20 at batch 1, two rounds: a row per norm and SGD
    implementation (fused where this torch has it on CPU), ratios against GN+ReLU's."""
    import subprocess
    import sys
    from pathlib import Path

    from proxynorm.train.optim import fused_sgd_available

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "optimizer_step.py"
    out = tmp_path / "step.json"
    cmd = [sys.executable, str(script), "--model", "resnet20-b1", "--rounds", "2", "--json",
           str(out)]  # fmt: skip
    text = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout
    rows = json.loads(out.read_text())["rows"]
    impls = ["for-loop", "foreach"] + ["fused"] * fused_sgd_available()
    assert list(rows) == [f"{n}, {i}" for n in ("GN+ReLU", "GN+PN") for i in impls]
    assert rows["GN+ReLU, for-loop"]["x_gn_for_loop"] == 1.0
    assert all(rows[f"GN+ReLU, {i}"]["x_gn_same_sgd"] == 1.0 for i in impls)
    assert "| GN+PN, foreach |" in text
    bad = subprocess.run([*cmd[:2], "--model", "resnet21"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown benchmark model 'resnet21'" in bad.stderr


def test_compiled_split_times_the_kernel_inside_each_graph_call(tmp_path):
    """benchmarks/compiled_split.py's timing of one inductor output-code module, on a module
    written here with its shape (``get_args``, ``call``, one ``cpp_fused_*`` kernel): the kernel
    time is what the kernel spends, the rest is the wrapper's."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "compiled_split.py"
    spec = importlib.util.spec_from_file_location("compiled_split", script)
    split = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(split)
    code = tmp_path / "output_code.py"
    code.write_text(
        "import time\n"
        "def cpp_fused_step_0(x):\n"
        "    end = time.perf_counter() + 200e-6\n"
        "    while time.perf_counter() < end: pass\n"
        "def get_args():\n"
        "    return [1]\n"
        "def call(args):\n"
        "    end = time.perf_counter() + 300e-6\n"
        "    while time.perf_counter() < end: pass\n"
        "    cpp_fused_step_0(args[0])\n"
    )
    row = split._time_graphs({"graph": code}, calls=3, rounds=3)["graph"]
    assert row["kernel_us"] >= 200 and row["call_us"] >= 500, row
    assert row["call_us"] - row["kernel_us"] >= 300, row  # the wrapper's own 300 µs


def test_compiled_census_counts_the_wrapper_work_of_an_output_code_module():
    """benchmarks/compiled_census.py's counts, on an output-code module written here in inductor's
    shape: a kernel called twice (its OpenMP constructs counted per call), buffers, views, size
    checks, dels, and a returned tuple whose items hold commas of their own."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "compiled_census.py"
    spec = importlib.util.spec_from_file_location("compiled_census", script)
    census = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(census)
    code = (
        "cpp_fused_a_0 = async_compile.cpp_pybinding(['const float*', 'float*'], r'''\n"
        "    #pragma omp parallel\n    #pragma omp for\n"
        "    #pragma omp single\n    #pragma omp for\n"
        "''')\n"
        "class Runner:\n"
        "    def call(self, args):\n"
        "        primals_1, primals_2 = args\n"
        "        assert_size_stride(primals_1, (8, ), (1, ), 'input')\n"
        "        assert_size_stride(primals_2, (8, ), (1, ), 'input')\n"
        "        buf0 = empty_strided_cpu((8, ), (1, ), torch.float32)\n"
        "        buf1 = empty_strided_cpu((2, 4), (4, 1), torch.float32)\n"
        "        cpp_fused_a_0(primals_1, buf0)\n"
        "        buf2 = reinterpret_tensor(buf1, (8, ), (1, ), 0); del buf1  # reuse\n"
        "        cpp_fused_a_0(primals_2, buf2)\n"
        "        del primals_1\n"
        "        return (buf0, reinterpret_tensor(buf2, (2, 4), (4, 1), 0), primals_2, )\n"
    )
    counts = census.census(code)
    assert counts == {"kernel calls": 2, "kernel args": 4, "buffers": 2, "views": 2,
                      "size checks": 2, "dels": 2, "returned": 3, "barriers": 6}  # fmt: skip
    assert list(counts) == census.ROWS
    items = census._top_level_items
    assert (items(""), items("a"), items("a, "), items("a, f(b, (c, d)), [e, f]")) == (0, 1, 1, 3)
