"""How fast the extractor trains from its input pipeline, against the same step on batches in memory.

Three ways to feed the default preset's extractor train_step, side by side in interleaved rounds:

* `memory`: one fixed batch already in memory, repeated (the step alone: the ceiling);
* `files`: `pipeline.pk_dataset` reading and decoding the PNG files every step (the main job
  when the images do not fit `data.decode_cache_mb`);
* `cache`: `pipeline.pk_dataset(decoded=pipeline.decode_cache(...))`, pixels gathered from a uint8
  array decoded once (the main job, when the images fit `data.decode_cache_mb`).

Each round fits `--steps` steps of each; the figure is images/s, the fraction is the median of
the per-round ratios to `memory`. Also the manipulator's train_step in float32 and in
mixed_bfloat16 (`manipulator.precision`), on random unit features of the default widths.

    python benchmarks/input_pipeline.py [--rounds 5] [--steps 40] [--output benchmarks/input_pipeline.json]

It rewrites the table between the markers below in BUILD.md (`--report_only`: from the saved
file, measuring nothing).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from harness import replace_between_markers  # noqa: E402

from flam_tf import config as config_lib  # noqa: E402
from flam_tf.data import pipeline, synthetic  # noqa: E402
from flam_tf.models import AttributeEmbedder, FeatureExtractor, FeatureManipulator  # noqa: E402

TABLE_BEGIN = "<!-- input table: written by benchmarks/input_pipeline.py -->"
TABLE_END = "<!-- input table: end -->"
FEEDS = {
    "memory": "one batch in memory (the step alone)",
    "files": "`pk_dataset` decoding the PNG files",
    "cache": "`pk_dataset` from the decoded cache",
}


def table(result):
    """BUILD.md's table of `result` (the saved json)."""
    e, m = result["extractor"], result["manipulator"]
    lines = [
        "| extractor train_step fed from | images/s | fraction of the in-memory step |",
        "|---|---|---|",
    ]
    lines += [
        f"| {FEEDS[name]} | {row['images_per_s']:.0f} | {row['fraction_of_memory']:.2f} |"
        for name, row in e["feeds"].items()
    ]
    lines += ["", "| manipulator train_step | examples/s | ratio to float32 |", "|---|---|---|"]
    lines += [
        f"| {name} | {row['examples_per_s']:.0f} | x{row['ratio_to_float32']:.2f} |"
        for name, row in m.items()
    ]
    return "\n".join(lines)


def _extractor(c, num_ce_classes):
    model = FeatureExtractor(
        backbone=c.extractor.backbone,
        pooling=c.extractor.pooling,
        feature_dim=c.extractor.feature_dim,
        image_size=c.data.image_size,
        num_ce_classes=num_ce_classes,
        margin=c.extractor.margin,
    )
    model.compile(optimizer=keras.optimizers.Adam(c.extractor.learning_rate))
    return model


def _timed_fit(model, ds, steps):
    start = time.perf_counter()
    model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
    return time.perf_counter() - start


