"""tf.distribute strategies and the loss-scaling helpers every custom `train_step` uses.

Keras 3 does not scale a hand-written loss for the number of replicas: the
optimizer sums the replicas' gradients, so each replica must differentiate its share of the global
loss. The convention used by every model in `flam_tf.models`:

  - each replica computes its *estimate of the global loss* `L_r` (a batch mean; for masked means
    `masked_mean` makes the estimates add up exactly, see there);
  - it differentiates `scaled_loss(L_r) = L_r / num_replicas_in_sync`;
  - it updates the `keras.metrics.Mean` trackers with the unscaled `L_r` (Keras averages the trackers
    over replicas when reading them).

The convention holds unchanged across processes: under `MultiWorkerMirroredStrategy`,
`num_replicas_in_sync` counts the replicas of every worker and `masked_mean`'s all-reduce spans
them all. The multi-worker part (see `MultiWorkerMirroredStrategy`, `Cluster`):

  - every task runs the stages that train (their collectives need all of them) on the same global
    batches, each worker taking its contiguous slice of every batch (`shard_by_data`);
  - only the chief writes the run directory, which must be on a file system every task can read;
    a worker writes what Keras makes every task write (weights: reading a metric's variables is an
    all-reduce) into its own scratch folder, and deletes it;
  - the chief takes every decision that reads the run directory (what stages to run, what epoch
    to resume from) and publishes it through the cluster's coordination service, and the workers
    wait for it (`Cluster.chief_value`), so no task ever acts on a half-written file.
"""

import json
import os
import shutil
import tempfile
import zlib

import tensorflow as tf
from tensorflow.python.eager import context as _eager_context

