"""`python -m flam_tf.train`: the whole FLAM pipeline, end to end.

    python -m flam_tf.train                       # default preset, synthetic benchmark, ./runs/default
    python -m flam_tf.train --preset=smoke --run_dir=/tmp/smoke
    python -m flam_tf.train --stages=evaluate,export --run_dir=runs/default
    python -m flam_tf.train --extractor_epochs=12 --manipulator_matching=S

`--verbosity=1` also shows TensorFlow's and Keras' INFO lines (off by default).

`--preset` picks a named configuration (flam_tf/config.py); every setting can be overridden with a
flag `--<section>_<field>` (listed by --helpfull). Stages: data, extractor, features, embedders,
manipulator, baselines, evaluate, export. A rerun skips finished stages; a killed run resumes from
its last epoch backup.

Multi-worker (`--strategy=multi_worker`): start the same command, with the same flags and a
`--run_dir` on a file system every host shares, once per task, each with its own TF_CONFIG; the
chief (task "chief", else worker 0) writes the run directory, the workers train with it (see
flam_tf.distribute and BUILD.md). A task that fails takes the cluster down: restart every task
and the run resumes from the last epoch backup.

Errors: a bad flag, setting or run directory, a damaged manifest, image or config.json ends the run
with ONE line on stderr, `flam_tf.train: error: <what is wrong>`, and exit code 2 (--verbose adds
the traceback). A task of a multi-worker cluster that stopped ends the others with one line,
`flam_tf.train: cluster error: ...`, and exit code 3 (restart every task to resume). Anything else
is a bug: its traceback, then `flam_tf.train: internal error: ...`, exit code 1.
"""

import json
import logging
import os
import re
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from flam_tf import config as config_lib  # noqa: E402
from flam_tf import methods  # noqa: E402
from flam_tf.run_directory import CONFIG_JSON, REPORT_JSON, REPORT_MD, RunDirectory, run_file  # noqa: E402  (no TensorFlow import)

FLAGS = flags.FLAGS
flags.DEFINE_string("preset", "default", f"Named configuration: {list(config_lib.PRESETS)}.")
flags.DEFINE_string("run_dir", None, "Run directory (default: runs/<preset>).")
flags.DEFINE_list(
    "stages",
    list(config_lib.STAGES),
    "Stages to run, a subset of "
    f"{list(config_lib.STAGES)}; finished stages are skipped unless --force.",
)
flags.DEFINE_bool("force", False, "Rerun the given stages even if they finished before.")
flags.DEFINE_bool(
    "verbose", False, "On an error, print its traceback as well as the one-line message."
)

_FLAG_TYPES = {
    bool: flags.DEFINE_bool,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    str: flags.DEFINE_string,
}
# One optional flag per config field; None means "keep the preset's value".
_HELP = config_lib.field_help()
for _section, _name, _field in config_lib.overridable_fields():
    _default = _field.default if _field.default is not config_lib.dataclasses.MISSING else None
    _define = _FLAG_TYPES.get(type(_default))
    if _define is not None:
        _define(
            f"{_section}_{_name}",
            None,
            f"{_HELP.get(f'{_section}.{_name}', f'{_section}.{_name}')} "
            f"(unset: the preset's value; default preset: {_default!r})",
        )
# Short names of the settings changed most often.
flags.DEFINE_alias("strategy", "runtime_strategy")
flags.DEFINE_alias("seed", "runtime_seed")
flags.DEFINE_alias("ablations", "evaluation_ablations")


def resolve_config(flag_values=FLAGS) -> config_lib.ExperimentConfig:
    """The preset with every set override applied, validated."""
    config = config_lib.get_preset(flag_values.preset)
    for section, name, _ in config_lib.overridable_fields():
        value = getattr(flag_values, f"{section}_{name}", None)
        if value is not None:
            config_lib.apply_override(config, section, name, value)
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


class _OwnInfoOnly:
    """A logging filter: INFO lines from flam_tf's own modules, warnings and errors from all."""

    _OWN = os.sep + "flam_tf" + os.sep

    def filter(self, record) -> bool:
        return record.levelno >= logging.WARNING or self._OWN in record.pathname


def quiet_library_logs() -> None:
    """TensorFlow's and Keras' INFO lines (SavedModel assets, fingerprints, signature input
    renames) off: the stages' progress and the summary table are what a run shows. Run with
    `--verbosity=1` (absl's flag) to see them."""
    from absl import logging as absl_logging

    absl_logging.get_absl_handler().addFilter(_OwnInfoOnly())


