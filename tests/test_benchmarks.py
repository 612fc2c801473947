"""Smoke test of `benchmarks/run.py --quick`: the benchmark script keeps working; and the
harness's marker replacement, which every benchmark script writes the documents with.

The smoke test checks that every measurement of EXPECTED is produced with a positive median and
that the report is written; it does not judge the figures (they depend on the machine
and its load). The quick run takes about 1.5-2 minutes on 2 CPU cores (most of it the smoke
preset's main job).
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import harness  # noqa: E402  (benchmarks/harness.py)

sys.path.pop(0)

# Quick mode measures the smoke preset: image 32, the 10k gallery only.
EXPECTED = [
    "matmul_4096_float32",
    "memory_copy_bandwidth",
    "synthetic_render_64px",
    "synthetic_render_224px",
    "extractor_train_32px",
    "extractor_train_fraction_of_matmul",
    "extract_keras_predict",
    "extract_savedmodel_from_pixels",
    "extract_savedmodel_jpeg",
    "manipulator_train",
    "manipulator_train_fraction_of_matmul",
    "embedder_train",
    "embedder_train_fraction_of_matmul",
    "manipulate_keras_batch1",
    "manipulate_savedmodel_batch1",
    "manipulate_grpc_batch1",
    "manipulate_keras_batch64",
    "manipulate_savedmodel_batch64",
    "manipulate_grpc_batch64",
    "search_searcher_10000_batch1",
    "search_numpy_10000_batch1",
    "search_floor_10000",
    "search_searcher_10000_batch64",
    "search_numpy_10000_batch64",
    "main_smoke_wall",
    "main_smoke_peak_rss",
    "main_smoke_stage_extractor",
]


def test_quick_benchmark_smoke(tmp_path):
    out = tmp_path / "bench"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "benchmarks", "run.py"),
            "--quick",
            "--output",
            str(out),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
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
        if m["name"].startswith(
            (
                "search_",
                "extract_",
                "manipulate_",
                "main_",
                "synthetic_",
                "matmul",
                "memory",
                "extractor",
                "manipulator",
                "embedder",
            )
        ):
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


def test_replace_between_markers_keeps_the_rest_of_the_file(tmp_path):
    path = tmp_path / "doc.md"
    path.write_text("# Title\n\nhand-written\n<!-- a -->\nold\n<!-- /a -->\nafter <!-- /a -->\n")
    harness.replace_between_markers(str(path), "<!-- a -->", "<!-- /a -->", "new\nlines")
    assert path.read_text() == (
        "# Title\n\nhand-written\n<!-- a -->\nnew\nlines\n<!-- /a -->\nafter <!-- /a -->\n"
    )
    # Missing markers: appended after a heading when asked, an error otherwise.
    harness.replace_between_markers(
        str(path), "<!-- b -->", "<!-- /b -->", "b", append_after="## B\n"
    )
    assert path.read_text().endswith("after <!-- /a -->\n\n## B\n<!-- b -->\nb\n<!-- /b -->\n")
    with pytest.raises(SystemExit):
        harness.replace_between_markers(str(path), "<!-- c -->", "<!-- /c -->", "c")
    path.write_text("<!-- d -->\nno end\n")
    with pytest.raises(SystemExit):
        harness.replace_between_markers(
            str(path), "<!-- d -->", "<!-- /d -->", "d", append_after=""
        )


def test_report_only_rerenders_without_measuring(tmp_path):
    """`--report_only` writes the generated blocks from results.json alone, without importing
    TensorFlow: a new file starts from the skeleton, and a second render changes nothing."""
    with open(os.path.join(REPO, "benchmarks", "results.json")) as f:
        saved = json.load(f)
    (tmp_path / "results.json").write_text(json.dumps(saved))
    script = (
        "import runpy, sys; "
        "sys.argv = [sys.argv[1], '--report_only', '--output', sys.argv[2]]; "
        "runpy.run_path(sys.argv[0], run_name='__main__'); "
        "assert 'tensorflow' not in sys.modules, 'the render imported TensorFlow'"
    )
    rendered = []
    for _ in range(2):
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                script,
                os.path.join(REPO, "benchmarks", "run.py"),
                str(tmp_path),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        rendered.append((tmp_path / "BENCHMARKS.md").read_text())
    assert rendered[0] == rendered[1]
    assert rendered[0].startswith("# flam_tf benchmarks\n")
    assert f"| `{saved['measurements'][0]['name']}` |" in rendered[0]
    assert "## Findings" in rendered[0]


def test_quality_main_jobs_only_retimes_the_main_jobs_and_keeps_the_rest(tmp_path, monkeypatch):
    """`quality.py --main_jobs_only`: each seed's main job is run again (here a stand-in records
    what it was given) against the comparison report kept in quality.json; the comparison runs,
    their summary and the main jobs of other seeds stay as they were."""
    import importlib

    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        quality = importlib.import_module("quality")
    finally:
        sys.path.pop(0)
    with open(os.path.join(REPO, "benchmarks", "quality.json")) as f:
        saved = json.load(f)
    (tmp_path / "quality.json").write_text(json.dumps(saved))
    calls = []

    def fake_main_job(preset, seed, run_dir, comparison_report, previous=None):
        calls.append((preset, seed, run_dir, comparison_report, previous))
        return {"seed": seed, "wall_s": 1.0, "retimed": True}

    monkeypatch.setattr(quality, "main_job", fake_main_job)
    monkeypatch.setattr(quality, "main_job_text", lambda q: "")
    monkeypatch.setattr(quality, "benchmarks_section", lambda q: "")
    monkeypatch.setattr(quality, "readme_table", lambda q: "")
    quality.main(
        ["--main_jobs_only", "--main_job_seeds", "1", "--output", str(tmp_path), "--work", "W"]
    )
    written = json.loads((tmp_path / "quality.json").read_text())
    assert [(c[1], c[2], c[4]) for c in calls] == [
        (1, os.path.join("W", "default_main_seed1"), None)
    ]
    assert calls[0][3] == saved["reports"]["1"]
    assert [j["seed"] for j in written["main_job"]] == sorted(j["seed"] for j in saved["main_job"])
    for job in written["main_job"]:
        expected = next(j for j in saved["main_job"] if j["seed"] == job["seed"])
        assert job == (
            {"seed": 1, "wall_s": 1.0, "retimed": True} if job["seed"] == 1 else expected
        )
    for key in ("runs", "summary", "reports", "train_flags", "date"):
        assert written[key] == saved[key], key
    assert "main_job_date" in written
    with pytest.raises(SystemExit, match="no comparison report of seed 7"):
        quality.main(["--main_jobs_only", "--main_job_seeds", "7", "--output", str(tmp_path)])
