"""Test-session set-up shared by every test module.

Two logical CPU devices are configured before TensorFlow runs any op, so the tf.distribute tests can
run a real 2-replica MirroredStrategy on a CPU-only machine. Tests that do not
ask for a strategy run on the first device, as they would anyway.
"""

import os
import shutil
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
except RuntimeError:  # already initialised by an earlier import in this process
    pass


import pytest  # noqa: E402

# The fake run directory, its export and a dev server (fixtures of the serving tests).
pytest_plugins = ["serving_fixtures"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The shared smoke run trains the product and the cheap rows only; the comparison rows (the
# paper's G, the concat baselines trained from images: half of a smoke run's time) are added to
# a copy of it once, by `smoke_run_compared`. Every other smoke run in the tests that is compared
# with `smoke_run` passes the same flags.
SMOKE_FLAGS = ("--preset=smoke", "--noevaluation_compare")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One `python -m flam_tf.train --preset=smoke --noevaluation_compare` run (all stages,
    export included), shared.

    Returns:
        (run directory, the command's combined output).
    """
    run_dir = str(tmp_path_factory.mktemp("smoke_run"))
    return run_dir, _train(*SMOKE_FLAGS, f"--run_dir={run_dir}")


def _train(*flags) -> str:
    """Runs `python -m flam_tf.train *flags`, which must succeed; returns its combined output."""
    result = subprocess.run(
        [sys.executable, "-m", "flam_tf.train", *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="session")
def smoke_run_compared(smoke_run, tmp_path_factory):
    """A copy of `smoke_run` with the comparison rows added afterwards, as BUILD.md documents
    (`--evaluation_compare --stages=manipulator,baselines,evaluate --force`: only the missing
    models are trained).

    Returns:
        (run directory, the command's combined output).
    """
    run_dir = str(tmp_path_factory.mktemp("smoke_run_compared") / "run")
    shutil.copytree(smoke_run[0], run_dir)
    output = _train(
        "--preset=smoke",
        "--evaluation_compare",
        "--stages=manipulator,baselines,evaluate",
        "--force",
        f"--run_dir={run_dir}",
    )
    return run_dir, output