def run(
    config: config_lib.ExperimentConfig, run_dir: str, names=config_lib.STAGES, force: bool = False
) -> dict:
    """Runs the pipeline (importable: tests and notebooks call this).

    The stages, the run directory and the config are checked (and config.json written) before
    TensorFlow is imported, so these errors come quickly and without TensorFlow's start-up lines
    (multi-worker: after the cluster has formed, by the chief; see `_run_cluster_task`).
    """
    unknown = [s for s in names if s not in config_lib.STAGES]
    if unknown:
        raise ValueError(
            f"Unknown stages {unknown}; expected a subset of {list(config_lib.STAGES)}"
        )
    if config.runtime.strategy == "multi_worker":
        return _run_cluster_task(config, run_dir, names, force)
    run_directory = RunDirectory(run_dir)
    run_directory.check_or_write_config(config)

    import_tensorflow_quietly()
    from flam_tf import distribute, driver, stages  # TensorFlow: only after the checks above

    # No process-wide seed here: each stage seeds itself from the run seed and its name.
    strategy = distribute.get_strategy(config.runtime.strategy)
    print(
        f"flam_tf: preset={config.preset} run_dir={run_directory.root} "
        f"strategy={config.runtime.strategy} replicas={strategy.num_replicas_in_sync}",
        flush=True,
    )
    return driver.run_stages(stages.Context(config, run_directory, strategy), names, force=force)


class WorkerRunDirectory(RunDirectory):
    """A worker's view of the chief's run directory: it reads it, creates nothing and refuses to
    write (the chief writes config.json and stages.json; stages write through `Context`).

    Raises:
        ValueError: the run directory holds no config.json (it is not on a file system this host
            shares with the chief) or one written with other settings (every task must run the
            same command).
    """

    def __init__(self, root: str, config: config_lib.ExperimentConfig):  # creates nothing
        self.root = os.path.abspath(root)
        path = self.path(CONFIG_JSON)
        if not os.path.exists(path):
            raise ValueError(
                f"{path} does not exist, though the chief wrote it: --run_dir must "
                f"be on a file system every task of the cluster shares"
            )
        with open(path, encoding="utf-8") as f:
            written = json.load(f)
        changed = config_lib.diff(written, config.to_dict())
        if changed:
            raise ValueError(
                f"this task's settings differ from the chief's ({path}); start every "
                f"task with the same flags. Differences: " + "; ".join(changed)
            )

    def check_or_write_config(self, config):
        raise RuntimeError("a worker never writes the run directory")

    def mark_done(self, stage, seconds, **info):
        raise RuntimeError("a worker never writes the run directory")


_IN_CLUSTER = False  # this process is a task of a multi-worker cluster (see report_error)


def _run_cluster_task(
    config: config_lib.ExperimentConfig, run_dir: str, names, force: bool
) -> dict:
    """`run` as one task of a multi-worker cluster (TF_CONFIG): the chief prepares the run
    directory, then every task runs the stages (flam_tf.driver.run_stages)."""
    global _IN_CLUSTER
    _IN_CLUSTER = True
    import_tensorflow_quietly()
    # TF logs one INFO line per eager all-reduce (every metric read, every save): keep it quiet.
    from flam_tf import distribute, driver, stages  # TensorFlow: only after the checks above

    class _QuietCollectives(logging.Filter):
        def filter(self, record):
            return record.levelno >= logging.WARNING or not record.pathname.endswith(
                "cross_device_ops.py"
            )

    sys.modules["tensorflow"].get_logger().addFilter(_QuietCollectives())
    # Before any other op: the strategy starts this task's server and waits for the others.
    strategy = distribute.get_strategy("multi_worker")
    cluster = distribute.Cluster(strategy)
    print(
        f"flam_tf: preset={config.preset} run_dir={os.path.abspath(run_dir)} "
        f"strategy=multi_worker task={cluster.task}{' (chief)' if cluster.is_chief else ''} "
        f"tasks={cluster.num_tasks} replicas={strategy.num_replicas_in_sync}",
        flush=True,
    )

    def prepare():
        run_directory = RunDirectory(run_dir)
        run_directory.check_or_write_config(config)
        return run_directory.root

    cluster.chief_value("run directory", prepare)
    run_directory = (
        RunDirectory(run_dir) if cluster.is_chief else WorkerRunDirectory(run_dir, config)
    )
    ctx = stages.Context(config, run_directory, strategy, cluster)
    try:
        timings = driver.run_stages(ctx, names, force=force)
        cluster.finish()  # the chief (the coordination service) exits last
        return timings
    finally:
        ctx.close()


