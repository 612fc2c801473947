#!/usr/bin/env python
"""Quality over seeds: the main job's report figures, mean and standard deviation per method.

    python benchmarks/quality.py                       # default preset, seeds 0 1 2 (~25 min)
    python benchmarks/quality.py --seeds 0 --preset smoke --work /tmp/q --output /tmp/q
    python benchmarks/quality.py --report_only         # rewrite the tables from quality.json
    python benchmarks/quality.py --train_flag=--ablations  # then add FLAM (paper)'s Table 3 rows

Runs `python -m flam_tf.train --preset=P --seed=S --evaluation_compare` once per seed in
`<work>/<P>_seed<S>` (the comparison rows: FLAM (paper) and the pixel-trained concat baselines; a
finished run directory is reused: the main job skips finished stages). For `--main_job_seeds`
(default 0) it first runs the main job as a user does, `python -m flam_tf.train --preset=P
--seed=S` (no comparison rows), in `<work>/<P>_main_seed<S>`, records its wall time, stage times
and peak memory, and checks that every figure it reports equals the comparison run's (the
comparison rows must not change FLAM). Then it collects every run's report.json into
`<output>/quality.json` and writes:
  - the quality section of BENCHMARKS.md (between its markers, the rest of the file untouched),
  - README.md's quality table (between its markers),
when `--output` is the repository (the default). tests/test_docs.py checks that README's table
equals what quality.json says.

Figures per method: all-T@10 and T@50, per-type T@50, twin R@10, the independent probe's accuracy
on the edited and kept types, in-shop and consumer-to-shop R@1 (methods with a feature of their
own), and per run the wall time and peak resident memory of the main job.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from harness import marked, replace_between_markers  # noqa: E402

QUALITY_BEGIN = "<!-- quality: written by benchmarks/quality.py -->"
QUALITY_END = "<!-- quality: end -->"
README_BEGIN = "<!-- quality table: written by benchmarks/quality.py -->"
README_END = "<!-- quality table: end -->"
MAIN_JOB_BEGIN = "<!-- main job: written by benchmarks/quality.py -->"
MAIN_JOB_END = "<!-- main job: end -->"
TYPES = ("shape", "color", "pattern")


COMPARE_FLAG = "--evaluation_compare"


def run_seed(preset: str, seed: int, run_dir: str, extra, previous=None) -> dict:
    """Runs (or resumes) the main job; returns its wall time, peak RSS and report.

    A run directory that already holds a report keeps the wall time and peak memory recorded when
    it was first run (`previous`, from quality.json): a later pass that only adds the Table 3
    ablations (`--train_flag=--ablations`) must not change what the main job costs.
    """
    report_path = os.path.join(run_dir, "report.json")
    command = [
        sys.executable,
        "-m",
        "flam_tf.train",
        f"--preset={preset}",
        f"--seed={seed}",
        f"--run_dir={run_dir}",
        *extra,
    ]
    if os.path.exists(report_path) and "--ablations" in extra:
        # Add the Table 3 variants to a finished run: only they are trained, then re-evaluated.
        command += ["--stages=manipulator,evaluate", "--force"]
    fresh = not os.path.exists(report_path)
    # Peak RSS of this child alone: run it under a tiny wrapper that reports its own children.
    wrapper = (
        "import resource, subprocess, sys; "
        "rc = subprocess.call(sys.argv[1:]); "
        "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "sys.exit(rc)"
    )
    print(f"== seed {seed}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", wrapper, *command], cwd=REPO, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"quality: the main job failed for seed {seed} (exit {proc.returncode})")
    peak_kb = [
        int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_KB")
    ]
    with open(report_path) as f:
        report = json.load(f)
    print(f"== seed {seed}: {seconds:.0f} s", flush=True)
    if not fresh and previous:
        return {**previous, "report": report}
    return {
        "seed": seed,
        "run_dir": os.path.relpath(run_dir, REPO),
        "wall_s": round(seconds, 1) if fresh else report["timings_s"]["total"],
        "peak_rss_gb": round(peak_kb[0] / 2**20, 2) if peak_kb and fresh else None,
        "report": report,
    }


def main_job(preset: str, seed: int, run_dir: str, comparison_report: dict, previous=None) -> dict:
    """Times the main job without the comparison rows (`python -m flam_tf.train --preset --seed`,
    a fresh run directory) and compares its figures with the comparison run's of the same seed.

    A main job recorded in quality.json (`previous`) whose run directory still holds its report
    is not run again: its timing is kept, its figures are compared again."""
    import shutil

    report_path = os.path.join(run_dir, "report.json")
    if previous and os.path.exists(report_path):
        with open(report_path) as f:
            run = {**previous, "report": json.load(f)}
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        run = run_seed(preset, seed, run_dir, [])
    own, full = figures_of(run["report"]), figures_of(comparison_report)
    differences = [
        f"{method} {name}: {value} vs {full.get(method, {}).get(name)}"
        for method, row in own.items()
        for name, value in row.items()
        if full.get(method, {}).get(name) != value
    ]
    return {
        "seed": seed,
        "run_dir": run["run_dir"],
        "wall_s": run["wall_s"],
        "peak_rss_gb": run["peak_rss_gb"],
        "timings_s": run["report"]["timings_s"],
        "methods": list(run["report"]["fam"]),
        "figures_compared": sum(len(row) for row in own.values()),
        "differences": differences,
    }


def figures_of(report: dict) -> dict:
    """{method: {figure name: value}} of one report."""
    out = {}
    accuracy = report["attribute_accuracy"]
    for method, fam in report["fam"].items():
        row = {
            "T@10": fam["all"]["T@10"],
            "T@50": fam["all"]["T@50"],
            **{f"{a} T@50": fam[a]["T@50"] for a in TYPES},
            "twin R@10": report["twin_recall"][method]["R@10"],
        }
        probe = accuracy["methods"].get(method)
        if probe:
            row.update({f"probe {a} edited": probe["edited"][a] for a in TYPES})
            row.update({f"probe {a} kept": probe["kept"][a] for a in TYPES})
        fir = report["fir"].get(method, {})
        for protocol, key in (("in-shop", "in-shop R@1"), ("consumer-to-shop", "c2s R@1")):
            if protocol in fir:
                row[key] = fir[protocol]["R@1"]
        out[method] = row
    out["original features"] = {f"probe {a} original": accuracy["original"][a] for a in TYPES}
    return out


def summarise(runs) -> dict:
    """{method: {figure: {"mean", "std", "values"}}} over the runs (std: sample, n-1)."""
    per_run = [figures_of(r["report"]) for r in runs]
    methods = list(per_run[0])
    out = {}
    for method in methods:
        out[method] = {}
        for name in per_run[0][method]:
            values = [f[method][name] for f in per_run if name in f.get(method, {})]
            out[method][name] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "values": values,
            }
    return out


def _ms(cell) -> str:
    return "-" if cell is None else f"{cell['mean']:.3f} ± {cell['std']:.3f}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def readme_table(quality: dict) -> str:
    """The README's table: mean ± std of the headline figures per method."""
    columns = ("T@10", "T@50", "twin R@10", "in-shop R@1", "c2s R@1")
    summary = quality["summary"]
    rows = [
        [method] + [_ms(summary[method].get(c)) for c in columns]
        for method in summary
        if method != "original features"
    ]
    return _table(
        [
            "method",
            "FAM T@10",
            "FAM T@50",
            "twin R@10",
            "FIR in-shop R@1",
            "FIR consumer-to-shop R@1",
        ],
        rows,
    )


