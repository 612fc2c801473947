"""tf.data input pipelines built from a manifest.

Images enter the models as float32 [B, S, S, 3] in [0, 255]; each backbone normalises inside the
model, so the exported SavedModel and training see the same numbers.

* `image_dataset`: every image of a manifest in order (feature extraction).
* `pk_dataset`: endless P x K batches (P instances, K images each) so that every batch holds
  positives for triplet mining, with train-time augmentation. Deterministic for a seed; the whole
  hot path is TensorFlow ops (no Python generator).
* `labelled_dataset`: endless shuffled batches of (images, attribute labels).
* `decode_cache`: every image of a manifest decoded once into a uint8 array, so the two training
  pipelines above gather pixels instead of re-reading and re-decoding files every epoch.

Every pipeline here runs without tf.data's autotuning model (`without_autotune`).
"""

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from flam_tf.data import manifest as manifest_lib

# Largest image decoded, in pixels (height x width), read from the image header BEFORE decoding:
# a 47 KB PNG can declare 20,000 x 20,000 pixels (1.2 GB of RGB once decoded). Training configs
# set it as `data.max_image_pixels`; exports as `build_extractor_archive(max_image_pixels=...)`.
MAX_IMAGE_PIXELS = 4096 * 4096

_HEADER_BYTES = 32

_GIF_STEPS = 16  # GIF blocks / data sub-blocks walked per tf.while_loop iteration


