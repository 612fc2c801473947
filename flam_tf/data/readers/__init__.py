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


def class_table_options(source: str, path: str) -> dict:
    """The reader options that name a source's class codes from the JSON file `path`:
    Shopping100k a code table (`shopping100k_codes.json`'s format, merged over it), DARN a
    class table ({type: {class id: canonical class}}). Errors name the file.

    Raises:
        ValueError: a source without class codes, or a malformed file.
        FileNotFoundError: `path` does not exist.
    """
    import json

    if source not in ("shopping100k", "darn"):
        raise ValueError(
            f"A class table applies to shopping100k and darn only. Received: source={source!r}"
        )
    if source == "shopping100k":
        from flam_tf.data.readers.shopping100k import load_code_table

        load_code_table(path)  # validates; errors name the file
    with open(path, encoding="utf-8-sig") as f:
        try:
            table = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {e.lineno}: not valid JSON: {e.msg}") from None
    if source == "darn" and not (
        isinstance(table, dict) and all(isinstance(v, dict) for v in table.values())
    ):
        raise ValueError(f"{path}: expected {{type: {{class id: canonical class}}}}")
    return {"code_table": table} if source == "shopping100k" else {"class_table": table}


def build_manifest(
    source: str, data_dir: str, out_path: str, warn_outside: bool = True, **options
) -> ReadStats:
    """Reads data set `source` from `data_dir` and writes its manifest to `out_path`.

    Args:
        source: one of READERS.
        data_dir: the data set's directory in its published layout.
        out_path: the manifest.csv to write (best inside `data_dir`; see the module docstring).
        warn_outside: log a warning when `out_path` is outside `data_dir` (callers that read it
            back with `root=data_dir`, as the train job does, pass False).
        **options: passed to the reader, e.g. top_n, fam_eval_size, seed.

    Returns:
        The reader's ReadStats.

    Raises:
        ValueError: an unknown source. The reader's FileNotFoundError / ManifestError pass through.
    """
    if source not in READERS:
        raise ValueError(
            f"Unknown source. Received: source={source!r}; expected one of {sorted(READERS)}"
        )
    rows, stats = READERS[source](data_dir, **options)
    write_manifest(out_path, rows, extra_columns=("role",))
    out_dir = os.path.dirname(os.path.abspath(out_path))
    if warn_outside and out_dir != os.path.abspath(data_dir):
        logging.warning(
            "Manifest %s is outside %s; read it with read_manifest(path, root=%r)",
            out_path,
            data_dir,
            data_dir,
        )
    return stats


__all__ = [
    "READERS",
    "ReadStats",
    "build_manifest",
    "class_table_options",
    "read_darn",
    "read_deepfashion_c2s",
    "read_deepfashion_inshop",
    "read_shopping100k",
]
