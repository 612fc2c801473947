"""The loss-scaling helpers every custom `train_step` uses under a tf.distribute strategy.

Keras 3 does not scale a hand-written loss for the number of replicas: the optimizer sums the
replicas' gradients, so each replica must differentiate its share of the global loss. The
convention used by every model in `flam_tf.models`:

  - each replica computes its *estimate of the global loss* `L_r` (a batch mean; for masked means
    `masked_mean` makes the estimates add up exactly, see there);
  - it differentiates `scaled_loss(L_r) = L_r / num_replicas_in_sync`;
  - it updates the `keras.metrics.Mean` trackers with the unscaled `L_r` (Keras averages the
    trackers over replicas when reading them).

The convention holds unchanged across processes: under `MultiWorkerMirroredStrategy`,
`num_replicas_in_sync` counts the replicas of every worker and `masked_mean`'s all-reduce spans
them all.
"""

import tensorflow as tf


def num_replicas():
    """Number of replicas in sync of the current strategy (1 outside any strategy)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def scaled_loss(loss):
    """This replica's share of a global loss: `loss / num_replicas_in_sync`.

    Args:
        loss: float scalar, the replica's estimate of the global (batch-mean) loss.

    Returns:
        float scalar to differentiate; the optimizer sums the replicas' gradients.
    """
    return loss / tf.cast(num_replicas(), loss.dtype)


def _all_reduce_sum(value):
    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context: nothing to reduce over
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def masked_mean(values, mask):
    """This replica's estimate of the mean of `values` over the masked rows of the *global* batch.

    Returns `N * sum_r(values * mask) / count_global`, where the count of masked rows is all-reduced
    over the N replicas. The N estimates average to the exact global masked mean, so
    `scaled_loss(masked_mean(...))` gives the same gradients on N replicas as on one device, even when
    replicas hold different numbers of masked rows. With no masked row anywhere it returns 0.

    Args:
        values: float Tensor [B_r] (per-example losses on this replica).
        mask: bool or float Tensor [B_r]; rows with False/0 are left out.

    Returns:
        float32 scalar.
    """
    values = tf.cast(values, tf.float32)
    mask = tf.cast(mask, tf.float32)
    local_sum = tf.reduce_sum(values * mask)
    global_count = tf.stop_gradient(_all_reduce_sum(tf.reduce_sum(mask)))
    replicas = tf.cast(num_replicas(), tf.float32)
    return tf.math.divide_no_nan(replicas * local_sum, global_count)


def check_finite(value, name):
    """Raises `tf.errors.InvalidArgumentError` naming `name` if `value` holds NaN or Inf.

    Used on every training loss so that a diverged step stops training with a clear message instead
    of silently writing NaN weights.
    """
    return tf.debugging.check_numerics(
        value, f"{name} is NaN or Inf: training diverged or the input holds NaN/Inf"
    )
