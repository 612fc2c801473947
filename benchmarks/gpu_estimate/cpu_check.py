"""The check of the time model on this machine: the default preset's CPU step and stage times
predicted from the same FLOP counts, this machine's matmul ceiling and per-core decode rates,
against measured runs (their stages.json and TensorBoard logs)."""

import glob
import json
import os
import statistics
import time

from harness import REPO

from gpu_estimate.counting import dataset_counts, profile_models
from gpu_estimate.model import input_rate
from gpu_estimate.work import stage_work


def _fit_times(log_dir):
    """{model: (epochs, median steady epoch seconds, fit seconds, fit start, first epoch's extra
    seconds)} from a run's TensorBoard logs
    (the epoch summaries' wall times; the first epoch, which traces, is left out)."""
    import tensorflow as tf

    out = {}
    for folder in sorted(glob.glob(os.path.join(log_dir, "*", "train"))):
        files = sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*")))
        if not files:
            continue
        first, ends = None, {}
        created = float(os.path.basename(files[-1]).split(".")[3])
        for event in tf.compat.v1.train.summary_iterator(files[-1]):
            if first is None:
                first = event.wall_time
            for value in event.summary.value:
                if value.tag.startswith("epoch_"):
                    ends.setdefault(event.step, event.wall_time)
        times = [first] + [ends[s] for s in sorted(ends)]
        epochs = [b - a for a, b in zip(times, times[1:])]
        if len(epochs) < 2:
            continue
        steady = statistics.median(epochs[1:])
        out[os.path.basename(os.path.dirname(folder))] = (
            len(epochs),
            steady,
            times[-1] - times[0],
            created,
            max(epochs[0] - steady, 0.0),
        )
    return out


def _measured_run(run_dir):
    """(config, stages.json, fit times, whether it had the decode cache) of a measured run."""
    from flam_tf import config as config_lib

    with open(os.path.join(run_dir, "config.json")) as f:
        raw = json.load(f)
    had_cache = "decode_cache_mb" in raw.get("data", {})
    config = config_lib.ExperimentConfig.from_dict(raw)
    if not had_cache and hasattr(config.data, "decode_cache_mb"):
        config.data.decode_cache_mb = 0  # no decode cache in the run's config: files every step
    with open(os.path.join(run_dir, "stages.json")) as f:
        stages_measured = json.load(f)
    return config, stages_measured, _fit_times(os.path.join(run_dir, "logs")), had_cache


