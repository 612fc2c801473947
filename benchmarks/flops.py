"""Training FLOPs of every stage of the `paper` preset (and of `default`), and the time each stage
should take on 1 and on 8 NVIDIA A100 / H100 class GPUs: "GPU on paper".

    python benchmarks/flops.py                 # count, measure this host, predict; writes flops.json
    python benchmarks/flops.py --print         # the tables of the saved benchmarks/flops.json
    python benchmarks/flops.py --markdown      # the BUILD.md table (between TABLE_BEGIN/TABLE_END)
    python benchmarks/flops.py --predict --gpu=H100 --gpus=2 --vcpus=32 [--strategy=mirrored]
                                               # one JSON line: the extractor's expected images/s
                                               # (what benchmarks/gpu_check.sh compares against)

How FLOPs are counted (nothing here is trained; no GPU is needed):

* Every model is built from flam_tf.models with the preset's settings (random weights: FLOPs do
  not depend on them) and traced with `tf.function(...).get_concrete_function(spec)` at the
  stage's batch size; TensorFlow's graph profiler (`tf.compat.v1.profiler.profile(graph,
  options=ProfileOptionBuilder.float_operation())`) counts the FLOPs of the traced graph
  (a multiply-add is 2 FLOPs; ops without a registered FLOP count, e.g. gathers and sorts, add 0).
* "forward" of a trained model is its `test_step` graph: the loss computation its `train_step`
  differentiates (for the extractor: backbone + heads + CE + triplet + attribute term; for the
  GAN: G, D, the frozen embedder and the retrieval bank), per example.
* Training FLOPs (the headline) use the rule train = 3 x forward (backward ~ 2 x forward: one
  product for the input gradient, one for the weight gradient) x the examples the stage
  processes. The `train_step` graph itself (gradients and the Adam update included) is profiled
  too and shown beside it ("profiled"): 3.0x forward for ResNet50, less for the GAN, whose
  retrieval bank and frozen embedder get no weight gradient. Time predictions use the profiled
  train step.
* Example counts come from the stage code (flam_tf.stages) and the synthetic benchmark's
  split sizes (flam_tf.data.synthetic.image_specs of the preset's num_instances).
* evaluate's ranking (numpy on the CPU) and the data stage's rendering are counted/measured
  analytically (2*Q*G*D per cosine ranking), not with the profiler.

The GPU time model (gpu_estimate/model.py), its constants and where each comes from
(gpu_estimate/constants.py: GPU_SPECS, CALIBRATION, ASSUMPTIONS) are written into flops.json.
It is checked on this machine by predicting the default preset's CPU step and stage times from
the same FLOP counts, this machine's matmul ceiling (--reference_matmul_gflops) and its measured
per-core decode rates, against measured runs (benchmarks/.work/quality/default_seed*, written by
benchmarks/quality.py); see gpu_estimate/cpu_check.py.

The library is benchmarks/gpu_estimate/ (counting, work, host, model, cpu_check, tables); this
file is its command line.
"""

import argparse
import glob
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCHMARKS)
for _path in (REPO, BENCHMARKS):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from gpu_estimate.constants import ASSUMPTIONS, CALIBRATION, GPU_SPECS, NOTES  # noqa: E402
from gpu_estimate.model import conv_fraction, predict, predict_extractor_rate  # noqa: E402
from gpu_estimate.tables import TABLE_BEGIN, TABLE_END, print_all, table  # noqa: E402

OUTPUT = os.path.join(REPO, "benchmarks", "flops.json")
CHECK_RUNS = os.path.join(REPO, "benchmarks", ".work", "quality", "default_seed*")


def _summary(config, counts):
    e = config.extractor
    return (
        f"{e.backbone}-{e.pooling} {config.data.image_size}px, {e.feature_dim}-d, "
        f"{counts['images_all']:,} images, extractor {e.epochs}x{e.steps_per_epoch} steps of "
        f"{e.instances_per_batch}x{e.images_per_instance}"
    )


def count_preset(config):
    """flops.json's record of one preset: its counts, profiled models and per-stage work."""
    from gpu_estimate.counting import dataset_counts, profile_models
    from gpu_estimate.work import stage_work

    counts = dataset_counts(config)
    models = profile_models(config, counts)
    work = stage_work(config, counts, models)
    return {
        "config": config.to_dict(),
        "counts": counts,
        "models": models,
        "work": work,
        "summary": _summary(config, counts),
        "total_flops_3x": sum(c["flops_3x"] for cs in work.values() for c in cs),
        "total_flops_profiled": sum(c["flops_profiled"] for cs in work.values() for c in cs),
    }


