"""SavedModel export of a training run for TF Serving: extractor, manipulator and searcher.

`export_run(run_dir)` reads a run directory written by `python -m flam_tf.train` and writes

    E/extractor/V/     serving_default: image_bytes -> feature;  from_pixels: images -> feature
    E/manipulator/V/   serving_default: feature, attribute, value -> feature;
                       describe: feature -> <attribute>, <attribute>_score for each attribute type
    E/searcher/V/      serving_default: feature -> ids, scores   (exact cosine top-K)
    E/models.config    a model_config_list naming the three models

Every version folder carries warm-up requests (`assets.extra/tf_serving_warmup_requests`) and
appears complete or not at all (written beside it under a non-integer name, which TF Serving
ignores, then renamed). The export is atomic across the three models: models.config pins each model
to the new version and is replaced only once all three folders are in place (see `export_run`).
Models are exported with `keras.export.ExportArchive`, because TF Serving
(like `saved_model_cli run`) cannot restore the variables of a hand-made `tf.Module` wrapper around
Keras 3 models. All signature and tensor names come from `flam_tf.serving.signatures`.
"""

import contextlib
import fcntl
import importlib
import json
import os
import re
import shutil
import signal
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from flam_tf import vocabulary
from flam_tf.data import manifest as manifest_lib
from flam_tf.data import pipeline
from flam_tf.serving import models_config
from flam_tf.serving import signatures as sig

_VERSION_DIR = re.compile(r"^\d+$")


def load_run_models(run_dir: str):
    """Loads a run's config and models.

    Returns:
        (config dict, extractor, manipulator): the models as saved in `run_dir/models/`; the
        manipulator owns the attribute embedder as `.embedder`.

    Raises:
        FileNotFoundError: naming the missing file.
    """
    try:  # registers the project's serializable classes
        importlib.import_module("flam_tf.models")
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("flam_tf.models"):
            raise
    config_path = os.path.join(run_dir, "config.json")
    paths = [os.path.join(run_dir, "models", f"{n}.keras") for n in ("extractor", "manipulator")]
    for path in [config_path] + paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"Not a complete run directory: missing {path}")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    extractor, manipulator = (keras.saving.load_model(p, compile=False) for p in paths)
    return config, extractor, manipulator


# ----------------------------------------------------------------------------------------------
# In-graph input handling (shared by the signatures and by gallery extraction).

def resize_images(images, image_size: int):
    """Resizes images to the model input: uint8 or float [B, H, W, 3] -> float32 [B, S, S, 3].

    Bilinear `tf.image.resize` of float32 values in [0, 255], as `pipeline.decode_image` does.
    """
    return tf.image.resize(tf.cast(images, tf.float32), [image_size, image_size], method="bilinear")


# User strings quoted in error messages are cut to this many characters (then "...").
QUOTE_CHARS = 40


def quote(strings):
    """A user-supplied string (any shape) as it may appear in an error message: valid UTF-8
    (bad bytes replaced by U+FFFD) and at most QUOTE_CHARS characters, "..." marking a cut."""
    head = tf.strings.substr(strings, 0, 4 * QUOTE_CHARS + 4)  # bytes enough for the characters
    head = tf.strings.unicode_transcode(head, "UTF-8", "UTF-8", errors="replace")
    cut = tf.strings.length(head, unit="UTF8_CHAR") > QUOTE_CHARS
    short = tf.strings.substr(head, 0, QUOTE_CHARS, unit="UTF8_CHAR")
    return tf.where(cut | (tf.strings.length(strings) > 4 * QUOTE_CHARS + 4),
                    tf.strings.join([short, "..."]), short)


def check_batch(tensor, limit: int, what: str):
    """Asserts `tensor` has at most `limit` rows; returns it (INVALID_ARGUMENT naming the limit)."""
    rows = tf.shape(tensor, out_type=tf.int64)[0]
    ok = tf.debugging.Assert(rows <= limit, [tf.strings.join([
        f"At most {limit} {what} per request (the signature's maximum batch). Received: ",
        tf.strings.as_string(rows)])])
    with tf.control_dependencies([ok]):
        return tf.identity(tensor)


