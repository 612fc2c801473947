"""T@k on ADDE's published attribute manipulation queries (Shopping100k, DeepFashion), restricted
to manipulations of category, color and pattern, counted the way ADDE's `src/eval.py` counts.

The splits are read by `flam_tf.data.readers.adde_splits.read_adde_split`. A query is a hit at k
when one of the k gallery images nearest to the manipulated query feature has exactly the query's
target labels `gt_labels` (every attribute, a missing label matching only a missing label). The
gallery is the whole test set, the reference image included (as in eval.py, which searches all of
imgs_test with faiss IndexFlatL2 on L2-normalized features; cosine ranking is the same order).

    python -m flam_tf.evaluation.public_splits SPLIT_DIR [SPLIT_DIR ...]

prints the query counts per data set (all queries, and those of category / color / pattern).
"""

import sys
from typing import Callable, Dict, Sequence

import numpy as np

from flam_tf.evaluation.metrics import ALL, NUM_QUERIES, top_k_key
from flam_tf.models.searcher import cosine_top_k

ADDE_KS = (10, 20, 30, 50)  # ADDE reports top-30 by default (eval.py --top_k 30)


def adde_top_k_accuracy(
    split,
    gallery_features,
    manipulate: Callable,
    ks: Sequence[int] = ADDE_KS,
    batch_size: int = 1024,
) -> Dict[str, Dict[str, float]]:
    """T@k per FLAM attribute type and over the category/color/pattern queries.

    Args:
        split: an `AddeSplit` whose `attribute_index` names the types to score.
        gallery_features: float array [N, D], one row per image of `split.images`.
        manipulate: (reference features [q, D], attribute type name, target value index int
            array [q]) -> manipulated query features [q, D]; called once per attribute type.
        ks: cut-offs.
        batch_size: queries per similarity matmul.

    Returns:
        {type: {"T@k": float, "num_queries": int}, ..., "all": {...}}; nan for no query.
    """
    gallery_features = np.asarray(gallery_features, dtype=np.float32)
    if len(gallery_features) != len(split.images):
        raise ValueError(
            f"gallery_features has {len(gallery_features)} rows; the split has "
            f"{len(split.images)} images"
        )
    k_max = max(ks)
    results, all_hits = {}, []
    for name, attribute in split.attribute_index.items():
        chosen = np.flatnonzero(split.target_attribute == attribute)
        hits = np.zeros((len(chosen), k_max), dtype=bool)
        if len(chosen):
            queries = np.asarray(
                manipulate(gallery_features[split.ref[chosen]], name, split.target_value[chosen]),
                dtype=np.float32,
            )
            ranked, _ = cosine_top_k(queries, gallery_features, k_max, batch_size=batch_size)
            hits[:, : ranked.shape[1]] = np.all(
                split.labels[ranked] == split.gt_labels[chosen][:, None, :], axis=-1
            )
        results[name] = _rates(hits, ks)
        all_hits.append(hits)
    results[ALL] = _rates(np.concatenate(all_hits) if all_hits else np.zeros((0, k_max), bool), ks)
    return results


def _rates(hits, ks):
    found = np.cumsum(hits, axis=1) > 0
    out = {
        top_k_key(k): float(np.mean(found[:, min(k, found.shape[1]) - 1]))
        if len(found)
        else float("nan")
        for k in ks
    }
    out[NUM_QUERIES] = int(len(hits))
    return out


def main(argv):
    from flam_tf.data.readers.adde_splits import read_adde_split

    if not argv:
        print(__doc__.strip().splitlines()[-3].strip(), file=sys.stderr)
        return 2
    for split_dir in argv:
        split = read_adde_split(split_dir)
        print(f"{split_dir}: {len(split.images)} test images, queries {split.query_counts()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