def bench_extractor(c, work, rounds, steps, num_instances):
    bench = synthetic.SyntheticConfig(
        num_instances=num_instances, seed=0, image_size=c.data.image_size
    )
    manifest = synthetic.write_benchmark(work, bench, progress=False)
    train = manifest.split("extractor_train")
    x = c.extractor
    batch = x.instances_per_batch * x.images_per_instance
    start = time.perf_counter()
    decoded = pipeline.decode_cache(train, c.data.image_size, budget_bytes=2**31)
    cache_s = time.perf_counter() - start
    files, info = pipeline.pk_dataset(
        train,
        c.data.image_size,
        x.instances_per_batch,
        x.images_per_instance,
        x.num_ce_classes,
        seed=0,
    )
    cached, _ = pipeline.pk_dataset(
        train,
        c.data.image_size,
        x.instances_per_batch,
        x.images_per_instance,
        x.num_ce_classes,
        seed=0,
        decoded=decoded,
    )
    memory = tf.data.Dataset.from_tensors(next(iter(cached))).repeat()
    feeds = {"memory": memory, "files": files, "cache": cached}
    models = {name: _extractor(c, info["num_ce_classes"]) for name in feeds}
    for name, model in models.items():  # trace and warm up outside the rounds
        _timed_fit(model, feeds[name], 3)
    seconds = {name: [] for name in feeds}
    for r in range(rounds):
        for name in feeds:
            seconds[name].append(_timed_fit(models[name], feeds[name], steps))
        print(
            f"  round {r + 1}/{rounds}: "
            + ", ".join(f"{n} {steps * batch / seconds[n][-1]:.0f} images/s" for n in feeds),
            flush=True,
        )
    rows = {}
    for name in feeds:
        rates = [steps * batch / s for s in seconds[name]]
        fractions = [seconds["memory"][i] / seconds[name][i] for i in range(rounds)]
        rows[name] = {
            "images_per_s": statistics.median(rates),
            "min": min(rates),
            "max": max(rates),
            "fraction_of_memory": statistics.median(fractions),
        }
    return {
        "images": len(train),
        "batch": batch,
        "image_size": c.data.image_size,
        "decode_cache_s": round(cache_s, 2),
        "cache_mib": round(decoded.nbytes / 2**20, 1),
        "feeds": rows,
    }


def bench_manipulator(c, rounds, steps):
    m, e = c.manipulator, c.embedder
    d = c.extractor.feature_dim
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8192, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    models = {}
    for precision in ("float32", "mixed_bfloat16"):
        keras.utils.set_random_seed(0)
        embedder = AttributeEmbedder(d, embedding_dim=e.embedding_dim, hidden_units=e.hidden_units)
        model = FeatureManipulator(
            embedder,
            d,
            embedding_dim=e.embedding_dim,
            g_hidden=(m.g_hidden,) * 2,
            d_hidden=(m.d_hidden,) * 2,
            retrieval_weight=m.retrieval_weight,
            precision=precision,
        )
        labels = model.pseudo_labels(x)
        model.initialize_memory(x, labels)
        model.set_retrieval_bank(x, labels)
        model.compile(
            g_optimizer=keras.optimizers.Adam(1e-3), d_optimizer=keras.optimizers.Adam(1e-3)
        )
        models[precision] = model
    ds = tf.data.Dataset.from_tensor_slices(x).repeat().batch(m.batch_size)
    for model in models.values():
        _timed_fit(model, ds, 3)
    seconds = {p: [] for p in models}
    for _ in range(rounds):
        for p, model in models.items():
            seconds[p].append(_timed_fit(model, ds, steps))
    return {
        p: {
            "examples_per_s": statistics.median([steps * m.batch_size / s for s in t]),
            "ratio_to_float32": statistics.median(
                [seconds["float32"][i] / t[i] for i in range(rounds)]
            ),
        }
        for p, t in seconds.items()
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument(
        "--num_instances",
        type=int,
        default=4000,
        help="synthetic garments rendered (extractor_train gets 32%%)",
    )
    parser.add_argument("--output", default=os.path.join(REPO, "benchmarks", "input_pipeline.json"))
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="rewrite BUILD.md's table from --output; measure nothing",
    )
    args = parser.parse_args(argv)
    if args.report_only:
        with open(args.output) as f:
            _write_table(json.load(f))
        return
    c = config_lib.get_preset("default")
    with tempfile.TemporaryDirectory(prefix="flam_input_") as work:
        print("[extractor input]", flush=True)
        extractor = bench_extractor(c, work, args.rounds, args.steps, args.num_instances)
    print("[manipulator precision]", flush=True)
    manipulator = bench_manipulator(c, args.rounds, max(10, args.steps // 2))
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": os.cpu_count(),
        "rounds": args.rounds,
        "steps": args.steps,
        "extractor": extractor,
        "manipulator": manipulator,
    }
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    print(table(result))
    print(f"wrote {args.output}")
    _write_table(result)


def _write_table(result):
    build_md = os.path.join(REPO, "BUILD.md")
    replace_between_markers(build_md, TABLE_BEGIN, TABLE_END, table(result))
    print(f"updated the input table in {build_md}")


if __name__ == "__main__":
    main()