def decode_images(image_bytes, image_size: int,
                  max_image_pixels: int = pipeline.MAX_IMAGE_PIXELS):
    """Decodes and resizes encoded images: string [B] (JPEG, PNG, GIF, BMP) -> float32 [B,S,S,3].

    Each image goes through the training input pipeline's own `decode_image`, so served and
    training inputs are the same numbers. Bytes that are not an image, and images of more than
    `max_image_pixels` pixels (read from the header, before decoding), fail with INVALID_ARGUMENT.
    """
    return tf.map_fn(lambda data: pipeline.decode_image(data, image_size, max_image_pixels),
                     image_bytes,
                     fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32))


def check_pixels(images, max_image_pixels: int = pipeline.MAX_IMAGE_PIXELS):
    """Asserts images [B, H, W, C] have at most `max_image_pixels` pixels (H x W); returns them."""
    shape = tf.shape(images, out_type=tf.int64)
    ok = tf.debugging.Assert(shape[1] * shape[2] <= max_image_pixels, [tf.strings.join([
        "Image of ", tf.strings.as_string(shape[2]), " x ", tf.strings.as_string(shape[1]),
        f" pixels exceeds the limit of {int(max_image_pixels)} pixels (max_image_pixels)"])])
    with tf.control_dependencies([ok]):
        return tf.identity(images)


def check_features(feature, feature_dim: int, max_rows: int = sig.MAX_FEATURES_PER_REQUEST):
    """Asserts `feature` is [B <= max_rows, feature_dim] and finite; returns it (INVALID_ARGUMENT
    otherwise)."""
    feature = check_batch(feature, max_rows, f"{sig.FEATURE} rows")
    width_ok = tf.debugging.assert_equal(
        tf.shape(feature)[1], feature_dim,
        message=f"{sig.FEATURE} must have width {feature_dim}")
    with tf.control_dependencies([width_ok]):
        return tf.debugging.check_numerics(feature, f"{sig.FEATURE} must be finite")


def robust_l2_normalize(feature):
    """Row-wise l2 normalisation that cannot overflow: rows are divided by their largest |x| first
    (a finite 3e38 squared is inf in float32). Zero rows stay zero, never NaN."""
    scale = tf.reduce_max(tf.abs(feature), axis=1, keepdims=True)
    feature = feature / tf.where(scale > 0, scale, tf.ones_like(scale))
    return tf.math.l2_normalize(feature, axis=1)


def _listing(names: Sequence[str]) -> str:
    # No quote characters: tf.Assert would print them escaped.
    return "[" + ", ".join(names) + "]"


