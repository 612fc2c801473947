"""The documentation's commands point at things that exist (fast: no TensorFlow import).

* every `python -m <module>` in README.md and BUILD.md names a module of this checkout (a file, or a
  package with `__main__.py`) or an installed one (`pip`, `pytest`, `venv`);
* every `--flag` given to `python -m flam_tf.train` in BUILD.md (in its commands, in the flag table
  of its section 3.3, and every `--<section>_<field>` anywhere) is an absl flag that
  `flam_tf.train` defines (checked in a subprocess, so this test never adds flags to the pytest
  process's global FLAGS, where other modules define flags of the same names).
"""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ("README.md", "BUILD.md")
MODULE = re.compile(r"\bpython3?\s+-m\s+([A-Za-z_][\w.]*)")
# Where a flam_tf.train command ends inside a logical line: shell separators, inline-code ticks.
COMMAND_END = re.compile(r"`|&&|\|\||\||;|\s#|\)")
FLAG = re.compile(r"(?<![\w-])--([A-Za-z][\w]*)")
ABSL_BUILTINS = {"help", "helpfull", "helpshort", "helpxml", "flagfile", "undefok"}


def read(name):
    with open(os.path.join(REPO, name), encoding="utf-8") as f:
        return f.read()


def logical_lines(text):
    """Lines with shell continuations (a trailing backslash) joined."""
    return re.sub(r"\\\n\s*", " ", text).splitlines()


def resolves(module):
    parts = module.split(".")
    if os.path.isdir(os.path.join(REPO, parts[0])) or os.path.isfile(
        os.path.join(REPO, parts[0] + ".py")
    ):
        base = os.path.join(REPO, *parts)
        return os.path.isfile(base + ".py") or os.path.isfile(os.path.join(base, "__main__.py"))
    return importlib.util.find_spec(parts[0]) is not None


@pytest.mark.parametrize("doc", DOCS)
def test_python_m_modules_resolve(doc):
    modules = set(MODULE.findall(read(doc)))
    assert modules, f"no `python -m` command found in {doc}"
    missing = sorted(m for m in modules if not resolves(m))
    assert not missing, f"{doc} runs modules that do not exist: {missing}"


def train_flags_in(text):
    """{flag name} of every `python -m flam_tf.train ...` command in `text`."""
    found = set()
    for line in logical_lines(text):
        for match in re.finditer(r"-m\s+flam_tf\.train\b", line):
            rest = line[match.end() :]
            end = COMMAND_END.search(rest)
            found.update(FLAG.findall(rest[: end.start()] if end else rest))
    return found


# Config-override flags (`--<section>_<field>`) belong to flam_tf.train wherever they appear.
SECTION_FLAG = re.compile(
    r"(?<![\w-])--((?:data|extractor|embedder|manipulator|baselines|evaluation"
    r"|runtime)_\w+)"
)
# Flags of the other CLIs that happen to look like one (`python -m flam_tf.data.readers --data_dir`).
NOT_TRAIN_FLAGS = {"data_dir"}


def train_section_table_flags(text):
    """Flags in the table rows of BUILD.md's `python -m flam_tf.train` section (3.3)."""
    match = re.search(r"^### 3\.3 .*?$(.*?)^###? ", text, re.S | re.M)
    assert match, "BUILD.md has no section 3.3 (python -m flam_tf.train)"
    rows = [line for line in match.group(1).splitlines() if line.startswith("|")]
    return {f for line in rows for f in FLAG.findall(line)}


def test_train_flags_in_build_md_are_defined():
    text = read("BUILD.md")
    used = (
        train_flags_in(text)
        | (set(SECTION_FLAG.findall(text)) - NOT_TRAIN_FLAGS)
        | train_section_table_flags(text)
    )
    # The parse found the commands (an empty set would make this test pass vacuously).
    assert {"preset", "run_dir", "stages", "force", "data_extractor_source"} <= used, sorted(used)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, flam_tf.train as t; print(json.dumps(sorted(t.FLAGS)))",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert out.returncode == 0, out.stderr
    defined = set(json.loads(out.stdout.strip().splitlines()[-1])) | ABSL_BUILTINS
    # absl accepts --noFLAG for a boolean FLAG.
    unknown = sorted(
        f for f in used if f not in defined and not (f.startswith("no") and f[2:] in defined)
    )
    assert not unknown, f"BUILD.md passes flags flam_tf.train does not define: {unknown}"


def test_train_flag_parser_sees_continuations_and_stops_at_separators():
    text = (
        "python -m flam_tf.train --preset=smoke \\\n    --run_dir /tmp/x && ls --color\n"
        "`python -m flam_tf.train --stages=export` then `python -m export --top_k 5`"
    )
    assert train_flags_in(text) == {"preset", "run_dir", "stages"}


def benchmark_module(name):
    """Imports benchmarks/<name>.py, or a module of one of its packages ("gpu_estimate.tables"):
    the scripts import each other from the benchmarks folder, which is not a package itself."""
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def benchmark_file(name):
    with open(os.path.join(REPO, "benchmarks", name)) as f:
        return json.load(f)


def between(text, begin, end):
    """The text between two markers, stripped."""
    start = text.index(begin) + len(begin)
    return text[start : text.index(end, start)].strip()


