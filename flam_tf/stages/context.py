"""What every stage gets: the config, the run directory, the strategy and this task's role.

Multi-worker (`--strategy=multi_worker`, see flam_tf.distribute): only the chief writes the run
directory. A stage writes through `Context.output_path` / `Context.save_model`, which give a
worker its scratch folder, and reads the decisions the chief took through `Context.exists` /
`Context.resume_epoch`.
"""

import os
import shlex
from typing import Dict, List, Optional

import keras
import tensorflow as tf

from flam_tf import config as config_lib
from flam_tf import distribute, methods
from flam_tf.data import manifest as manifest_lib
from flam_tf.epoch_backup import EpochBackup, merged_history, resume_epoch, seed_everything
from flam_tf.run_directory import RunDirectory, write_json

# Every manipulator row's model file stem, FLAM's first.
_MANIPULATOR_STEMS = tuple(
    methods.variant_model_name(v) for v in (methods.FLAM, *methods.PAPER_SWITCHES)
)


class Context:
    """What every stage gets: config, run directory, strategy, and this task's role in the
    cluster (`cluster`; one process: the chief of a cluster of one)."""

    def __init__(
        self,
        config: config_lib.ExperimentConfig,
        run: RunDirectory,
        strategy: tf.distribute.Strategy,
        cluster: Optional[distribute.Cluster] = None,
    ):
        self.config = config
        self.run = run
        self.strategy = strategy
        self.cluster = cluster or distribute.Cluster(strategy)
        # A worker's private folder for what Keras makes it write (None on the chief).
        self.scratch = self.cluster.scratch_dir(run.root)
        distribute.remove_tree(self.scratch)  # what a killed worker left
        self._manifest: Optional[manifest_lib.Manifest] = None

    # -- multi-worker: where a task writes, what the chief decided --------------------------------
    def output_path(self, path: str) -> str:
        """Where this task writes the run-directory file `path`: `path` on the chief; on a worker
        the same relative path in its scratch folder (removed by `close`)."""
        if self.scratch is None:
            return path
        out = os.path.join(self.scratch, os.path.relpath(path, self.run.root))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        return out

    def save_model(self, model: keras.Model, path: str) -> None:
        """`model.save(path)` on the chief; a worker saves too (reading the metrics' variables is
        an all-reduce), into its scratch folder, and deletes the file."""
        out = self.output_path(path)
        save_model_atomically(model, out)
        if out != path:
            os.remove(out)

    def load_model(self, name: str, compile: bool = True) -> keras.Model:
        """The run's trained model `name` (models/<name>.keras).

        Raises:
            FileNotFoundError: the file is missing, naming it and how to retrain it.
            ValueError: the file cannot be loaded (corrupt, or saved by a version of flam_tf whose
                layers held other weights), naming it and how to retrain it.
        """
        path = self.run.model_path(name)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is missing; {self.retrain_advice(name)}")
        try:
            return keras.saving.load_model(path, compile=compile)
        except ValueError as e:
            # Keras names the file again (and calls it "not found" when it is no zip file).
            reason = " ".join(str(e).replace(path, "it").split())[:160]
            raise ValueError(
                f"{path} cannot be loaded ({reason}); it may come from another version of "
                f"flam_tf; {self.retrain_advice(name)}"
            ) from e

    def retrain_advice(self, name: str) -> str:
        """How to (re)train the model `name` of this run, and what was trained on it.

        The manipulator and baselines stages skip a model (or a pixel baseline's features file)
        that exists, so that a resumed run keeps what it finished: `--force` alone does not
        replace those, their files must go first. A model other stages were trained on takes
        those with it; a served one (the extractor, the embedder inside FLAM, FLAM) is exported
        again. The command repeats the run's comparison flags, which may be dropped or added on
        a finished run (config.json would silently change, and the report lose or gain rows)."""
        run = self.run
        evaluation = self.config.evaluation
        flags = "".join(
            f" --{'' if on else 'no'}evaluation_{what}"
            for what, on in (("compare", evaluation.compare), ("ablations", evaluation.ablations))
        )
        command = f"python -m flam_tf.train --run_dir={shlex.quote(run.root)}{flags}"
        if name == "extractor":
            remove = [run.model_path(name), run.features_path, run.fam_gallery_path] + [
                run.model_path(stem)
                for stem in ("embedder", *_MANIPULATOR_STEMS, *methods.FEATURE_BASELINES.values())
            ]
            stages = "extractor,features,embedders,manipulator,baselines,evaluate,export"
        elif name == "embedder":
            remove = [run.model_path(stem) for stem in (name, *_MANIPULATOR_STEMS)]
            stages = "embedders,manipulator,evaluate,export"
        elif name in _MANIPULATOR_STEMS:
            remove = [run.model_path(name)]
            stages = "manipulator,evaluate" + (",export" if name == _MANIPULATOR_STEMS[0] else "")
        elif name in methods.PIXEL_BASELINES.values():
            remove = [run.model_path(name), run.pixel_features_path(name)]
            stages = "baselines,evaluate"
        else:
            remove = [run.model_path(name)]
            stages = "baselines,evaluate"
        listed = [path for path in remove if os.path.exists(path)]
        step = f"remove {' '.join(shlex.quote(p) for p in listed)} and run" if listed else "run"
        return (
            f"to train it again with the run's other flags, {step} {command} "
            f"--stages={stages} --force"
        )

    def exists(self, path: str) -> bool:
        """Whether `path` exists, as the chief sees it (the same answer on every task)."""
        return self.cluster.chief_value(
            f"exists {os.path.relpath(path, self.run.root)}", lambda: os.path.exists(path)
        )

    def close(self) -> None:
        """Removes a worker's scratch folder."""
        distribute.remove_tree(self.scratch)

    @property
    def manifest(self) -> manifest_lib.Manifest:
        if self._manifest is None:
            self._manifest = manifest_lib.read_manifest(self.run.manifest_path)
        return self._manifest

    def callbacks(self, name: str) -> List[keras.callbacks.Callback]:
        """Epoch backups for resuming, TensorBoard summaries, and a NaN guard, for the model
        `name` (a stage, or one of the models a stage trains)."""
        backup_dir = self.run.checkpoint_dir(name)
        return [
            EpochBackup(
                backup_dir,
                None if self.scratch is None else self.output_path(backup_dir),
                name=name,
            ),
            keras.callbacks.TensorBoard(
                self.output_path(self.run.log_dir(name)), write_graph=False
            ),
            keras.callbacks.TerminateOnNaN(),
        ]

    def resume_epoch(self, name: str) -> int:
        """Epochs the model `name` already trained before an interruption (0: none); the
        chief's backups decide, for every task."""
        return self.cluster.chief_value(
            f"resume {name}", lambda: resume_epoch(self.run.checkpoint_dir(name))
        )

    def seed(self, name: str) -> int:
        """Seeds the global random state for the stage or model `name` (see epoch_backup)."""
        return seed_everything(self.config.runtime.seed, name)

    def save_history(
        self, name: str, history: keras.callbacks.History, callbacks: List[keras.callbacks.Callback]
    ) -> Dict[str, List[float]]:
        """Writes the epoch metrics of the whole fit, epochs before an interruption included."""
        backup = next((c for c in callbacks if isinstance(c, EpochBackup)), None)
        merged = merged_history(backup, history)
        write_json(self.output_path(self.run.path("logs", f"{name}_history.json")), merged)
        return merged

    def fit(
        self, name: str, model: keras.Model, dataset, epochs: int, steps_per_epoch: int
    ) -> Dict[str, List[float]]:
        """Trains the compiled `model` (the model `name`) on `dataset` with this context's
        callbacks, resuming from its epoch backups; returns the metrics of the whole fit."""
        callbacks = self.callbacks(name)
        history = distribute.fit(
            model,
            dataset,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            verbose=2,
        )
        return self.save_history(name, history, callbacks)


def save_model_atomically(model: keras.Model, path: str) -> None:
    """model.save, atomic: a kill while it writes leaves no file at `path` (a partial .keras
    file there would pass for a finished model, e.g. a manipulator variant, on resume)."""
    folder, name = os.path.split(path)
    for stale in os.listdir(folder) if os.path.isdir(folder) else []:
        if stale.startswith(".tmp-") and stale.endswith(f"-{name}"):  # a killed save's
            os.remove(os.path.join(folder, stale))
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{name}")  # Keras wants the .keras suffix
    model.save(tmp)
    os.replace(tmp, path)
