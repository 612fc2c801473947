"""This process's role in a multi-worker training cluster, and how its tasks agree.

- every task runs the stages that train (their collectives need all of them) on the same global
  batches, each worker taking its contiguous slice of every batch (`strategies.shard_by_data`);
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
        self.multi_worker = (
            isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode()
        )
        if self.multi_worker:
            resolver = strategy.cluster_resolver
            self.task_type, self.task_id = resolver.task_type, int(resolver.task_id)
            jobs = resolver.cluster_spec().as_dict()
            self.num_tasks = sum(len(jobs.get(job, ())) for job in ("chief", "worker"))
            self.is_chief = bool(strategy.extended.should_checkpoint)
            self._tasks = [
                f"{job}:{i}" for job in ("chief", "worker") for i in range(len(jobs.get(job, ())))
            ]
        else:
            self.task_type, self.task_id, self.num_tasks, self.is_chief = "chief", 0, 1, True
            self._tasks = [self.task]
        self._decisions = {}  # name -> calls so far

    @property
    def task(self) -> str:
        """ "worker:1" and the like."""
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
        return os.path.join(
            tempfile.gettempdir(), f"flam_tf-{self.task_type}{self.task_id}-{digest:08x}"
        )


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
    return (
        "chief" not in parsed.get("cluster", {})
        and task.get("type") == "worker"
        and int(task.get("index", 0)) == 0
    )