def test_readme_quality_table_is_the_quality_benchmarks_file():
    """README's quality figures are benchmarks/quality.json's, rendered by benchmarks/quality.py."""
    quality = benchmark_module("quality")
    saved = benchmark_file("quality.json")
    table = between(read("README.md"), quality.README_BEGIN, quality.README_END)
    assert table == quality.readme_table(saved).strip()
    # ...and quality.json's summary is what its own per-seed reports say.
    runs = [{"report": saved["reports"][str(r["seed"])]} for r in saved["runs"]]
    assert quality.summarise(runs) == saved["summary"]
    assert len(saved["runs"]) >= 3 or saved["preset"] != "default"


def test_build_md_main_job_table_is_the_quality_file():
    """BUILD.md section 8's main-job timing is quality.json's `main_job`, rendered; the main job
    reported the same figures as the comparison run of its seed."""
    quality = benchmark_module("quality")
    saved = benchmark_file("quality.json")
    block = between(read("BUILD.md"), quality.MAIN_JOB_BEGIN, quality.MAIN_JOB_END)
    assert block == quality.main_job_text(saved).strip()
    assert saved["main_job"], "quality.json has no main-job timing"
    for job in saved["main_job"]:
        assert job["differences"] == [] and job["figures_compared"] > 50


def assert_build_md_table_is_rendered_from(module_name, json_name, render):
    """BUILD.md's table between the benchmark module's TABLE_BEGIN/TABLE_END markers equals
    `module.<render>(saved json)`; returns the saved json for the caller's own checks."""
    module = benchmark_module(module_name)
    saved = benchmark_file(json_name)
    table = between(read("BUILD.md"), module.TABLE_BEGIN, module.TABLE_END)
    assert table == getattr(module, render)(saved).strip()
    return saved


def test_build_md_sweep_table_is_the_sweep_file():
    """BUILD.md section 8's manipulator table is benchmarks/manipulator_sweep.json, rendered."""
    pytest.importorskip("tensorflow")  # the sweep module imports the package
    sweep = assert_build_md_table_is_rendered_from(
        "manipulator_sweep", "manipulator_sweep.json", "sweep_table"
    )
    assert "default" in sweep["results"]


def test_build_md_input_table_is_the_input_pipeline_file():
    """BUILD.md section 3.3's input-speed table is benchmarks/input_pipeline.json, rendered."""
    pytest.importorskip("tensorflow")  # the benchmark module imports the package
    saved = assert_build_md_table_is_rendered_from("input_pipeline", "input_pipeline.json", "table")
    assert saved["extractor"]["feeds"]["memory"]["fraction_of_memory"] == 1.0


def test_index_tables_are_the_index_bench_file():
    """BUILD.md's and BENCHMARKS.md's catalogue-engine tables are benchmarks/index.json, rendered,
    and they hold what BUILD.md's choice of engine rests on: HNSW recall@50 >= 0.99 at 100k, FLAT
    exact."""
    module = benchmark_module("index_report")
    saved = benchmark_file("index.json")
    block = module.section(saved).strip()
    for doc in ("BUILD.md", "BENCHMARKS.md"):
        assert between(read(doc), module.TABLE_BEGIN, module.TABLE_END) == block, doc
    at_100k = next(s for s in saved["sizes"] if s["n"] == 100_000)["engines"]
    assert at_100k["milvus_hnsw"]["recall_at_50"] >= 0.99
    assert at_100k["milvus_flat"]["recall_at_50"] == 1.0


def test_build_md_gpu_table_is_the_flops_file():
    """BUILD.md section 3.5's GPU estimate table is benchmarks/flops.json, rendered."""
    assert_build_md_table_is_rendered_from("gpu_estimate.tables", "flops.json", "table")


def test_benchmarks_md_quality_section_is_the_quality_file():
    """BENCHMARKS.md's quality section is benchmarks/quality.json, rendered by quality.py."""
    quality = benchmark_module("quality")
    section = between(read("BENCHMARKS.md"), quality.QUALITY_BEGIN, quality.QUALITY_END)
    assert section == quality.benchmarks_section(benchmark_file("quality.json")).strip()


def test_benchmarks_md_is_rendered_from_the_results_file(tmp_path):
    """BENCHMARKS.md's generated blocks (run and machine line, measurement table, findings) are
    benchmarks/results.json, rendered by benchmarks/report.py; re-rendering the file changes
    nothing (the hand-written text and the other scripts' sections stay as they are)."""
    report = benchmark_module("report")
    saved = benchmark_file("results.json")
    text = read("BENCHMARKS.md")
    blocks = report.blocks(saved)
    assert [b for b, _, _ in blocks] == [
        report.RUN_BEGIN,
        report.TABLE_BEGIN,
        report.FINDINGS_BEGIN,
    ]
    for begin, end, content in blocks:
        assert between(text, begin, end) == content.strip(), begin
    names = [m["name"] for m in saved["measurements"]]
    assert names and all(f"| `{n}` |" in text for n in names)
    copy = tmp_path / "BENCHMARKS.md"
    copy.write_text(text, encoding="utf-8")
    report.write(str(copy), saved)
    assert copy.read_text(encoding="utf-8") == text
    # The comparison sees a figure that differs from the file.
    changed = json.loads(json.dumps(saved))
    changed["measurements"][0]["median"] *= 2
    assert report.table_block(changed) != between(text, report.TABLE_BEGIN, report.TABLE_END)
