"""Query files in, the search results table out: shared by the serving command lines
(`client_cli.py`, `index_cli.py`) and `catalog_index.py`. numpy only: the catalogue index and its
command line import no TensorFlow."""

from typing import List, Sequence

import numpy as np


def read_files(paths: Sequence[str]) -> List[bytes]:
    """The bytes of each file (e.g. encoded query images), in order."""
    data = []
    for path in paths:
        with open(path, "rb") as f:
            data.append(f.read())
    return data


def load_features(npy_path: str) -> np.ndarray:
    """Query features from a .npy file: float32 [B, D] (a single row [D] becomes [1, D])."""
    features = np.load(npy_path, allow_pickle=False).astype(np.float32)
    return features[np.newaxis] if features.ndim == 1 else features


def print_search_results(names: Sequence[str], ids: np.ndarray, scores: np.ndarray, out) -> None:
    """The search table of the command lines: one line per (query, rank) with score and id."""
    print(f"{'query':<30} {'rank':>4}  {'score':>7}  id", file=out)
    for i, name in enumerate(names):
        for rank, (id_, score) in enumerate(zip(ids[i], scores[i]), 1):
            print(f"{name:<30} {rank:>4}  {score:7.4f}  {id_}", file=out)
