"""`python -m flam_tf.train`: the whole FLAM pipeline, end to end.

    python -m flam_tf.train                       # default preset, synthetic benchmark, ./runs/default
    python -m flam_tf.train --preset=smoke --run_dir=/tmp/smoke
    python -m flam_tf.train --stages=evaluate,export --run_dir=runs/default
    python -m flam_tf.train --extractor_epochs=12 --manipulator_matching=S

`--preset` picks a named configuration (flam_tf/config.py); every setting can be overridden with a
flag `--<section>_<field>` (listed by --helpfull). Stages: data, extractor, features, embedders,
manipulator, baselines, evaluate, export. A rerun skips finished stages; a killed run resumes from
its last epoch backup.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from flam_tf import config as config_lib  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("preset", "default", f"Named configuration: {list(config_lib.PRESETS)}.")
flags.DEFINE_string("run_dir", None, "Run directory (default: runs/<preset>).")
flags.DEFINE_list("stages", list(config_lib.STAGES), "Stages to run, a subset of "
                  f"{list(config_lib.STAGES)}; finished stages are skipped unless --force.")
flags.DEFINE_bool("force", False, "Rerun the given stages even if they finished before.")
flags.DEFINE_string("strategy", None, "tf.distribute strategy: default | mirrored | multi_worker "
                    "(overrides runtime_strategy).")
flags.DEFINE_integer("seed", None, "Random seed (overrides runtime_seed).")
flags.DEFINE_bool("ablations", None, "Also train and report the Table 3 ablations "
                  "(overrides evaluation_ablations).")

_FLAG_TYPES = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
               str: flags.DEFINE_string}
# One optional flag per config field; None means "keep the preset's value".
_HELP = config_lib.field_help()
for _section, _name, _field in config_lib.overridable_fields():
    _default = _field.default if _field.default is not config_lib.dataclasses.MISSING else None
    _define = _FLAG_TYPES.get(type(_default))
    if _define is not None:
        _define(f"{_section}_{_name}", None,
                f"{_HELP.get(f'{_section}.{_name}', f'{_section}.{_name}')} "
                f"(unset: the preset's value; default preset: {_default!r})")


def resolve_config(flag_values=FLAGS) -> config_lib.ExperimentConfig:
    """The preset with every set override applied, validated."""
    config = config_lib.get_preset(flag_values.preset)
    for section, name, _ in config_lib.overridable_fields():
        value = getattr(flag_values, f"{section}_{name}", None)
        if value is not None:
            config_lib.apply_override(config, section, name, value)
    if flag_values.strategy is not None:
        config.runtime.strategy = flag_values.strategy
    if flag_values.seed is not None:
        config.runtime.seed = flag_values.seed
    if flag_values.ablations is not None:
        config.evaluation.ablations = flag_values.ablations
    config.validate()
    return config


def run(config: config_lib.ExperimentConfig, run_dir: str, stages=config_lib.STAGES,
        force: bool = False) -> dict:
    """Runs the pipeline (importable: tests and notebooks call this)."""
    import keras

    from flam_tf import distribute, stages as stages_lib
    from flam_tf.run_directory import RunDirectory

    unknown = [s for s in stages if s not in config_lib.STAGES]
    if unknown:
        raise ValueError(f"Unknown stages {unknown}; expected a subset of {list(config_lib.STAGES)}")
    run_directory = RunDirectory(run_dir)
    run_directory.check_or_write_config(config)
    keras.utils.set_random_seed(config.runtime.seed)
    strategy = distribute.get_strategy(config.runtime.strategy)
    print(f"flam_tf: preset={config.preset} run_dir={run_directory.root} "
          f"strategy={config.runtime.strategy} replicas={strategy.num_replicas_in_sync}",
          flush=True)
    ctx = stages_lib.Context(config, run_directory, strategy)
    return stages_lib.run_stages(ctx, stages, force=force)


def print_summary(run_dir: str) -> None:
    """The headline figures of report.json, as a short terminal table."""
    import json

    path = os.path.join(run_dir, "report.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        report = json.load(f)
    print("\n" + "=" * 72)
    print(f"{'method':<24}{'FAM T@10':>10}{'FAM T@50':>10}{'twin R@10':>11}"
          f"{'FIR in-shop R@1':>17}")
    for method, fam in report["fam"].items():
        fir = report["fir"].get(method, {})  # FIR of a method's own feature, where it has one
        inshop = fir.get("in-shop", {}).get("R@1")
        print(f"{method:<24}{fam['all']['T@10']:>10.3f}{fam['all']['T@50']:>10.3f}"
              f"{report['twin_recall'][method]['R@10']:>11.3f}"
              f"{(f'{inshop:.3f}' if inshop is not None else '-'):>17}")
    from flam_tf.stages import FLAM

    acc = report["attribute_accuracy"]
    flam = acc["methods"][FLAM]
    print("probe accuracy (original -> FLAM edited / kept): " + ", ".join(
        f"{a} {acc['original'][a]:.2f}->{flam['edited'][a]:.2f}/{flam['kept'][a]:.2f}"
        for a in acc["original"]))
    print(f"cycle cosine {report['cycle_cosine']:.3f}; total {report['timings_s']['total']:.0f} s")
    print(f"report: {os.path.join(run_dir, 'report.md')}")
    print("=" * 72)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        config = resolve_config()
    except ValueError as e:
        raise app.UsageError(str(e))
    run_dir = FLAGS.run_dir or os.path.join("runs", config.preset)
    start = time.time()
    try:
        run(config, run_dir, FLAGS.stages, FLAGS.force)
    except (ValueError, FileNotFoundError) as e:
        logging.error("%s", e)
        print(f"flam_tf.train: error: {e}", file=sys.stderr)
        sys.exit(2)
    print_summary(run_dir)
    print(f"flam_tf.train: finished in {time.time() - start:.0f} s")


if __name__ == "__main__":
    app.run(main)
