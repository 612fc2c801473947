"""flam_tf.models.searcher: the numpy `cosine_top_k` (evaluation) and the Keras `GalleryIndex` (the
exported searcher) are the same exact-cosine top-k, so they return the same ids."""

import numpy as np
import pytest

from flam_tf.models.searcher import GalleryIndex, cosine_top_k


@pytest.mark.parametrize("k", [1, 10, 64])
def test_gallery_index_and_cosine_top_k_return_the_same_ids(k):
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(64, 16)).astype(np.float32) * rng.uniform(0.1, 5.0, size=(64, 1))
    queries = rng.normal(size=(9, 16)).astype(np.float32) * rng.uniform(0.1, 5.0, size=(9, 1))
    indices, scores = cosine_top_k(queries, gallery, k, batch_size=4)
    layer_scores, layer_indices = GalleryIndex(gallery)(queries, k=k)
    assert indices.shape == (9, k)
    np.testing.assert_array_equal(np.asarray(layer_indices), indices)
    np.testing.assert_allclose(np.asarray(layer_scores), scores, atol=1e-5)


def test_gallery_index_holds_the_normalised_gallery():
    gallery = np.array([[3.0, 4.0], [0.0, 0.5]], np.float32)
    index = GalleryIndex(gallery)
    np.testing.assert_allclose(np.asarray(index.gallery), [[0.6, 0.8], [0.0, 1.0]], atol=1e-6)
    assert not index.trainable_weights