def cpu_check(run_dirs, host, reference_flop_s, log=print):
    """Predicts measured default-preset runs' per-step and per-stage CPU times from their FLOP
    counts, this machine's matmul ceiling and per-core decode rates.

    Like the GPU model (peak x achieved fraction), a step takes FLOPs / (ceiling x fraction) plus
    its images' decoding (per-core rate, on the same 2 cores). The fraction is the median of what
    the FLOP-heavy fits (>= 1 GFLOP per step: the extractor, the GANs, the pixel baselines)
    achieved over all the runs; the check is how well that one number predicts every fit and
    stage of every run, and how far off FLOPs at the bare ceiling are. Models are profiled once
    per configuration (the seed changes the GAN's retrieval bank by < 1% of its rows)."""
    rate, cores = reference_flop_s, host["cpus"]
    runs, profiled = [], {}
    for run_dir in run_dirs:
        config, stages_measured, fits, had_cache = _measured_run(run_dir)
        key = json.dumps(
            {k: v for k, v in config.to_dict().items() if k != "runtime"}, sort_keys=True
        )
        counts = dataset_counts(config)
        if key not in profiled:
            log(
                f"CPU check: profiling the models of {os.path.relpath(run_dir, REPO)} "
                f"({config.preset}, seed {config.runtime.seed})"
            )
            profiled[key] = profile_models(config, counts, log=log)
        models = profiled[key]
        runs.append(
            {
                "run_dir": run_dir,
                "config": config,
                "stages": stages_measured,
                "fits": fits,
                "decode_cache": had_cache,
                "counts": counts,
                "models": models,
                "work": stage_work(config, counts, models),
            }
        )
    size = runs[0]["config"].data.image_size
    per_core = host["per_core"][str(size)]
    # per fit: FLOP time at the ceiling, decode time, measured steady step time, per run
    fit_rows = {}
    for run in runs:
        models = run["models"]
        for comps in run["work"].values():
            for comp in comps:
                key = comp.get("model")
                if comp["kind"] not in ("conv_train", "mlp_train") or key not in run["fits"]:
                    continue
                epochs, epoch_s, fit_s, started, first_extra = run["fits"][key]
                measured = epoch_s / (comp["steps"] // comp["epochs"])
                flop_s = models[key]["train_step_flops"] / rate
                decode_s = (
                    sum(
                        s["images_per_step"] / input_rate(host, size, s)
                        for s in comp.get("streams", [])
                    )
                    / cores
                )
                row = fit_rows.setdefault(
                    key,
                    {
                        "model": key,
                        "train_step_gflop": models[key]["train_step_flops"] / 1e9,
                        "flop_s_at_ceiling": flop_s,
                        "decode_s": decode_s,
                        "measured": [],
                    },
                )
                row["measured"].append(
                    {
                        "seed": run["config"].runtime.seed,
                        "step_s": measured,
                        "first_epoch_extra_s": first_extra,
                        "started": time.strftime("%H:%M", time.localtime(started)),
                        "implied_fraction": flop_s / max(measured - decode_s, 1e-9),
                    }
                )
    heavy = [
        m["implied_fraction"]
        for r in fit_rows.values()
        if r["train_step_gflop"] >= 1.0
        for m in r["measured"]
    ]
    fraction = statistics.median(heavy) if heavy else 1.0
    for r in fit_rows.values():
        r["predicted_step_s"] = r["flop_s_at_ceiling"] / fraction + r["decode_s"]
        ratios = [m["step_s"] / r["predicted_step_s"] for m in r["measured"]]
        ceil = [m["step_s"] / (r["flop_s_at_ceiling"] + r["decode_s"]) for m in r["measured"]]
        r["measured_over_predicted"] = [min(ratios), max(ratios)]
        r["measured_over_ceiling"] = [min(ceil), max(ceil)]
    # per stage: the fits at their steady step time (the first epoch's tracing is not modelled)
    # + forward passes + decoding + rendering, against stages.json. A stage rerun in part (the
    # ablations were added to these runs later) is compared on the fits of that rerun only.
    stage_rows = {}
    for run in runs:
        for stage, comps in run["work"].items():
            if stage not in run["stages"] or stage == "export":
                continue
            measured = run["stages"][stage]["seconds"]
            begun = (
                time.mktime(time.strptime(run["stages"][stage]["finished"], "%Y-%m-%dT%H:%M:%S"))
                - measured
                - 5
            )
            predicted, at_ceiling, left_out = 0.0, 0.0, []
            for comp in comps:
                key = comp.get("model")
                if (
                    comp["kind"] in ("conv_train", "mlp_train")
                    and key in run["fits"]
                    and run["fits"][key][3] < begun
                ):
                    left_out.append(key)  # trained before this (partial) rerun
                    continue
                if comp["kind"] == "mlp_infer" and stage == "manipulator" and left_out:
                    continue
                decode, flops = 0.0, comp["flops_profiled"]
                if comp["kind"] in ("conv_train", "mlp_train"):
                    row = fit_rows.get(key)
                    if row:
                        decode = row["decode_s"] * comp["steps"]
                    decode += sum(  # the decode cache's one pass
                        s["cache_images"] / (cores * per_core["png_decode_img_s"])
                        for s in comp.get("streams", [])
                        if s["cached"]
                    )
                elif comp["kind"] == "cpu_data":
                    decode = comp["examples"] * (
                        per_core["render_s"] + per_core["png_write_s"]
                    ) + comp["examples"] / (cores * per_core["png_decode_img_s"])
                elif comp["kind"] == "conv_infer":
                    decode = comp["examples"] / (cores * per_core["png_decode_img_s"])
                predicted += flops / (rate * fraction) + decode
                at_ceiling += flops / rate + decode
            row = stage_rows.setdefault(stage, {"runs": []})
            row["runs"].append(
                {
                    "seed": run["config"].runtime.seed,
                    "predicted_s": predicted,
                    "predicted_at_ceiling_s": at_ceiling,
                    "measured_s": measured,
                    "measured_over_predicted": measured / max(predicted, 1e-9),
                    "not_in_this_measurement": left_out,
                }
            )
    for row in stage_rows.values():
        ratios = [r["measured_over_predicted"] for r in row["runs"]]
        row["measured_over_predicted"] = [min(ratios), max(ratios)]
        ratios = [r["measured_s"] / max(r["predicted_at_ceiling_s"], 1e-9) for r in row["runs"]]
        row["measured_over_ceiling"] = [min(ratios), max(ratios)]
    # evaluate on a GPU host: the BLAS part of the measured evaluate times (at the ceiling x
    # fraction) and the rest per ranked (query, gallery) pair (argpartition, sorting)
    rests = []
    for run in runs:
        rank = next(c for c in run["work"]["evaluate"] if c["kind"] == "cpu_rank")
        blas = rank["flops_profiled"] / (rate * fraction)
        measured_eval = run["stages"].get("evaluate", {}).get("seconds", blas)
        rests.append(max(measured_eval - blas, 0.0) / rank["rank_pairs"])
    default_eval = {
        "cpu_fraction": fraction,
        "reference_flop_s": rate,
        "rest_s_per_pair": statistics.median(rests),
    }
    return {
        "run_dirs": [os.path.relpath(r["run_dir"], REPO) for r in runs],
        "preset": runs[0]["config"].preset,
        "seeds": [r["config"].runtime.seed for r in runs],
        "decode_cache": [r["decode_cache"] for r in runs],
        "reference_matmul_flop_s": reference_flop_s,
        "matmul_flop_s_measured_now": host.get("matmul_flop_s_measured", host["matmul_flop_s"]),
        "cpu_fraction_of_ceiling": fraction,
        "fits": list(fit_rows.values()),
        "stages": stage_rows,
        "default_eval": default_eval,
    }
