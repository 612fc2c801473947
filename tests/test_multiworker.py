"""Multi-worker training across processes: `--strategy=multi_worker` on 2 loopback workers.

Each test starts 2 processes (subprocess), each with its own TF_CONFIG naming both on free
loopback ports picked at run time; TensorFlow's MultiWorkerMirroredStrategy connects them over
gRPC (collectives and the coordination service). Worker 0 is the chief.

* `test_one_step_on_two_workers_equals_one_process`: both workers build the smoke preset's models
  (extractor, embedders, FLAM's manipulator and the paper's), load the same initial weights and
  take one SGD step on one fixed global batch; the weights after the step equal those of one
  process stepping on the whole batch, on both workers. It also checks the sharding: worker w
  trains on rows [w B/2, (w+1) B/2) of every global batch (`distribute.shard_by_data`).
* `test_cluster_killed_in_a_stage_resumes_from_its_backup`: the smoke preset's data and extractor
  stages on a 2-worker cluster; worker 1 is SIGKILLed in the extractor's second epoch (once the
  chief's epoch-1 backup is on disk). The chief stops by itself (exit 3, "cluster error"); the
  restarted cluster skips the data stage and resumes the extractor from its epoch-1 backup.
* `test_smoke_pipeline_killed_and_resumed_equals_an_uninterrupted_cluster_run` (slow): the whole
  smoke preset on 2 workers, a worker killed in the manipulator stage, the cluster restarted: no
  finished stage is redone, and the report equals an uninterrupted 2-worker run's to the last bit.

Tolerance of the step equality (as in tests/test_distribute.py): the two replicas' gradients are
summed by an all-reduce, in another order than one process summing over the whole batch, so the
updates agree to float32 rounding of the accumulated sums, not bit for bit. An element that is a
small difference of large terms keeps the absolute rounding error of those terms, so the bound is
per tensor: |update_2 - update_1| <= 1e-4 |update_1| + 1e-4 max|update_1 of that tensor| + 4 eps
max|w0| (an update read back as (w0 + u) - w0 is exact only to the rounding of |w|). A missing
1/num_replicas loss scaling would be off by 100% on every element; a worker given the wrong rows
(no sharding, or the other half) changes every update of the extractor, whose rows all differ.
What makes the 2-replica step equal the global one (in-batch mining must give the same triplets):
  - extractor: triplet_weight=0 (CE only, no mining); the CE and the attribute term are masked
    means whose counts are all-reduced, and the halves hold different numbers of labelled rows.
    The small_cnn's BatchNorm is synchronized: batch statistics are global on both runs.
  - embedder and manipulators: the second half of the batch is a copy of the first, so mining in
    a half finds what it finds in the whole batch (every copy has its original's distances); the
    manipulators get their target attribute types with the data (no random draw), and FLAM's
    targets are chosen by partner (its default, a uniform draw, is seeded per replica).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTOL = 1e-4
GLOBAL_BATCH = 16


# ------------------------------------------------------------------------------------------------
# cluster plumbing


def free_ports(n):
    """n distinct free loopback ports (all bound at once, then released)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports, index):
    return json.dumps(
        {
            "cluster": {"worker": [f"localhost:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
    )


class Cluster:
    """`command` started once per task, each with its TF_CONFIG; output in log files."""

    def __init__(self, command, log_dir, tasks=2, tag="run"):
        ports = free_ports(tasks)
        self.logs = [os.path.join(log_dir, f"{tag}-task{i}.log") for i in range(tasks)]
        self.procs = []
        for i in range(tasks):
            env = {**os.environ, "TF_CONFIG": tf_config(ports, i), "TF_CPP_MIN_LOG_LEVEL": "2"}
            with open(self.logs[i], "w") as log:
                self.procs.append(
                    subprocess.Popen(
                        command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
                    )
                )

    def output(self, i):
        with open(self.logs[i], errors="replace") as f:
            return f.read()

    def wait(self, timeout):
        """Waits for every task; returns their exit codes (kills them all on a timeout)."""
        deadline = time.time() + timeout
        try:
            return [p.wait(timeout=max(1.0, deadline - time.time())) for p in self.procs]
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                "the cluster timed out:\n"
                + "\n".join(
                    f"--- task {i}:\n{self.output(i)[-3000:]}" for i in range(len(self.procs))
                )
            )

    def kill(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()

    def assert_succeeded(self, codes):
        assert codes == [0] * len(codes), "\n".join(
            f"--- task {i} (exit {c}):\n{self.output(i)[-4000:]}" for i, c in enumerate(codes)
        )


# ------------------------------------------------------------------------------------------------
# (a) one step on the cluster equals one step of one process


def _smoke_models():
    """{kind: (build, compile, global batch)}: the smoke preset's models, each with one global batch
    (numpy) arranged so that the 2-replica step must equal the global one (module docstring)."""
    import keras

    from flam_tf import config as config_lib
    from flam_tf import methods, stages, vocabulary
    from flam_tf.models import AttributeEmbedder, FeatureExtractor, FeatureManipulator

    smoke = config_lib.get_preset("smoke")
    d, e, m = smoke.data, smoke.extractor, smoke.manipulator
    feature_dim = e.feature_dim
    rng = np.random.default_rng(0)
    half = GLOBAL_BATCH // 2

    images = rng.uniform(0, 255, (GLOBAL_BATCH, d.image_size, d.image_size, 3)).astype("float32")
    ce_class = np.full(GLOBAL_BATCH, -1, np.int32)
    ce_class[[0, 1, 2, 3, 4, half + 1]] = [0, 1, 2, 3, 0, 5]  # 5 labelled rows vs 1
    attribute_images = rng.uniform(0, 255, images.shape).astype("float32")
    labels = rng.integers(0, 3, (GLOBAL_BATCH, 3)).astype("int32")
    labels[half:][rng.uniform(size=(half, 3)) < 0.6] = -1  # the second half: mostly missing
    extractor_batch = (
        (images, {"instance": np.arange(GLOBAL_BATCH, dtype="int32"), "ce_class": ce_class}),
        (attribute_images, labels),
    )

    features = rng.normal(size=(half, feature_dim)).astype("float32")
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    features = np.concatenate([features, features])
    attribute_labels = np.tile(rng.integers(-1, 3, (half, 3)), (2, 1)).astype("int32")
    targets = np.tile(np.arange(half) % 3, 2).astype("int32")

    def extractor():
        keras.utils.set_random_seed(0)
        return FeatureExtractor(
            backbone=e.backbone,
            pooling=e.pooling,
            feature_dim=feature_dim,
            image_size=d.image_size,
            num_ce_classes=8,
            margin=e.margin,
            triplet_weight=0.0,
            attribute_weight=e.attribute_weight,
            attribute_classes=[vocabulary.NUM_CLASSES[a] for a in vocabulary.ATTRIBUTE_TYPES],
        )

    def embedder():
        keras.utils.set_random_seed(1)
        return AttributeEmbedder(
            feature_dim,
            embedding_dim=smoke.embedder.embedding_dim,
            hidden_units=smoke.embedder.hidden_units,
            margin=smoke.embedder.margin,
        )

    def manipulator(variant):
        def build():
            frozen = embedder()
            keras.utils.set_random_seed(2)
            settings = stages.manipulator_settings(m, variant)
            settings["target_sampling"] = "partner"  # FLAM's uniform draw is seeded per replica
            model = FeatureManipulator(
                frozen,
                feature_dim,
                embedding_dim=frozen.embedding_dim,
                g_hidden=(m.g_hidden, m.g_hidden),
                d_hidden=(m.d_hidden, m.d_hidden),
                seed=0,
                **settings,
            )
            pseudo = model.pseudo_labels(features)
            model.initialize_memory(features, pseudo)
            if model.retrieval_weight:
                model.set_retrieval_bank(features, pseudo)
            return model

        return build

    def sgd(rate):
        return lambda model: model.compile(optimizer=keras.optimizers.SGD(rate))

    def gan(model):
        model.compile(g_optimizer=keras.optimizers.SGD(0.5), d_optimizer=keras.optimizers.SGD(0.5))

    return {
        "extractor": (extractor, sgd(0.1), extractor_batch),
        "embedder": (embedder, sgd(0.5), (features, attribute_labels)),
        "manipulator": (manipulator(methods.FLAM), gan, (features, targets)),
        "manipulator_paper": (manipulator(methods.FLAM_PAPER), gan, (features, targets)),
    }


def _one_batch(batch):
    import tensorflow as tf

    return tf.data.Dataset.from_tensors(batch)


def _first_leaf(batch):
    while isinstance(batch, (tuple, list, dict)):
        batch = batch[0] if not isinstance(batch, dict) else batch[sorted(batch)[0]]
    return batch


def _step_worker(out_dir):
    """One task of the cluster of `test_one_step_on_two_workers_equals_one_process`."""
    from flam_tf import distribute

    strategy = distribute.get_strategy("multi_worker")  # before TensorFlow runs any op
    cluster = distribute.Cluster(strategy)
    initial = np.load(os.path.join(out_dir, "initial.npz"))
    out = {
        "replicas": np.array(strategy.num_replicas_in_sync),
        "is_chief": np.array(cluster.is_chief),
        "chief_value": np.array(cluster.chief_value("who", lambda: cluster.task)),
    }
    for kind, (build, compile_fn, batch) in _smoke_models().items():
        with strategy.scope():
            model = build()
            compile_fn(model)
        count = len(model.get_weights())
        model.set_weights([initial[f"{kind}/{i}"] for i in range(count)])
        dataset = _one_batch(batch)
        local = strategy.experimental_local_results(
            next(iter(strategy.experimental_distribute_dataset(dataset)))
        )
        out[f"{kind}/slice"] = np.concatenate([_first_leaf(v).numpy() for v in local])
        distribute.fit(model, dataset, epochs=1, verbose=0)
        for i, w in enumerate(model.get_weights()):
            out[f"{kind}/{i}"] = w
    np.savez(os.path.join(out_dir, f"task{cluster.task_id}.npz"), **out)


def test_one_step_on_two_workers_equals_one_process(tmp_path):
    from flam_tf import distribute

    out_dir = str(tmp_path)
    initial, reference = {}, {}
    models = _smoke_models()
    for kind, (build, compile_fn, _) in models.items():
        model = build()
        compile_fn(model)
        for i, w in enumerate(model.get_weights()):
            initial[f"{kind}/{i}"] = w
    np.savez(os.path.join(out_dir, "initial.npz"), **initial)

    cluster = Cluster([sys.executable, __file__, "step", out_dir], out_dir, tag="step")
    # The single-process reference, meanwhile (default strategy, the whole batch at once).
    for kind, (build, compile_fn, batch) in models.items():
        model = build()
        compile_fn(model)
        model.set_weights([initial[f"{kind}/{i}"] for i in range(len(model.get_weights()))])
        distribute.fit(model, _one_batch(batch), epochs=1, verbose=0)
        reference[kind] = model.get_weights()
    cluster.assert_succeeded(cluster.wait(timeout=400))

    tasks = [np.load(os.path.join(out_dir, f"task{i}.npz")) for i in range(2)]
    assert [int(t["replicas"]) for t in tasks] == [2, 2]
    assert [bool(t["is_chief"]) for t in tasks] == [True, False]
    assert [str(t["chief_value"]) for t in tasks] == ["worker:0", "worker:0"]
    half = GLOBAL_BATCH // 2
    for kind, (_, _, batch) in models.items():
        rows = _first_leaf(batch)
        for w, task in enumerate(tasks):  # worker w: rows [w B/2, (w+1) B/2) of the batch
            np.testing.assert_array_equal(task[f"{kind}/slice"], rows[w * half : (w + 1) * half])
        changed, worst = 0, 0.0
        for i, want in enumerate(reference[kind]):
            w0 = initial[f"{kind}/{i}"]
            got = tasks[0][f"{kind}/{i}"]
            # The all-reduce hands both workers the same sum: their weights are identical.
            np.testing.assert_array_equal(got, tasks[1][f"{kind}/{i}"], err_msg=f"{kind} {i}")
            scale = float(np.max(np.abs(want - w0))) if w0.size else 0.0
            rounding = 4 * float(np.finfo(np.float32).eps) * float(np.max(np.abs(w0), initial=0))
            np.testing.assert_allclose(
                got - w0,
                want - w0,
                rtol=RTOL,
                atol=RTOL * scale + rounding + 1e-12,
                err_msg=f"{kind} weight {i}",
            )
            changed += int(not np.array_equal(want, w0))
            if scale:
                worst = max(worst, float(np.max(np.abs((got - w0) - (want - w0)))) / scale)
        assert changed > 0, kind  # the step did something
        print(f"{kind}: largest deviation {worst:.1e} of the tensor's largest update")


# ------------------------------------------------------------------------------------------------
# (b) a worker killed in a stage; the restarted cluster resumes


def _train_command(run_dir, stages, *overrides):
    return [
        sys.executable,
        "-m",
        "flam_tf.train",
        "--preset=smoke",
        f"--run_dir={run_dir}",
        "--strategy=multi_worker",
        f"--stages={','.join(stages)}",
        *overrides,
    ]


def _stages_json(run_dir):
    path = os.path.join(run_dir, "stages.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _kill_worker_after_backup(cluster, backup, timeout=400):
    """SIGKILLs worker 1 as soon as the chief's backup folder `backup` exists; returns the
    chief's exit code (it must stop by itself) and how long it took."""
    deadline = time.time() + timeout
    while not os.path.isdir(backup):
        codes = [p.poll() for p in cluster.procs]
        assert codes == [None, None], (
            f"a task ended before {backup}: {codes}\n"
            + cluster.output(0)[-3000:]
            + cluster.output(1)[-3000:]
        )
        assert time.time() < deadline, f"no {backup} after {timeout} s"
        time.sleep(0.02)
    cluster.procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    try:
        code = cluster.procs[0].wait(timeout=120)
    finally:
        cluster.kill()
    return code, time.time() - killed


def _event_file_pids(run_dir):
    """The process ids in the names of the TensorBoard event files of the run directory."""
    pids = set()
    for folder, _, files in os.walk(os.path.join(run_dir, "logs")):
        for name in files:
            if name.startswith("events.out.tfevents."):
                pids.add(int(name.split(".")[-3]))  # events.out.tfevents.T.HOST.PID.N.v2
    return pids


def _scratch_dirs(run_dir):
    import tempfile
    import zlib

    digest = zlib.crc32(os.path.abspath(run_dir).encode("utf-8"))
    return [os.path.join(tempfile.gettempdir(), f"flam_tf-worker{i}-{digest:08x}") for i in (1,)]


def test_cluster_killed_in_a_stage_resumes_from_its_backup(tmp_path):
    """The smoke preset's data and extractor stages, with 6 extractor steps per epoch (the
    preset's 15 only make the test longer). Worker 1 is killed in the extractor's 2nd epoch."""
    run_dir = str(tmp_path / "run")
    command = _train_command(run_dir, ["data", "extractor"], "--extractor_steps_per_epoch=6")
    first = Cluster(command, str(tmp_path), tag="first")
    code, seconds = _kill_worker_after_backup(
        first, os.path.join(run_dir, "checkpoints", "extractor", "epoch-00001")
    )
    chief = first.output(0)
    assert code == 3 and "flam_tf.train: cluster error:" in chief, chief[-3000:]
    print(f"the chief stopped {seconds:.1f} s after worker 1 was killed")
    before = _stages_json(run_dir)
    assert list(before) == ["data"]  # the extractor was killed, not finished
    assert os.path.isdir(_scratch_dirs(run_dir)[0])  # what the killed worker left in /tmp

    second = Cluster(command, str(tmp_path), tag="second")
    second.assert_succeeded(second.wait(timeout=400))
    for i in range(2):
        out = second.output(i)
        assert "== data: finished earlier, skipped" in out, out[-3000:]
        assert "extractor: resumed from the epoch-1 backup" in out, out[-3000:]
        assert "Epoch 2/2" in out and "Epoch 1/2" not in out, out[-3000:]  # epoch 1 not redone
    after = _stages_json(run_dir)
    assert after["data"] == before["data"]  # the data stage ran once
    assert list(after) == ["data", "extractor"]
    with open(os.path.join(run_dir, "logs", "extractor_history.json")) as f:
        assert len(json.load(f)["loss"]) == 2  # epoch 1 from the backup, epoch 2 resumed
    assert os.path.exists(os.path.join(run_dir, "models", "extractor.keras"))
    assert not os.path.exists(os.path.join(run_dir, "checkpoints", "extractor"))
    # Only the chief wrote the run directory; the workers' scratch folders are gone.
    assert _event_file_pids(run_dir) <= {first.procs[0].pid, second.procs[0].pid}
    assert not any(os.path.exists(d) for d in _scratch_dirs(run_dir))


@pytest.mark.slow
def test_smoke_pipeline_killed_and_resumed_equals_an_uninterrupted_cluster_run(tmp_path):
    """The whole smoke preset on 2 workers, worker 1 killed in the manipulator stage (after the
    first manipulator's epoch-1 backup), the cluster restarted: finished stages are skipped, the
    manipulator resumes from its backup, and the report equals an uninterrupted cluster run's."""
    from flam_tf import config as config_lib

    run_dir, clean_dir = str(tmp_path / "killed"), str(tmp_path / "clean")
    all_stages = list(config_lib.STAGES)
    every_pass = "--runtime_min_steps_per_epoch=1"  # a backup per pass: a kill between two
    first = Cluster(_train_command(run_dir, all_stages, every_pass), str(tmp_path), tag="first")
    code, _ = _kill_worker_after_backup(
        first, os.path.join(run_dir, "checkpoints", "manipulator", "epoch-00001"), timeout=900
    )
    assert code == 3, first.output(0)[-3000:]
    before = _stages_json(run_dir)
    assert list(before) == ["data", "extractor", "features", "embedders"]

    second = Cluster(_train_command(run_dir, all_stages, every_pass), str(tmp_path), tag="second")
    second.assert_succeeded(second.wait(timeout=900))
    for i in range(2):
        out = second.output(i)
        for stage in before:
            assert f"== {stage}: finished earlier, skipped" in out
        assert "manipulator: resumed from the epoch-1 backup" in out
    after = _stages_json(run_dir)
    assert all(after[s] == before[s] for s in before)
    assert list(after) == all_stages

    clean = Cluster(_train_command(clean_dir, all_stages, every_pass), str(tmp_path), tag="clean")
    clean.assert_succeeded(clean.wait(timeout=900))
    from test_resume import assert_same_report  # every report value, timings aside

    assert_same_report(run_dir, clean_dir)
    assert _event_file_pids(run_dir) <= {first.procs[0].pid, second.procs[0].pid}


# ------------------------------------------------------------------------------------------------
# TF_CONFIG from the cluster resolvers TensorFlow ships; roles (in process, no cluster)


def test_tf_config_from_slurm(monkeypatch, capsys):
    """`python -m flam_tf.distribute slurm` in task 3 of a 2-node x 2-task Slurm step."""
    from flam_tf import distribute
    from flam_tf.distribute import resolvers

    for name, value in {
        "SLURM_PROCID": "3",
        "SLURM_STEP_NUM_TASKS": "4",
        "SLURM_STEP_NODELIST": "node[1-2]",
        "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    }.items():
        monkeypatch.setenv(name, value)
    resolvers._main(["slurm", "--port=12345"])
    config = json.loads(capsys.readouterr().out)
    assert config == {
        "cluster": {"worker": ["node1:12345", "node1:12346", "node2:12345", "node2:12346"]},
        "task": {"type": "worker", "index": 3},
    }
    assert not distribute.is_chief_task(json.dumps(config))


def test_tf_config_from_kubernetes():
    """KubernetesClusterResolver (with a stand-in for the Kubernetes API client): the pods of a
    label selector, sorted by name; this pod's task found by its address."""
    from types import SimpleNamespace

    import tensorflow as tf

    from flam_tf import distribute
    from flam_tf.distribute import resolvers

    pods = [
        SimpleNamespace(
            metadata=SimpleNamespace(name=f"flam-{i}"),
            status=SimpleNamespace(phase="Running", host_ip=f"10.0.0.{i + 1}"),
        )
        for i in (1, 0)
    ]

    class Client:
        def list_pod_for_all_namespaces(self, label_selector):
            assert label_selector == "app=flam"
            return SimpleNamespace(items=pods)

    resolver = tf.distribute.cluster_resolver.KubernetesClusterResolver(
        {"worker": ["app=flam"]}, tf_server_port=2222, override_client=Client()
    )
    cluster = resolver.cluster_spec().as_dict()
    assert cluster == {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}
    task = resolvers._own_task(cluster, addresses={"10.0.0.2"})
    assert json.loads(distribute.tf_config_from_resolver(resolver, *task)) == {
        "cluster": cluster,
        "task": {"type": "worker", "index": 1},
    }
    with pytest.raises(ValueError, match="does not know this task"):
        distribute.tf_config_from_resolver(resolver)


def test_roles_without_a_cluster():
    from flam_tf import distribute

    assert distribute.is_chief_task("")
    worker = {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}
    assert distribute.is_chief_task(json.dumps(worker))
    worker["cluster"]["chief"] = ["c:1"]
    assert not distribute.is_chief_task(json.dumps(worker))
    cluster = distribute.Cluster()  # the default strategy: the chief of a cluster of one
    assert cluster.is_chief and not cluster.multi_worker and cluster.num_tasks == 1
    assert cluster.chief_value("x", lambda: 42) == 42
    assert cluster.scratch_dir("/tmp/run") is None


if __name__ == "__main__":  # a task of test_one_step_on_two_workers_equals_one_process
    sys.path.insert(0, REPO)
    if sys.argv[1] == "step":
        _step_worker(sys.argv[2])