def benchmarks_section(quality: dict) -> str:
    """BENCHMARKS.md's quality section (what goes between QUALITY_BEGIN and QUALITY_END)."""
    summary = quality["summary"]
    runs = quality["runs"]
    methods = [m for m in summary if m != "original features"]
    seeds = ", ".join(str(r["seed"]) for r in runs)
    lines = [
        "## Quality over seeds (`python benchmarks/quality.py`)",
        "",
        f"Preset `{quality['preset']}`, seeds {seeds}, {quality['date']}, "
        f"{quality['machine']}. Mean ± sample standard deviation over the seeds; every seed is a "
        "whole run of `python -m flam_tf.train` (new data, extractor, embedders, manipulators, "
        "baselines). Raw figures: `benchmarks/quality.json`.",
        "",
        "### FAM top-k accuracy, twin recall, FIR",
        "",
        readme_table(quality),
        "",
        "### FAM T@50 per attribute type",
        "",
        _table(
            ["method"] + [f"{a} T@50" for a in TYPES],
            [[m] + [_ms(summary[m].get(f"{a} T@50")) for a in TYPES] for m in methods],
        ),
        "",
        "### Independent linear probe (Table 5)",
        "",
        "A softmax regression per attribute type trained on labelled attribute_train features "
        "only. *edited*: accuracy against the requested class on the queries that edit that "
        "type; *kept*: accuracy against the query's own class on the queries that edit another "
        "type. *original*: on the query items' own features.",
        "",
        _table(
            ["features"] + list(TYPES),
            [
                ["original"]
                + [_ms(summary["original features"][f"probe {a} original"]) for a in TYPES]
            ]
            + [
                [f"{m}, {part}"] + [_ms(summary[m].get(f"probe {a} {part}")) for a in TYPES]
                for m in methods
                if "probe shape edited" in summary[m]
                for part in ("edited", "kept")
            ],
        ),
        "",
        *ablation_lines(summary),
        *main_job_lines(quality),
        f"### Comparison runs (`{' '.join(quality['train_flags'])}`): wall time and peak memory",
        "",
        _table(
            ["seed", "wall (s)", "peak RSS (GB)"],
            [
                [
                    str(r["seed"]),
                    f"{r['wall_s']:.0f}",
                    "-" if r["peak_rss_gb"] is None else f"{r['peak_rss_gb']:.2f}",
                ]
                for r in runs
            ],
        ),
        "",
        *([quality["note"], ""] if quality.get("note") else []),
    ]
    return "\n".join(lines)


