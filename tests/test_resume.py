"""Same seed, same report, however a run is split or interrupted.

Each stage seeds itself from the run seed and its own name, input pipelines continue where a
killed process stopped, and epoch backups (flam_tf.epoch_backup) survive a kill at any moment.
The reference is the session's clean smoke run (`smoke_run`, one process, every stage).
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SMOKE_FLAGS

from flam_tf import config as config_lib
from flam_tf import (
    epoch_backup,
    models,  # noqa: F401  (registers the classes load_model needs)
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINING = ("data", "extractor", "features", "embedders", "manipulator", "baselines", "evaluate")


def _flatten(value, prefix=""):
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key != "timings_s":  # wall times differ between any two runs
                out.update(_flatten(item, f"{prefix}/{key}"))
        return out
    if isinstance(value, list):
        out = {}
        for i, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}/{i}"))
        return out
    return {prefix: value}


def _report(run_dir):
    with open(os.path.join(run_dir, "report.json")) as f:
        return _flatten(json.load(f))


def assert_same_report(run_dir, reference_dir):
    got, want = _report(run_dir), _report(reference_dir)
    assert set(got) == set(want)
    numbers = [k for k, v in want.items() if isinstance(v, (int, float))]
    assert len(numbers) > 200  # the whole report, not a corner of it
    differ = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not differ, f"{len(differ)} of {len(want)} report values differ: " + str(
        dict(list(differ.items())[:5])
    )


def _command(run_dir, stages=TRAINING, *flags):
    return [
        sys.executable,
        "-m",
        "flam_tf.train",
        *SMOKE_FLAGS,
        f"--run_dir={run_dir}",
        f"--stages={','.join(stages)}",
        *flags,
    ]


# One pass over the data per Keras epoch, so that the smoke preset's short fits on features
# back up after every pass and a kill can land between two epochs (results do not depend on it).
EVERY_PASS = "--runtime_min_steps_per_epoch=1"


def _run(cmd):
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _kill_during(run_dir, watch, delay_s):
    """Starts the training stages, SIGKILLs the process `delay_s` after the checkpoint folder of
    `watch` first appears; returns the stages finished at the kill."""
    proc = subprocess.Popen(
        _command(run_dir, TRAINING, EVERY_PASS),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    folder = os.path.join(run_dir, "checkpoints", watch)
    deadline = time.time() + 300
    while not (os.path.isdir(folder) and os.listdir(folder)):
        assert proc.poll() is None, f"the run ended before {watch} wrote a backup"
        assert time.time() < deadline, f"no backup of {watch} appeared"
        time.sleep(0.02)
    time.sleep(delay_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    path = os.path.join(run_dir, "stages.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(json.load(f))


def test_run_split_at_every_stage_boundary_equals_one_run(smoke_run, tmp_path):
    """Every stage in its own process gives the report of one process running them all."""
    reference, _ = smoke_run
    run_dir = str(tmp_path / "split")
    for stage in TRAINING:
        _run(_command(run_dir, [stage]))
    assert_same_report(run_dir, reference)


@pytest.mark.parametrize("watch", ["extractor", "manipulator"])
def test_run_killed_inside_a_stage_and_resumed_equals_one_run(smoke_run, tmp_path, watch):
    """SIGKILL at a random moment after the stage's first epoch backup; the rerun resumes from
    the backup (not from epoch 1) and ends with the clean run's report, to the last bit."""
    reference, _ = smoke_run
    run_dir = str(tmp_path / "killed")
    finished = _kill_during(run_dir, watch, random.uniform(0.0, 1.5))
    result = _run(_command(run_dir, TRAINING, EVERY_PASS))
    for stage in finished:
        assert f"== {stage}: finished earlier, skipped" in result.stdout
    assert_same_report(run_dir, reference)


def _extractor_weights(run_dir):
    model = keras.saving.load_model(os.path.join(run_dir, "models", "extractor.keras"))
    return model.get_weights()


