"""The search: exact cosine top-k of query features against a gallery, in two runtimes.

- `cosine_top_k`: numpy, for evaluation (flam_tf.evaluation.metrics re-exports it).
- `GalleryIndex`: a Keras layer holding the gallery as a weight, the core of the exported
  `searcher` SavedModel (flam_tf.serving.archives).

Both rank the gallery by the cosine of L2-normalised rows, best first and ties by gallery index,
so for the same gallery and queries they return the same indices (scores agree to float32
rounding; `tests/test_searcher.py` checks it).
"""

import keras
import numpy as np
import tensorflow as tf


def l2_normalize(x):
    """Rows of x scaled to unit L2 norm (float32 [N, D]; zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def cosine_top_k(queries, gallery, k, exclude=None, batch_size=1024):
    """Top-k gallery items per query by cosine similarity.

    Similarities are computed one batch of queries at a time (memory [batch_size, N]); the top k
    are selected with `np.argpartition` and then sorted by descending score (ties by gallery index).

    Args:
        queries: float array [Q, D].
        gallery: float array [N, D].
        k: number of items to return; clipped to N, or to N - 1 when `exclude` is given.
        exclude: optional int array [Q], a gallery index never returned for that query (the query
            itself when it is part of the gallery); -1 excludes nothing.
        batch_size: queries per matmul.

    Returns:
        (indices, scores): int64 array [Q, k'] and float32 array [Q, k'], k' the clipped k.

    Raises:
        ValueError: for k < 1 or mismatched shapes.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1. Received: k={k}")
    queries = l2_normalize(queries)
    gallery = l2_normalize(gallery)
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"Expected queries [Q, D] and gallery [N, D]. Received: queries.shape={queries.shape},"
            f" gallery.shape={gallery.shape}"
        )
    num_queries, num_gallery = len(queries), len(gallery)
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64).reshape(-1)
        if exclude.shape != (num_queries,):
            raise ValueError(
                f"exclude must have one entry per query. Received: exclude.shape={exclude.shape},"
                f" queries.shape={queries.shape}"
            )
    k = min(k, num_gallery - (1 if exclude is not None else 0))
    indices = np.zeros((num_queries, max(k, 0)), dtype=np.int64)
    scores = np.zeros((num_queries, max(k, 0)), dtype=np.float32)
    if k <= 0:
        return indices, scores

    for start in range(0, num_queries, batch_size):
        stop = min(start + batch_size, num_queries)
        sims = queries[start:stop] @ gallery.T  # [b, N]
        if exclude is not None:
            rows = np.nonzero(exclude[start:stop] >= 0)[0]
            sims[rows, exclude[start:stop][rows]] = -np.inf
        if k < num_gallery:
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(num_gallery), sims.shape)
        top_scores = np.take_along_axis(sims, top, axis=1)
        # Sort by descending score, then ascending index (lexsort's last key is the primary one).
        order = np.lexsort((top, -top_scores), axis=1)
        indices[start:stop] = np.take_along_axis(top, order, axis=1)
        scores[start:stop] = np.take_along_axis(top_scores, order, axis=1)
    return indices, scores


def robust_l2_normalize(feature):
    """Row-wise l2 normalisation that cannot overflow: rows are divided by their largest |x| first
    (a finite 3e38 squared is inf in float32). Zero rows stay zero, never NaN."""
    scale = tf.reduce_max(tf.abs(feature), axis=1, keepdims=True)
    feature = feature / tf.where(scale > 0, scale, tf.ones_like(scale))
    return tf.math.l2_normalize(feature, axis=1)


class GalleryIndex(keras.layers.Layer):
    """Holds L2-normalised gallery features as a non-trainable weight; exact cosine top-K.

    Args:
        gallery: float32 [N, D] gallery features (normalised here, as `l2_normalize` does).
    """

    def __init__(self, gallery, **kwargs):
        super().__init__(**kwargs)
        gallery = l2_normalize(gallery)
        self.gallery = self.add_weight(
            shape=gallery.shape,
            trainable=False,
            name="gallery",
            initializer=keras.initializers.Zeros(),
        )
        self.gallery.assign(gallery)
        self.built = True

    def call(self, feature, k: int):
        """float32 [B, D] -> (scores float32 [B, k], indices int32 [B, k]), best first.

        Queries are normalised without overflow (`robust_l2_normalize`): a finite feature of
        3e38 ranks as its direction does; a zero query scores 0 everywhere.
        """
        query = robust_l2_normalize(feature)
        return tf.math.top_k(
            tf.matmul(query, tf.convert_to_tensor(self.gallery), transpose_b=True), k=k
        )
