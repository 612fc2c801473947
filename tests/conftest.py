"""Test-session set-up shared by every test module.

Two logical CPU devices are configured before TensorFlow runs any op, so the tf.distribute tests can
run a real 2-replica MirroredStrategy on a CPU-only machine (STACK.md, pitfall 6). Tests that do not
ask for a strategy run on the first device, as they would anyway.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
except RuntimeError:  # already initialised by an earlier import in this process
    pass
