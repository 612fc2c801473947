"""Tests of flam_tf.evaluation.metrics on hand-made galleries with known answers."""

import math

import numpy as np
import pytest

from flam_tf.evaluation import metrics

# ---------------------------------------------------------------------------------------------
# cosine_top_k
# ---------------------------------------------------------------------------------------------


def brute_force_top_k(queries, gallery, k, exclude=None):
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    sims = q.astype(np.float64) @ g.T.astype(np.float64)
    indices, scores = [], []
    for i, row in enumerate(sims):
        order = [j for j in np.argsort(-row, kind="stable") if exclude is None or j != exclude[i]][
            :k
        ]
        indices.append(order)
        scores.append(row[order])
    return np.array(indices), np.array(scores)


def test_cosine_top_k_matches_brute_force_sort():
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(7, 8)) * rng.uniform(0.5, 3.0, size=(7, 1))  # unnormalised
    gallery = rng.normal(size=(50, 8))
    indices, scores = metrics.cosine_top_k(queries, gallery, k=10, batch_size=3)
    expected_indices, expected_scores = brute_force_top_k(queries, gallery, 10)
    assert indices.shape == (7, 10) and scores.shape == (7, 10)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


def test_cosine_top_k_hand_worked():
    # Query (2,1) against g0=(1,0), g1=(0,1), g2=(1,1), g3=(-1,0):
    # cosines 2/sqrt(5)=0.894, 1/sqrt(5)=0.447, 3/sqrt(10)=0.949, -0.894 -> order g2, g0, g1, g3.
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    indices, scores = metrics.cosine_top_k(np.array([[2.0, 1.0]]), gallery, k=3)
    np.testing.assert_array_equal(indices, [[2, 0, 1]])
    np.testing.assert_allclose(
        scores, [[3 / math.sqrt(10), 2 / math.sqrt(5), 1 / math.sqrt(5)]], atol=1e-6
    )


def test_cosine_top_k_excludes_the_query():
    rng = np.random.default_rng(1)
    gallery = rng.normal(size=(20, 4))
    queries = gallery[:6]
    exclude = np.array([0, 1, 2, -1, 4, 5])  # query 3 excludes nothing: it finds itself first
    indices, _ = metrics.cosine_top_k(queries, gallery, k=5, exclude=exclude, batch_size=4)
    expected, _ = brute_force_top_k(queries, gallery, 5, exclude=exclude)
    np.testing.assert_array_equal(indices, expected)
    assert indices[3, 0] == 3
    for q in (0, 1, 2, 4, 5):
        assert q not in indices[q]


def test_cosine_top_k_clips_k_to_gallery_size():
    rng = np.random.default_rng(2)
    gallery = rng.normal(size=(6, 3))
    indices, scores = metrics.cosine_top_k(gallery[:2], gallery, k=100)
    assert indices.shape == (2, 6) and scores.shape == (2, 6)
    assert sorted(indices[0]) == list(range(6))
    indices, _ = metrics.cosine_top_k(gallery[:2], gallery, k=100, exclude=[0, 1])
    assert indices.shape == (2, 5)  # the excluded query leaves 5 candidates
    assert 0 not in indices[0] and 1 not in indices[1]


def test_cosine_top_k_bad_arguments():
    with pytest.raises(ValueError, match="k=0"):
        metrics.cosine_top_k(np.ones((1, 2)), np.ones((3, 2)), k=0)
    with pytest.raises(ValueError, match="gallery.shape"):
        metrics.cosine_top_k(np.ones((1, 2)), np.ones((3, 4)), k=1)


# ---------------------------------------------------------------------------------------------
# recall_at_k (FIR)
# ---------------------------------------------------------------------------------------------


