#!/usr/bin/env python
"""Manipulator settings compared on one finished run's feature store (BUILD.md section 8).

    python benchmarks/manipulator_sweep.py --run_dir benchmarks/.work/quality/default_seed0
    python benchmarks/manipulator_sweep.py --run_dir R --only default,adv_on

For each named setting it trains the default FLAM manipulator with that setting changed (on the
run's own features and embedders, in a scratch copy of the run directory; the run itself is not
touched) and measures all-T@10 / T@50, per-type T@50, twin R@10 and the independent probe's
accuracy (edited / kept types), as the evaluate stage does. Writes
`benchmarks/manipulator_sweep.json` (or `--output`) and BUILD.md's sweep table (between its
markers; tests/test_docs.py checks that it equals the file).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from harness import replace_between_markers  # noqa: E402

from flam_tf import config as config_lib  # noqa: E402
from flam_tf import feature_store, methods, stages, vocabulary  # noqa: E402
from flam_tf.evaluation import evaluate, metrics  # noqa: E402
from flam_tf.models.searcher import cosine_top_k  # noqa: E402
from flam_tf.run_directory import RunDirectory  # noqa: E402
from flam_tf.stages.manipulator import _train_manipulator  # noqa: E402

# name -> manipulator settings changed from the default (flam_tf/config.py).
SETTINGS = {
    "default": {},
    "adv_on": {"adversarial": True},
    "adv_on_retrieval_1": {"adversarial": True, "retrieval_weight": 1.0},
    "retrieval_0": {"retrieval_weight": 0.0},
    "teacher_5": {"teacher_weight": 5.0},
    "tau_0.05": {"retrieval_temperature": 0.05},
    "tau_0.1": {"retrieval_temperature": 0.1},
    "tau_0.15": {"retrieval_temperature": 0.15},
    "distance_2": {"distance_weight": 2.0},
    "cycle_5": {"cycle_weight": 5.0},
    "epochs_20": {"epochs": 20},
    "mlp_generator": {"generator": "mlp"},
    "partner_sampling": {"target_sampling": "partner"},
}


TABLE_BEGIN = "<!-- sweep table: written by benchmarks/manipulator_sweep.py -->"
TABLE_END = "<!-- sweep table: end -->"


def sweep_table(sweep: dict) -> str:
    """BUILD.md's table of a sweep file's results."""
    types = vocabulary.ATTRIBUTE_TYPES
    lines = [
        "| setting (changed from the default) | T@10 | T@50 | twin R@10 | probe edited s / c / p "
        "| probe kept s / c / p | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in sweep["results"].items():
        changed = ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "(default)"
        lines.append(
            f"| {name}: {changed} | {r['T@10']:.3f} | {r['T@50']:.3f} | {r['twin R@10']:.3f} | "
            + " / ".join(f"{r['probe']['edited'][a]:.2f}" for a in types)
            + " | "
            + " / ".join(f"{r['probe']['kept'][a]:.2f}" for a in types)
            + f" | {r['train_s']:.0f} |"
        )
    original = next(iter(sweep["results"].values()))["probe original"]
    lines.append("")
    lines.append(
        "Probe accuracy on the query items' own features (before any edit): "
        + " / ".join(f"{original[a]:.2f}" for a in types)
        + "."
    )
    return "\n".join(lines)


def scratch_copy(run_dir: str, root: str) -> RunDirectory:
    os.makedirs(os.path.join(root, "models"))
    os.makedirs(os.path.join(root, "data"))
    shutil.copy(os.path.join(run_dir, "data", "manifest.csv"), os.path.join(root, "data"))
    shutil.copytree(os.path.join(run_dir, "features"), os.path.join(root, "features"))
    shutil.copy(os.path.join(run_dir, "models", "embedder.keras"), os.path.join(root, "models"))
    return RunDirectory(root)


def measure(ctx, model) -> dict:
    features, m = feature_store.load_features(ctx.run), ctx.manifest
    labels = m.label_matrix()
    fam = np.nonzero(m["split"] == "fam_eval")[0]
    gallery, gallery_labels = features[fam], labels[fam]
    is_query = m.has_role("fam_query")[fam]
    queries = metrics.fam_queries(gallery_labels, is_query)
    twin = metrics.twin_indices(
        queries, gallery_labels, m["instance_id"][fam], m.get("twin_of")[fam]
    )
    edited = evaluate._batched(
        model.manipulate_indices,
        gallery[queries.query_index],
        queries.attribute_index.astype(np.int32),
        queries.target_value.astype(np.int32),
    )
    ranked, _ = cosine_top_k(edited, gallery, 100, exclude=queries.query_index)
    fam_acc = metrics.fam_top_k_accuracy(
        ranked, gallery_labels, queries.target_labels, queries.attribute_index
    )
    train = m["split"] == "attribute_train"
    probe = evaluate.attribute_accuracy(
        features[train],
        labels[train],
        gallery[is_query],
        gallery_labels[is_query],
        queries,
        {"FLAM": edited},
        ctx.config.runtime.seed,
    )
    return {
        "T@10": fam_acc["all"]["T@10"],
        "T@50": fam_acc["all"]["T@50"],
        **{f"{a} T@50": fam_acc[a]["T@50"] for a in vocabulary.ATTRIBUTE_TYPES},
        "twin R@10": metrics.twin_recall(ranked, twin, (10,))["R@10"],
        "probe original": probe["original"],
        "probe": probe["methods"]["FLAM"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run_dir", required=True, help="a finished run (features, embedder)")
    parser.add_argument("--only", default="", help=f"comma list of {list(SETTINGS)}")
    parser.add_argument(
        "--output", default=os.path.join(REPO, "benchmarks", "manipulator_sweep.json")
    )
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(SETTINGS)
    unknown = set(names) - set(SETTINGS)
    if unknown:
        parser.error(f"unknown settings {sorted(unknown)}; expected some of {list(SETTINGS)}")
    with open(os.path.join(args.run_dir, "config.json")) as f:
        base = config_lib.ExperimentConfig.from_dict(json.load(f))
    results = {}
    for name in names:
        config = config_lib.ExperimentConfig.from_dict(base.to_dict())
        for field, value in SETTINGS[name].items():
            config_lib.apply_override(config, "manipulator", field, value)
        keras.utils.set_random_seed(config.runtime.seed)
        with tempfile.TemporaryDirectory(prefix="flam_sweep_") as scratch:
            ctx = stages.Context(
                config,
                scratch_copy(args.run_dir, os.path.join(scratch, "r")),
                tf.distribute.get_strategy(),
            )
            start = time.perf_counter()
            _train_manipulator(ctx, methods.FLAM)
            seconds = time.perf_counter() - start
            model = keras.saving.load_model(ctx.run.model_path("manipulator"))
            results[name] = {
                "settings": SETTINGS[name],
                "train_s": round(seconds, 1),
                **measure(ctx, model),
            }
        r = results[name]
        print(
            f"{name:<22} T@10 {r['T@10']:.3f} T@50 {r['T@50']:.3f} twin R@10 "
            f"{r['twin R@10']:.3f} probe edited "
            + "/".join(f"{r['probe']['edited'][a]:.2f}" for a in vocabulary.ATTRIBUTE_TYPES)
            + " kept "
            + "/".join(f"{r['probe']['kept'][a]:.2f}" for a in vocabulary.ATTRIBUTE_TYPES),
            flush=True,
        )
    sweep = {"run_dir": os.path.relpath(args.run_dir, REPO), "results": results}
    with open(args.output, "w") as f:
        json.dump(sweep, f, indent=1)
    print(f"wrote {args.output}")
    build_md = os.path.join(REPO, "BUILD.md")
    replace_between_markers(build_md, TABLE_BEGIN, TABLE_END, sweep_table(sweep))
    print(f"updated the sweep table in {build_md}")


if __name__ == "__main__":
    main()
