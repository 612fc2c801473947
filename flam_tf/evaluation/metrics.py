"""Retrieval metrics of the paper's Tables 2-5, in plain numpy.

- FIR (fashion instance retrieval): recall R@k, `recall_at_k`.
- FAM (fashion attribute manipulation): top-k accuracy T@k, `fam_queries` enumerates the queries,
  `top_k_accuracy` / `fam_top_k_accuracy` score them.
- Counterfactual twins: `twin_recall`, R@k that a query's twin is retrieved.

All scoring functions take `ranked_indices` [Q, K], gallery indices sorted by descending score (as
`cosine_top_k` returns them). A k larger than K is clipped to K, which is exact when K covers the
whole candidate set; a ValueError is raised when K is too short to evaluate the requested k.
Result dictionaries are keyed with `recall_key` / `top_k_key` and carry "num_queries".
"""

from typing import NamedTuple

import numpy as np

from flam_tf.models.searcher import cosine_top_k, l2_normalize  # noqa: F401  (the search used)
from flam_tf.vocabulary import ATTRIBUTE_TYPES

FIR_KS = (1, 5, 10, 20, 50, 100)
FAM_KS = (1, 5, 10, 20, 30, 50, 100)
NUM_QUERIES = "num_queries"
ALL = "all"


def recall_key(k):
    """Report key of recall at k: "R@k"."""
    return f"R@{k}"


def top_k_key(k):
    """Report key of top-k accuracy: "T@k"."""
    return f"T@{k}"


def _check_width(ranked_indices, ks, num_candidates):
    """Checks that [Q, K] ranked lists are long enough for every k; returns the array."""
    ranked_indices = np.asarray(ranked_indices)
    if ranked_indices.ndim != 2:
        raise ValueError(f"ranked_indices must be [Q, K]. Received: shape={ranked_indices.shape}")
    width = ranked_indices.shape[1]
    for k in ks:
        if k < 1:
            raise ValueError(f"Every k must be at least 1. Received: ks={tuple(ks)}")
        if width < min(k, num_candidates):
            raise ValueError(
                f"ranked_indices holds {width} items per query, too few for k={k} over "
                f"{num_candidates} candidates"
            )
    return ranked_indices


def _rates(hits, ks):
    """Fraction of rows with a hit within the first k columns, for each k (nan for 0 rows).

    Args:
        hits: bool array [Q, K].
        ks: the cut-offs.
    """
    num = hits.shape[0]
    results = {}
    for k in ks:
        found = np.any(hits[:, : min(k, hits.shape[1])], axis=1)
        results[k] = float(found.mean()) if num else float("nan")
    return results


def recall_at_k(query_ids, gallery_ids, ranked_indices, ks=FIR_KS, exclude=None):
    """FIR recall: R@k = fraction of queries with a same-id gallery item within the top k.

    Queries whose id has no item in the gallery (apart from their own excluded entry) cannot be
    answered and are left out of the denominator; "num_queries" is the number of queries counted.

    Args:
        query_ids: array [Q] of instance ids (any comparable dtype).
        gallery_ids: array [N] of instance ids.
        ranked_indices: int array [Q, K] of gallery indices, best first.
        ks: cut-offs.
        exclude: optional int array [Q], the gallery index of the query itself (-1 for none), as
            passed to `cosine_top_k`; that entry does not count as a match.

    Returns:
        {"R@k": float for each k (nan when no query counts), "num_queries": int}.

    Raises:
        ValueError: when ranked_indices is too short for some k.
    """
    query_ids = np.asarray(query_ids).reshape(-1)
    gallery_ids = np.asarray(gallery_ids).reshape(-1)
    num_candidates = len(gallery_ids) - (1 if exclude is not None else 0)
    ranked_indices = _check_width(ranked_indices, ks, num_candidates)

    unique_ids, counts = np.unique(gallery_ids, return_counts=True)
    position = np.clip(np.searchsorted(unique_ids, query_ids), 0, len(unique_ids) - 1)
    if len(unique_ids):
        matches_per_query = np.where(unique_ids[position] == query_ids, counts[position], 0)
    else:
        matches_per_query = np.zeros(len(query_ids), dtype=np.int64)
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64).reshape(-1)
        own = exclude >= 0
        self_match = np.zeros_like(own)
        self_match[own] = gallery_ids[exclude[own]] == query_ids[own]
        matches_per_query -= self_match.astype(np.int64)
    answerable = matches_per_query > 0

    hits = gallery_ids[ranked_indices] == query_ids[:, None]  # [Q, K]
    if exclude is not None:
        hits &= ranked_indices != exclude[:, None]
    rates = _rates(hits[answerable], ks)
    results = {recall_key(k): rates[k] for k in ks}
    results[NUM_QUERIES] = int(answerable.sum())
    return results