STRATEGIES = ("default", "mirrored", "multi_worker")


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
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if devices is None:
            gpus = tf.config.list_logical_devices("GPU")
            devices = [d.name for d in gpus] if gpus else ["/cpu:0"]
        return tf.distribute.MirroredStrategy(list(devices))
    if name == "multi_worker":
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
    raise ValueError(f"Unknown strategy. Received: name={name!r}; expected one of {list(STRATEGIES)}")


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
    permutation that depends on how far the throwaway one prefetched. Measured on 2 workers: a
    fit resumed from its epoch-1 backup trained epoch 2 on other batches than the uninterrupted
    fit, and the workers' slices could come from different global batches. Here the model is
    built from `dataset.element_spec` instead (shapes and dtypes are all that build needs).

    Args:
        model: a compiled Keras model.
        dataset: a `tf.data.Dataset` (anything else goes to `model.fit` unchanged).
        **kwargs: `model.fit`'s other arguments.

    Returns:
        The `History` of `model.fit`.
    """
    if getattr(model, "_distribute_strategy", None) is None or not isinstance(
            dataset, tf.data.Dataset):
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


class ClusterError(RuntimeError):
    """Another task of the cluster failed; its own log says why. Restarting every task resumes."""


class Cluster:
    """This process's role in a training cluster, and how its tasks agree.

    With one process (the default and mirrored strategies) this is the chief of a cluster of one
    and every method is a plain call. Under a multi-worker `MultiWorkerMirroredStrategy`, the chief
    is TF's (the "chief" task, else worker 0), and the tasks agree through the key-value store of
    the coordination service the strategy starts: no file on the shared file system is ever used
    to synchronise, so no task can read a file the chief is still writing.

    Args:
        strategy: the strategy of the run (default: the current one).
    """

    def __init__(self, strategy=None):
        strategy = strategy or tf.distribute.get_strategy()
        self.multi_worker = (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                             and strategy.extended._in_multi_worker_mode())
        if self.multi_worker:
            resolver = strategy.cluster_resolver
            self.task_type, self.task_id = resolver.task_type, int(resolver.task_id)
            jobs = resolver.cluster_spec().as_dict()
            self.num_tasks = sum(len(jobs.get(job, ())) for job in ("chief", "worker"))
            self.is_chief = bool(strategy.extended.should_checkpoint)
            self._tasks = [f"{job}:{i}" for job in ("chief", "worker")
                           for i in range(len(jobs.get(job, ())))]
        else:
            self.task_type, self.task_id, self.num_tasks, self.is_chief = "chief", 0, 1, True
            self._tasks = [self.task]
        self._decisions = {}  # name -> calls so far

    @property
    def task(self) -> str:
        """"worker:1" and the like."""
        return f"{self.task_type}:{self.task_id}"

    def chief_value(self, name: str, compute=None):
        """`compute()` run on the chief; every task returns the chief's result.

        The workers block until the chief has published it (its own work done first, so this is
        also a barrier that releases the workers once the chief's files are written). The n-th
        call with a given `name` on a worker gets the value of the n-th call with that name on
        the chief, so calls may nest (a stage's decisions inside the chief's "stage" call) and
        the chief may decide things alone (in the stages only it runs) under names no worker
        asks for. `compute` is ignored on a worker.

        Args:
            name: what is decided (in error messages).
            compute: callable returning a JSON-serialisable value.

        Raises:
            ClusterError: on a worker, when `compute` raised on the chief (the chief re-raises
                its own exception).
        """
        if not self.multi_worker:
            return compute()
        count = self._decisions[name] = self._decisions.get(name, 0) + 1
        key = f"flam_tf/{name}/{count}"
        context = _eager_context.context()
        if self.is_chief:
            try:
                value = compute()
            except BaseException as error:
                message = " ".join(f"{type(error).__name__}: {error}".split())[:2000]
                context.set_config_key_value(key, json.dumps({"error": message}))
                raise
            context.set_config_key_value(key, json.dumps({"value": value}))
            return value
        payload = json.loads(context.get_config_key_value(key))  # blocks; fails if the chief dies
        if "error" in payload:
            raise ClusterError(f"{self.task}: the chief failed in {name}: {payload['error']}")
        return payload["value"]

    def finish(self) -> None:
        """The end of a run on every task: the chief returns only once every worker has finished.

        The chief's process hosts the coordination service: had it exited first, a worker still
        saving (its saves read variables through the service) or waiting for the chief's last
        value would fail with "connection refused" although the run succeeded.
        """
        if not self.multi_worker:
            return
        context = _eager_context.context()
        if not self.is_chief:
            context.set_config_key_value(f"flam_tf/finished/{self.task}", "1")
            return
        for task in self._tasks:
            if task != self.task:
                context.get_config_key_value(f"flam_tf/finished/{task}")  # blocks

    def scratch_dir(self, root: str):
        """A worker's private folder for the files Keras makes every task write but only the chief
        keeps (the `_get_temp_dir` pattern of Keras' multi-worker checkpoints); None on the chief.

        A fixed path per task and run directory, so a restarted worker removes what a killed one
        left (`Context` removes it at the start and the end of a run).
        """
        if self.is_chief:
            return None
        digest = zlib.crc32(os.path.abspath(root).encode("utf-8"))
        return os.path.join(tempfile.gettempdir(),
                            f"flam_tf-{self.task_type}{self.task_id}-{digest:08x}")


def remove_tree(path) -> None:
    """`shutil.rmtree` that ignores a missing `path` (and None)."""
    if path:
        shutil.rmtree(path, ignore_errors=True)


def is_chief_task(tf_config=None) -> bool:
    """Whether TF_CONFIG (or `tf_config`, its JSON) names this process the chief: its "chief"
    task, else worker 0 of a cluster without one. True without TF_CONFIG (one process)."""
    tf_config = os.environ.get("TF_CONFIG") if tf_config is None else tf_config
    if not tf_config:
        return True
    parsed = json.loads(tf_config)
    task = parsed.get("task", {})
    if task.get("type") == "chief":
        return True
    return ("chief" not in parsed.get("cluster", {}) and task.get("type") == "worker"
            and int(task.get("index", 0)) == 0)


def tf_config_from_resolver(resolver, task_type=None, task_id=None) -> str:
    """The TF_CONFIG JSON of this task from a `tf.distribute.cluster_resolver.ClusterResolver`.

    `--strategy=multi_worker` reads TF_CONFIG; a scheduler's resolver (Slurm, Kubernetes) gives it
    this way, e.g. `export TF_CONFIG=$(python -m flam_tf.distribute slurm)` in each Slurm task.

    Args:
        resolver: the resolver; its `cluster_spec()` is called once.
        task_type, task_id: this task, when the resolver does not know it (Kubernetes); by
            default the resolver's own (Slurm sets them from SLURM_PROCID).
    """
    cluster = resolver.cluster_spec().as_dict()
    task_type = task_type if task_type is not None else resolver.task_type
    task_id = task_id if task_id is not None else resolver.task_id
    if task_type is None or task_id is None:
        raise ValueError(f"{type(resolver).__name__} does not know this task: give task_type "
                         f"and task_id. Cluster: {cluster}")
    if task_type not in cluster or not 0 <= int(task_id) < len(cluster[task_type]):
        raise ValueError(f"task {task_type}:{task_id} is not in the cluster {cluster}")
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": int(task_id)}})


def _own_task(cluster, addresses=None):
    """(job, index) of the address in `cluster` on one of this host's `addresses` (IPs)."""
    import socket

    if addresses is None:
        hostname = socket.gethostname()
        addresses = {hostname, socket.getfqdn()}
        try:
            addresses |= set(socket.gethostbyname_ex(hostname)[2])
        except OSError:
            pass
    found = [(job, i) for job, tasks in cluster.items() for i, address in enumerate(tasks)
             if address.rsplit(":", 1)[0] in addresses]
    if len(found) != 1:
        raise ValueError(f"cannot tell this pod's task: {len(found)} tasks of {cluster} are on "
                         f"{sorted(addresses)}; pass --task_type and --task_index")
    return found[0]


def _main(argv=None) -> None:
    """`python -m flam_tf.distribute slurm|kubernetes ...`: prints this task's TF_CONFIG."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m flam_tf.distribute",
        description="Prints this task's TF_CONFIG from a cluster resolver TensorFlow ships.")
    parser.add_argument("resolver", choices=("slurm", "kubernetes"))
    parser.add_argument("--port", type=int, default=8888,
                        help="slurm: first port on each node; kubernetes: the port of every pod")
    parser.add_argument("--selector", action="append", default=[],
                        help="kubernetes: JOB=LABEL_SELECTOR, e.g. worker=app=flam-train "
                             "(repeatable; default worker=job-name=flam-train)")
    parser.add_argument("--task_type", default=None)
    parser.add_argument("--task_index", type=int, default=None)
    args = parser.parse_args(argv)
    resolvers = tf.distribute.cluster_resolver
    if args.resolver == "slurm":
        if tf.config.list_physical_devices("GPU"):  # GPUs shared out by CUDA_VISIBLE_DEVICES
            resolver = resolvers.SlurmClusterResolver(port_base=args.port)
        else:  # CPU nodes: no GPU to count (nvidia-smi) or share out; 0 GPUs per task fails
            resolver = resolvers.SlurmClusterResolver(port_base=args.port, gpus_per_node=1024,
                                                      gpus_per_task=1, auto_set_gpu=False)
        print(tf_config_from_resolver(resolver, args.task_type, args.task_index))
        return
    mapping = {}
    for item in args.selector or ["worker=job-name=flam-train"]:
        job, _, selector = item.partition("=")
        mapping.setdefault(job, []).append(selector)
    resolver = resolvers.KubernetesClusterResolver(mapping, tf_server_port=args.port)
    task_type, task_id = args.task_type, args.task_index
    if task_type is None or task_id is None:
        task_type, task_id = _own_task(resolver.cluster_spec().as_dict())
    print(tf_config_from_resolver(resolver, task_type, task_id))


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


if __name__ == "__main__":
    _main()
