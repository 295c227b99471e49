"""Benchmarks: the public harness every benchmark script uses (:mod:`.harness`) and the suite
behind ``proxynorm bench`` (:mod:`.suite`)."""

from proxynorm.bench.harness import (
    Variant,
    fresh_compile_caches,
    median_ratio,
    saved_bytes,
    set_fused,
    time_rounds,
    write_script_json,
)
from proxynorm.bench.suite import (
    bench_layers,
    bench_model_arg,
    bench_models,
    markdown,
    model_batch,
    model_classes,
    model_setting,
    named_model,
    run_benchmarks,
)

__all__ = [
    "Variant",
    "bench_layers",
    "bench_model_arg",
    "bench_models",
    "fresh_compile_caches",
    "markdown",
    "median_ratio",
    "model_batch",
    "model_classes",
    "model_setting",
    "named_model",
    "run_benchmarks",
    "saved_bytes",
    "set_fused",
    "time_rounds",
    "write_script_json",
]