class FamQueries(NamedTuple):
    """The FAM queries of a gallery: one row per (query item, attribute type, target value).

    Attributes:
        query_index: int64 [M], gallery index of the query item.
        attribute_index: int64 [M], index of the manipulated attribute type.
        target_value: int64 [M], the class the attribute is changed to.
        target_labels: int64 [M, A], the query's labels with that one attribute changed.
    """

    query_index: np.ndarray
    attribute_index: np.ndarray
    target_value: np.ndarray
    target_labels: np.ndarray


def fam_queries(labels, is_query, attribute_types=ATTRIBUTE_TYPES):
    """Enumerates the FAM queries: every query item x every attribute type x every reachable value.

    A target value v of attribute type a is kept for query q when some gallery item carries the
    full target combination, q's labels with a set to v (T@k could never hit otherwise). That item
    is never q itself, since v differs from q's own value. Rows are ordered by query index, then
    attribute index, then target value.

    Args:
        labels: int array [N, A] of the gallery's dense labels, columns in `attribute_types` order.
        is_query: bool array [N], which gallery items serve as queries.
        attribute_types: names of the label columns (A of them).

    Returns:
        FamQueries.

    Raises:
        ValueError: for a missing (negative) label or mismatched shapes.
    """
    labels = np.asarray(labels, dtype=np.int64)
    is_query = np.asarray(is_query, dtype=bool).reshape(-1)
    num_types = len(attribute_types)
    if labels.ndim != 2 or labels.shape[1] != num_types or len(is_query) != len(labels):
        raise ValueError(
            f"Expected labels [N, {num_types}] and is_query [N]. Received: labels.shape="
            f"{labels.shape}, is_query.shape={is_query.shape}"
        )
    if np.any(labels < 0):
        raise ValueError("FAM needs dense labels. Received: labels with a missing (-1) entry")

    # (attribute, the other labels) -> the values of that attribute found with them.
    reachable = {}
    for row in {tuple(r) for r in labels.tolist()}:
        for a in range(num_types):
            rest = row[:a] + row[a + 1 :]
            reachable.setdefault((a, rest), set()).add(row[a])

    rows = []
    for q in np.nonzero(is_query)[0]:
        row = tuple(labels[q].tolist())
        for a in range(num_types):
            for value in sorted(reachable[(a, row[:a] + row[a + 1 :])] - {row[a]}):
                rows.append((q, a, value))
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    target_labels = labels[rows[:, 0]].copy()
    target_labels[np.arange(len(rows)), rows[:, 1]] = rows[:, 2]
    return FamQueries(rows[:, 0], rows[:, 1], rows[:, 2], target_labels)


