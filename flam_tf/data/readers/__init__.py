"""Readers of the published data sets into `manifest.csv` (see `flam_tf.data.manifest`).

Every reader is `read_<source>(data_dir, **options) -> (rows, stats)`: rows are manifest row dicts
whose image paths are relative to `data_dir`, stats a `ReadStats` (splits, skips with reasons,
class mappings). `build_manifest` runs one and writes the rows; write the manifest inside
`data_dir` (then `read_manifest(out_path)` resolves the paths), or read it with
`read_manifest(out_path, root=data_dir)`.

Sources: deepfashion_inshop, deepfashion_c2s (FIR, feature extractor training), shopping100k,
darn (attribute embedder training and FAM evaluation, Table 1 top-N classes).
"""

import os

from absl import logging

from flam_tf.data.manifest import write_manifest
from flam_tf.data.readers.common import ReadStats
from flam_tf.data.readers.darn import read_darn
from flam_tf.data.readers.deepfashion import read_deepfashion_c2s, read_deepfashion_inshop
from flam_tf.data.readers.shopping100k import read_shopping100k

READERS = {
    "deepfashion_inshop": read_deepfashion_inshop,
    "deepfashion_c2s": read_deepfashion_c2s,
    "shopping100k": read_shopping100k,
    "darn": read_darn,
}


def build_manifest(source: str, data_dir: str, out_path: str, **options) -> ReadStats:
    """Reads data set `source` from `data_dir` and writes its manifest to `out_path`.

    Args:
        source: one of READERS.
        data_dir: the data set's directory in its published layout.
        out_path: the manifest.csv to write (best inside `data_dir`; see the module docstring).
        **options: passed to the reader, e.g. top_n, fam_eval_size, seed.

    Returns:
        The reader's ReadStats.

    Raises:
        ValueError: an unknown source. The reader's FileNotFoundError / ManifestError pass through.
    """
    if source not in READERS:
        raise ValueError(f"Unknown source. Received: source={source!r}; "
                         f"expected one of {sorted(READERS)}")
    rows, stats = READERS[source](data_dir, **options)
    write_manifest(out_path, rows, extra_columns=("role",))
    out_dir = os.path.dirname(os.path.abspath(out_path))
    if out_dir != os.path.abspath(data_dir):
        logging.warning("Manifest %s is outside %s; read it with read_manifest(path, root=%r)",
                        out_path, data_dir, data_dir)
    return stats


__all__ = ["READERS", "ReadStats", "build_manifest", "read_darn", "read_deepfashion_c2s",
           "read_deepfashion_inshop", "read_shopping100k"]
