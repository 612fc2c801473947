"""SavedModel export of a training run for TF Serving: extractor, manipulator and searcher.

`export_run(run_dir)` reads a run directory written by `python -m flam_tf.train` and writes

    E/extractor/V/     serving_default: image_bytes -> feature;  from_pixels: images -> feature
    E/manipulator/V/   serving_default: feature, attribute, value -> feature;
                       describe: feature -> <attribute>, <attribute>_score for each attribute type
    E/searcher/V/      serving_default: feature -> ids, scores   (exact cosine top-K)
    E/models.config    a model_config_list naming the three models

Every version folder carries warm-up requests (`assets.extra/tf_serving_warmup_requests`) and
appears complete or not at all (written beside it under a non-integer name, which TF Serving
ignores, then renamed). Models are exported with `keras.export.ExportArchive`, because TF Serving
(like `saved_model_cli run`) cannot restore the variables of a hand-made `tf.Module` wrapper around
Keras 3 models. All signature and tensor names come from `flam_tf.serving.signatures`.
"""

import importlib
import json
import os
import re
import shutil
from typing import Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf
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


def decode_images(image_bytes, image_size: int):
    """Decodes and resizes encoded images: string [B] (JPEG, PNG, GIF, BMP) -> float32 [B,S,S,3].

    Each image goes through the training input pipeline's own `decode_image`, so served and
    training inputs are the same numbers. Bytes that are not an image fail with INVALID_ARGUMENT.
    """
    return tf.map_fn(lambda data: pipeline.decode_image(data, image_size), image_bytes,
                     fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32))


def check_features(feature, feature_dim: int):
    """Asserts `feature` is [B, feature_dim] and finite; returns it (INVALID_ARGUMENT otherwise)."""
    width_ok = tf.debugging.assert_equal(
        tf.shape(feature)[1], feature_dim,
        message=f"{sig.FEATURE} must have width {feature_dim}")
    with tf.control_dependencies([width_ok]):
        return tf.debugging.check_numerics(feature, f"{sig.FEATURE} must be finite")


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
                first(attribute, ~same_count), ", value=", first(value, ~same_count)])]),
            tf.debugging.Assert(tf.reduce_all(count <= sig.MAX_EDITS), [tf.strings.join([
                f"At most {sig.MAX_EDITS} edits per row. Received: attribute=",
                first(attribute, count > sig.MAX_EDITS)])]),
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
                "Unknown attribute. Received: attribute=", first(attrs, bad_attr),
                f"; expected one of {_listing(vocabulary.ATTRIBUTE_TYPES)}"])]),
            tf.debugging.Assert(~tf.reduce_any(bad_value), [tf.strings.join([
                "Unknown ", bad_value_attr, " value. Received: value=", first(values, bad_value),
                "; expected one of ", self.accepted_table.lookup(bad_value_attr)])]),
        ]
        with tf.control_dependencies(checks):  # indices stay in range even if an assert is late
            return (tf.where(mask, attribute_idx, 0), tf.where(mask, value_idx, 0),
                    tf.identity(mask))


# ----------------------------------------------------------------------------------------------
# Archives.

def build_extractor_archive(extractor, image_size: int, feature_dim: int):
    """ExportArchive with `serving_default` (image_bytes) and `from_pixels` (images) -> feature."""
    archive = keras.export.ExportArchive()
    archive.track(extractor)

    def extract(images):  # an empty batch skips the model: not every layer accepts 0 rows
        return {sig.FEATURE: tf.cond(
            tf.shape(images)[0] > 0, lambda: extractor(images, training=False),
            lambda: tf.zeros([0, feature_dim], tf.float32))}

    def from_bytes(image_bytes):
        return extract(decode_images(image_bytes, image_size))

    def from_pixels(images):
        return extract(resize_images(images, image_size))

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
        attribute_idx, value_idx, mask = parser.parse(attribute, value)
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
        """float32 [B, D] -> (scores float32 [B, k], indices int32 [B, k]), best first."""
        query = tf.math.l2_normalize(feature, axis=1)
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
        return extractor(decode_images(image_bytes, image_size), training=False)

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