def test_recall_at_k_with_unanswerable_query():
    gallery_ids = np.array(["a", "b", "b", "c", "d"])
    query_ids = np.array(["a", "b", "e", "c"])
    ranked = np.array(
        [
            [1, 2, 0, 3, 4],  # "a": its item (0) at rank 3
            [2, 0, 1, 3, 4],  # "b": rank 1
            [0, 1, 2, 3, 4],  # "e": no gallery item -> left out of the denominator
            [0, 1, 2, 4, 3],  # "c": rank 5
        ]
    )
    result = metrics.recall_at_k(query_ids, gallery_ids, ranked, ks=(1, 3, 5))
    # Over the 3 answerable queries: R@1 = 1/3 ("b"), R@3 = 2/3 (+"a"), R@5 = 3/3 (+"c").
    assert result == pytest.approx({"R@1": 1 / 3, "R@3": 2 / 3, "R@5": 1.0, "num_queries": 3})


def test_recall_at_k_with_queries_inside_gallery():
    # Gallery ids [a, a, b, c]; every item queries the rest. Items 2 ("b") and 3 ("c") have no
    # other item with their id: only queries 0 and 1 count.
    gallery_ids = np.array([10, 10, 20, 30])
    ranked = np.array([[3, 1, 2], [0, 2, 3], [0, 1, 3], [0, 1, 2]])
    result = metrics.recall_at_k(
        gallery_ids, gallery_ids, ranked, ks=(1, 2, 3), exclude=np.arange(4)
    )
    # Query 0 finds item 1 at rank 2; query 1 finds item 0 at rank 1.
    assert result == pytest.approx({"R@1": 0.5, "R@2": 1.0, "R@3": 1.0, "num_queries": 2})


def test_recall_at_k_from_cosine_top_k_and_clipped_k():
    # Two instances, two images each, on the unit circle near 0 and near 90 degrees.
    gallery = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    ids = np.array([0, 0, 1, 1])
    ranked, _ = metrics.cosine_top_k(gallery, gallery, k=100, exclude=np.arange(4))
    result = metrics.recall_at_k(ids, ids, ranked, ks=(1, 100), exclude=np.arange(4))
    assert result == {"R@1": 1.0, "R@100": 1.0, "num_queries": 4}


def test_recall_at_k_rejects_too_short_rankings():
    ids = np.arange(10)
    with pytest.raises(ValueError, match="k=5"):
        metrics.recall_at_k(ids[:2], ids, np.zeros((2, 3), np.int64), ks=(1, 5))


# ---------------------------------------------------------------------------------------------
# FAM: query enumeration and top-k accuracy
# ---------------------------------------------------------------------------------------------

# Gallery labels (shape, color, pattern); items 0 and 4 are queries.
FAM_LABELS = np.array(
    [
        [0, 0, 0],  # 0 query
        [0, 1, 0],  # 1
        [1, 0, 0],  # 2
        [0, 2, 0],  # 3
        [0, 0, 1],  # 4 query
        [1, 1, 1],  # 5
    ]
)
FAM_IS_QUERY = np.array([True, False, False, False, True, False])


def test_fam_queries_hand_counted():
    queries = metrics.fam_queries(FAM_LABELS, FAM_IS_QUERY)
    # Item 0 (0,0,0): shape -> 1 (item 2); color -> 1 (item 1), -> 2 (item 3);
    #                 pattern -> 1 (item 4).                                       4 queries
    # Item 4 (0,0,1): shape: no (s,0,1) besides itself; color: no (0,c,1) besides itself;
    #                 pattern -> 0 (item 0).                                       1 query
    # Item 5 is not a query. Total 5.
    np.testing.assert_array_equal(queries.query_index, [0, 0, 0, 0, 4])
    np.testing.assert_array_equal(queries.attribute_index, [0, 1, 1, 2, 2])
    np.testing.assert_array_equal(queries.target_value, [1, 1, 2, 1, 0])
    np.testing.assert_array_equal(
        queries.target_labels, [[1, 0, 0], [0, 1, 0], [0, 2, 0], [0, 0, 1], [0, 0, 0]]
    )


def test_fam_queries_rejects_missing_labels():
    labels = FAM_LABELS.copy()
    labels[2, 1] = -1
    with pytest.raises(ValueError, match="missing"):
        metrics.fam_queries(labels, FAM_IS_QUERY)
    with pytest.raises(ValueError, match="labels.shape"):
        metrics.fam_queries(FAM_LABELS[:, :2], FAM_IS_QUERY)


