"""tf.distribute strategies by name, the data sharding of the multi-worker strategy, and a `fit`
that iterates a dataset once under any strategy."""

import json
import os

import tensorflow as tf

from flam_tf.config import STRATEGIES, check_option


def get_strategy(name="default", devices=None):
    """Returns a `tf.distribute.Strategy` by name.

    Args:
        name: "default" (`tf.distribute.get_strategy()`, one device, no replication), "mirrored"
            (`MirroredStrategy` over `devices`, else all local GPUs, else the CPU) or "multi_worker"
            (`MultiWorkerMirroredStrategy` below, cluster read from the TF_CONFIG environment
            variable; create it before TensorFlow runs any op).
        devices: optional list of device strings for "mirrored", e.g. ["/gpu:0", "/gpu:1"] or
            ["/cpu:0", "/cpu:1"] (logical CPUs, see tests/conftest.py).

    Returns:
        The strategy. Build models and call `compile()` inside `strategy.scope()`.

    Raises:
        ValueError: an unknown name (the message lists the choices); "multi_worker" without
            TF_CONFIG, or with a TF_CONFIG that is not valid JSON with a "cluster" entry.
    """
    check_option("strategy", name, STRATEGIES)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if devices is None:
            gpus = tf.config.list_logical_devices("GPU")
            devices = [d.name for d in gpus] if gpus else ["/cpu:0"]
        return tf.distribute.MirroredStrategy(list(devices))
    # multi_worker: the cluster comes from TF_CONFIG
    tf_config = os.environ.get("TF_CONFIG")
    if not tf_config:
        raise ValueError(
            "strategy='multi_worker' needs the TF_CONFIG environment variable (a JSON "
            "{'cluster': {'worker': [...]}, 'task': {'type': 'worker', 'index': i}}); it is unset."
        )
    try:
        parsed = json.loads(tf_config)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON: {error}. Received: {tf_config!r}") from None
    if "cluster" not in parsed:
        raise ValueError(f"TF_CONFIG has no 'cluster' entry. Received: {tf_config!r}")
    return MultiWorkerMirroredStrategy()


def shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` with the DATA auto-shard policy, unless it chose a policy itself.

    With DATA, `experimental_distribute_dataset` splits every global batch into
    `num_replicas_in_sync` contiguous slices (the rebatch) and worker w keeps the slices of its
    replicas: on 2 workers of one replica each, worker 0 trains on rows [0, B/2) of every batch
    and worker 1 on [B/2, B). Every worker runs the whole input pipeline, so the global batches
    are exactly those of one process with the same seed (AUTO would try FILE sharding first, which
    gives each worker other files, hence other batches, on file-based pipelines).
    """
    policy = dataset.options().experimental_distribute.auto_shard_policy
    if policy != tf.data.experimental.AutoShardPolicy.AUTO:
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def fit(model, dataset, **kwargs):
    """`model.fit(dataset, **kwargs)`, with `dataset` iterated once, as without a strategy.

    Under a tf.distribute strategy, Keras 3.15's `fit` first takes one batch from a throwaway
    iterator to build the model (`_maybe_symbolic_build`), then iterates afresh. Every training
    pipeline here shuffles with a seed and `reshuffle_each_iteration=True`, whose permutations come
    from a generator shared by all iterators of the dataset: the real iterator then starts at a
    permutation that depends on how far the throwaway one prefetched: a fit resumed from its
    epoch-1 backup would train epoch 2 on other batches than the uninterrupted fit, and the
    workers' slices could come from different global batches. Here the model is built from
    `dataset.element_spec` instead (shapes and dtypes are all that build needs).

    Args:
        model: a compiled Keras model.
        dataset: a `tf.data.Dataset` (anything else goes to `model.fit` unchanged).
        **kwargs: `model.fit`'s other arguments.

    Returns:
        The `History` of `model.fit`.
    """
    if isinstance(dataset, tf.data.Dataset):
        kwargs.setdefault("shuffle", False)  # a dataset shuffles itself; Keras would warn
    if getattr(model, "_distribute_strategy", None) is None or not isinstance(
        dataset, tf.data.Dataset
    ):
        return model.fit(dataset, **kwargs)
    spec = dataset.element_spec

    def build_from_spec(iterator=None, data_batch=None):
        with model.distribute_strategy.scope():
            model._symbolic_build(data_batch=spec if data_batch is None else data_batch)

    model._maybe_symbolic_build = build_from_spec  # this instance, for this fit only
    try:
        return model.fit(dataset, **kwargs)
    finally:
        del model._maybe_symbolic_build


def _rank(value):
    if isinstance(value, tf.distribute.DistributedValues):
        value = value.values[0]
    shape = getattr(value, "shape", None)
    return None if shape is None else shape.rank


class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """`tf.distribute.MultiWorkerMirroredStrategy` (cluster from TF_CONFIG or `cluster_resolver`)
    with explicit data sharding and the two reductions Keras 3's `fit` needs of it.

    * `experimental_distribute_dataset` (which `fit` calls) applies `shard_by_data`.
    * `reduce` maps over nested structures and reduces scalars over replicas only. Keras 3.15's
      TF trainer calls `strategy.reduce("MEAN", first_batch, axis=None)` on the whole nested batch
      (`_maybe_symbolic_build`; TF 2.21's collective strategy fails with "Attempt to convert a
      value (PerReplica ...) to a Tensor"), and `strategy.reduce("MEAN", log, axis=0)` on every
      scalar log of a step ("Invalid reduction dimension 0 for input with 0 dimensions"). Both
      only happen in multi-worker mode; MirroredStrategy takes another path.
    """

    def experimental_distribute_dataset(self, dataset, options=None):
        if isinstance(dataset, tf.data.Dataset):
            dataset = shard_by_data(dataset)
        return super().experimental_distribute_dataset(dataset, options)

    def reduce(self, reduce_op, value, axis=None):
        if tf.nest.is_nested(value):
            return tf.nest.map_structure(lambda v: self.reduce(reduce_op, v, axis), value)
        if axis is not None and _rank(value) == 0:
            axis = None  # a scalar per replica: reduce over the replicas
        return super().reduce(reduce_op, value, axis)