def main_job_lines(quality: dict):
    """The main job as a user runs it (no comparison rows): time, memory, and whether its
    figures equal the comparison run's."""
    jobs = quality.get("main_job") or []
    if not jobs:
        return []
    stages = list(jobs[0]["timings_s"])
    return [
        f"### The main job (`python -m flam_tf.train --preset={quality['preset']} "
        f"--seed=S`): wall time, stage times and peak memory",
        "",
        _table(
            ["seed", "wall (s)", "peak RSS (GB)"]
            + [f"{s} (s)" for s in stages]
            + ["figures equal to the comparison run's"],
            [
                [
                    str(j["seed"]),
                    f"{j['wall_s']:.0f}",
                    "-" if j["peak_rss_gb"] is None else f"{j['peak_rss_gb']:.2f}",
                ]
                + [f"{j['timings_s'].get(s, 0):.0f}" for s in stages]
                + [f"{j['figures_compared'] - len(j['differences'])} of {j['figures_compared']}"]
                for j in jobs
            ],
        ),
        "",
        "Rows it reports: "
        + ", ".join(jobs[0]["methods"])
        + ". Timed on "
        + quality.get("main_job_date", quality["date"])
        + ".",
        "",
    ]


def main_job_text(quality: dict) -> str:
    """BUILD.md's main-job timing (what goes between MAIN_JOB_BEGIN and MAIN_JOB_END)."""
    return "\n".join(main_job_lines(quality)).rstrip("\n")


def ablation_lines(summary: dict):
    """The Table 3 ablations of FLAM (paper), when the runs hold them (`--ablations`)."""
    rows = [m for m in summary if m.startswith("FLAM (paper")]
    if len(rows) < 2:
        return []
    columns = ["T@10", "T@50"] + [f"{a} T@50" for a in TYPES] + ["twin R@10"]
    return [
        "### Table 3 ablations of FLAM (paper)",
        "",
        "The paper's G and losses with its switches: M/S = feature matching with/without "
        "the remaining attributes, OS = online sampling, Adv = adversarial loss.",
        "",
        _table(
            ["method"] + columns, [[m] + [_ms(summary[m].get(c)) for c in columns] for m in rows]
        ),
        "",
    ]