class _EditParser(tf.Module):
    """Maps `attribute`/`value` strings to vocabulary indices with tracked StaticHashTables."""

    def __init__(self):
        super().__init__(name="edit_parser")
        attrs = list(vocabulary.ATTRIBUTE_TYPES)
        pairs = [(f"{a}={v}", i) for a in attrs for i, v in enumerate(vocabulary.CLASSES[a])]
        table = lambda keys, values, default: tf.lookup.StaticHashTable(  # noqa: E731
            tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.constant(values)), default)
        self.attribute_table = table(attrs, np.arange(len(attrs), dtype=np.int32), -1)
        self.value_table = table([k for k, _ in pairs],
                                 np.array([i for _, i in pairs], np.int32), -1)
        self.accepted_table = table(attrs, [_listing(vocabulary.CLASSES[a]) for a in attrs], "")

    def parse(self, attribute, value):
        """string [B], string [B] -> (attribute_idx, value_idx, mask), each [B, MAX_EDITS].

        Fails with INVALID_ARGUMENT naming the first bad attribute or value and the accepted ones.
        """
        attrs = tf.strings.split(attribute, sig.EDIT_SEPARATOR)
        values = tf.strings.split(value, sig.EDIT_SEPARATOR)
        count = attrs.row_lengths()
        first = lambda x, bad: tf.strings.reduce_join(tf.boolean_mask(x, bad)[:1])  # noqa: E731
        same_count = tf.equal(count, values.row_lengths())
        checks = [
            tf.debugging.Assert(tf.reduce_all(same_count), [tf.strings.join([
                f"attribute and value must list as many edits (separated by "
                f"{sig.EDIT_SEPARATOR}). Received: attribute=",
                quote(first(attribute, ~same_count)), ", value=",
                quote(first(value, ~same_count))])]),
            tf.debugging.Assert(tf.reduce_all(count <= sig.MAX_EDITS), [tf.strings.join([
                f"At most {sig.MAX_EDITS} edits per row. Received: attribute=",
                quote(first(attribute, count > sig.MAX_EDITS))])]),
        ]
        with tf.control_dependencies(checks):
            attrs = attrs.to_tensor("", shape=[None, sig.MAX_EDITS])
            values = values.to_tensor("", shape=[None, sig.MAX_EDITS])
        mask = tf.sequence_mask(count, sig.MAX_EDITS)
        attribute_idx = self.attribute_table.lookup(attrs)
        bad_attr = mask & (attribute_idx < 0)
        value_idx = self.value_table.lookup(tf.strings.join([attrs, values], "="))
        bad_value = mask & ~bad_attr & (value_idx < 0)
        bad_value_attr = first(attrs, bad_value)
        checks = [
            tf.debugging.Assert(~tf.reduce_any(bad_attr), [tf.strings.join([
                "Unknown attribute. Received: attribute=", quote(first(attrs, bad_attr)),
                f"; expected one of {_listing(vocabulary.ATTRIBUTE_TYPES)}"])]),
            tf.debugging.Assert(~tf.reduce_any(bad_value), [tf.strings.join([
                "Unknown ", bad_value_attr, " value. Received: value=",
                quote(first(values, bad_value)),
                "; expected one of ", self.accepted_table.lookup(bad_value_attr)])]),
        ]
        with tf.control_dependencies(checks):  # indices stay in range even if an assert is late
            return (tf.where(mask, attribute_idx, 0), tf.where(mask, value_idx, 0),
                    tf.identity(mask))


# ----------------------------------------------------------------------------------------------
# Archives.

def build_extractor_archive(extractor, image_size: int, feature_dim: int,
                            max_image_pixels: int = pipeline.MAX_IMAGE_PIXELS):
    """ExportArchive with `serving_default` (image_bytes) and `from_pixels` (images) -> feature.

    Both signatures take at most `sig.MAX_IMAGES_PER_REQUEST` images and refuse an image of more
    than `max_image_pixels` pixels (encoded images: from the header, before decoding) with
    INVALID_ARGUMENT naming the limit.
    """
    archive = keras.export.ExportArchive()
    archive.track(extractor)

    def extract(images):  # an empty batch skips the model: not every layer accepts 0 rows
        return {sig.FEATURE: tf.cond(
            tf.shape(images)[0] > 0, lambda: extractor(images, training=False),
            lambda: tf.zeros([0, feature_dim], tf.float32))}

    def from_bytes(image_bytes):
        image_bytes = check_batch(image_bytes, sig.MAX_IMAGES_PER_REQUEST, "images")
        return extract(decode_images(image_bytes, image_size, max_image_pixels))

    def from_pixels(images):
        images = check_batch(images, sig.MAX_IMAGES_PER_REQUEST, "images")
        return extract(resize_images(check_pixels(images, max_image_pixels), image_size))

    archive.add_endpoint(sig.SERVING_DEFAULT, from_bytes, input_signature=[
        tf.TensorSpec([None], tf.string, name=sig.IMAGE_BYTES)])
    archive.add_endpoint(sig.FROM_PIXELS, from_pixels, input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.uint8, name=sig.IMAGES)])
    return archive