def without_autotune(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` with tf.data's autotuning model switched off: AUTOTUNE map parallelism and prefetch
    buffers take TensorFlow's fixed defaults instead of tuned values; the elements are the same.

    Why: the model's optimisation thread waits between passes for a period that doubles up to
    60 s, and deleting the iterator at the end of a Keras `fit` often waited for that thread
    (8 of 13 default runs observed: 10-50 s after the last epoch of the extractor's, the
    manipulator's or a baseline's fit, in which nothing ran). Without the model there is no
    such thread; the extractor's input pipeline is as fast either way.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def _header_uint(head: tf.Tensor, start: int, size: int, little_endian: bool) -> tf.Tensor:
    """Unsigned integer of bytes head[start:start + size] (uint8 [_HEADER_BYTES]) as int64."""
    digits = tf.cast(head[start : start + size], tf.int64)
    weights = [256**i for i in range(size)]
    if not little_endian:
        weights = weights[::-1]
    return tf.reduce_sum(digits * tf.constant(weights, tf.int64))


def _gif_canvas(contents: tf.Tensor) -> tf.Tensor:
    """GIF [canvas height, canvas width, total pixels of all frames], int64, by walking its blocks.

    TF's GIF decoder (giflib's DGifSlurp) decodes the raster of EVERY frame, and its output canvas
    is the largest frame width x the largest frame height, whatever the logical screen says
    (checked with TF 2.21: a GIF whose logical screen is 10 x 10 and whose frame is 100 x 80
    decodes to 80 x 100). So the walk reads every image descriptor (never the pixel data): one
    step per block or (up to 255-byte) data sub-block, about 0.2 s of CPU per MB of GIF on this
    project's machines (several times the decoding itself; the request byte cap bounds it). A
    truncated or malformed stream ends the walk; the decoder then reports it.
    """
    data = tf.io.decode_raw(contents, tf.uint8)
    n = tf.size(data, out_type=tf.int64)

    def byte(i):
        return tf.cast(tf.gather(data, tf.minimum(tf.cast(i, tf.int64), n - 1)), tf.int64)

    def le16(i):
        return byte(i) + 256 * byte(i + 1)

    packed = byte(10)
    start = 13 + tf.where(
        packed >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), packed % 8), 0
    )
    zero = tf.constant(0, tf.int64)

    # State: position, in data sub-blocks?, max frame height, max frame width, total pixels, done.
    # Both cases are computed and selected with tf.where (cheaper per step than a tf.cond), and
    # each loop iteration takes _GIF_STEPS steps (the loop's own overhead dominates a step).
    def body(*state):
        for _ in range(_GIF_STEPS):
            state = step(*state)
        return state

    def step(pos, in_blocks, max_h, max_w, total, done):
        if_done = (pos, in_blocks, max_h, max_w, total, done)
        b = byte(pos)
        # In data sub-blocks: a size byte, then that many bytes; size 0 ends the block.
        sub_pos, sub_more = tf.where(b == 0, pos + 1, pos + 1 + b), b != 0
        # At a block start: 0x2C image descriptor, 0x21 extension, anything else (0x3B) ends.
        is_image, is_extension = tf.equal(b, 0x2C), tf.equal(b, 0x21)
        width, height, flags = le16(pos + 5), le16(pos + 7), byte(pos + 9)
        local_table = tf.where(
            flags >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), flags % 8), 0
        )
        image = is_image & ~in_blocks
        pos = tf.where(in_blocks, sub_pos, tf.where(is_image, pos + 11 + local_table, pos + 2))
        ended = ~in_blocks & ~(is_image | is_extension)
        in_blocks = tf.where(in_blocks, sub_more, is_image | is_extension)
        new = (
            pos,
            in_blocks,
            tf.where(image, tf.maximum(max_h, height), max_h),
            tf.where(image, tf.maximum(max_w, width), max_w),
            tf.where(image, total + width * height, total),
            ended | (pos >= n),
        )
        return tuple(tf.where(done, old, value) for old, value in zip(if_done, new))

    _, _, max_h, max_w, total, _ = tf.while_loop(
        lambda pos, in_blocks, max_h, max_w, total, done: ~done,
        body,
        (start, tf.constant(False), zero, zero, zero, start >= n),
    )
    screen_w, screen_h = le16(tf.constant(6, tf.int64)), le16(tf.constant(8, tf.int64))
    return tf.stack(
        [
            tf.maximum(max_h, screen_h),
            tf.maximum(max_w, screen_w),
            tf.maximum(total, screen_w * screen_h),
        ]
    )


def _image_extent(contents: tf.Tensor) -> tf.Tensor:
    """[height, width, pixels decoded] (int64) of encoded image bytes, from their headers.

    pixels = height * width, except for a GIF: the pixels of all its frames (at least the canvas).
    Unknown formats give [0, 0, 0] (the decoder then fails with "Unknown image file format").
    """
    contents = tf.convert_to_tensor(contents, tf.string)
    head = tf.strings.substr(contents, 0, _HEADER_BYTES)
    head = tf.strings.substr(tf.strings.join([head, b"\0" * _HEADER_BYTES]), 0, _HEADER_BYTES)
    head = tf.io.decode_raw(head, tf.uint8)  # [_HEADER_BYTES], zero-padded
    magic = tf.strings.substr(contents, 0, 4)

    def sized(height, width):
        return tf.stack([height, width, height * width])

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(contents), tf.int64)
        return sized(shape[0], shape[1])

    def png():  # IHDR: width, height big-endian uint32 at bytes 16..24
        return sized(_header_uint(head, 20, 4, False), _header_uint(head, 16, 4, False))

    def bmp():  # BITMAPINFOHEADER: width, height little-endian int32 at 18..26 (< 0: top-down)
        def signed(start):
            value = _header_uint(head, start, 4, True)
            return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

        return sized(signed(22), signed(18))

    def unknown():
        return tf.zeros([3], tf.int64)

    is_jpeg = tf.equal(tf.strings.substr(contents, 0, 3), b"\xff\xd8\xff")
    is_png = tf.equal(magic, b"\x89PNG")
    is_gif = tf.equal(tf.strings.substr(contents, 0, 3), b"GIF")
    is_bmp = tf.equal(tf.strings.substr(contents, 0, 2), b"BM")
    branch = tf.where(is_jpeg, 0, tf.where(is_png, 1, tf.where(is_gif, 2, tf.where(is_bmp, 3, 4))))
    return tf.switch_case(branch, [jpeg, png, lambda: _gif_canvas(contents), bmp, unknown])


def image_size_from_header(contents: tf.Tensor) -> tf.Tensor:
    """(height, width) an image decodes to, read from its header without decoding: int64 [2].

    Pure TF ops (works in tf.function, tf.map_fn and tf.data). JPEG: `tf.image.extract_jpeg_shape`;
    PNG: IHDR width/height (big-endian, bytes 16..24); BMP: width/height (little-endian int32,
    bytes 18..26, a negative height meaning top-down); GIF: the canvas TF's decoder outputs, i.e.
    the largest of the logical screen (little-endian uint16, bytes 6..10) and every frame's image
    descriptor. Unknown formats give (0, 0).
    """
    return _image_extent(contents)[:2]


def decode_image(
    contents: tf.Tensor, image_size: int, max_pixels: int = MAX_IMAGE_PIXELS
) -> tf.Tensor:
    """Decodes JPEG/PNG/GIF/BMP bytes to float32 [S, S, 3] in [0, 255] (bilinear resize).

    Images of more than `max_pixels` pixels (height x width, read from the header BEFORE
    decoding, so a decompression bomb costs no memory) fail with InvalidArgumentError:
    "Image of W x H pixels exceeds the limit of N pixels (max_image_pixels)". A GIF is bounded
    as TF decodes it: its canvas (largest frame width x largest frame height) AND the pixels of
    all its frames together (TF decodes every frame, then keeps the first) must fit the limit;
    the data of a frame is never read by the check. Unknown formats fail with TF's "Unknown image
    file format" (InvalidArgumentError), as before.
    """
    extent = _image_extent(contents)  # int64: PNG sizes reach 2**32 - 1 each
    height, width, decoded = extent[0], extent[1], extent[2]
    # height and width are bounded first, so height * width cannot overflow when it matters.
    fits = (
        (height <= max_pixels)
        & (width <= max_pixels)
        & (height * width <= max_pixels)
        & (decoded <= max_pixels)
    )
    size = tf.strings.as_string(extent)
    frames = tf.where(
        decoded > height * width, tf.strings.join([" (", size[2], " in all GIF frames)"]), ""
    )
    within = tf.debugging.Assert(
        fits,
        [
            tf.strings.join(
                [
                    "Image of ",
                    size[1],
                    " x ",
                    size[0],
                    " pixels",
                    frames,
                    " exceeds the limit of ",
                    str(int(max_pixels)),
                    " pixels (max_image_pixels)",
                ]
            )
        ],
    )
    with tf.control_dependencies([within]):
        image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image = tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size))
    image.set_shape((image_size, image_size, 3))
    return image


def image_dataset(
    manifest: manifest_lib.Manifest,
    image_size: int,
    batch_size: int = 256,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> tf.data.Dataset:
    """Batches of images of every manifest row, in manifest order: float32 [B, S, S, 3]."""
    return path_dataset(manifest.absolute_paths(), image_size, batch_size, max_pixels)


def path_dataset(
    paths: Sequence[str],
    image_size: int,
    batch_size: int = 256,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> tf.data.Dataset:
    """Batches of the images at `paths` (files), in order: float32 [B, S, S, 3]."""
    ds = tf.data.Dataset.from_tensor_slices(list(paths))
    ds = ds.map(
        lambda p: decode_image(tf.io.read_file(p), image_size, max_pixels),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return without_autotune(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))


def decode_cache(
    manifest: manifest_lib.Manifest,
    image_size: int,
    budget_bytes: int,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Optional[np.ndarray]:
    """Every image of `manifest` decoded and resized once: uint8 [N, S, S, 3] in manifest order.

    Training reads the same files for many epochs; decoding them each time costs as much CPU as
    the training step on a small model. The decoded pixels are rounded to uint8 (the resize is
    bilinear, so an image resized to another size moves by at most 0.5 of a grey level; an image
    already S x S is unchanged). Returns None, decoding nothing, when the array would exceed
    `budget_bytes` (0 turns the cache off): the pipelines then decode from the files as before.
    """
    needed = len(manifest) * image_size * image_size * 3
    if budget_bytes <= 0 or needed > budget_bytes:
        if budget_bytes > 0:
            logging.info(
                "decode cache: %d images need %.0f MiB, over the %.0f MiB budget; "
                "decoding from files",
                len(manifest),
                needed / 2**20,
                budget_bytes / 2**20,
            )
        return None
    out = np.empty((len(manifest), image_size, image_size, 3), np.uint8)
    start = 0
    for images in image_dataset(manifest, image_size, batch_size=256, max_pixels=max_pixels):
        batch = np.clip(np.rint(images.numpy()), 0, 255).astype(np.uint8)
        out[start : start + len(batch)] = batch
        start += len(batch)
    return out


def _cached_images(decoded: Optional[np.ndarray], num_rows: int, image_size: int, caller: str):
    """The cache as a tensor captured by the pipeline's map function (or None), checked."""
    if decoded is None:
        return None
    if decoded.shape != (num_rows, image_size, image_size, 3) or decoded.dtype != np.uint8:
        raise ValueError(
            f"{caller}: decoded must be uint8 [{num_rows}, {image_size}, "
            f"{image_size}, 3] (decode_cache of the same manifest). Received: "
            f"{decoded.dtype} {decoded.shape}"
        )
    return tf.constant(decoded)


def instance_labels(
    manifest: manifest_lib.Manifest, num_ce_classes: int
) -> Tuple[np.ndarray, np.ndarray, int]:
    """Integer labels for extractor training.

    Returns:
        (instance int32 [N] dense instance index, ce_class int32 [N] index among the
        `num_ce_classes` instances with the most images (ties by first appearance), -1 for the
        rest, number of instances).
    """
    ids, first, instance = np.unique(
        manifest["instance_id"], return_index=True, return_inverse=True
    )
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


def pk_dataset(
    manifest: manifest_lib.Manifest,
    image_size: int,
    instances_per_batch: int,
    images_per_instance: int,
    num_ce_classes: int,
    seed: int = 0,
    training: bool = True,
    skip_batches: int = 0,
    max_pixels: int = MAX_IMAGE_PIXELS,
    decoded: Optional[np.ndarray] = None,
) -> Tuple[tf.data.Dataset, Dict[str, int]]:
    """Endless PK batches for the extractor's train_step.

    Each batch holds P distinct instances (drawn without replacement within an epoch over
    instances) and K images of each (drawn with replacement when an instance has fewer than K).
    `skip_batches` starts the stream that many batches in, without reading their images: a
    resumed fit continues the stream an uninterrupted one would have seen. `decoded`
    (`decode_cache` of the same manifest) replaces reading and decoding the files.

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
        raise ValueError(
            f"pk_dataset: {num_instances} instances, fewer than the "
            f"instances_per_batch={instances_per_batch}"
        )
    order = np.argsort(instance, kind="stable")
    starts = np.searchsorted(instance[order], np.arange(num_instances))
    counts = np.bincount(instance, minlength=num_instances)
    paths = tf.constant(manifest.absolute_paths()[order])
    cache = _cached_images(decoded, len(manifest), image_size, "pk_dataset")
    rows_to_manifest = tf.constant(order, tf.int64)
    ce_sorted = tf.constant(ce_class[order])
    starts_t, counts_t = tf.constant(starts, tf.int64), tf.constant(counts, tf.int64)
    k = images_per_instance

    def pick(element_index, inst):
        # K image positions of instance `inst`, stateless in (seed, element index).
        draws = tf.random.stateless_uniform(
            (k,),
            tf.stack([tf.cast(seed, tf.int64), element_index]),
            maxval=2**31 - 1,
            dtype=tf.int64,
        )
        n = counts_t[inst]
        offsets = tf.where(
            n >= k,
            tf.math.floormod(tf.range(k, dtype=tf.int64) + draws[0], n),
            tf.math.floormod(draws, n),
        )
        rows = starts_t[inst] + offsets
        return tf.data.Dataset.from_tensor_slices(
            (rows, tf.fill((k,), inst), element_index * k + tf.range(k, dtype=tf.int64))
        )

    def load(row, inst, element):
        if cache is None:
            image = decode_image(tf.io.read_file(tf.gather(paths, row)), image_size, max_pixels)
        else:
            image = tf.cast(tf.gather(cache, tf.gather(rows_to_manifest, row)), tf.float32)
        if training:
            image = augment(
                image,
                tf.stack([tf.cast(seed + 1, tf.int32), tf.cast(element, tf.int32)]),
                image_size,
            )
        return image, {"instance": tf.cast(inst, tf.int32), "ce_class": tf.gather(ce_sorted, row)}

    ds = (
        tf.data.Dataset.range(num_instances)
        .shuffle(num_instances, seed=seed, reshuffle_each_iteration=True)
        .repeat()
    )
    ds = ds.enumerate().skip(skip_batches * instances_per_batch).flat_map(pick)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(instances_per_batch * k, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    info = {
        "num_instances": num_instances,
        "num_images": len(manifest),
        "num_ce_classes": int(min(num_ce_classes, num_instances)),
    }
    return without_autotune(ds), info


def labelled_dataset(
    manifest: manifest_lib.Manifest,
    labels: np.ndarray,
    image_size: int,
    batch_size: int,
    seed: int = 0,
    skip_batches: int = 0,
    max_pixels: int = MAX_IMAGE_PIXELS,
    decoded: Optional[np.ndarray] = None,
) -> tf.data.Dataset:
    """Endless shuffled, augmented batches of (images float32 [B, S, S, 3], labels int32 [B, A]).

    For models trained from images with attribute labels (the pixel baselines); -1 = missing.
    `decoded` (`decode_cache` of the same manifest) replaces reading and decoding the files.

    Raises:
        ValueError: an empty manifest, or labels that are not one row per image.
    """
    labels = np.asarray(labels, np.int32)
    if len(manifest) == 0:
        raise ValueError("labelled_dataset: the manifest has no rows")
    if labels.ndim != 2 or len(labels) != len(manifest):
        raise ValueError(
            f"labelled_dataset: expected labels [{len(manifest)}, A]. Received: "
            f"labels.shape={labels.shape}"
        )
    cache = _cached_images(decoded, len(manifest), image_size, "labelled_dataset")
    ds = tf.data.Dataset.from_tensor_slices(
        (manifest.absolute_paths(), labels, np.arange(len(manifest), dtype=np.int64))
    )
    ds = ds.shuffle(len(manifest), seed=seed, reshuffle_each_iteration=True).repeat().enumerate()
    ds = ds.skip(skip_batches * batch_size)  # a resumed fit: the batches it already trained on

    def load(element, row):
        path, label, index = row
        if cache is None:
            image = decode_image(tf.io.read_file(path), image_size, max_pixels)
        else:
            image = tf.cast(tf.gather(cache, index), tf.float32)
        image = augment(
            image, tf.stack([tf.cast(seed + 2, tf.int32), tf.cast(element, tf.int32)]), image_size
        )
        return image, label

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return without_autotune(ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
