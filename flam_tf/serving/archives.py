"""The three exported models as `keras.export.ExportArchive`s, with their serving signatures.

    extractor     serving_default: image_bytes -> feature;  from_pixels: images -> feature
    manipulator   serving_default: feature, attribute, value -> feature;
                  describe: feature -> <attribute>, <attribute>_score for each attribute type
    searcher      serving_default: feature -> ids, scores   (exact cosine top-K)

ExportArchive, because TF Serving (like `saved_model_cli run`) cannot restore the variables of a
hand-made `tf.Module` wrapper around Keras 3 models. Signature and tensor names come from
`flam_tf.serving.signatures`; `export.export_run` writes the archives to disk.
"""

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from flam_tf import vocabulary
from flam_tf.data import pipeline
from flam_tf.models.searcher import GalleryIndex
from flam_tf.serving import signatures as sig
from flam_tf.serving.edits import EditParser
from flam_tf.serving.preprocessing import (
    check_batch,
    check_features,
    check_pixels,
    decode_images,
    resize_images,
)


def build_extractor_archive(
    extractor, image_size: int, feature_dim: int, max_image_pixels: int = pipeline.MAX_IMAGE_PIXELS
):
    """ExportArchive with `serving_default` (image_bytes) and `from_pixels` (images) -> feature.

    Both signatures take at most `sig.MAX_IMAGES_PER_REQUEST` images and refuse an image of more
    than `max_image_pixels` pixels (encoded images: from the header, before decoding) with
    INVALID_ARGUMENT naming the limit.
    """
    archive = keras.export.ExportArchive()
    archive.track(extractor)

    def extract(images):  # an empty batch skips the model: not every layer accepts 0 rows
        return {
            sig.FEATURE: tf.cond(
                tf.shape(images)[0] > 0,
                lambda: extractor(images, training=False),
                lambda: tf.zeros([0, feature_dim], tf.float32),
            )
        }

    def from_bytes(image_bytes):
        image_bytes = check_batch(image_bytes, sig.MAX_IMAGES_PER_REQUEST, "images")
        return extract(decode_images(image_bytes, image_size, max_image_pixels))

    def from_pixels(images):
        images = check_batch(images, sig.MAX_IMAGES_PER_REQUEST, "images")
        return extract(resize_images(check_pixels(images, max_image_pixels), image_size))

    archive.add_endpoint(
        sig.SERVING_DEFAULT,
        from_bytes,
        input_signature=[tf.TensorSpec([None], tf.string, name=sig.IMAGE_BYTES)],
    )
    archive.add_endpoint(
        sig.FROM_PIXELS,
        from_pixels,
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=sig.IMAGES)],
    )
    return archive


def build_manipulator_archive(manipulator, feature_dim: int):
    """ExportArchive with `serving_default` (feature, attribute, value -> feature) and `describe`."""
    archive = keras.export.ExportArchive()
    archive.track(manipulator)
    parser = EditParser()
    for table in (parser.attribute_table, parser.value_table, parser.accepted_table):
        archive.track(table)
    class_names = {a: tf.constant(vocabulary.CLASSES[a]) for a in vocabulary.ATTRIBUTE_TYPES}

    def manipulate(feature, attribute, value):
        feature = check_features(feature, feature_dim)
        limit = sig.MAX_FEATURES_PER_REQUEST
        attribute_idx, value_idx, mask = parser.parse(
            check_batch(attribute, limit, f"{sig.ATTRIBUTE} rows"),
            check_batch(value, limit, f"{sig.VALUE} rows"),
        )
        return {
            sig.FEATURE: manipulator.manipulate_sequence(
                feature, attribute_idx, value_idx, mask, max_edits=sig.MAX_EDITS
            )
        }

    def describe(feature):
        predictions = manipulator.embedder.classify(check_features(feature, feature_dim))
        out = {}
        for a in vocabulary.ATTRIBUTE_TYPES:
            index, score = predictions[a]
            out[a] = tf.gather(class_names[a], tf.cast(index, tf.int32))
            out[a + sig.SCORE_SUFFIX] = tf.cast(score, tf.float32)
        return out

    feature_spec = tf.TensorSpec([None, feature_dim], tf.float32, name=sig.FEATURE)
    archive.add_endpoint(
        sig.SERVING_DEFAULT,
        manipulate,
        input_signature=[
            feature_spec,
            tf.TensorSpec([None], tf.string, name=sig.ATTRIBUTE),
            tf.TensorSpec([None], tf.string, name=sig.VALUE),
        ],
    )
    archive.add_endpoint(sig.DESCRIBE, describe, input_signature=[feature_spec])
    return archive


def build_searcher_archive(gallery_features: np.ndarray, gallery_ids: Sequence[str], top_k: int):
    """ExportArchive with `serving_default`: feature [B, D] -> ids [B, K], scores [B, K].

    K = min(top_k, gallery size); ids are the gallery's ids (image paths). The search is
    `flam_tf.models.searcher.GalleryIndex` (the same ranking as its numpy `cosine_top_k`).
    """
    gallery_features = np.asarray(gallery_features, np.float32)
    if gallery_features.ndim != 2 or len(gallery_features) != len(gallery_ids):
        raise ValueError(
            f"Gallery features must be [N, D] with N ids. Received: "
            f"features {gallery_features.shape}, {len(gallery_ids)} ids"
        )
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

    archive.add_endpoint(
        sig.SERVING_DEFAULT,
        search,
        input_signature=[tf.TensorSpec([None, feature_dim], tf.float32, name=sig.FEATURE)],
    )
    return archive
