"""Test-session set-up shared by every test module.

Two logical CPU devices are configured before TensorFlow runs any op, so the tf.distribute tests can
run a real 2-replica MirroredStrategy on a CPU-only machine. Tests that do not
ask for a strategy run on the first device, as they would anyway.
"""

import os
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


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One `python -m flam_tf.train --preset=smoke` run (all stages, export included), shared.

    Returns:
        (run directory, the command's combined output).
    """
    run_dir = str(tmp_path_factory.mktemp("smoke_run"))
    result = subprocess.run(
        [sys.executable, "-m", "flam_tf.train", "--preset=smoke", f"--run_dir={run_dir}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir, result.stdout + result.stderr
