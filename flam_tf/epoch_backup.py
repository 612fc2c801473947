"""Epoch backups that a kill at any moment cannot damage, and per-stage seeds.

A training stage killed mid-way resumes from its last finished epoch and ends with the numbers an
uninterrupted run gives. That takes three things, all here:

* `EpochBackup`, a Keras callback in the role of `keras.callbacks.BackupAndRestore`. Each epoch's
  state is written into a temporary folder that is renamed into place only once complete
  (`epoch-00003/`), and the previous backup is removed only after that, so a kill while a backup
  is being written leaves the previous good one. It saves what BackupAndRestore does not: the
  states of the models' `SeedGenerator`s (dropout masks, the manipulator's target draws) and the
  epoch metrics logged so far.
* `resume_epoch(backup_dir)`: the epoch a stage will resume from, read before its input pipeline
  is built, so the pipeline can skip the batches the killed process already used
  (`pipeline.pk_dataset(skip_batches=...)`).
* `stage_seed(seed, name)`: each stage (and each model a stage trains) seeds the global random
  state from the run seed and its own name, so what a stage does depends on nothing an earlier
  stage did in the same process: a run split across invocations equals one run.

In a multi-worker cluster every task restores from the chief's backups (`backup_dir`, on the
shared file system: the weights are the same on every task), and every task writes each epoch's
backup, because reading the metrics' variables is an all-reduce every task must join; a worker
writes its copy into its own `write_dir` and deletes it at once (Keras' temp-dir pattern).
"""

import json
import os
import re
import shutil
import zlib
from typing import Dict, List, Optional, Tuple

import keras
import numpy as np

_BACKUP = re.compile(r"^epoch-(\d+)$")
WEIGHTS_FILE = "model.weights.h5"
SEEDS_FILE = "seed_states.npz"
STATE_FILE = "state.json"


def stage_seed(seed: int, name: str) -> int:
    """A seed for the stage (or model) `name` of a run seeded with `seed`: stable across
    processes and Python versions (CRC32 of the name, not Python's salted `hash`)."""
    return int((int(seed) * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2**31 - 1))


def seed_everything(seed: int, name: str) -> int:
    """`keras.utils.set_random_seed(stage_seed(seed, name))` (Python, NumPy, TensorFlow and
    Keras' global seed); returns the seed."""
    value = stage_seed(seed, name)
    keras.utils.set_random_seed(value)
    return value


def _backups(backup_dir: str) -> List[Tuple[int, str]]:
    """(epoch, folder) of every complete backup under `backup_dir`, oldest first."""
    if not os.path.isdir(backup_dir):
        return []
    found = []
    for name in os.listdir(backup_dir):
        match = _BACKUP.match(name)
        folder = os.path.join(backup_dir, name)
        if match and os.path.exists(os.path.join(folder, STATE_FILE)):
            found.append((int(match.group(1)), folder))
    return sorted(found)


def resume_epoch(backup_dir: str) -> int:
    """The number of epochs the newest complete backup holds (0: none, the stage starts afresh)."""
    backups = _backups(backup_dir)
    return backups[-1][0] if backups else 0


def _seed_generators(model: keras.Model) -> List:
    """Every SeedGenerator of `model` and its sublayers, in a stable order."""
    generators, seen = [], set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for generator in getattr(layer, "_seed_generators", []):
            if id(generator) not in seen:
                seen.add(id(generator))
                generators.append(generator)
    return generators