def write_quality(json_path: str, quality: dict) -> None:
    """Writes quality.json atomically (a temp file, then os.replace): a kill leaves the old one."""
    tmp = json_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(quality, f, indent=1)
    os.replace(tmp, json_path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--work",
        default=os.path.join(REPO, "benchmarks", ".work", "quality"),
        help="parent of the per-seed run directories",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="folder for quality.json (default: benchmarks/, and then README.md "
        "and BENCHMARKS.md are updated too)",
    )
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="rewrite the tables from the existing quality.json; run nothing",
    )
    parser.add_argument(
        "--train_flag",
        action="append",
        default=[],
        help="extra flag for python -m flam_tf.train (repeatable), e.g. --train_flag=--ablations",
    )
    parser.add_argument(
        "--main_job_seeds",
        type=int,
        nargs="*",
        default=[0],
        help="seeds whose main job (no comparison rows) is also timed and "
        "checked against the comparison run (none: skip)",
    )
    parser.add_argument(
        "--main_jobs_only",
        action="store_true",
        help="time the main jobs of --main_job_seeds again (fresh run directories) and compare "
        "their figures with the comparison reports kept in quality.json; no comparison run is "
        "run or re-evaluated, every other entry of quality.json is kept",
    )
    parser.add_argument(
        "--note",
        default=None,
        help="a remark printed under the wall-time table (kept in quality.json)",
    )
    args = parser.parse_args(argv)
    in_repo = args.output is None
    output = args.output or os.path.join(REPO, "benchmarks")
    os.makedirs(output, exist_ok=True)
    json_path = os.path.join(output, "quality.json")

    if args.report_only:
        with open(json_path) as f:
            quality = json.load(f)
    elif args.main_jobs_only:
        with open(json_path) as f:
            quality = json.load(f)
        timed = {}
        for seed in args.main_job_seeds:
            if str(seed) not in quality["reports"]:
                raise SystemExit(f"quality: {json_path} holds no comparison report of seed {seed}")
            main_dir = os.path.join(args.work, f"{args.preset}_main_seed{seed}")
            timed[seed] = main_job(args.preset, seed, main_dir, quality["reports"][str(seed)])
        kept = [j for j in quality.get("main_job", []) if j["seed"] not in timed]
        quality["main_job"] = sorted(kept + list(timed.values()), key=lambda j: j["seed"])
        quality["main_job_date"] = datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        )
        write_quality(json_path, quality)
        print(f"wrote {json_path}")
    else:
        previous, previous_main, note = {}, {}, None
        if os.path.exists(json_path):
            with open(json_path) as f:
                saved = json.load(f)
            previous = {r["seed"]: r for r in saved["runs"]}
            previous_main = {j["seed"]: j for j in saved.get("main_job", [])}
            note = saved.get("note")
        main_jobs, runs = [], []
        for seed in args.seeds:
            run_dir = os.path.join(args.work, f"{args.preset}_seed{seed}")
            recorded = previous.get(seed, {})
            same = recorded and os.path.abspath(
                os.path.join(REPO, recorded["run_dir"])
            ) == os.path.abspath(run_dir)
            runs.append(
                run_seed(
                    args.preset,
                    seed,
                    run_dir,
                    [COMPARE_FLAG, *args.train_flag],
                    {k: v for k, v in recorded.items() if k != "fresh"} if same else None,
                )
            )
            main_dir = os.path.join(args.work, f"{args.preset}_main_seed{seed}")
            if seed in args.main_job_seeds or seed in previous_main:
                main_jobs.append(
                    main_job(
                        args.preset, seed, main_dir, runs[-1]["report"], previous_main.get(seed)
                    )
                )
        import tensorflow as tf

        quality = {
            "preset": args.preset,
            "train_flags": [COMPARE_FLAG, *args.train_flag],
            "main_job": main_jobs,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}, "
            f"TensorFlow {tf.__version__}",
            "runs": [{k: v for k, v in r.items() if k != "report"} for r in runs],
            "summary": summarise(runs),
            "reports": {str(r["seed"]): r["report"] for r in runs},
            **({"note": note} if note else {}),
        }
        write_quality(json_path, quality)
        print(f"wrote {json_path}")
    if args.note is not None:
        quality["note"] = args.note
        write_quality(json_path, quality)
    section = benchmarks_section(quality)
    if in_repo:
        replace_between_markers(
            os.path.join(REPO, "BENCHMARKS.md"),
            QUALITY_BEGIN,
            QUALITY_END,
            section,
            append_after="",
        )
        replace_between_markers(
            os.path.join(REPO, "README.md"), README_BEGIN, README_END, readme_table(quality)
        )
        replace_between_markers(
            os.path.join(REPO, "BUILD.md"), MAIN_JOB_BEGIN, MAIN_JOB_END, main_job_text(quality)
        )
        print("updated BENCHMARKS.md, README.md and BUILD.md")
    else:
        with open(os.path.join(output, "quality.md"), "w") as f:
            f.write(marked(QUALITY_BEGIN, QUALITY_END, section) + "\n")
    print(readme_table(quality))


if __name__ == "__main__":
    main()