def existing_versions(model_dir: str) -> List[int]:
    """Sorted integer version folders under `model_dir` ([] if none or missing)."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(int(d) for d in os.listdir(model_dir)
                  if _VERSION_DIR.match(d) and os.path.isdir(os.path.join(model_dir, d)))


def next_version(export_dir: str) -> int:
    """1 + the highest version of any model under `export_dir` (1 if none): models share versions."""
    return 1 + max([0] + [v for m in sig.MODEL_NAMES
                          for v in existing_versions(os.path.join(export_dir, m))])


def write_version(archive, model_dir: str, version: int,
                  requests: Sequence[predict_pb2.PredictRequest]) -> str:
    """Writes `archive` (+ warm-up requests) as `model_dir/version`, atomically; returns its path.

    Raises:
        FileExistsError: the version folder exists already.
    """
    final = os.path.join(model_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"Version folder exists already: {final}")
    os.makedirs(model_dir, exist_ok=True)
    tmp = os.path.join(model_dir, f".tmp-{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        archive.write_out(tmp, verbose=False)
        write_warmup(os.path.join(tmp, sig.WARMUP_FILE), requests)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def export_run(run_dir: str, output: Optional[str] = None, version: Optional[int] = None,
               top_k: int = sig.DEFAULT_TOP_K, gallery_manifest: Optional[str] = None,
               base_path_prefix: Optional[str] = None) -> Dict[str, str]:
    """Exports a run's extractor, manipulator and searcher for TF Serving.

    Args:
        run_dir: run directory written by `python -m flam_tf.train`.
        output: export folder E; default `run_dir/export`.
        version: integer version to write; default 1 + the highest existing version (1 if none).
        top_k: results per query of the searcher (capped at the gallery size).
        gallery_manifest: manifest.csv whose images form the searcher's gallery (features
            extracted with the run's extractor); default the run's `features/fam_gallery.npz`.
        base_path_prefix: base path of the models in models.config, e.g. "/models" for a container
            that mounts E at /models; default the absolute paths of E/<model>.

    Returns:
        dict: "extractor", "manipulator", "searcher" -> version folders, "models.config" -> path,
        "version" -> the version (as str).
    """
    config, extractor, manipulator = load_run_models(run_dir)
    # Widths come from the trained models themselves, not from config keys that could drift.
    image_size = int(extractor.image_size)
    feature_dim = int(extractor.output_dim)
    output = os.path.abspath(output or os.path.join(run_dir, "export"))
    version = int(version) if version is not None else next_version(output)
    if version < 1:
        raise ValueError(f"version must be a positive integer. Received: version={version}")
    if gallery_manifest:
        gallery, ids = gallery_from_manifest(gallery_manifest, extractor, image_size)
    else:
        gallery, ids = gallery_from_npz(run_dir)
    if gallery.shape[1] != feature_dim:
        raise ValueError(f"Gallery features have width {gallery.shape[1]}; the run's "
                         f"feature_dim is {feature_dim}")
    archives = {
        sig.EXTRACTOR: build_extractor_archive(extractor, image_size, feature_dim),
        sig.MANIPULATOR: build_manipulator_archive(manipulator, feature_dim),
        sig.SEARCHER: build_searcher_archive(gallery, ids, top_k),
    }
    written = {}
    try:
        for name, archive in archives.items():
            written[name] = write_version(archive, os.path.join(output, name), version,
                                          warmup_requests(name, feature_dim, image_size))
    except BaseException:  # no export leaves some models at a version the others lack
        for path in written.values():
            shutil.rmtree(path, ignore_errors=True)
        raise
    prefix = base_path_prefix.rstrip("/") if base_path_prefix else None
    base = {m: f"{prefix}/{m}" if prefix else os.path.join(output, m) for m in sig.MODEL_NAMES}
    written["models.config"] = models_config.write_config(
        os.path.join(output, "models.config"), models_config.build_config(base))
    written["version"] = str(version)
    return written