def build_manipulator_archive(manipulator, feature_dim: int):
    """ExportArchive with `serving_default` (feature, attribute, value -> feature) and `describe`."""
    archive = keras.export.ExportArchive()
    archive.track(manipulator)
    parser = _EditParser()
    for table in (parser.attribute_table, parser.value_table, parser.accepted_table):
        archive.track(table)
    class_names = {a: tf.constant(vocabulary.CLASSES[a]) for a in vocabulary.ATTRIBUTE_TYPES}

    def manipulate(feature, attribute, value):
        feature = check_features(feature, feature_dim)
        limit = sig.MAX_FEATURES_PER_REQUEST
        attribute_idx, value_idx, mask = parser.parse(
            check_batch(attribute, limit, f"{sig.ATTRIBUTE} rows"),
            check_batch(value, limit, f"{sig.VALUE} rows"))
        steps = tf.reduce_max(tf.reduce_sum(tf.cast(mask, tf.int32), axis=1))  # empty batch: -inf
        for i in range(sig.MAX_EDITS):  # edits applied in sequence; rows without edit i keep theirs
            def edit(f=feature, i=i):
                new = manipulator.manipulate_indices(f, attribute_idx[:, i], value_idx[:, i])
                return tf.where(mask[:, i:i + 1], tf.cast(new, tf.float32), f)
            feature = tf.cond(i < steps, edit, lambda f=feature: tf.identity(f))
        return {sig.FEATURE: feature}

    def describe(feature):
        predictions = manipulator.embedder.classify(check_features(feature, feature_dim))
        out = {}
        for a in vocabulary.ATTRIBUTE_TYPES:
            index, score = predictions[a]
            out[a] = tf.gather(class_names[a], tf.cast(index, tf.int32))
            out[a + sig.SCORE_SUFFIX] = tf.cast(score, tf.float32)
        return out

    feature_spec = tf.TensorSpec([None, feature_dim], tf.float32, name=sig.FEATURE)
    archive.add_endpoint(sig.SERVING_DEFAULT, manipulate, input_signature=[
        feature_spec, tf.TensorSpec([None], tf.string, name=sig.ATTRIBUTE),
        tf.TensorSpec([None], tf.string, name=sig.VALUE)])
    archive.add_endpoint(sig.DESCRIBE, describe, input_signature=[feature_spec])
    return archive


class GalleryIndex(keras.layers.Layer):
    """Holds L2-normalised gallery features as a non-trainable weight; exact cosine top-K.

    Args:
        gallery: float32 [N, D] gallery features (normalised here).
    """

    def __init__(self, gallery, **kwargs):
        super().__init__(**kwargs)
        gallery = np.asarray(gallery, np.float32)
        gallery = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
        self.gallery = self.add_weight(shape=gallery.shape, trainable=False, name="gallery",
                                       initializer=keras.initializers.Zeros())
        self.gallery.assign(gallery)
        self.built = True

    def call(self, feature, k: int):
        """float32 [B, D] -> (scores float32 [B, k], indices int32 [B, k]), best first.

        Queries are normalised without overflow (`robust_l2_normalize`): a finite feature of
        3e38 ranks as its direction does; a zero query scores 0 everywhere.
        """
        query = robust_l2_normalize(feature)
        return tf.math.top_k(tf.matmul(query, tf.convert_to_tensor(self.gallery),
                                       transpose_b=True), k=k)


def build_searcher_archive(gallery_features: np.ndarray, gallery_ids: Sequence[str], top_k: int):
    """ExportArchive with `serving_default`: feature [B, D] -> ids [B, K], scores [B, K].

    K = min(top_k, gallery size); ids are the gallery's ids (image paths).
    """
    gallery_features = np.asarray(gallery_features, np.float32)
    if gallery_features.ndim != 2 or len(gallery_features) != len(gallery_ids):
        raise ValueError(f"Gallery features must be [N, D] with N ids. Received: "
                         f"features {gallery_features.shape}, {len(gallery_ids)} ids")
    if len(gallery_ids) == 0:
        raise ValueError("The gallery is empty")
    feature_dim, k = gallery_features.shape[1], min(int(top_k), len(gallery_ids))
    index = GalleryIndex(gallery_features, name="gallery_index")
    ids = tf.constant(np.asarray(gallery_ids, dtype=str).astype(object).astype(bytes))
    archive = keras.export.ExportArchive()
    archive.track(index)

    def search(feature):
        scores, indices = index(check_features(feature, feature_dim), k=k)
        return {sig.IDS: tf.gather(ids, indices), sig.SCORES: scores}

    archive.add_endpoint(sig.SERVING_DEFAULT, search, input_signature=[
        tf.TensorSpec([None, feature_dim], tf.float32, name=sig.FEATURE)])
    return archive