def top_k_accuracy(ranked_indices, gallery_labels, target_labels, ks=FAM_KS):
    """FAM top-k accuracy: T@k = fraction of queries with a target-combination item in the top k.

    Args:
        ranked_indices: int array [Q, K] of gallery indices, best first, the query item already
            excluded.
        gallery_labels: int array [N, A].
        target_labels: int array [Q, A], the attribute combination each query asks for.
        ks: cut-offs.

    Returns:
        {"T@k": float for each k (nan for no query), "num_queries": int}.

    Raises:
        ValueError: when ranked_indices is too short for some k.
    """
    gallery_labels = np.asarray(gallery_labels)
    target_labels = np.asarray(target_labels)
    # The query item is excluded from its own ranking: N - 1 candidates.
    ranked_indices = _check_width(ranked_indices, ks, len(gallery_labels) - 1)
    hits = np.all(gallery_labels[ranked_indices] == target_labels[:, None, :], axis=-1)
    rates = _rates(hits, ks)
    results = {top_k_key(k): rates[k] for k in ks}
    results[NUM_QUERIES] = int(len(ranked_indices))
    return results


def fam_top_k_accuracy(
    ranked_indices,
    gallery_labels,
    target_labels,
    attribute_index,
    ks=FAM_KS,
    attribute_types=ATTRIBUTE_TYPES,
):
    """T@k per manipulated attribute type and over all queries (the paper's Table 3 columns).

    Args:
        ranked_indices: int array [Q, K], as for `top_k_accuracy`.
        gallery_labels: int array [N, A].
        target_labels: int array [Q, A].
        attribute_index: int array [Q], the manipulated attribute type of each query.
        ks: cut-offs.
        attribute_types: names of the attribute types, in index order.

    Returns:
        {"shape": {...}, "color": {...}, "pattern": {...}, "all": {...}}, each as returned by
        `top_k_accuracy` (values nan for a type without queries).
    """
    ranked_indices = np.asarray(ranked_indices)
    target_labels = np.asarray(target_labels)
    attribute_index = np.asarray(attribute_index).reshape(-1)
    results = {}
    for a, name in enumerate(attribute_types):
        chosen = attribute_index == a
        results[name] = top_k_accuracy(
            ranked_indices[chosen].reshape(-1, ranked_indices.shape[1]),
            gallery_labels,
            target_labels[chosen].reshape(-1, target_labels.shape[1]),
            ks,
        )
    results[ALL] = top_k_accuracy(ranked_indices, gallery_labels, target_labels, ks)
    return results


def twin_indices(queries, gallery_labels, instance_ids, twin_of):
    """The gallery index of the counterfactual twin that carries each query's target, or -1.

    Args:
        queries: FamQueries over the gallery.
        gallery_labels: int [N, A] dense labels.
        instance_ids: str [N], the gallery's instance ids.
        twin_of: str [N], the instance id a twin was rendered from ("" for other items).

    Returns:
        int64 array [Q].
    """
    lookup = {(src, tuple(gallery_labels[i])): i for i, src in enumerate(twin_of) if src}
    return np.array(
        [
            lookup.get((instance_ids[q], tuple(t)), -1)
            for q, t in zip(queries.query_index, queries.target_labels)
        ],
        dtype=np.int64,
    )


def twin_recall(ranked_indices, twin_index, ks=FAM_KS):
    """R@k that a query's counterfactual twin itself is in the top k.

    Only queries with a twin in the gallery count (twin_index >= 0). This function does not know
    the gallery size, so it cannot check K: pass K >= max(ks) (or the whole gallery).

    Args:
        ranked_indices: int array [Q, K] of gallery indices, best first.
        twin_index: int array [Q], the gallery index of the query's twin, -1 for none.
        ks: cut-offs.

    Returns:
        {"R@k": float for each k (nan when no query has a twin), "num_queries": int}.
    """
    ranked_indices = np.asarray(ranked_indices)
    twin_index = np.asarray(twin_index, dtype=np.int64).reshape(-1)
    has_twin = twin_index >= 0
    hits = ranked_indices[has_twin] == twin_index[has_twin, None]
    rates = _rates(hits, ks)
    results = {recall_key(k): rates[k] for k in ks}
    results[NUM_QUERIES] = int(has_twin.sum())
    return results
