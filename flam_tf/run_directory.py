"""The run directory: one place that names every file a run reads or writes.

D/config.json            resolved ExperimentConfig
D/stages.json            finished stages and their wall times (a rerun skips these)
D/data/                  the synthetic benchmark (or the combined manifest of real sources)
D/checkpoints/<model>/   mid-stage epoch backups (epoch_backup.EpochBackup); gone once a fit ends
D/models/*.keras         trained models
D/features/              feature store: features.npz (every image), fam_gallery.npz
D/logs/<stage>/          TensorBoard summaries; D/logs/<stage>_history.json epoch metrics
D/report.json, D/report.md, D/figures/*.png
D/export/                TF Serving layout (export stage)
"""

import json
import os
import tempfile
import time
from typing import Any, Dict, Optional

from flam_tf import config as config_lib

# Files of a run directory, relative to its root (RunDirectory's properties give full paths; the
# module-level `run_file` serves code that holds only the root, such as the exporter and clients).
CONFIG_JSON = "config.json"
STAGES_JSON = "stages.json"
MANIFEST_CSV = os.path.join("data", "manifest.csv")
FEATURES_NPZ = os.path.join("features", "features.npz")
FAM_GALLERY_NPZ = os.path.join("features", "fam_gallery.npz")
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
EXPORT_DIR = "export"


def run_file(root: str, name: str) -> str:
    """The path of the run-directory file `name` (one of the names above) under `root`."""
    return os.path.join(root, name)


# Dotted config names a rerun may change in an existing run directory (see check_or_write_config).
ADDITIVE_SETTINGS = ("evaluation.compare", "evaluation.ablations")


class RunDirectory:
    """Paths and bookkeeping of one run directory `root`."""

    def __init__(self, root: str):
        """Creates the run directory and its sub-directories where missing.

        Raises:
            ValueError: `root` (or a directory above it, or one of its sub-directories) is a file,
                or the run directory cannot be written; checked before anything is written.
        """
        self.root = os.path.abspath(root)
        existing = self.root
        while not os.path.exists(existing):  # the deepest part of the path that exists
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            what = "is a file" if existing == self.root else f"is inside a file ({existing})"
            raise ValueError(f"--run_dir {self.root} {what}; give a directory")
        try:  # really write (permissions, a read-only file system, root's privileges all count)
            os.makedirs(self.root, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root):
                pass
        except OSError as e:
            raise ValueError(f"--run_dir {self.root} is not writable ({e.strerror})") from e
        for sub in ("data", "checkpoints", "models", "features", "logs", "figures"):
            path = os.path.join(self.root, sub)
            if os.path.exists(path) and not os.path.isdir(path):
                raise ValueError(f"--run_dir {self.root}: {path} is a file, not a directory")
            os.makedirs(path, exist_ok=True)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def manifest_path(self) -> str:
        return self.path(MANIFEST_CSV)

    @property
    def features_path(self) -> str:
        """Every image's feature x, in manifest order (the features stage)."""
        return self.path(FEATURES_NPZ)

    @property
    def fam_gallery_path(self) -> str:
        """The FAM gallery's features, ids and labels: what the searcher serves."""
        return self.path(FAM_GALLERY_NPZ)

    def pixel_features_path(self, stem: str) -> str:
        """The encoder features of the pixel-trained baseline `stem` (zeros for unused rows)."""
        return self.path("features", f"{stem}_features.npz")

    @property
    def report_path(self) -> str:
        return self.path(REPORT_JSON)

    def model_path(self, name: str) -> str:
        return self.model_file(self.root, name)

    @staticmethod
    def model_file(root: str, name: str) -> str:
        """The trained model `name` of the run directory `root`: models/<name>.keras."""
        return os.path.join(root, "models", f"{name}.keras")

    def checkpoint_dir(self, stage: str) -> str:
        return self.path("checkpoints", stage)

    def log_dir(self, stage: str) -> str:
        return self.path("logs", stage)

    # -- config ---------------------------------------------------------------------------------
    def check_or_write_config(self, config: config_lib.ExperimentConfig) -> None:
        """Writes config.json, or checks that an existing one matches `config`.

        Settings that only add work to a finished run (`ADDITIVE_SETTINGS`: the comparison rows,
        the Table 3 ablations) may change: config.json is rewritten, and
        `--stages=manipulator,baselines,evaluate --force` then trains just what is missing.

        `config` is validated first: only a valid config is ever written. A setting added to the
        config after config.json was written counts as unchanged while it has its default value.

        Raises:
            ValueError: an invalid setting (`ExperimentConfig.validate`), a config.json that is
                not a JSON object, or a run directory made with other settings (lists what
                differs), so skipped stages would not match this configuration.
        """
        config.validate()
        path = self.path(CONFIG_JSON)
        if os.path.exists(path):
            previous = _read_json_object(path, "config")
            defaults = config_lib.ExperimentConfig().to_dict()
            changed = [
                c
                for c in config_lib.diff(previous, config.to_dict())
                if c.split(":")[0] not in ADDITIVE_SETTINGS
                and not _added_at_default(c.split(":")[0], previous, config, defaults)
            ]
            if not changed and previous != config.to_dict():
                write_json(path, config.to_dict())
            if changed:
                raise ValueError(
                    f"{path} was written with other settings; use a new --run_dir or the same "
                    f"flags. Differences: " + "; ".join(changed)
                )
            return
        write_json(path, config.to_dict())

    # -- stage bookkeeping ------------------------------------------------------------------------
    def _stages(self) -> Dict[str, Any]:
        path = self.path(STAGES_JSON)
        if not os.path.exists(path):
            return {}
        return _read_json_object(path, "stage bookkeeping")

    def is_done(self, stage: str) -> bool:
        return stage in self._stages()

    def mark_done(self, stage: str, seconds: float, **info: Any) -> None:
        stages = self._stages()
        stages[stage] = {
            "seconds": round(seconds, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **info,
        }
        write_json(self.path(STAGES_JSON), stages)

    def timings(self) -> Dict[str, float]:
        """{stage: seconds} of the finished stages, in pipeline order."""
        stages = self._stages()
        return {s: stages[s]["seconds"] for s in config_lib.STAGES if s in stages}

    def stage_info(self, stage: str) -> Optional[Dict[str, Any]]:
        return self._stages().get(stage)


def _read_json_object(path: str, what: str) -> Dict[str, Any]:
    """A JSON object from `path`; ValueError naming the file if it is damaged."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is damaged ({e}); delete it or use a new --run_dir") from e
    if not isinstance(value, dict):
        raise ValueError(
            f"{path} is damaged (not a JSON object of {what}); delete it or use a new --run_dir"
        )
    return value


def _added_at_default(
    name: str,
    previous: Dict[str, Any],
    config: config_lib.ExperimentConfig,
    defaults: Dict[str, Any],
) -> bool:
    """Whether dotted setting `name` is absent from `previous` and `config` has its default."""
    section, _, field = name.partition(".")
    if not field or field in previous.get(section, {}):
        return False
    return getattr(getattr(config, section), field) == defaults[section][field]


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