class EpochBackup(keras.callbacks.Callback):
    """Backs up the training state after every epoch and restores it when `fit` starts again.

    The state is the model's weights with its optimizer(s) (`save_weights`), the states of its
    seed generators, the epoch count and the epoch metrics so far (`previous_history`, to be
    prepended to the resumed fit's history). The backup folder is removed when `fit` ends.

    Args:
        backup_dir: folder for this model's backups (one per model: do not share it).
        write_dir: a worker of a multi-worker cluster: its private folder, where it writes each
            epoch's backup and deletes it; it restores from `backup_dir` (the chief's), which it
            never writes. None (the chief, or one process): backups go to `backup_dir`.
        name: the model, in the line printed when a fit resumes.
    """

    def __init__(
        self, backup_dir: str, write_dir: Optional[str] = None, name: Optional[str] = None
    ):
        super().__init__()
        self.backup_dir = backup_dir
        self.write_dir = write_dir
        self.name = name or os.path.basename(os.path.normpath(backup_dir))
        self.previous_history: Dict[str, List[float]] = {}
        self.restored_epoch = 0

    def on_train_begin(self, logs=None):
        if self.write_dir is None:
            self._remove_temporaries()
        else:
            shutil.rmtree(self.write_dir, ignore_errors=True)
        backups = _backups(self.backup_dir)
        if not backups:
            return
        epoch, folder = backups[-1]
        with open(os.path.join(folder, STATE_FILE), encoding="utf-8") as f:
            state = json.load(f)
        steps = self.params.get("steps") if self.params else None
        if state.get("steps_per_epoch") != steps:
            # Epochs count steps; the fit's data stream skips resume_epoch * steps batches. A
            # backup made with other steps per epoch (other settings, or a version of this
            # package that did not record them) would resume from the wrong batch.
            made = state.get("steps_per_epoch", "an unrecorded number of")
            raise ValueError(
                f"{folder}: this backup was made with {made} steps per epoch and "
                f"this fit runs {steps}, so its epoch count cannot be resumed; "
                f"remove {self.backup_dir} to retrain this model from its start"
            )
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(folder, WEIGHTS_FILE))
        with np.load(os.path.join(folder, SEEDS_FILE)) as saved:
            generators = _seed_generators(self.model)
            if len(saved.files) != len(generators):
                raise ValueError(
                    f"{folder}: the backup holds {len(saved.files)} seed states, the "
                    f"model has {len(generators)} seed generators; remove "
                    f"{self.backup_dir} to restart the stage"
                )
            for i, generator in enumerate(generators):
                generator.state.assign(saved[f"s{i}"])
        self.previous_history = state.get("history", {})
        self.model._initial_epoch = epoch
        self.restored_epoch = epoch
        print(f"{self.name}: resumed from the epoch-{epoch} backup", flush=True)

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.previous_history.setdefault(key, []).append(float(value))
        target = self.backup_dir if self.write_dir is None else self.write_dir
        os.makedirs(target, exist_ok=True)
        final = os.path.join(target, f"epoch-{epoch + 1:05d}")
        tmp = os.path.join(target, f".tmp-epoch-{epoch + 1:05d}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        self.model.save_weights(os.path.join(tmp, WEIGHTS_FILE))
        states = {
            f"s{i}": np.asarray(g.state.numpy()) for i, g in enumerate(_seed_generators(self.model))
        }
        np.savez(os.path.join(tmp, SEEDS_FILE), **states)
        with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(
                {
                    "epoch": epoch + 1,
                    "steps_per_epoch": self.params.get("steps"),
                    "history": self.previous_history,
                },
                f,
            )
            f.flush()
            os.fsync(f.fileno())
        if self.write_dir is not None:  # a worker: its copy was only written to take part
            shutil.rmtree(self.write_dir, ignore_errors=True)
            return
        shutil.rmtree(final, ignore_errors=True)  # only if a crashed run left the same epoch
        os.rename(tmp, final)
        for old_epoch, folder in _backups(self.backup_dir):
            if old_epoch < epoch + 1:
                shutil.rmtree(folder, ignore_errors=True)

    def on_train_end(self, logs=None):
        shutil.rmtree(
            self.backup_dir if self.write_dir is None else self.write_dir, ignore_errors=True
        )

    def _remove_temporaries(self) -> None:
        if os.path.isdir(self.backup_dir):
            for name in os.listdir(self.backup_dir):
                if name.startswith(".tmp-"):
                    shutil.rmtree(os.path.join(self.backup_dir, name), ignore_errors=True)


def merged_history(
    backup: Optional[EpochBackup], history: keras.callbacks.History
) -> Dict[str, List[float]]:
    """Epoch metrics of a whole stage: those the backup restored, then the resumed fit's."""
    if backup is not None and backup.previous_history:
        return {k: list(v) for k, v in backup.previous_history.items()}
    return {k: [float(x) for x in v] for k, v in history.history.items()}
