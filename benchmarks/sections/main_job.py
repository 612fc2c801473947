"""The main job end to end: `python -m flam_tf.train --preset=P` in a fresh run directory.

Per preset of p["main_job"]: wall time, peak RSS and each stage's seconds (stages.json) over a
number of runs. For the last preset, the extractor's input pipeline alone over the images that run
wrote (`bench_input_pipeline`); for the benchmarked preset, each training stage's examples/s
against the in-memory step the training sections measured (`_stage_throughput`).
"""

import json
import os
import shutil
import statistics
import subprocess
import sys

from harness import REPO, interleaved

from flam_tf import config as config_lib

# Runs a command and writes its exit code, wall time and peak RSS as JSON. The job is started from
# this small process, not from the benchmark process: Linux carries a process' RSS high-water mark
# across fork + exec, so a child forked from a benchmark holding a 1 GB gallery would report that.
_LAUNCHER = (
    "import json, resource, subprocess, sys, time\n"
    "start = time.perf_counter()\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "with open(sys.argv[1], 'w') as f:\n"
    "    json.dump({'code': code, 'seconds': time.perf_counter() - start,\n"
    "               'maxrss_kib': usage.ru_maxrss}, f)\n"
)


def _run_train(preset, run_dir, log_path):
    """Runs `python -m flam_tf.train` as a child; returns (seconds, peak RSS MiB, exit code)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = run_dir + ".rusage.json"
    with open(log_path, "w") as log:
        subprocess.run(
            [
                sys.executable,
                "-c",
                _LAUNCHER,
                result,
                sys.executable,
                "-m",
                "flam_tf.train",
                f"--preset={preset}",
                "--run_dir",
                run_dir,
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
        )
    with open(result) as f:
        r = json.load(f)
    return r["seconds"], r["maxrss_kib"] / 1024.0, r["code"]  # ru_maxrss is in KiB on Linux


def bench_main_job(res, p):
    """Wall time, peak RSS and stage seconds of the main job per preset of p["main_job"]."""
    print("[main_job]", flush=True)
    from flam_tf.run_directory import RunDirectory

    for preset, runs in p["main_job"]:
        walls, peaks, stage_times, codes = [], [], {}, []
        for i in range(runs):
            run_dir = os.path.join(p["work"], f"main_{preset}_{i}")
            shutil.rmtree(run_dir, ignore_errors=True)
            log = run_dir + ".log"
            wall, peak, code = _run_train(preset, run_dir, log)
            walls.append(wall)
            peaks.append(peak)
            codes.append(code)
            for stage, seconds in RunDirectory(run_dir).timings().items():
                stage_times.setdefault(stage, []).append(seconds)
            print(
                f"  {preset} run {i}: {wall:.1f} s, peak RSS {peak:.0f} MiB, exit {code}"
                + (f" (log {log})" if code else ""),
                flush=True,
            )
        failed = [s for s in config_lib.STAGES if s not in stage_times]
        status = (
            ""
            if not any(codes)
            else f"; exit code {codes[0]}: stages not finished: {', '.join(failed)}"
        )
        res.add(
            "main_job",
            f"main_{preset}_wall",
            "s",
            walls,
            note=f"`python -m flam_tf.train --preset={preset}` in a fresh run dir, including "
            f"interpreter start{status}",
            exit_codes=codes,
            failed_stages=failed,
        )
        res.add(
            "main_job",
            f"main_{preset}_peak_rss",
            "MiB",
            peaks,
            note="peak resident set size of the training process (getrusage of a launcher's "
            "only child)",
        )
        for stage in config_lib.STAGES:
            if stage in stage_times:
                res.add(
                    "main_job",
                    f"main_{preset}_stage_{stage}",
                    "s",
                    stage_times[stage],
                    note=f"stages.json seconds of stage `{stage}`",
                )
        if preset == p["main_job"][-1][0] and "extractor" in stage_times:
            bench_input_pipeline(res, p, run_dir, preset)
        if preset == p["config"].preset and stage_times:
            _stage_throughput(res, p, run_dir, preset, stage_times)


def _stage_throughput(res, p, run_dir, preset, stage_times):
    """Examples per second of each training stage in the main job, against the in-memory step
    of the same widths the training sections measured (ratio not paired: other rounds)."""
    with open(os.path.join(run_dir, "config.json")) as f:
        c = json.load(f)  # the run's own settings (the preset as resolved when it ran)
    from flam_tf.run_directory import RunDirectory

    counts = (RunDirectory(run_dir).stage_info("data") or {}).get("info", {})
    e, m, x = c["embedder"], c["manipulator"], c["extractor"]
    n_man = sum(counts.get(k, 0) for k in ("extractor_train", "attribute_train", "unlabelled"))
    n_emb = counts.get("attribute_train", 0)
    bs_man, bs_emb = min(m["batch_size"], n_man or 1), min(e["batch_size"], n_emb or 1)
    rows = {
        "extractor": (
            "images/s",
            x["epochs"]
            * x["steps_per_epoch"]
            * x["instances_per_batch"]
            * x["images_per_instance"],
            f"extractor_train_{c['data']['image_size']}px",
            "pk_dataset pipeline (PNG decode + augment on the same cores)",
        ),
        "manipulator": (
            "examples/s",
            m["epochs"] * (n_man // bs_man) * bs_man,
            "manipulator_train",
            "shuffled in-memory features",
        ),
        "embedders": (
            "examples/s",
            e["epochs"] * (n_emb // bs_emb) * bs_emb,
            "embedder_train",
            "shuffled in-memory features",
        ),
    }
    for stage, (unit, examples, reference, data) in rows.items():
        ref = res.get(reference)
        if stage not in stage_times or not examples or not ref:
            continue
        rates = [examples / t for t in stage_times[stage]]
        res.add(
            "main_job",
            f"main_{preset}_{stage}_{unit.split('/')[0]}_per_s",
            unit,
            rates,
            ratio=statistics.median(rates) / ref["median"],
            ratio_to=reference,
            note=f"{examples:,} training examples / `{stage}` stage seconds: {data}, "
            "tracing, per-epoch checkpoints and summaries and the model save included; "
            "ratio not paired (other rounds)",
        )


def bench_input_pipeline(res, p, run_dir, preset):
    """The extractor's input pipeline alone: `pk_dataset` (read + PNG decode + augment) over the
    images the main job wrote, without training; to compare with the training step's rate."""
    from flam_tf.data import manifest as manifest_lib
    from flam_tf.data import pipeline

    c = config_lib.get_preset(preset)
    s, pk = c.data.image_size, (c.extractor.instances_per_batch, c.extractor.images_per_instance)
    batch = pk[0] * pk[1]
    train = manifest_lib.read_manifest(os.path.join(run_dir, "data", "manifest.csv")).split(
        "extractor_train"
    )
    ds, _ = pipeline.pk_dataset(train, s, pk[0], pk[1], c.extractor.num_ce_classes, seed=0)
    it, n = iter(ds), p["pipeline_batches"]
    # Rounds of many batches, so the few batches prefetched between rounds hardly count.
    t = interleaved({"png": lambda: [next(it) for _ in range(n)]}, p["rounds"], warmup=1)
    train_rate = res.get(f"extractor_train_{s}px")
    rates = [n * batch / x for x in t["png"]]
    kw = {}
    if train_rate:
        kw = {
            "ratio": statistics.median(rates) / train_rate["median"],
            "ratio_to": train_rate["name"],
        }
    res.add(
        "main_job",
        f"pipeline_pk_dataset_{s}px",
        "images/s",
        rates,
        **kw,
        note=f"`pk_dataset` alone (read + PNG decode + augment, batches of {batch}, tf.data "
        f"AUTOTUNE) over the {preset} run's extractor_train images, no training; ratio "
        "not paired (other rounds)",
    )
