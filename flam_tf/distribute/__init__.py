"""tf.distribute for flam_tf: strategies by name, the loss scaling of custom train steps, and the
roles of a multi-worker cluster.

    strategies.py   get_strategy, shard_by_data, fit, MultiWorkerMirroredStrategy
    reduction.py    scaled_loss, masked_mean, check_finite: one step on N replicas equals one
                    step on the global batch
    cluster.py      Cluster (the chief writes, workers follow its decisions), ClusterError
    resolvers.py    TF_CONFIG from TensorFlow's Slurm and Kubernetes resolvers
                    (`python -m flam_tf.distribute slurm|kubernetes`)
"""

from flam_tf.distribute.cluster import Cluster, ClusterError, is_chief_task, remove_tree
from flam_tf.distribute.reduction import check_finite, masked_mean, num_replicas, scaled_loss
from flam_tf.distribute.resolvers import tf_config_from_resolver
from flam_tf.distribute.strategies import (
    MultiWorkerMirroredStrategy,
    fit,
    get_strategy,
    shard_by_data,
)

__all__ = [
    "Cluster",
    "ClusterError",
    "MultiWorkerMirroredStrategy",
    "check_finite",
    "fit",
    "get_strategy",
    "is_chief_task",
    "masked_mean",
    "num_replicas",
    "remove_tree",
    "scaled_loss",
    "shard_by_data",
    "tf_config_from_resolver",
]
