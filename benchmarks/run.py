#!/usr/bin/env python
"""Benchmarks of flam_tf: data generation, training, extraction, manipulation, search, main job.

    python benchmarks/run.py                # full run (about 15 min on 2 cores): committed figures
    python benchmarks/run.py --quick        # under 3 min, smoke sizes (tests/test_benchmarks.py)
    python benchmarks/run.py --quick --output /tmp/b --only search,ceiling
    python benchmarks/run.py --report_only  # re-render BENCHMARKS.md from results.json only

Writes `<output>/results.json` (one object per measurement: name, unit, median, min, max, runs,
and `ratio`/`ratio_to` where there is a comparison) and the generated parts of
`<output>/BENCHMARKS.md` (report.py: between their markers, the rest of the file untouched);
`--output` defaults to the repository root for BENCHMARKS.md and `benchmarks/` for results.json.

The harness (timing in interleaved rounds, paired ratios, machine info) is harness.py; the
sections are the modules of sections/. Training throughput is compared with a 4096x4096 float32
matmul run in the same rounds (the machine's compute ceiling), and search latency with the time to
stream the gallery once at the measured copy bandwidth (the memory floor).
"""

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCHMARKS)
for _path in (REPO, BENCHMARKS):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import report  # noqa: E402
from harness import Results  # noqa: E402
from sections import SECTIONS  # noqa: E402


def parameters(quick, work):
    """Sizes of every section: smoke sizes for --quick, the committed figures' otherwise."""
    from flam_tf import config as config_lib

    if quick:
        return {
            "config": config_lib.get_preset("smoke"),
            "work": work,
            "rounds": 3,
            "copy_bytes": 64 * 2**20,
            "synthetic_images": {64: 32, 224: 4},
            "train_steps": 2,
            "feature_steps": 3,
            "extract_batch": 64,
            "latency_iters": 20,
            "gallery_sizes": (10_000,),
            "search_rounds": 3,
            "search_inner_elements": 2e6,
            "main_job": (("smoke", 1),),
            "pipeline_batches": 50,
        }
    return {
        "config": config_lib.get_preset("default"),
        "work": work,
        "rounds": 7,
        "copy_bytes": 512 * 2**20,
        "synthetic_images": {64: 256, 224: 32},
        "train_steps": 10,
        "feature_steps": 10,
        "extract_batch": 256,
        "latency_iters": 200,
        "gallery_sizes": (10_000, 100_000, 1_000_000),
        "search_rounds": 7,
        "search_inner_elements": 2e7,
        "main_job": (("smoke", 3), ("default", 1)),
        "pipeline_batches": 100,
    }


def benches():
    """Section name -> its function (imports TensorFlow)."""
    from sections import compute, main_job, serving, training

    return {
        "ceiling": compute.bench_ceiling,
        "synthetic": compute.bench_synthetic,
        "extractor_training": training.bench_extractor_training,
        "extraction": serving.bench_extraction,
        "feature_training": training.bench_feature_training,
        "manipulation": serving.bench_manipulation,
        "search": serving.bench_search,
        "main_job": main_job.bench_main_job,
    }


def measure(only, quick, work):
    """Runs the sections of `only` (in SECTIONS order); returns the results.json object. The
    search section's memory floor needs the ceiling section, which runs with it."""
    from harness import machine_info

    mode = "quick" if quick else "full"
    p = parameters(quick, work)
    machine = machine_info()
    machine["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"flam_tf benchmarks ({mode}): {machine['cores']} cores, {machine['cpu_model']}, "
        f"TF {machine['tensorflow']}; work dir {work}",
        flush=True,
    )
    res, functions = Results(), benches()
    start = time.perf_counter()
    for section in SECTIONS:
        if section in only or (section == "ceiling" and "search" in only):
            functions[section](res, p)
    elapsed = time.perf_counter() - start
    machine["load_average_end"] = list(os.getloadavg())
    return {
        "mode": mode,
        "seconds": round(elapsed, 1),
        "machine": machine,
        "measurements": res.items,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke sizes, under 3 minutes")
    parser.add_argument(
        "--output",
        default=None,
        help="folder for results.json and BENCHMARKS.md (default: the repository)",
    )
    parser.add_argument("--only", default="", help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="re-render BENCHMARKS.md's generated parts from the output's "
        "results.json; measure nothing",
    )
    args = parser.parse_args(argv)
    only = [s for s in args.only.split(",") if s] or list(SECTIONS)
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"Unknown sections {sorted(unknown)}; expected a subset of {SECTIONS}")
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        json_path = os.path.join(args.output, "results.json")
        md_path = os.path.join(args.output, "BENCHMARKS.md")
    else:
        json_path = os.path.join(REPO, "benchmarks", "results.json")
        md_path = os.path.join(REPO, "BENCHMARKS.md")

    if args.report_only:
        with open(json_path) as f:
            report.write(md_path, json.load(f))
        print(f"rewrote the generated parts of {md_path} from {json_path}")
        return

    work = args.work or tempfile.mkdtemp(prefix="flam_bench_")
    os.makedirs(work, exist_ok=True)
    try:
        saved = measure(only, args.quick, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    with open(json_path, "w") as f:
        json.dump(saved, f, indent=1)
    report.write(md_path, saved)
    print(f"wrote {json_path} and {md_path} in {saved['seconds']:.0f} s")


if __name__ == "__main__":
    main()