# ----------------------------------------------------------------------------------------------
# Galleries.

def gallery_from_npz(run_dir: str) -> Tuple[np.ndarray, np.ndarray]:
    """(features [N, D], ids [N]) of the run's `features/fam_gallery.npz`; ids are its paths."""
    path = os.path.join(run_dir, "features", "fam_gallery.npz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"Gallery features not found: {path} (or pass gallery_manifest)")
    with np.load(path, allow_pickle=False) as data:
        return data["feature"].astype(np.float32), data["path"].astype(str)


def gallery_from_manifest(manifest_path: str, extractor, image_size: int,
                          max_image_pixels: int = pipeline.MAX_IMAGE_PIXELS,
                          batch_size: int = 64) -> Tuple[np.ndarray, np.ndarray]:
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
        batch = [tf.io.read_file(p) for p in paths[start:start + batch_size]]
        features.append(extract(tf.stack(batch)).numpy())
    return np.concatenate(features).astype(np.float32), manifest["path"]


# ----------------------------------------------------------------------------------------------
# Warm-up requests and writing.

def _request(model: str, signature: str, inputs: Dict[str, np.ndarray]):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def warmup_requests(model: str, feature_dim: int, image_size: int) -> List[predict_pb2.PredictRequest]:
    """Valid PredictRequests that exercise every signature of `model` once (TF Serving runs them
    at load time; a failing warm-up request fails the load)."""
    feature = np.full((2, feature_dim), 1.0 / np.sqrt(feature_dim), np.float32)
    if model == sig.EXTRACTOR:
        pixels = np.full((2, image_size, image_size, 3), 128, np.uint8)
        png = tf.io.encode_png(pixels[0]).numpy()
        return [_request(model, sig.SERVING_DEFAULT, {sig.IMAGE_BYTES: np.array([png, png])}),
                _request(model, sig.FROM_PIXELS, {sig.IMAGES: pixels})]
    if model == sig.MANIPULATOR:
        a, b = vocabulary.ATTRIBUTE_TYPES[:2]
        edits = {sig.FEATURE: feature,
                 sig.ATTRIBUTE: np.array([a.encode(), f"{a}{sig.EDIT_SEPARATOR}{b}".encode()]),
                 sig.VALUE: np.array([vocabulary.CLASSES[a][0].encode(),
                                      f"{vocabulary.CLASSES[a][1]}{sig.EDIT_SEPARATOR}"
                                      f"{vocabulary.CLASSES[b][0]}".encode()])}
        return [_request(model, sig.SERVING_DEFAULT, edits),
                _request(model, sig.DESCRIBE, {sig.FEATURE: feature})]
    if model == sig.SEARCHER:
        return [_request(model, sig.SERVING_DEFAULT, {sig.FEATURE: feature})]
    raise ValueError(f"Unknown model. Received: model={model!r}; expected one of {sig.MODEL_NAMES}")


def write_warmup(path: str, requests: Sequence[predict_pb2.PredictRequest]) -> str:
    """Writes PredictRequests as a TFRecord file of PredictionLog records; returns `path`."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def read_warmup(path: str) -> List[predict_pb2.PredictRequest]:
    """Reads the PredictRequests of a warm-up file (TFRecord of PredictionLog)."""
    out = []
    for record in tf.data.TFRecordDataset(path):
        out.append(prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request)
    return out


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
EXPORT_STEPS = ("locked", "cleaned") + tuple(
    f"{m}_{s}" for m in sig.MODEL_NAMES for s in ("saved", "staged", "renamed")) + (
    "config_staged", "committed")
KILL_AT_ENV = "FLAM_EXPORT_KILL_AT"
CONFIG_FILE = "models.config"
LOCK_FILE = ".export.lock"
_TMP_PREFIX = ".tmp-"


class ExportBusyError(OSError):
    """Another export into the same folder holds its lock (`E/.export.lock`)."""


class ExportKilled(BaseException):
    """For tests: raised by an `on_step` hook to stop an export as a kill would. `export_run`
    lets it through without the clean-up it does after an ordinary error, so what is left is what
    a killed process leaves (the next export's start removes it)."""


def existing_versions(model_dir: str) -> List[int]:
    """Sorted integer version folders under `model_dir` ([] if none or missing)."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(int(d) for d in os.listdir(model_dir)
                  if _VERSION_DIR.match(d) and os.path.isdir(os.path.join(model_dir, d)))


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
    `specific` version policies). A models.config without pins (written before they existed), or
    no models.config at all, commits the highest version folder all three models have.

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
            raise ExportBusyError(f"Another export into {export_dir} is running (pid {holder}, "
                                  f"lock {path})") from None
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


def stage_version(archive, model_dir: str, version: int,
                  requests: Sequence[predict_pb2.PredictRequest],
                  saved: Optional[Callable[[], None]] = None) -> str:
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


def write_version(archive, model_dir: str, version: int,
                  requests: Sequence[predict_pb2.PredictRequest]) -> str:
    """Writes `archive` (+ warm-up requests) as `model_dir/version`, atomically; returns its path.

    One model only: `export_run` makes the three models' versions appear together.

    Raises:
        FileExistsError: the version folder exists already.
    """
    final = os.path.join(model_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"Version folder exists already: {final}")
    tmp = None
    try:
        tmp = stage_version(archive, model_dir, version, requests)
        os.rename(tmp, final)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _step_hook(on_step: Optional[Callable[[str], None]]) -> Callable[[str], None]:
    """The per-step test hooks of `export_run` (see EXPORT_STEPS)."""
    kill_at = os.environ.get(KILL_AT_ENV) or None
    if kill_at is not None and kill_at not in EXPORT_STEPS:
        raise ValueError(f"Unknown export step. Received: {KILL_AT_ENV}={kill_at!r}; expected "
                         f"one of {list(EXPORT_STEPS)}")

    def step(name: str) -> None:
        if on_step is not None:
            on_step(name)
        if name == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    return step


def export_run(run_dir: str, output: Optional[str] = None, version: Optional[int] = None,
               top_k: int = sig.DEFAULT_TOP_K, gallery_manifest: Optional[str] = None,
               base_path_prefix: Optional[str] = None,
               on_step: Optional[Callable[[str], None]] = None,
               max_image_pixels: Optional[int] = None) -> Dict[str, str]:
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
            run's `data.max_image_pixels` (4096 x 4096 if the run's config predates it).

    Returns:
        dict: "extractor", "manipulator", "searcher" -> version folders, "models.config" -> path,
        "version" -> the version (as str).

    Raises:
        FileExistsError: `version` exists already.
        ExportBusyError: another export into E is running.
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
    output = os.path.abspath(output or os.path.join(run_dir, "export"))
    if version is not None and int(version) < 1:
        raise ValueError(f"version must be a positive integer. Received: version={version}")
    if gallery_manifest:
        gallery, ids = gallery_from_manifest(gallery_manifest, extractor, image_size,
                                             int(max_image_pixels))
    else:
        gallery, ids = gallery_from_npz(run_dir)
    if gallery.shape[1] != feature_dim:
        raise ValueError(f"Gallery features have width {gallery.shape[1]}; the run's "
                         f"feature_dim is {feature_dim}")
    archives = {
        sig.EXTRACTOR: build_extractor_archive(extractor, image_size, feature_dim,
                                               int(max_image_pixels)),
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
            raise ValueError(f"version {version} is below the committed version {committed} "
                             f"of {config_path}")
        step("cleaned")
        written, done = {}, False
        try:
            for name, archive in archives.items():
                model_dir = os.path.join(output, name)
                tmp = stage_version(archive, model_dir, version,
                                    warmup_requests(name, feature_dim, image_size),
                                    saved=lambda name=name: step(f"{name}_saved"))
                step(f"{name}_staged")
                written[name] = os.path.join(model_dir, str(version))
                os.rename(tmp, written[name])
                step(f"{name}_renamed")
            pinned = models_config.build_config(base, {m: [version] for m in sig.MODEL_NAMES})
            written["models.config"] = models_config.write_config(
                config_path, pinned, before_replace=lambda: step("config_staged"))
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
