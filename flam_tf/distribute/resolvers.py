"""TF_CONFIG from the cluster resolvers TensorFlow ships (Slurm, Kubernetes), for
`--strategy=multi_worker`; `python -m flam_tf.distribute slurm|kubernetes` prints it."""

import argparse
import json
import socket

import tensorflow as tf


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
        raise ValueError(
            f"{type(resolver).__name__} does not know this task: give task_type "
            f"and task_id. Cluster: {cluster}"
        )
    if task_type not in cluster or not 0 <= int(task_id) < len(cluster[task_type]):
        raise ValueError(f"task {task_type}:{task_id} is not in the cluster {cluster}")
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": int(task_id)}})


def _own_task(cluster, addresses=None):
    """(job, index) of the address in `cluster` on one of this host's `addresses` (IPs)."""
    if addresses is None:
        hostname = socket.gethostname()
        addresses = {hostname, socket.getfqdn()}
        try:
            addresses |= set(socket.gethostbyname_ex(hostname)[2])
        except OSError:
            pass
    found = [
        (job, i)
        for job, tasks in cluster.items()
        for i, address in enumerate(tasks)
        if address.rsplit(":", 1)[0] in addresses
    ]
    if len(found) != 1:
        raise ValueError(
            f"cannot tell this pod's task: {len(found)} tasks of {cluster} are on "
            f"{sorted(addresses)}; pass --task_type and --task_index"
        )
    return found[0]


def _main(argv=None) -> None:
    """`python -m flam_tf.distribute slurm|kubernetes ...`: prints this task's TF_CONFIG."""
    parser = argparse.ArgumentParser(
        prog="python -m flam_tf.distribute",
        description="Prints this task's TF_CONFIG from a cluster resolver TensorFlow ships.",
    )
    parser.add_argument("resolver", choices=("slurm", "kubernetes"))
    parser.add_argument(
        "--port",
        type=int,
        default=8888,
        help="slurm: first port on each node; kubernetes: the port of every pod",
    )
    parser.add_argument(
        "--selector",
        action="append",
        default=[],
        help="kubernetes: JOB=LABEL_SELECTOR, e.g. worker=app=flam-train "
        "(repeatable; default worker=job-name=flam-train)",
    )
    parser.add_argument("--task_type", default=None)
    parser.add_argument("--task_index", type=int, default=None)
    args = parser.parse_args(argv)
    resolvers = tf.distribute.cluster_resolver
    if args.resolver == "slurm":
        if tf.config.list_physical_devices("GPU"):  # GPUs shared out by CUDA_VISIBLE_DEVICES
            resolver = resolvers.SlurmClusterResolver(port_base=args.port)
        else:  # CPU nodes: no GPU to count (nvidia-smi) or share out; 0 GPUs per task fails
            resolver = resolvers.SlurmClusterResolver(
                port_base=args.port, gpus_per_node=1024, gpus_per_task=1, auto_set_gpu=False
            )
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