def gpu_prediction(saved, config, host, default_eval):
    """flops.json's `gpu_prediction`: the paper preset's stage times, the achieved conv fractions
    and the extractor's expected images/s per GPU class, count and precision."""
    paper = saved["presets"]["paper"]
    stages_pred, totals = predict(paper["work"], paper["models"], host, config, default_eval)
    rn50 = paper["models"]["extractor"]
    fractions = {
        f"{gpu} {precision} {'xla' if xla else 'no_xla'}": round(
            conv_fraction(gpu, precision, xla, rn50["train_step_flops"] / rn50["batch"]), 4
        )
        for gpu in GPU_SPECS
        for precision in ("tf32", "bf16")
        for xla in (True, False)
    }
    rates = {
        f"{gpu} x{n} {precision}": predict_extractor_rate(
            saved,
            gpu,
            n,
            ASSUMPTIONS["host_vcpus"][gpu][str(n)],
            "default" if n == 1 else "mirrored",
            precision,
            cached=None,
        )
        for gpu in GPU_SPECS
        for n in (1, 8)
        for precision in ("tf32", "bf16")
    }
    return {
        "stages": stages_pred,
        "totals": totals,
        "conv_train_fraction_of_peak": fractions,
        "extractor_img_s": rates,
    }


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=OUTPUT)
    parser.add_argument("--presets", default="paper,default")
    parser.add_argument(
        "--check_run_dirs",
        default=CHECK_RUNS,
        help="measured default-preset run directories for the CPU check (a glob "
        "or comma-separated list; '' skips the check)",
    )
    parser.add_argument("--print", action="store_true", help="print the saved file's tables")
    parser.add_argument("--markdown", action="store_true", help="print the BUILD.md table")
    parser.add_argument(
        "--recheck",
        action="store_true",
        help="reuse the saved file's host measurements and FLOP counts; redo the "
        "CPU check and the predictions",
    )
    parser.add_argument(
        "--predict",
        action="store_true",
        help="print the extractor's expected images/s as one JSON line",
    )
    parser.add_argument("--gpu", default="A100", choices=sorted(GPU_SPECS))
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--vcpus", type=int, default=os.cpu_count())
    parser.add_argument("--strategy", default="mirrored", choices=["default", "mirrored"])
    parser.add_argument("--precision", default="tf32", choices=["tf32", "bf16"])
    parser.add_argument(
        "--from_files",
        action="store_true",
        help="--predict: the extractor's images decoded from the files",
    )
    parser.add_argument(
        "--reference_matmul_gflops",
        type=float,
        default=280.0,
        help="this machine's unloaded 4096^2 float32 matmul ceiling for the CPU "
        "check (measured at 270-290 GFLOP/s when the 2 cores were free; the "
        "value measured now is recorded beside it)",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.print or args.markdown or args.predict:
        with open(args.output) as f:
            saved = json.load(f)
        if args.predict:
            print(
                json.dumps(
                    predict_extractor_rate(
                        saved,
                        args.gpu,
                        args.gpus,
                        args.vcpus,
                        args.strategy,
                        args.precision,
                        cached=not args.from_files,
                    )
                )
            )
        elif args.markdown:
            print(TABLE_BEGIN)
            print(table(saved))
            print(TABLE_END)
        else:
            print_all(saved)
        return

    import tensorflow as tf
    from gpu_estimate.cpu_check import cpu_check
    from gpu_estimate.host import measure_host

    from flam_tf import config as config_lib

    start = time.time()
    if args.recheck:
        with open(args.output) as f:
            saved = json.load(f)
        host = saved["host"]
        configs = {
            name: config_lib.ExperimentConfig.from_dict(p["config"])
            for name, p in saved["presets"].items()
        }
    else:
        configs = {p: config_lib.get_preset(p) for p in args.presets.split(",") if p}
        print("host: measuring the matmul ceiling and per-core decode rates")
        host = measure_host([c.data.image_size for c in configs.values()] + [64])
        saved = {
            "generated_by": "benchmarks/flops.py",
            "tensorflow": tf.__version__,
            "date": time.strftime("%Y-%m-%d"),
            "host": host,
            "method": __doc__.split("How FLOPs are counted")[1]
            .split("The GPU time model")[0]
            .strip(),
            "gpu_specs": GPU_SPECS,
            "calibration": CALIBRATION,
            "assumptions": ASSUMPTIONS,
            "notes": NOTES,
            "presets": {},
        }
        for name, config in configs.items():
            print(f"{name}: counting")
            saved["presets"][name] = count_preset(config)
    saved.update(gpu_specs=GPU_SPECS, calibration=CALIBRATION, assumptions=ASSUMPTIONS, notes=NOTES)
    run_dirs = sorted(
        d
        for pattern in args.check_run_dirs.split(",")
        if pattern
        for d in glob.glob(pattern)
        if os.path.exists(os.path.join(d, "stages.json"))
    )
    if run_dirs:
        saved["cpu_check"] = cpu_check(run_dirs, host, args.reference_matmul_gflops * 1e9)
        default_eval = saved["cpu_check"]["default_eval"]
    else:
        print("no measured run for the CPU check; evaluate is predicted from FLOPs alone")
        default_eval = {
            "rest_s_per_pair": 0.0,
            "cpu_fraction": 0.35,
            "reference_flop_s": args.reference_matmul_gflops * 1e9,
        }
    if "paper" in configs:
        saved["gpu_prediction"] = gpu_prediction(saved, configs["paper"], host, default_eval)
    saved["seconds"] = round(time.time() - start, 1)
    with open(args.output, "w") as f:
        json.dump(saved, f, indent=1, sort_keys=False)
        f.write("\n")
    print_all(saved)
    print(f"\nwrote {os.path.relpath(args.output, REPO)} in {saved['seconds']:.0f} s")


if __name__ == "__main__":
    main()