def print_summary(run_dir: str) -> None:
    """The headline figures of report.json, as a short terminal table."""
    path = run_file(run_dir, REPORT_JSON)
    if not os.path.exists(path):
        return
    with open(path) as f:
        report = json.load(f)
    print("\n" + "=" * 72)
    print(f"{'method':<24}{'FAM T@10':>10}{'FAM T@50':>10}{'twin R@10':>11}{'FIR in-shop R@1':>17}")
    for method, fam in report["fam"].items():
        fir = report["fir"].get(method, {})  # FIR of a method's own feature, where it has one
        inshop = fir.get("in-shop", {}).get("R@1")
        print(
            f"{method:<24}{fam['all']['T@10']:>10.3f}{fam['all']['T@50']:>10.3f}"
            f"{report['twin_recall'][method]['R@10']:>11.3f}"
            f"{(f'{inshop:.3f}' if inshop is not None else '-'):>17}"
        )
    acc = report["attribute_accuracy"]
    flam = acc["methods"][methods.FLAM]
    print(
        "probe accuracy (original -> FLAM edited / kept): "
        + ", ".join(
            f"{a} {acc['original'][a]:.2f}->{flam['edited'][a]:.2f}/{flam['kept'][a]:.2f}"
            for a in acc["original"]
        )
    )
    print(f"cycle cosine {report['cycle_cosine']:.3f}; total {report['timings_s']['total']:.0f} s")
    print(f"report: {run_file(run_dir, REPORT_MD)}")
    print("=" * 72)


# An error line longer than this is cut in the middle (a TensorFlow message can run to pages);
# long enough for a message that names a few run files and the command that remakes them.
MAX_MESSAGE_CHARS = 1200


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


def cluster_errors() -> tuple:
    """The exception classes that mean another task of a multi-worker cluster stopped."""
    from flam_tf.distribute import ClusterError

    errors = (ClusterError,)
    tf = sys.modules.get("tensorflow")
    if tf is not None:  # a dead peer: collectives and the coordination service report these
        errors += (
            tf.errors.UnavailableError,
            tf.errors.AbortedError,
            tf.errors.CancelledError,
            tf.errors.DeadlineExceededError,
        )
    return errors


def expected_errors() -> tuple:
    """The exception classes that mean bad input (flags, files, data), not a bug."""
    errors = (ValueError, OSError)  # json.JSONDecodeError and ManifestError are ValueErrors
    tf = sys.modules.get("tensorflow")
    if tf is not None:  # data decoding, missing or unreadable files, out of memory
        errors += (
            tf.errors.InvalidArgumentError,
            tf.errors.NotFoundError,
            tf.errors.DataLossError,
            tf.errors.PermissionDeniedError,
            tf.errors.ResourceExhaustedError,
        )
    return errors


def report_error(error: BaseException, verbose: bool = False) -> int:
    """Prints `error` for the command line; returns the exit code (2: bad input, 3: another
    task of the cluster stopped, 1: a bug)."""
    if _IN_CLUSTER and isinstance(error, cluster_errors()):
        if verbose:
            traceback.print_exception(error)
        from flam_tf.distribute import ClusterError

        hint = (
            "see the chief's output"
            if isinstance(error, ClusterError)
            else "restart every task of the cluster to resume from the last epoch backup"
        )
        print(
            f"flam_tf.train: cluster error: {one_line(error)} ({hint})", file=sys.stderr, flush=True
        )
        return 3
    if isinstance(error, expected_errors()):
        if verbose:
            traceback.print_exception(error)
        print(f"flam_tf.train: error: {one_line(error)}", file=sys.stderr, flush=True)
        return 2
    traceback.print_exception(error)
    print(
        f"flam_tf.train: internal error: {type(error).__name__}: {one_line(error)}",
        file=sys.stderr,
        flush=True,
    )
    return 1


def _is_chief_task() -> bool:
    from flam_tf.distribute import is_chief_task

    return is_chief_task()


def parse_flags(argv):
    """absl's flag parsing, with a bad flag reported as one line (exit 2), not the usage text."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(
            f"flam_tf.train: error: {one_line(e)} (--helpfull lists the flags)",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(2)


def main(argv):
    start = time.time()
    if FLAGS.verbosity < 1:
        quiet_library_logs()
    try:
        if len(argv) > 1:
            raise ValueError(f"unexpected arguments {argv[1:]}; settings are --flags")
        config = resolve_config()
        run_dir = FLAGS.run_dir or os.path.join("runs", config.preset)
        run(config, run_dir, FLAGS.stages, FLAGS.force)
        if config.runtime.strategy != "multi_worker" or _is_chief_task():
            print_summary(run_dir)
    except Exception as e:  # noqa: BLE001 (every error ends as one line; bugs keep a traceback)
        sys.exit(report_error(e, FLAGS.verbose))
    print(f"flam_tf.train: finished in {time.time() - start:.0f} s")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
