"""Model versions on disk in an export folder E, and the lock that serialises exports into it.

    E/<model>/<V>/             a complete version (integer name: TF Serving loads only these)
    E/<model>/.tmp-<V>-<pid>/  a version being written, or one a killed export left
    E/models.config            names the committed version (`committed_version`); CONFIG_FILE
    E/models.config.tmp-<pid>  a models.config being written (`models_config.write_config`)
    E/.export.lock             held by the export writing into E (`export_lock`); LOCK_FILE

A version folder appears complete or not at all: it is written under a temporary name TF Serving
ignores (`stage_version`), then renamed. `export.export_run` strings these steps together.
"""

import contextlib
import fcntl
import os
import re
import shutil
from typing import Callable, List, Optional, Sequence

from tensorflow_serving.apis import predict_pb2

from flam_tf.serving import models_config
from flam_tf.serving import signatures as sig
from flam_tf.serving.warmup import write_warmup

CONFIG_FILE = "models.config"
LOCK_FILE = ".export.lock"
_TMP_PREFIX = ".tmp-"
_VERSION_DIR = re.compile(r"^\d+$")


class ExportBusyError(OSError):
    """Another export into the same folder holds its lock (`E/.export.lock`)."""


def existing_versions(model_dir: str) -> List[int]:
    """Sorted integer version folders under `model_dir` ([] if none or missing)."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(
        int(d)
        for d in os.listdir(model_dir)
        if _VERSION_DIR.match(d) and os.path.isdir(os.path.join(model_dir, d))
    )


def complete_versions(export_dir: str) -> List[int]:
    """Sorted versions that every model of `export_dir` has a folder for."""
    common = None
    for model in sig.MODEL_NAMES:
        found = set(existing_versions(os.path.join(export_dir, model)))
        common = found if common is None else common & found
    return sorted(common)


def committed_version(export_dir: str) -> int:
    """The export's committed version: the one its models.config names (0 if none).

    A version is committed when models.config pins all three models to it (the export writes
    `specific` version policies). A models.config without pins, or no models.config at all,
    commits the highest version folder all three models have.

    Raises:
        ValueError: models.config is not a valid ModelServerConfig (fix or remove it).
    """
    path = os.path.join(export_dir, CONFIG_FILE)
    if os.path.exists(path):
        pinned = models_config.pinned_versions(models_config.read_config(path))
        named = [v for m in sig.MODEL_NAMES for v in pinned.get(m, ())]
        if named:
            return max(named)
    return max([0] + complete_versions(export_dir))


def next_version(export_dir: str) -> int:
    """1 + the committed version of `export_dir` (1 if none): models share versions, and a version
    an interrupted export left uncommitted is reused, so version numbers never skip."""
    return 1 + committed_version(export_dir)


@contextlib.contextmanager
def export_lock(export_dir: str):
    """Holds `export_dir/.export.lock` (fcntl.flock, exclusive) for the `with` block.

    Every export takes it before touching versions, so under it any temporary in `export_dir` is a
    leftover of a killed export. The kernel drops the lock when its holder dies, even by SIGKILL;
    the file itself stays (removing it would race another export opening it). flock is local to
    one machine: two hosts exporting into one network folder are not excluded.

    Raises:
        ExportBusyError: another export (this process or another) holds the lock.
    """
    os.makedirs(export_dir, exist_ok=True)
    path = os.path.join(export_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ExportBusyError(
                f"Another export into {export_dir} is running (pid {holder}, lock {path})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def _remove(path: str) -> None:
    """Removes a file, or a folder by renaming it to a temp name first (a server never sees a
    half-deleted version folder; a kill mid-way leaves a temp the next export removes)."""
    if not os.path.isdir(path):
        os.remove(path)
        return
    name = os.path.basename(path)
    if not name.startswith(_TMP_PREFIX):
        moved = os.path.join(os.path.dirname(path), f"{_TMP_PREFIX}rm-{name}-{os.getpid()}")
        os.rename(path, moved)
        path = moved
    shutil.rmtree(path)


def remove_uncommitted(export_dir: str, committed: int) -> List[str]:
    """Removes what interrupted exports left in `export_dir`; returns the removed paths.

    That is every `<model>/.tmp-*` folder, every `models.config.tmp-*` file and every version
    folder above `committed` (never named by models.config, so never served under it). Call it
    with `export_lock` held: then no temporary belongs to a running export.
    """
    removed = []
    for model in sig.MODEL_NAMES:
        model_dir = os.path.join(export_dir, model)
        for name in sorted(os.listdir(model_dir)) if os.path.isdir(model_dir) else []:
            if name.startswith(_TMP_PREFIX) or (_VERSION_DIR.match(name) and int(name) > committed):
                removed.append(os.path.join(model_dir, name))
    for name in sorted(os.listdir(export_dir)) if os.path.isdir(export_dir) else []:
        if name.startswith(f"{CONFIG_FILE}{_TMP_PREFIX}"):
            removed.append(os.path.join(export_dir, name))
    for path in removed:
        _remove(path)
    return removed


def stage_version(
    archive,
    model_dir: str,
    version: int,
    requests: Sequence[predict_pb2.PredictRequest],
    saved: Optional[Callable[[], None]] = None,
) -> str:
    """Writes `archive` and its warm-up requests to `model_dir/.tmp-<version>-<pid>` (a name TF
    Serving ignores); returns that folder. `saved` is called between the two writes (a test hook).
    """
    os.makedirs(model_dir, exist_ok=True)
    tmp = os.path.join(model_dir, f"{_TMP_PREFIX}{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    archive.write_out(tmp, verbose=False)
    if saved is not None:
        saved()
    write_warmup(os.path.join(tmp, sig.WARMUP_FILE), requests)
    return tmp
