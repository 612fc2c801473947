"""The run directory: one place that names every file a run reads or writes.

    D/config.json            resolved ExperimentConfig
    D/stages.json            finished stages and their wall times (a rerun skips these)
    D/data/                  the synthetic benchmark (or the combined manifest of real sources)
    D/checkpoints/<stage>/   mid-stage backups (keras BackupAndRestore); gone once a stage ends
    D/models/*.keras         trained models
    D/features/              feature store: features.npz (every image), fam_gallery.npz
    D/logs/<stage>/          TensorBoard summaries; D/logs/<stage>_history.json epoch metrics
    D/report.json, D/report.md, D/figures/*.png
    D/export/                TF Serving layout (export stage)
"""

import json
import os
import time
from typing import Any, Dict, Optional

from flam_tf import config as config_lib


# Dotted config names a rerun may change in an existing run directory (see check_or_write_config).
ADDITIVE_SETTINGS = ("evaluation.ablations",)


class RunDirectory:
    """Paths and bookkeeping of one run directory `root`."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        for sub in ("data", "checkpoints", "models", "features", "logs", "figures"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def manifest_path(self) -> str:
        return self.path("data", "manifest.csv")

    def model_path(self, name: str) -> str:
        return self.path("models", f"{name}.keras")

    def checkpoint_dir(self, stage: str) -> str:
        return self.path("checkpoints", stage)

    def log_dir(self, stage: str) -> str:
        return self.path("logs", stage)

    # -- config ---------------------------------------------------------------------------------
    def check_or_write_config(self, config: config_lib.ExperimentConfig) -> None:
        """Writes config.json, or checks that an existing one matches `config`.

        Settings that only add work to a finished run (`ADDITIVE_SETTINGS`: the Table 3 ablations)
        may change: config.json is rewritten, and `--stages=manipulator,evaluate --force` then
        trains just what is missing.

        Raises:
            ValueError: the run directory was made with other settings (lists what differs), so
                skipped stages would not match this configuration.
        """
        path = self.path("config.json")
        if os.path.exists(path):
            with open(path) as f:
                previous = json.load(f)
            changed = [c for c in config_lib.diff(previous, config.to_dict())
                       if c.split(":")[0] not in ADDITIVE_SETTINGS]
            if not changed and previous != config.to_dict():
                write_json(path, config.to_dict())
            if changed:
                raise ValueError(
                    f"{path} was written with other settings; use a new --run_dir or the same "
                    f"flags. Differences: " + "; ".join(changed))
            return
        write_json(path, config.to_dict())

    # -- stage bookkeeping ------------------------------------------------------------------------
    def _stages(self) -> Dict[str, Any]:
        path = self.path("stages.json")
        if not os.path.exists(path):
            return {}
        with open(path) as f:
            return json.load(f)

    def is_done(self, stage: str) -> bool:
        return stage in self._stages()

    def mark_done(self, stage: str, seconds: float, **info: Any) -> None:
        stages = self._stages()
        stages[stage] = {"seconds": round(seconds, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                         **info}
        write_json(self.path("stages.json"), stages)

    def timings(self) -> Dict[str, float]:
        """{stage: seconds} of the finished stages, in pipeline order."""
        stages = self._stages()
        return {s: stages[s]["seconds"] for s in config_lib.STAGES if s in stages}

    def stage_info(self, stage: str) -> Optional[Dict[str, Any]]:
        return self._stages().get(stage)


def write_json(path: str, value: Any) -> None:
    """Writes JSON atomically (write aside, then rename): a crash never leaves half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=False, default=_to_builtin)
        f.write("\n")
    os.replace(tmp, path)


def _to_builtin(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"Not JSON serialisable: {type(value)}")