def test_top_k_accuracy_hit_at_rank_three():
    # Query 0 asks for (0,2,0), which only item 3 has; it comes third.
    ranked = np.array([[1, 2, 3, 4, 5]])
    result = metrics.top_k_accuracy(ranked, FAM_LABELS, [[0, 2, 0]], ks=(1, 2, 3, 5))
    assert result == {"T@1": 0.0, "T@2": 0.0, "T@3": 1.0, "T@5": 1.0, "num_queries": 1}


def test_fam_top_k_accuracy_per_attribute_type():
    queries = metrics.fam_queries(FAM_LABELS, FAM_IS_QUERY)
    ranked = np.array(
        [
            [2, 1, 3, 4, 5],  # shape -> (1,0,0): item 2 at rank 1
            [3, 2, 4, 5, 1],  # color -> (0,1,0): item 1 at rank 5
            [1, 2, 3, 4, 5],  # color -> (0,2,0): item 3 at rank 3
            [5, 1, 2, 3, 4],  # pattern -> (0,0,1): item 4 at rank 5
            [0, 1, 2, 3, 5],  # pattern -> (0,0,0): item 0 at rank 1
        ]
    )
    result = metrics.fam_top_k_accuracy(
        ranked, FAM_LABELS, queries.target_labels, queries.attribute_index, ks=(1, 3, 5)
    )
    assert result["shape"] == {"T@1": 1.0, "T@3": 1.0, "T@5": 1.0, "num_queries": 1}
    assert result["color"] == {"T@1": 0.0, "T@3": 0.5, "T@5": 1.0, "num_queries": 2}
    assert result["pattern"] == {"T@1": 0.5, "T@3": 0.5, "T@5": 1.0, "num_queries": 2}
    # All 5: rank-1 hits 2/5, within 3: 3/5, within 5: 5/5.
    assert result["all"] == pytest.approx({"T@1": 0.4, "T@3": 0.6, "T@5": 1.0, "num_queries": 5})


def test_fam_top_k_accuracy_type_without_queries_is_nan():
    ranked = np.array([[2, 1, 3, 4, 5]])
    result = metrics.fam_top_k_accuracy(ranked, FAM_LABELS, [[1, 0, 0]], [0], ks=(1,))
    assert result["shape"]["T@1"] == 1.0
    assert math.isnan(result["color"]["T@1"]) and result["color"]["num_queries"] == 0


def test_default_ks_and_clipping_to_gallery():
    # 6 items, query excluded: 5 candidates cover every k of FAM_KS (clipped to 5).
    ranked = np.array([[1, 2, 3, 4, 5]])
    result = metrics.top_k_accuracy(ranked, FAM_LABELS, [[1, 1, 1]])
    assert [key for key in result if key != "num_queries"] == [
        "T@1",
        "T@5",
        "T@10",
        "T@20",
        "T@30",
        "T@50",
        "T@100",
    ]
    assert result["T@1"] == 0.0 and result["T@5"] == 1.0 and result["T@100"] == 1.0
    assert metrics.FIR_KS == (1, 5, 10, 20, 50, 100)


# ---------------------------------------------------------------------------------------------
# twin recall
# ---------------------------------------------------------------------------------------------


def test_twin_recall():
    ranked = np.array([[3, 1, 2], [0, 2, 1], [1, 2, 3], [2, 0, 1]])
    twins = np.array([2, -1, 1, 0])
    # Query 0: twin at rank 3; query 1: no twin (not counted); query 2: rank 1; query 3: rank 2.
    result = metrics.twin_recall(ranked, twins, ks=(1, 2, 3))
    assert result == pytest.approx({"R@1": 1 / 3, "R@2": 2 / 3, "R@3": 1.0, "num_queries": 3})


def test_twin_recall_without_twins_is_nan():
    result = metrics.twin_recall(np.array([[0, 1]]), np.array([-1]), ks=(1,))
    assert math.isnan(result["R@1"]) and result["num_queries"] == 0
