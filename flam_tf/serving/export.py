"""SavedModel export of a training run for TF Serving: extractor, manipulator and searcher.

`export_run(run_dir)` reads a run directory written by `python -m flam_tf.train` and writes

    E/extractor/V/     serving_default: image_bytes -> feature;  from_pixels: images -> feature
    E/manipulator/V/   serving_default: feature, attribute, value -> feature;
                       describe: feature -> <attribute>, <attribute>_score for each attribute type
    E/searcher/V/      serving_default: feature -> ids, scores   (exact cosine top-K)
    E/models.config    a model_config_list naming the three models

Every version folder carries warm-up requests (`warmup.py`) and appears complete or not at all
(`versions.py`). The export is atomic across the three models: models.config pins each model to
the new version and is replaced only once all three folders are in place. The models themselves
are built by `archives.py`; this module loads the run (`load_run_models`), its searcher gallery
(`gallery_from_npz`, `gallery_from_manifest`) and runs the steps in order (EXPORT_STEPS).
"""

import importlib
import json
import os
import shutil
import signal
from typing import Callable, Dict, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from flam_tf.data import manifest as manifest_lib
from flam_tf.data import pipeline
from flam_tf.run_directory import CONFIG_JSON, EXPORT_DIR, FAM_GALLERY_NPZ, RunDirectory, run_file
from flam_tf.serving import models_config
from flam_tf.serving import signatures as sig
from flam_tf.serving.archives import (
    build_extractor_archive,
    build_manipulator_archive,
    build_searcher_archive,
)
from flam_tf.serving.preprocessing import decode_images
from flam_tf.serving.versions import (
    CONFIG_FILE,
    committed_version,
    export_lock,
    remove_uncommitted,
    stage_version,
)
from flam_tf.serving.warmup import warmup_requests


def load_run_models(run_dir: str):
    """Loads a run's config and models.

    Returns:
        (config dict, extractor, manipulator): the models as saved in `run_dir/models/`; the
        manipulator owns the attribute embedder as `.embedder`.

    Raises:
        FileNotFoundError: naming the missing file.
    """
    importlib.import_module("flam_tf.models")  # registers the classes load_model needs
    config_path = run_file(run_dir, CONFIG_JSON)
    paths = [RunDirectory.model_file(run_dir, n) for n in ("extractor", "manipulator")]
    for path in [config_path] + paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"Not a complete run directory: missing {path}")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    extractor, manipulator = (keras.saving.load_model(p, compile=False) for p in paths)
    return config, extractor, manipulator


def gallery_from_npz(run_dir: str) -> Tuple[np.ndarray, np.ndarray]:
    """(features [N, D], ids [N]) of the run's `features/fam_gallery.npz`; ids are its paths."""
    path = run_file(run_dir, FAM_GALLERY_NPZ)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Gallery features not found: {path} (or pass gallery_manifest)")
    with np.load(path, allow_pickle=False) as data:
        return data["feature"].astype(np.float32), data["path"].astype(str)


def gallery_from_manifest(
    manifest_path: str,
    extractor,
    image_size: int,
    max_image_pixels: int = pipeline.MAX_IMAGE_PIXELS,
    batch_size: int = 64,
) -> Tuple[np.ndarray, np.ndarray]:
    """(features [N, D], ids [N]) of a manifest's images, extracted as the served extractor does.

    Images are decoded and resized in the same graph code as the `serving_default` signature, so a
    served query and the gallery go through identical preprocessing. ids are the manifest paths.
    """
    manifest = manifest_lib.read_manifest(manifest_path)
    if len(manifest) == 0:
        raise ValueError(f"The gallery manifest has no rows: {manifest_path}")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def extract(image_bytes):
        return extractor(decode_images(image_bytes, image_size, max_image_pixels), training=False)

    paths, features = manifest.absolute_paths(), []
    for start in range(0, len(paths), batch_size):
        batch = [tf.io.read_file(p) for p in paths[start : start + batch_size]]
        features.append(extract(tf.stack(batch)).numpy())
    return np.concatenate(features).astype(np.float32), manifest["path"]


# The export sequence. `export_run` passes each step's name to its `on_step` hook once the step is
# done, and SIGKILLs its own process after the step named by the environment variable
# FLAM_EXPORT_KILL_AT: both are test hooks (tests/test_export.py kills an export after every step
# and checks what a server would then serve); unset, they cost one comparison per step.
#   locked                 E/.export.lock held (no other export runs into E)
#   cleaned                stale temporaries and uncommitted version folders removed; V chosen
#   <model>_saved          E/<model>/.tmp-V-<pid>/ holds the SavedModel (no warm-up requests yet)
#   <model>_staged         ... and its warm-up requests: a complete version, under a temp name
#   <model>_renamed        E/<model>/V/ in place (not served: models.config names the old version)
#   config_staged          E/models.config.tmp-<pid> names V for all three models
#   committed              E/models.config replaced: V is the export's version
EXPORT_STEPS = (
    ("locked", "cleaned")
    + tuple(f"{m}_{s}" for m in sig.MODEL_NAMES for s in ("saved", "staged", "renamed"))
    + ("config_staged", "committed")
)
KILL_AT_ENV = "FLAM_EXPORT_KILL_AT"


class ExportKilled(BaseException):
    """For tests: raised by an `on_step` hook to stop an export as a kill would. `export_run`
    lets it through without the clean-up it does after an ordinary error, so what is left is what
    a killed process leaves (the next export's start removes it)."""


