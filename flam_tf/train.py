"""`python -m flam_tf.train`: the whole FLAM pipeline, end to end.

    python -m flam_tf.train                       # default preset, synthetic benchmark, ./runs/default
    python -m flam_tf.train --preset=smoke --run_dir=/tmp/smoke
    python -m flam_tf.train --stages=evaluate,export --run_dir=runs/default
    python -m flam_tf.train --extractor_epochs=12 --manipulator_matching=S

`--preset` picks a named configuration (flam_tf/config.py); every setting can be overridden with a
flag `--<section>_<field>` (listed by --helpfull). Stages: data, extractor, features, embedders,
manipulator, baselines, evaluate, export. A rerun skips finished stages; a killed run resumes from
its last epoch backup.

Errors: a bad flag, setting or run directory, a damaged manifest, image or config.json ends the run
with ONE line on stderr, `flam_tf.train: error: <what is wrong>`, and exit code 2 (--verbose adds
the traceback). Anything else is a bug: its traceback, then `flam_tf.train: internal error: ...`,
exit code 1.
"""

import os
import re
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

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
flags.DEFINE_bool("verbose", False, "On an error, print its traceback as well as the one-line "
                  "message.")

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


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow with its C++ start-up lines hidden ("All log messages before
    absl::InitializeLog()", "oneDNN custom operations are on", "failed call to cuInit"): they
    ignore TF_CPP_MIN_LOG_LEVEL and would precede every later message. If the import fails, the
    hidden lines are printed with the error."""
    if "tensorflow" in sys.modules:
        return
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as hidden:
        os.dup2(hidden.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            hidden.seek(0)
            sys.stderr.write(hidden.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def run(config: config_lib.ExperimentConfig, run_dir: str, stages=config_lib.STAGES,
        force: bool = False) -> dict:
    """Runs the pipeline (importable: tests and notebooks call this).

    The stages, the run directory and the config are checked (and config.json written) before
    TensorFlow is imported, so these errors come quickly and without TensorFlow's start-up lines.
    """
    from flam_tf.run_directory import RunDirectory

    unknown = [s for s in stages if s not in config_lib.STAGES]
    if unknown:
        raise ValueError(f"Unknown stages {unknown}; expected a subset of {list(config_lib.STAGES)}")
    run_directory = RunDirectory(run_dir)
    run_directory.check_or_write_config(config)

    import_tensorflow_quietly()
    from flam_tf import distribute, stages as stages_lib

    # No process-wide seed here: each stage seeds itself from the run seed and its name.
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


MAX_MESSAGE_CHARS = 600  # an error line longer than this is cut in the middle


def one_line(error: BaseException) -> str:
    """The message of `error` on one line: whitespace runs collapsed, TensorFlow's op prefix
    dropped, a long message cut in the middle (its start and end name the problem)."""
    message = getattr(error, "message", None)  # tf.errors.OpError: without the op's traceback
    message = str(message if isinstance(message, str) else error)
    message = re.sub(r"\{\{function_node [^}]*\}\}", "", message)
    message = " ".join(message.split()) or type(error).__name__
    if len(message) > MAX_MESSAGE_CHARS:
        half = MAX_MESSAGE_CHARS // 2 - 3
        message = f"{message[:half]} ... {message[-half:]}"
    return message


def expected_errors() -> tuple:
    """The exception classes that mean bad input (flags, files, data), not a bug."""
    errors = (ValueError, OSError)  # json.JSONDecodeError and ManifestError are ValueErrors
    tf = sys.modules.get("tensorflow")
    if tf is not None:  # data decoding, missing or unreadable files, out of memory
        errors += (tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
                   tf.errors.DataLossError, tf.errors.PermissionDeniedError,
                   tf.errors.ResourceExhaustedError)
    return errors


def report_error(error: BaseException, verbose: bool = False) -> int:
    """Prints `error` for the command line; returns the exit code (2: bad input, 1: a bug)."""
    if isinstance(error, expected_errors()):
        if verbose:
            traceback.print_exception(error)
        print(f"flam_tf.train: error: {one_line(error)}", file=sys.stderr, flush=True)
        return 2
    traceback.print_exception(error)
    print(f"flam_tf.train: internal error: {type(error).__name__}: {one_line(error)}",
          file=sys.stderr, flush=True)
    return 1


def parse_flags(argv):
    """absl's flag parsing, with a bad flag reported as one line (exit 2), not the usage text."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"flam_tf.train: error: {one_line(e)} (--helpfull lists the flags)",
              file=sys.stderr, flush=True)
        sys.exit(2)


def main(argv):
    start = time.time()
    try:
        if len(argv) > 1:
            raise ValueError(f"unexpected arguments {argv[1:]}; settings are --flags")
        config = resolve_config()
        run_dir = FLAGS.run_dir or os.path.join("runs", config.preset)
        run(config, run_dir, FLAGS.stages, FLAGS.force)
        print_summary(run_dir)
    except Exception as e:  # noqa: BLE001 (every error ends as one line; bugs keep a traceback)
        sys.exit(report_error(e, FLAGS.verbose))
    print(f"flam_tf.train: finished in {time.time() - start:.0f} s")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
