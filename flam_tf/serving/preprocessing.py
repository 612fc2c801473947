"""In-graph input handling of the exported signatures: image decoding and resizing, and the checks
that turn a bad request into INVALID_ARGUMENT naming the problem.

Used by the archive builders (`archives.py`), the edit parser (`edits.py`, for `quote`) and gallery
extraction (`export.gallery_from_manifest`), so served inputs and the gallery are prepared by the
same graph code.
"""

import tensorflow as tf

from flam_tf.data import pipeline
from flam_tf.serving import signatures as sig

# User strings quoted in error messages are cut to this many characters (then "...").
QUOTE_CHARS = 40


def resize_images(images, image_size: int):
    """Resizes images to the model input: uint8 or float [B, H, W, 3] -> float32 [B, S, S, 3].

    Bilinear `tf.image.resize` of float32 values in [0, 255], as `pipeline.decode_image` does.
    """
    return tf.image.resize(tf.cast(images, tf.float32), [image_size, image_size], method="bilinear")


def quote(strings):
    """A user-supplied string (any shape) as it may appear in an error message: valid UTF-8
    (bad bytes replaced by U+FFFD) and at most QUOTE_CHARS characters, "..." marking a cut."""
    head = tf.strings.substr(strings, 0, 4 * QUOTE_CHARS + 4)  # bytes enough for the characters
    head = tf.strings.unicode_transcode(head, "UTF-8", "UTF-8", errors="replace")
    cut = tf.strings.length(head, unit="UTF8_CHAR") > QUOTE_CHARS
    short = tf.strings.substr(head, 0, QUOTE_CHARS, unit="UTF8_CHAR")
    return tf.where(
        cut | (tf.strings.length(strings) > 4 * QUOTE_CHARS + 4),
        tf.strings.join([short, "..."]),
        short,
    )


def check_batch(tensor, limit: int, what: str):
    """Asserts `tensor` has at most `limit` rows; returns it (INVALID_ARGUMENT naming the limit)."""
    rows = tf.shape(tensor, out_type=tf.int64)[0]
    ok = tf.debugging.Assert(
        rows <= limit,
        [
            tf.strings.join(
                [
                    f"At most {limit} {what} per request (the signature's maximum batch). Received: ",
                    tf.strings.as_string(rows),
                ]
            )
        ],
    )
    with tf.control_dependencies([ok]):
        return tf.identity(tensor)


def decode_images(image_bytes, image_size: int, max_image_pixels: int = pipeline.MAX_IMAGE_PIXELS):
    """Decodes and resizes encoded images: string [B] (JPEG, PNG, GIF, BMP) -> float32 [B,S,S,3].

    Each image goes through the training input pipeline's own `decode_image`, so served and
    training inputs are the same numbers. Bytes that are not an image, and images of more than
    `max_image_pixels` pixels (read from the header, before decoding), fail with INVALID_ARGUMENT.
    """
    return tf.map_fn(
        lambda data: pipeline.decode_image(data, image_size, max_image_pixels),
        image_bytes,
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
    )


def check_pixels(images, max_image_pixels: int = pipeline.MAX_IMAGE_PIXELS):
    """Asserts images [B, H, W, C] have at most `max_image_pixels` pixels (H x W); returns them."""
    shape = tf.shape(images, out_type=tf.int64)
    ok = tf.debugging.Assert(
        shape[1] * shape[2] <= max_image_pixels,
        [
            tf.strings.join(
                [
                    "Image of ",
                    tf.strings.as_string(shape[2]),
                    " x ",
                    tf.strings.as_string(shape[1]),
                    f" pixels exceeds the limit of {int(max_image_pixels)} pixels (max_image_pixels)",
                ]
            )
        ],
    )
    with tf.control_dependencies([ok]):
        return tf.identity(images)


def check_features(feature, feature_dim: int, max_rows: int = sig.MAX_FEATURES_PER_REQUEST):
    """Asserts `feature` is [B <= max_rows, feature_dim] and finite; returns it (INVALID_ARGUMENT
    otherwise)."""
    feature = check_batch(feature, max_rows, f"{sig.FEATURE} rows")
    width_ok = tf.debugging.assert_equal(
        tf.shape(feature)[1], feature_dim, message=f"{sig.FEATURE} must have width {feature_dim}"
    )
    with tf.control_dependencies([width_ok]):
        return tf.debugging.check_numerics(feature, f"{sig.FEATURE} must be finite")