def _step_hook(on_step: Optional[Callable[[str], None]]) -> Callable[[str], None]:
    """The per-step test hooks of `export_run` (see EXPORT_STEPS)."""
    kill_at = os.environ.get(KILL_AT_ENV) or None
    if kill_at is not None and kill_at not in EXPORT_STEPS:
        raise ValueError(
            f"Unknown export step. Received: {KILL_AT_ENV}={kill_at!r}; expected "
            f"one of {list(EXPORT_STEPS)}"
        )

    def step(name: str) -> None:
        if on_step is not None:
            on_step(name)
        if name == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    return step


def export_run(
    run_dir: str,
    output: Optional[str] = None,
    version: Optional[int] = None,
    top_k: int = sig.DEFAULT_TOP_K,
    gallery_manifest: Optional[str] = None,
    base_path_prefix: Optional[str] = None,
    on_step: Optional[Callable[[str], None]] = None,
    max_image_pixels: Optional[int] = None,
) -> Dict[str, str]:
    """Exports a run's extractor, manipulator and searcher for TF Serving, atomically.

    The models are built first; then, holding `E/.export.lock`, the export removes what killed
    exports left (`remove_uncommitted`), writes each model to a temp folder and renames it to
    `E/<model>/V/`, and last replaces `E/models.config` (temp file + os.replace) with one that pins
    all three models to V (`specific` version policies). V is committed at that replace: a server
    reading models.config sees the old three versions or the new three, never a mix, whenever the
    export stops. The steps are EXPORT_STEPS; an ordinary error removes what this export wrote.

    Args:
        run_dir: run directory written by `python -m flam_tf.train`.
        output: export folder E; default `run_dir/export`.
        version: integer version to write; default 1 + the committed version (`next_version`).
            Not below the committed version.
        top_k: results per query of the searcher (capped at the gallery size).
        gallery_manifest: manifest.csv whose images form the searcher's gallery (features
            extracted with the run's extractor); default the run's `features/fam_gallery.npz`.
        base_path_prefix: base path of the models in models.config, e.g. "/models" for a container
            that mounts E at /models; default the absolute paths of E/<model>.
        on_step: test hook, called with each step's name once it is done (see EXPORT_STEPS); an
            `ExportKilled` it raises stops the export as a kill would.
        max_image_pixels: the largest image (height x width) the extractor decodes; default the
            run's `data.max_image_pixels` (4096 x 4096 if its config has none).

    Returns:
        dict: "extractor", "manipulator", "searcher" -> version folders, "models.config" -> path,
        "version" -> the version (as str).

    Raises:
        FileExistsError: `version` exists already.
        versions.ExportBusyError: another export into E is running.
    """
    step = _step_hook(on_step)
    config, extractor, manipulator = load_run_models(run_dir)
    # Widths come from the trained models themselves, not from config keys that could drift.
    image_size = int(extractor.image_size)
    feature_dim = int(extractor.output_dim)
    if max_image_pixels is None:
        max_image_pixels = config.get("data", {}).get("max_image_pixels", pipeline.MAX_IMAGE_PIXELS)
    if int(max_image_pixels) < 1:
        raise ValueError(f"max_image_pixels must be >= 1. Received: {max_image_pixels}")
    output = os.path.abspath(output or run_file(run_dir, EXPORT_DIR))
    if version is not None and int(version) < 1:
        raise ValueError(f"version must be a positive integer. Received: version={version}")
    if gallery_manifest:
        gallery, ids = gallery_from_manifest(
            gallery_manifest, extractor, image_size, int(max_image_pixels)
        )
    else:
        gallery, ids = gallery_from_npz(run_dir)
    if gallery.shape[1] != feature_dim:
        raise ValueError(
            f"Gallery features have width {gallery.shape[1]}; the run's "
            f"feature_dim is {feature_dim}"
        )
    archives = {
        sig.EXTRACTOR: build_extractor_archive(
            extractor, image_size, feature_dim, int(max_image_pixels)
        ),
        sig.MANIPULATOR: build_manipulator_archive(manipulator, feature_dim),
        sig.SEARCHER: build_searcher_archive(gallery, ids, top_k),
    }
    prefix = base_path_prefix.rstrip("/") if base_path_prefix else None
    base = {m: f"{prefix}/{m}" if prefix else os.path.join(output, m) for m in sig.MODEL_NAMES}
    config_path = os.path.join(output, CONFIG_FILE)
    with export_lock(output):
        step("locked")
        committed = committed_version(output)
        for path in remove_uncommitted(output, committed):
            logging.warning("Removed %s, left by an interrupted export", path)
        version = int(version) if version is not None else committed + 1
        for model in sig.MODEL_NAMES:
            final = os.path.join(output, model, str(version))
            if os.path.exists(final):
                raise FileExistsError(f"Version folder exists already: {final}")
        if version < committed:
            raise ValueError(
                f"version {version} is below the committed version {committed} of {config_path}"
            )
        step("cleaned")
        written, done = {}, False
        try:
            for name, archive in archives.items():
                model_dir = os.path.join(output, name)
                tmp = stage_version(
                    archive,
                    model_dir,
                    version,
                    warmup_requests(name, feature_dim, image_size),
                    saved=lambda name=name: step(f"{name}_saved"),
                )
                step(f"{name}_staged")
                written[name] = os.path.join(model_dir, str(version))
                os.rename(tmp, written[name])
                step(f"{name}_renamed")
            pinned = models_config.build_config(base, {m: [version] for m in sig.MODEL_NAMES})
            written["models.config"] = models_config.write_config(
                config_path, pinned, before_replace=lambda: step("config_staged")
            )
            done = True
            step("committed")
        except ExportKilled:
            raise
        except BaseException:  # no failed export leaves a version or a temporary behind
            if not done:
                for path in written.values():
                    shutil.rmtree(path, ignore_errors=True)
                remove_uncommitted(output, committed)
            raise
    written["version"] = str(version)
    return written
