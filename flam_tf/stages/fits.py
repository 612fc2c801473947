"""Training on stored features: the embedders, the manipulators and the "(on x)" baselines all
fit a compiled model on rows of the feature store, through `fit_on_features`."""

from typing import Dict, List

import keras
import tensorflow as tf

from flam_tf.data import pipeline
from flam_tf.stages.context import Context


def passes_per_epoch(passes: int, steps_per_pass: int, min_steps: int) -> int:
    """How many passes over the data one Keras epoch holds: a divisor g of `passes`, the smallest
    with g * steps_per_pass >= min_steps, unless that makes epochs over 2 * min_steps long (a
    prime number of passes would make the whole fit one epoch, with no backup before its end);
    then the largest divisor whose epochs stay within 2 * min_steps (at least 1)."""
    passes = max(passes, 1)
    divisors = [g for g in range(1, passes + 1) if passes % g == 0]
    group = next((g for g in divisors if g * steps_per_pass >= min_steps), passes)
    if group > 1 and group * steps_per_pass > 2 * min_steps:
        group = max(g for g in divisors if g == 1 or g * steps_per_pass <= 2 * min_steps)
    return group


def feature_dataset(
    x, y, batch_size: int, seed: int, passes: int, resume_epoch: int = 0, min_steps: int = 1
):
    """Endless shuffled batches of features (and labels, unless y is None), reshuffled on every
    pass over the data, for `passes` passes; a resumed fit skips what its `resume_epoch` Keras
    epochs already trained.

    Several passes make one Keras epoch of at least `min_steps` steps when a pass is short
    (`passes_per_epoch`; the stages pass runtime.min_steps_per_epoch: the per-epoch work of
    `fit`, an epoch backup, summaries and the history, costs as much as about 20 steps of these
    small models). The batches are the same either way (the shuffle is per pass of the repeated
    dataset, not per Keras epoch, and nothing in these models depends on the epoch), so only how
    often `fit` backs up, logs and reports changes.

    Returns:
        (dataset, epochs, steps per epoch): pass all three to `fit(dataset, epochs=epochs,
        steps_per_epoch=steps)`, so that a pass sees its own shuffle whether or not the fit was
        resumed.
    """
    steps = len(x) // batch_size
    group = passes_per_epoch(passes, steps, min_steps)
    ds = tf.data.Dataset.from_tensor_slices(x if y is None else (x, y))
    ds = (
        ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size, drop_remainder=True)
        .repeat()
    )
    return (
        pipeline.without_autotune(ds.skip(resume_epoch * group * steps).prefetch(tf.data.AUTOTUNE)),
        passes // group,
        group * steps,
    )


def fit_on_features(
    ctx: Context, name: str, model: keras.Model, x, y, batch_size: int, passes: int
) -> Dict[str, List[float]]:
    """Trains the compiled `model` for `passes` passes over features x (and labels y, unless
    None) in batches of `batch_size`, resuming from the backups of `name`; returns the metrics
    of the whole fit (`Context.save_history`)."""
    ds, epochs, steps = feature_dataset(
        x,
        y,
        min(batch_size, len(x)),
        ctx.config.runtime.seed,
        passes,
        resume_epoch=ctx.resume_epoch(name),
        min_steps=ctx.config.runtime.min_steps_per_epoch,
    )
    return ctx.fit(name, model, ds, epochs, steps)
