"""Smoke test of `benchmarks/run.py --quick`: the benchmark script keeps working.

It checks that every measurement the issue asks for is produced with a positive median and that
the report is written; it does not judge the figures (they depend on the machine and its load).
The quick run takes about 1.5-2 minutes on 2 CPU cores (most of it the smoke preset's main job).
"""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Quick mode measures the smoke preset: image 32, the 10k gallery only.
EXPECTED = [
    "matmul_4096_float32", "memory_copy_bandwidth",
    "synthetic_render_64px", "synthetic_render_224px",
    "extractor_train_32px", "extractor_train_fraction_of_matmul",
    "extract_keras_predict", "extract_savedmodel_from_pixels", "extract_savedmodel_jpeg",
    "manipulator_train", "manipulator_train_fraction_of_matmul",
    "embedder_train", "embedder_train_fraction_of_matmul",
    "manipulate_keras_batch1", "manipulate_savedmodel_batch1", "manipulate_grpc_batch1",
    "manipulate_keras_batch64", "manipulate_savedmodel_batch64", "manipulate_grpc_batch64",
    "search_searcher_10000_batch1", "search_numpy_10000_batch1", "search_floor_10000",
    "search_searcher_10000_batch64", "search_numpy_10000_batch64",
    "main_smoke_wall", "main_smoke_peak_rss", "main_smoke_stage_extractor",
]


def test_quick_benchmark_smoke(tmp_path):
    out = tmp_path / "bench"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "run.py"), "--quick",
                           "--output", str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    with open(out / "results.json") as f:
        results = json.load(f)
    assert results["mode"] == "quick"
    by_name = {m["name"]: m for m in results["measurements"]}
    missing = [n for n in EXPECTED if n not in by_name]
    assert not missing, f"missing measurements: {missing}"
    for m in results["measurements"]:
        for key in ("name", "unit", "median", "min", "max", "runs"):
            assert key in m, (key, m)
        assert m["min"] <= m["median"] <= m["max"], m
        assert m["runs"] >= 1, m
        if m["name"].startswith(("search_", "extract_", "manipulate_", "main_", "synthetic_",
                                 "matmul", "memory", "extractor", "manipulator", "embedder")):
            assert m["median"] > 0, m
    assert by_name["manipulate_grpc_batch1"]["ratio_to"] == "manipulate_savedmodel_batch1"
    assert "p99" in by_name["manipulate_grpc_batch1"]
    # faiss-cpu is an optional extra: measured when installed, skipped cleanly otherwise.
    try:
        import faiss  # noqa: F401
        assert "search_faiss_10000_batch1" in by_name
    except ImportError:
        assert "search_faiss_10000_batch1" not in by_name

    report = (out / "BENCHMARKS.md").read_text()
    assert "| measurement | unit | median |" in report
    assert "TensorFlow" in report and "cores" in report
    assert "`main_smoke_wall`" in report
