"""tf.data input pipelines built from a manifest.

Images enter the models as float32 [B, S, S, 3] in [0, 255]; each backbone normalises inside the
model, so the exported SavedModel and training see the same numbers.

* `image_dataset`: every image of a manifest in order (feature extraction).
* `pk_dataset`: endless P x K batches (P instances, K images each) so that every batch holds
  positives for triplet mining, with train-time augmentation. Deterministic for a seed; the whole
  hot path is TensorFlow ops (no Python generator).
"""

from typing import Dict, Tuple

import numpy as np
import tensorflow as tf

from flam_tf.data import manifest as manifest_lib


def decode_image(contents: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decodes JPEG/PNG bytes to float32 [S, S, 3] in [0, 255] (bilinear resize)."""
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image = tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size))
    image.set_shape((image_size, image_size, 3))
    return image


def image_dataset(manifest: manifest_lib.Manifest, image_size: int,
                  batch_size: int = 256) -> tf.data.Dataset:
    """Batches of images of every manifest row, in manifest order: float32 [B, S, S, 3]."""
    paths = manifest.absolute_paths()
    ds = tf.data.Dataset.from_tensor_slices(paths)
    ds = ds.map(lambda p: decode_image(tf.io.read_file(p), image_size),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def instance_labels(manifest: manifest_lib.Manifest,
                    num_ce_classes: int) -> Tuple[np.ndarray, np.ndarray, int]:
    """Integer labels for extractor training.

    Returns:
        (instance int32 [N] dense instance index, ce_class int32 [N] index among the
        `num_ce_classes` instances with the most images (ties by first appearance), -1 for the
        rest, number of instances).
    """
    ids, first, instance = np.unique(manifest["instance_id"], return_index=True,
                                     return_inverse=True)
    counts = np.bincount(instance)
    # Most images first; among equals, the instance seen first in the manifest first.
    order = np.lexsort((first, -counts))[:num_ce_classes]
    ce_of_instance = np.full(len(ids), -1, np.int32)
    ce_of_instance[order] = np.arange(len(order), dtype=np.int32)
    return instance.astype(np.int32), ce_of_instance[instance], len(ids)


def augment(image: tf.Tensor, seed: tf.Tensor, image_size: int) -> tf.Tensor:
    """Train-time augmentation, stateless in `seed` (int32 [2]): flip, crop-and-resize, light."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    frac = tf.random.stateless_uniform((), seeds[1], 0.82, 1.0)
    crop = tf.cast(tf.cast(image_size, tf.float32) * frac, tf.int32)
    image = tf.image.stateless_random_crop(image, tf.stack([crop, crop, 3]), seeds[2])
    image = tf.image.resize(image, (image_size, image_size))
    image = tf.image.stateless_random_brightness(image, 20.0, seeds[3])
    return tf.clip_by_value(image, 0.0, 255.0)


def pk_dataset(manifest: manifest_lib.Manifest, image_size: int, instances_per_batch: int,
               images_per_instance: int, num_ce_classes: int, seed: int = 0,
               training: bool = True) -> Tuple[tf.data.Dataset, Dict[str, int]]:
    """Endless PK batches for the extractor's train_step.

    Each batch holds P distinct instances (drawn without replacement within an epoch over
    instances) and K images of each (drawn with replacement when an instance has fewer than K).

    Returns:
        (dataset of (images float32 [P*K, S, S, 3], {"instance": int32 [P*K], "ce_class": int32
        [P*K]}), info dict with num_instances, num_images, num_ce_classes).

    Raises:
        ValueError: an empty manifest or fewer than P instances.
    """
    if len(manifest) == 0:
        raise ValueError("pk_dataset: the manifest has no rows")
    instance, ce_class, num_instances = instance_labels(manifest, num_ce_classes)
    if num_instances < instances_per_batch:
        raise ValueError(f"pk_dataset: {num_instances} instances, fewer than the "
                         f"instances_per_batch={instances_per_batch}")
    order = np.argsort(instance, kind="stable")
    starts = np.searchsorted(instance[order], np.arange(num_instances))
    counts = np.bincount(instance, minlength=num_instances)
    paths = tf.constant(manifest.absolute_paths()[order])
    ce_sorted = tf.constant(ce_class[order])
    starts_t, counts_t = tf.constant(starts, tf.int64), tf.constant(counts, tf.int64)
    k = images_per_instance

    def pick(element_index, inst):
        # K image positions of instance `inst`, stateless in (seed, element index).
        draws = tf.random.stateless_uniform((k,), tf.stack([tf.cast(seed, tf.int64), element_index]),
                                            maxval=2**31 - 1, dtype=tf.int64)
        n = counts_t[inst]
        offsets = tf.where(n >= k, tf.math.floormod(tf.range(k, dtype=tf.int64) + draws[0], n),
                           tf.math.floormod(draws, n))
        rows = starts_t[inst] + offsets
        return tf.data.Dataset.from_tensor_slices(
            (rows, tf.fill((k,), inst), element_index * k + tf.range(k, dtype=tf.int64)))

    def load(row, inst, element):
        image = decode_image(tf.io.read_file(tf.gather(paths, row)), image_size)
        if training:
            image = augment(image, tf.stack([tf.cast(seed + 1, tf.int32),
                                             tf.cast(element, tf.int32)]), image_size)
        return image, {"instance": tf.cast(inst, tf.int32), "ce_class": tf.gather(ce_sorted, row)}

    ds = tf.data.Dataset.range(num_instances).shuffle(num_instances, seed=seed,
                                                      reshuffle_each_iteration=True).repeat()
    ds = ds.enumerate().flat_map(pick)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(instances_per_batch * k, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    info = {"num_instances": num_instances, "num_images": len(manifest),
            "num_ce_classes": int(min(num_ce_classes, num_instances))}
    return ds, info


def labelled_dataset(manifest: manifest_lib.Manifest, labels: np.ndarray, image_size: int,
                     batch_size: int, seed: int = 0) -> tf.data.Dataset:
    """Endless shuffled, augmented batches of (images float32 [B, S, S, 3], labels int32 [B, A]).

    For models trained from images with attribute labels (the pixel baselines); -1 = missing.

    Raises:
        ValueError: an empty manifest, or labels that are not one row per image.
    """
    labels = np.asarray(labels, np.int32)
    if len(manifest) == 0:
        raise ValueError("labelled_dataset: the manifest has no rows")
    if labels.ndim != 2 or len(labels) != len(manifest):
        raise ValueError(f"labelled_dataset: expected labels [{len(manifest)}, A]. Received: "
                         f"labels.shape={labels.shape}")
    ds = tf.data.Dataset.from_tensor_slices((manifest.absolute_paths(), labels))
    ds = ds.shuffle(len(manifest), seed=seed, reshuffle_each_iteration=True).repeat().enumerate()

    def load(element, row):
        path, label = row
        image = decode_image(tf.io.read_file(path), image_size)
        image = augment(image, tf.stack([tf.cast(seed + 2, tf.int32), tf.cast(element, tf.int32)]),
                        image_size)
        return image, label

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
