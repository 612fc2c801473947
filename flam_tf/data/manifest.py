"""`manifest.csv`: the one on-disk format every data source is read into.

Columns (header required, order free, extra columns kept):
  path         image path, relative to the manifest's directory (or absolute)
  instance_id  item identity; views of the same item share it
  domain       "shop", "street" or "unknown"
  split        one of SPLITS (a role in the FLAM pipeline, disjoint by instance)
  shape, color, pattern   class names from `flam_tf.vocabulary.CLASSES`; empty = label missing
Optional columns the pipeline understands:
  role         ";"-separated evaluation roles of the row: inshop_query, inshop_gallery,
               c2s_query, c2s_gallery (FIR protocols); fam_query, fam_gallery (FAM protocol)
  twin_of      for a counterfactual twin, the instance_id of the item it was rendered from
  view         integer view index within the instance
"""

import csv
import dataclasses
import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from flam_tf import vocabulary

REQUIRED_COLUMNS = ("path", "instance_id", "domain", "split", "shape", "color", "pattern")
DOMAINS = ("shop", "street", "unknown")
SPLITS = ("extractor_train", "fir_eval", "attribute_train", "unlabelled", "fam_eval")
ROLES = (
    "inshop_query",
    "inshop_gallery",
    "c2s_query",
    "c2s_gallery",
    "fam_query",
    "fam_gallery",
)


class ManifestError(ValueError):
    """A manifest (or a reader's source file) is malformed; the message names file and line."""


@dataclasses.dataclass
class Manifest:
    """A manifest held column-wise: every column is a 1-D numpy array of `str`, length N.

    Attributes:
        columns: column name -> np.ndarray of str (N,).
        root: directory that relative `path`s are resolved against.
    """

    columns: Dict[str, np.ndarray]
    root: str = ""
    path: str = ""  # the CSV the rows were read from, in file order ("" once rows are selected)

    def __len__(self) -> int:
        return len(self.columns["path"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def get(self, name: str, default: str = "") -> np.ndarray:
        """Returns column `name`, or a column filled with `default` if the manifest lacks it."""
        if name in self.columns:
            return self.columns[name]
        return np.full(len(self), default, dtype=object).astype(str)

    def absolute_paths(self) -> np.ndarray:
        """Image paths resolved against `root`, shape (N,)."""
        return np.array(
            [p if os.path.isabs(p) else os.path.join(self.root, p) for p in self.columns["path"]]
        )

    def labels(self, attribute: str) -> np.ndarray:
        """Integer class labels of `attribute`, int32 (N,), `vocabulary.MISSING` where empty."""
        names = self.columns[attribute]
        lookup = {name: i for i, name in enumerate(vocabulary.CLASSES[attribute])}
        out = np.full(len(names), vocabulary.MISSING, dtype=np.int32)
        for i, name in enumerate(names):
            if name:
                out[i] = lookup[name]
        return out

    def label_matrix(self) -> np.ndarray:
        """int32 [N, NUM_TYPES] labels in ATTRIBUTE_TYPES order, `vocabulary.MISSING` where empty."""
        return np.stack([self.labels(a) for a in vocabulary.ATTRIBUTE_TYPES], axis=1)

    def has_role(self, role: str) -> np.ndarray:
        """Boolean mask (N,) of rows whose `role` column contains `role`."""
        roles = self.get("role")
        return np.array([role in r.split(";") for r in roles], dtype=bool)

    def select(self, mask) -> "Manifest":
        """Returns the rows selected by a boolean mask or an index array."""
        return Manifest({k: v[mask] for k, v in self.columns.items()}, self.root)

    def split(self, name: str) -> "Manifest":
        """Returns the rows of split `name` (ValueError for an unknown split)."""
        if name not in SPLITS:
            raise ValueError(f"Unknown split. Received: split={name!r}; expected one of {SPLITS}")
        return self.select(self.columns["split"] == name)


def validate_row(row: Mapping[str, str], where: str) -> None:
    """Checks one manifest row; raises ManifestError naming `where` (file:line)."""
    if row["domain"] not in DOMAINS:
        raise ManifestError(f"{where}: unknown domain {row['domain']!r}; expected one of {DOMAINS}")
    if row["split"] not in SPLITS:
        raise ManifestError(f"{where}: unknown split {row['split']!r}; expected one of {SPLITS}")
    if not row["path"]:
        raise ManifestError(f"{where}: empty path")
    if not row["instance_id"]:
        raise ManifestError(f"{where}: empty instance_id")
    for attribute in vocabulary.ATTRIBUTE_TYPES:
        value = row[attribute]
        if value and value not in vocabulary.CLASSES[attribute]:
            raise ManifestError(
                f"{where}: unknown {attribute} {value!r}; expected one of "
                f"{list(vocabulary.CLASSES[attribute])} or empty for a missing label"
            )
    for role in filter(None, row.get("role", "").split(";")):
        if role not in ROLES:
            raise ManifestError(f"{where}: unknown role {role!r}; expected one of {ROLES}")


def write_manifest(
    path: str, rows: Iterable[Mapping[str, object]], extra_columns: Sequence[str] = ()
) -> int:
    """Writes rows (dicts) to `path` as manifest.csv; returns the number of rows written.

    Every row is validated first, so a reader bug cannot leave a manifest the pipeline rejects.
    """
    fieldnames = list(REQUIRED_COLUMNS) + [c for c in extra_columns if c not in REQUIRED_COLUMNS]
    rows = list(rows)
    for i, row in enumerate(rows):
        validate_row({k: str(row.get(k, "")) for k in fieldnames}, f"{path}: row {i + 2}")
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in fieldnames})
    os.replace(tmp, path)  # never leave a half-written manifest behind
    return len(rows)


def read_manifest(path: str, root: Optional[str] = None) -> Manifest:
    """Reads and validates a manifest.csv.

    Args:
        path: the CSV file.
        root: directory for relative image paths; defaults to the manifest's directory.

    Raises:
        FileNotFoundError: `path` does not exist.
        ManifestError: a missing column or a bad row, naming the file and line.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"Manifest not found: {path}")
    # utf-8-sig: a spreadsheet's byte order mark is not part of the first column's name; the csv
    # module with newline="" takes CRLF line ends as well as LF.
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ManifestError(f"{path}: line 1: missing required columns {missing}")
        data: Dict[str, List[str]] = {c: [] for c in header}
        for row in reader:
            where = f"{path}: line {reader.line_num}"
            if None in row or any(v is None for v in row.values()):
                raise ManifestError(f"{where}: expected {len(header)} fields")
            validate_row(row, where)
            for c in header:
                data[c].append(row[c])
    columns = {
        c: np.array(v, dtype=str) if v else np.zeros((0,), dtype=str) for c, v in data.items()
    }
    return Manifest(
        columns, root if root is not None else os.path.dirname(os.path.abspath(path)), path
    )