@pytest.mark.slow
def test_resume_survives_20_kills_at_random_moments(tmp_path):
    """20 SIGKILLs at uniformly random moments of the data and extractor stages (backup writes
    included): every rerun finishes with the clean run's extractor, to the last bit."""
    cmd = lambda d: _command(d, ["data", "extractor"]) + ["--extractor_epochs=6"]  # noqa: E731
    clean_dir = str(tmp_path / "clean")
    start = time.time()
    _run(cmd(clean_dir))
    span = time.time() - start
    clean = _extractor_weights(clean_dir)
    rng = random.Random(0)
    for i in range(20):
        run_dir = str(tmp_path / f"run{i}")
        proc = subprocess.Popen(
            cmd(run_dir), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            proc.wait(timeout=rng.uniform(0.3, 1.0) * span)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        _run(cmd(run_dir))
        for a, b in zip(clean, _extractor_weights(run_dir)):
            np.testing.assert_array_equal(a, b, err_msg=f"kill {i}")


def test_force_reruns_a_finished_stage_and_its_absence_skips_it(tmp_path):
    run_dir = str(tmp_path / "run")
    _run(_command(run_dir, ["data"]))
    with open(os.path.join(run_dir, "stages.json")) as f:
        first = json.load(f)["data"]["finished"]
    skipped = _run(_command(run_dir, ["data"]))
    assert "== data: finished earlier, skipped" in skipped.stdout
    time.sleep(1.1)  # "finished" has a resolution of one second
    forced = _run(_command(run_dir, ["data"]) + ["--force"])
    assert "== data: finished earlier" not in forced.stdout and "== data: done" in forced.stdout
    with open(os.path.join(run_dir, "stages.json")) as f:
        assert json.load(f)["data"]["finished"] != first


# ------------------------------------------------------------------------------------------------
# EpochBackup and stage seeds, in process


class _Stop(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise KeyboardInterrupt  # as a kill would, between two epochs


def _toy_model_and_data(seed, rows):
    """A compiled model with dropout (a SeedGenerator) and Adam, and `rows` regression rows."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(1),
        ]
    )
    model.compile(keras.optimizers.Adam(0.01), loss="mse")
    x = np.random.default_rng(seed).normal(size=(rows, 6)).astype(np.float32)
    return model, x, x.sum(axis=1, keepdims=True)


def _toy_fit(backup_dir, epochs=4, stop_after=None):
    """The toy model fitted with epoch backups; returns its weights and the merged history."""
    model, x, y = _toy_model_and_data(7, 64)
    callbacks = [epoch_backup.EpochBackup(backup_dir)]
    if stop_after:
        callbacks.append(_Stop(stop_after))
    skip = epoch_backup.resume_epoch(backup_dir)
    steps = 4
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(64, seed=1).batch(16).repeat()
    history = model.fit(
        ds.skip(skip * steps), epochs=epochs, steps_per_epoch=steps, callbacks=callbacks, verbose=0
    )
    return model.get_weights(), epoch_backup.merged_history(callbacks[0], history)


def test_epoch_backup_resume_equals_an_uninterrupted_fit(tmp_path):
    clean, clean_history = _toy_fit(str(tmp_path / "clean"))
    backup = str(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        _toy_fit(backup, stop_after=2)
    assert epoch_backup.resume_epoch(backup) == 2
    resumed, history = _toy_fit(backup)
    for a, b in zip(clean, resumed):
        np.testing.assert_array_equal(a, b)  # dropout masks and Adam moments restored too
    assert history == clean_history and len(history["loss"]) == 4
    assert not os.path.exists(backup)  # removed once the fit ends


def test_a_backup_killed_while_written_leaves_the_previous_one(tmp_path):
    backup = str(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        _toy_fit(backup, stop_after=2)
    # What a kill during the third epoch's backup leaves: a half-written temporary folder.
    partial = os.path.join(backup, ".tmp-epoch-00003")
    os.makedirs(partial)
    with open(os.path.join(partial, epoch_backup.WEIGHTS_FILE), "wb") as f:
        f.write(b"\x89HDF\r\n")  # truncated
    assert epoch_backup.resume_epoch(backup) == 2
    clean, _ = _toy_fit(str(tmp_path / "clean"))
    resumed, _ = _toy_fit(backup)
    for a, b in zip(clean, resumed):
        np.testing.assert_array_equal(a, b)


def test_stage_seeds_are_stable_and_distinct():
    # Pinned: a stage's seed must not change between processes or Python versions.
    assert epoch_backup.stage_seed(0, "extractor") == epoch_backup.stage_seed(0, "extractor")
    seeds = {epoch_backup.stage_seed(s, n) for s in (0, 1) for n in config_lib.STAGES}
    assert len(seeds) == 2 * len(config_lib.STAGES)
    assert all(0 <= s < 2**31 - 1 for s in seeds)
    script = "from flam_tf.epoch_backup import stage_seed; print(stage_seed(3, 'manipulator'))"
    other = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert int(other.stdout) == epoch_backup.stage_seed(3, "manipulator")


def _feature_fit(backup_dir, min_steps, stop_after=None):
    """20 passes of 3 batches through fits.feature_dataset, in as many Keras epochs as
    `min_steps` makes."""
    from flam_tf.stages import fits

    model, x, y = _toy_model_and_data(3, 48)
    callbacks = [epoch_backup.EpochBackup(backup_dir)] if backup_dir else []
    if stop_after:
        callbacks.append(_Stop(stop_after))
    ds, epochs, steps = fits.feature_dataset(
        x,
        y,
        16,
        seed=5,
        passes=20,
        resume_epoch=epoch_backup.resume_epoch(backup_dir) if backup_dir else 0,
        min_steps=min_steps,
    )
    model.fit(ds, epochs=epochs, steps_per_epoch=steps, callbacks=callbacks, verbose=0)
    return model.get_weights(), (epochs, steps)


def test_grouped_passes_train_on_the_same_batches_and_resume(tmp_path):
    """Grouping passes into one Keras epoch changes neither the batches nor the weights, and a
    fit killed between two grouped epochs resumes to the same weights."""
    per_pass, shape = _feature_fit(None, min_steps=1)
    assert shape == (20, 3)  # one pass per Keras epoch
    grouped, shape = _feature_fit(None, min_steps=12)
    assert shape == (5, 12)  # 4 passes per Keras epoch
    for a, b in zip(per_pass, grouped):
        np.testing.assert_array_equal(a, b)
    backup = str(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        _feature_fit(backup, min_steps=12, stop_after=2)
    assert epoch_backup.resume_epoch(backup) == 2
    resumed, _ = _feature_fit(backup, min_steps=12)
    for a, b in zip(per_pass, resumed):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "passes, steps, expected",
    [
        (60, 21, 10),
        (10, 64, 5),
        (40, 64, 4),
        (3, 5, 3),
        (7, 300, 1),
        (1, 2, 1),
        (7, 64, 1),
        (13, 21, 13),
        (12, 100, 2),
    ],
)
def test_passes_per_epoch(passes, steps, expected):
    from flam_tf.stages import fits

    assert fits.passes_per_epoch(passes, steps, min_steps=200) == expected


def test_a_backup_made_with_other_steps_per_epoch_is_refused(tmp_path):
    """A fit grouped differently from the backup's (other settings, or a backup that did not
    record its steps) would resume from the wrong batch: refused, naming what to remove."""
    backup = str(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        _feature_fit(backup, min_steps=12, stop_after=2)  # 12 steps per epoch
    with pytest.raises(ValueError, match=r"made with 12 steps per epoch and this fit runs 3"):
        _feature_fit(backup, min_steps=1)
    state = os.path.join(epoch_backup._backups(backup)[-1][1], epoch_backup.STATE_FILE)
    with open(state) as f:
        saved = json.load(f)
    del saved["steps_per_epoch"]
    with open(state, "w") as f:
        json.dump(saved, f)
    with pytest.raises(ValueError, match="an unrecorded number of steps per epoch"):
        _feature_fit(backup, min_steps=12)
