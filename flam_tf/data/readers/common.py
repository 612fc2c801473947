"""Code every data set reader shares: line parsing, path safety, counting, class mapping, sampling.

A reader turns a published on-disk layout into manifest rows (dicts with the columns of
`flam_tf.data.manifest`). Image paths in the rows are relative to the reader's `data_dir`, so the
manifest belongs inside `data_dir` (or must be read with `read_manifest(path, root=data_dir)`).

Nothing is dropped silently: whatever a reader skips is counted in `ReadStats.skipped` under a
reason, and logged with the count and the first place it happened.
"""

import collections
import dataclasses
import glob
import os
import posixpath
import random
import re
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from absl import logging

from flam_tf import vocabulary
from flam_tf.data.manifest import ManifestError

Row = Dict[str, str]
FAM_ROLE = "fam_query;fam_gallery"


@dataclasses.dataclass
class ReadStats:
    """What a reader kept, merged, skipped and how it mapped classes.

    Attributes:
        source: the data set name, e.g. "darn".
        rows_by_split: split name -> number of manifest rows.
        skipped: reason -> number of images or lines left out of the manifest for that reason.
        first_skipped: reason -> where (file: line) the reason first occurred.
        merged: repeated mentions of an already listed image (e.g. one shop image in several
            consumer-to-shop pairs), kept as one row.
        labels_dropped: attribute type -> labels made missing because their source class is not
            among the top-N classes.
        class_maps: attribute type -> {source class: canonical class} for the kept top-N classes.
        labels_missing: reason -> number of single labels set to missing for that reason (the row
            is kept; e.g. an attribute code with no published name).
        first_label_missing: reason -> where (file: line) the reason first occurred.
        hint: what the reader looked for, added to the "no images read" error.
    """

    source: str
    rows_by_split: Dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: Dict[str, int] = dataclasses.field(default_factory=dict)
    first_skipped: Dict[str, str] = dataclasses.field(default_factory=dict)
    merged: int = 0
    labels_dropped: Dict[str, int] = dataclasses.field(default_factory=dict)
    class_maps: Dict[str, Dict[str, str]] = dataclasses.field(default_factory=dict)
    labels_missing: Dict[str, int] = dataclasses.field(default_factory=dict)
    first_label_missing: Dict[str, str] = dataclasses.field(default_factory=dict)
    hint: str = ""

    def missing_label(self, reason: str, where: str) -> None:
        """Counts one label made missing under `reason` (its row is kept); `where`: file and line."""
        self.labels_missing[reason] = self.labels_missing.get(reason, 0) + 1
        self.first_label_missing.setdefault(reason, where)

    def summary(self) -> List[str]:
        """One line per fact: rows by split, merged mentions, skips and missing labels with counts
        and first place, labels outside the top-N."""
        lines = [f"{self.source}: {sum(self.rows_by_split.values())} rows by split "
                 f"{self.rows_by_split}"]
        if self.merged:
            lines.append(f"{self.source}: merged {self.merged} repeated mentions of listed images")
        for reason, count in self.skipped.items():
            lines.append(f"{self.source}: skipped {count} ({reason}); first at "
                         f"{self.first_skipped[reason]}")
        for reason, count in self.labels_missing.items():
            lines.append(f"{self.source}: {count} labels set to missing ({reason}); first at "
                         f"{self.first_label_missing[reason]}")
        for attribute, count in self.labels_dropped.items():
            if count:
                lines.append(f"{self.source}: {count} {attribute} labels outside the kept top-N "
                             "classes set to missing (rarer, or no canonical match)")
        if len(lines) == 1:
            lines.append(f"{self.source}: nothing skipped")
        return lines

    def skip(self, reason: str, where: str) -> None:
        """Counts one skipped image or line under `reason`; `where` is its file and line."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.first_skipped.setdefault(reason, where)

    def finish(self, rows: Sequence[Mapping[str, str]]) -> None:
        """Records the split sizes of `rows` and logs the summary.

        Raises:
            ManifestError: no row at all (an empty manifest is never what the user wants).
        """
        if not rows:
            raise ManifestError(f"{self.source}: no images read; skipped {self.skipped} (first "
                                f"at {self.first_skipped}). Is data_dir the right directory?"
                                + (f" {self.hint}" if self.hint else ""))
        self.rows_by_split = dict(collections.Counter(r["split"] for r in rows))
        logging.info("%s: %d manifest rows by split: %s", self.source, len(rows),
                     self.rows_by_split)
        if self.merged:
            logging.info("%s: merged %d repeated mentions of already listed images",
                         self.source, self.merged)
        for reason, count in self.skipped.items():
            logging.warning("%s: skipped %d (%s); first at %s", self.source, count, reason,
                            self.first_skipped[reason])
        for reason, count in self.labels_missing.items():
            logging.warning("%s: %d labels set to missing (%s); first at %s", self.source, count,
                            reason, self.first_label_missing[reason])
        for attribute, count in self.labels_dropped.items():
            if count:
                logging.warning("%s: %d %s labels outside the top-N classes set to missing",
                                self.source, count, attribute)


def make_row(path: str, instance_id: str, domain: str, split: str, role: str = "",
             labels: Optional[Mapping[str, str]] = None) -> Row:
    """Returns one manifest row; `labels`: attribute type -> canonical class (absent = missing)."""
    row = {"path": path, "instance_id": instance_id, "domain": domain, "split": split,
           "role": role}
    for attribute in vocabulary.ATTRIBUTE_TYPES:
        row[attribute] = (labels or {}).get(attribute, "")
    return row


def require_file(path: str) -> str:
    """Returns `path`; raises FileNotFoundError naming it if it is not a file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Data set file not found: {path}")
    return path


def expand_files(data_dir: str, names: Sequence[str]) -> List[str]:
    """Resolves file names or glob patterns relative to `data_dir` into existing files.

    Raises:
        FileNotFoundError: a name that does not exist, or a pattern that matches nothing.
    """
    files = []
    for name in names:
        full = os.path.join(data_dir, name)
        if glob.has_magic(name):
            matches = sorted(glob.glob(full))
            if not matches:
                raise FileNotFoundError(f"No data set file matches {full}")
            files.extend(matches)
        else:
            files.append(require_file(full))
    return files


def iter_lines(path: str, first_line: int = 1) -> Iterator[Tuple[str, str]]:
    """Yields (`"<path>: line <n>"`, the line stripped) for the non-blank lines of `path`.

    UTF-8 with or without a byte-order mark; LF, CRLF or CR line ends.

    Args:
        path: a text file (FileNotFoundError naming it if missing).
        first_line: 1-based number of the first line to yield (to skip headers).

    Raises:
        ManifestError: a line that is not UTF-8, naming the file and line.
    """
    with open(require_file(path), "rb") as f:
        data = f.read()
    for number, raw in enumerate(data.splitlines(), start=1):
        where = f"{path}: line {number}"
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
        except UnicodeDecodeError as e:
            raise ManifestError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        if number >= first_line and line:
            yield where, line


def read_fields(path: str, first_line: int = 1) -> Iterator[Tuple[str, List[str]]]:
    """Yields (`"<path>: line <n>"`, whitespace-split fields) for the non-blank lines of `path`.

    Same decoding rules and errors as `iter_lines` (BOM and CRLF tolerated).

    Args:
        path: a text file (FileNotFoundError if missing).
        first_line: 1-based number of the first line to yield (to skip headers).
    """
    for where, line in iter_lines(path, first_line):
        yield where, line.split()


def expect_fields(fields: Sequence[str], count: int, where: str, layout: str) -> None:
    """Raises ManifestError at `where` unless there are exactly `count` fields."""
    if len(fields) != count:
        raise ManifestError(
            f"{where}: expected {count} fields ({layout}), got {len(fields)}: {' '.join(fields)!r}")


def safe_relpath(path: str, where: str, base: str = "") -> str:
    """Normalizes an image path from a source file to a `/`-separated path inside the data dir.

    Args:
        path: the path as written in the source file.
        where: its file and line, for the error message.
        base: the directory (relative to the data dir) the source's paths are relative to, e.g.
            "Images"; the path is joined to it *before* normalizing, so `..` that stays inside
            the data dir is accepted (`Male/../../Images/Male/x.jpg` under "Images" is
            `Images/Male/x.jpg`).

    Raises:
        ManifestError: at `where`, for an absolute path or one whose `..` leaves the data dir.
    """
    unix = path.replace("\\", "/")
    if unix.startswith("/") or re.match(r"^[A-Za-z]:", unix):
        raise ManifestError(f"{where}: absolute image path {path!r}; expected a path relative to "
                            "the data directory")
    normalized = posixpath.normpath(posixpath.join(base, unix) if base else unix)
    if normalized == ".." or normalized.startswith("../"):
        raise ManifestError(f"{where}: image path {path!r} escapes the data directory")
    return normalized


class RowSet:
    """Manifest rows keyed by path: a repeated identical image is merged, a conflicting one is an
    error, and with `check_images` an image missing on disk is skipped and counted."""

    def __init__(self, data_dir: str, stats: ReadStats, check_images: bool):
        self.data_dir, self.stats, self.check_images = data_dir, stats, check_images
        self.rows: Dict[str, Row] = {}
        self._where: Dict[str, str] = {}
        self._missing = set()

    def add(self, row: Row, where: str) -> None:
        """Adds `row` (read at `where`); raises ManifestError if it contradicts an earlier row."""
        path = row["path"]
        if path in self.rows:
            if self.rows[path] != row:
                raise ManifestError(
                    f"{where}: image {path!r} contradicts its earlier entry at "
                    f"{self._where[path]}: {row} vs {self.rows[path]}")
            self.stats.merged += 1
        elif path in self._missing:
            self.stats.skip("image file not found", where)
        elif self.check_images and not os.path.isfile(os.path.join(self.data_dir, path)):
            self._missing.add(path)
            self.stats.skip("image file not found", where)
        else:
            self.rows[path], self._where[path] = row, where


def check_instances_disjoint(rows: Sequence[Mapping[str, str]], source: str) -> None:
    """Raises ManifestError if one instance_id appears in two splits (the splits would leak)."""
    split_of: Dict[str, str] = {}
    for row in rows:
        first = split_of.setdefault(row["instance_id"], row["split"])
        if first != row["split"]:
            raise ManifestError(f"{source}: instance {row['instance_id']!r} appears in splits "
                                f"{first!r} and {row['split']!r}; splits must be disjoint by item")


# ---------------------------------------------------------------- attribute data sets (Table 1)

def normalize_class_name(name: str) -> str:
    """Lower-cased letters and digits only: 'T-Shirt', 't_shirt' and 'tshirt' all match."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def resolve_field_map(default: Mapping[str, Optional[str]],
                      override: Optional[Mapping[str, Optional[str]]]) -> Dict[str, Optional[str]]:
    """Merges a source field -> attribute type table with user overrides (None = field unused).

    Raises:
        ValueError: a target that is not an attribute type, or a type claimed by two fields.
    """
    merged = {**default, **(override or {})}
    claimed: Dict[str, str] = {}
    for field, attribute in merged.items():
        if attribute is None:
            continue
        if attribute not in vocabulary.ATTRIBUTE_TYPES:
            raise ValueError(f"Unknown attribute type for source field {field!r}. Received: "
                             f"{attribute!r}; expected one of {list(vocabulary.ATTRIBUTE_TYPES)} "
                             "or None")
        if attribute in claimed:
            raise ValueError(f"Source fields {claimed[attribute]!r} and {field!r} both map to "
                             f"attribute type {attribute!r}")
        claimed[attribute] = field
    return merged


def resolve_class_table(default: Mapping[str, Mapping[str, str]],
                        override: Optional[Mapping[str, Mapping[str, str]]]
                        ) -> Dict[str, Dict[str, str]]:
    """Merges per-type {source class: canonical class} tables; keys are normalized.

    Raises:
        ValueError: an unknown attribute type or a target that is not a canonical class name.
    """
    tables: Dict[str, Dict[str, str]] = {a: {} for a in vocabulary.ATTRIBUTE_TYPES}
    for table in (default, override or {}):
        for attribute, entries in table.items():
            if attribute not in tables:
                raise ValueError(f"Unknown attribute type in class table. Received: {attribute!r}"
                                 f"; expected one of {list(vocabulary.ATTRIBUTE_TYPES)}")
            for source_class, canonical in entries.items():
                vocabulary.class_index(attribute, canonical)  # ValueError naming a bad target
                tables[attribute][normalize_class_name(source_class)] = canonical
    return tables


def map_top_classes(counts: Mapping[str, int], attribute: str, top_n: int,
                    table: Mapping[str, str], fallback: bool = True) -> Dict[str, str]:
    """Keeps the `top_n` most frequent source classes and maps each onto a canonical class.

    A source class takes, in order of preference: its entry in `table` (normalized names), the
    canonical class of the same normalized name. Each canonical class is used once; the more
    frequent source class wins a contested one. The k-th most frequent source class left unmatched
    then takes the k-th still unused canonical class (in vocabulary order), and the mapping is
    logged so the user sees it. With `fallback=False` (a source whose class names are known) an
    unmatched class is never given a class: its labels become missing, and the top-N are chosen
    among the classes that do match.

    Args:
        counts: source class -> number of images with that label.
        attribute: the attribute type ("shape", "color" or "pattern").
        top_n: how many classes to keep, 1 to the vocabulary size.
        table: normalized source class name -> canonical class.
        fallback: map unmatched top-N classes onto unused canonical classes (for sources whose
            classes are anonymous ids); False leaves them out (their labels become missing).

    Returns:
        {source class: canonical class} for the kept classes; every other class becomes missing.
    """
    canonical = vocabulary.CLASSES[attribute]
    if not 1 <= top_n <= len(canonical):
        raise ValueError(f"top_n must be in [1, {len(canonical)}]. Received: top_n={top_n}")
    by_name = {normalize_class_name(c): c for c in canonical}

    def target_of(source_class):
        key = normalize_class_name(source_class)
        return table.get(key, by_name.get(key))

    candidates = counts if fallback else [c for c in counts if target_of(c) is not None]
    if not fallback:
        for source_class in sorted(set(counts) - set(candidates)):
            logging.warning("%s class %r has no canonical match; its %d labels set to missing",
                            attribute, source_class, counts[source_class])
    top = sorted(candidates, key=lambda c: (-counts[c], c))[:top_n]  # ties broken by name
    mapping: Dict[str, str] = {}
    unmatched = []
    for source_class in top:
        target = target_of(source_class)
        if target is not None and target not in mapping.values():
            mapping[source_class] = target
        else:
            unmatched.append(source_class)
    if not fallback:
        for source_class in unmatched:
            logging.warning("%s class %r maps onto %r, already taken by a more frequent class; "
                            "its labels set to missing", attribute, source_class,
                            target_of(source_class))
        top = [c for c in top if c in mapping]
        unmatched = []
    unused = [c for c in canonical if c not in mapping.values()]
    for source_class, target in zip(unmatched, unused):
        mapping[source_class] = target
        logging.warning("%s class %r has no canonical match; mapped onto unused class %r",
                        attribute, source_class, target)
    logging.info("%s top-%d classes (source -> canonical, images): %s", attribute, top_n,
                 ", ".join(f"{s} -> {mapping[s]} ({counts[s]})" for s in top))
    return {s: mapping[s] for s in top}


MIN_FAM_EVAL = 2  # a FAM gallery of one image ranks nothing


def sample_fam_eval(rows: List[Row], size: int, seed: int, stats: Optional[ReadStats] = None,
                    hint: str = "") -> None:
    """Moves `size` densely labelled rows (all three labels) into split fam_eval, in place.

    The sample is drawn uniformly with `random.Random(seed)` among the dense rows in their order
    in `rows`, so the same input and seed give the same set. If fewer dense rows exist, all of them
    are taken and a warning is logged.

    Args:
        rows: manifest rows (changed in place).
        size: how many rows to move; 0 asks for no fam_eval at all.
        seed: seed of the sample.
        stats: the reader's ReadStats, named in the error below (source, first missing labels).
        hint: what the user can do about it, appended to that error.

    Raises:
        ManifestError: `size` > 0 but fewer than MIN_FAM_EVAL rows have all three labels, so FAM
            evaluation would have no (or a one-image) gallery. One line: the labelled image count
            per type, where the first label was made missing, and `hint`.
    """
    dense = [r for r in rows if all(r[a] for a in vocabulary.ATTRIBUTE_TYPES)]
    if size > 0 and len(dense) < MIN_FAM_EVAL:
        raise ManifestError(empty_fam_eval_message(rows, len(dense), size, stats, hint))
    if size > len(dense):
        logging.warning("fam_eval_size=%d but only %d densely labelled images; taking all",
                        size, len(dense))
        size = len(dense)
    for index in random.Random(seed).sample(range(len(dense)), size):
        dense[index]["split"], dense[index]["role"] = "fam_eval", FAM_ROLE


def empty_fam_eval_message(rows: Sequence[Mapping[str, str]], num_dense: int, size: int,
                           stats: Optional[ReadStats], hint: str) -> str:
    """The one-line error of `sample_fam_eval` when too few rows have all three labels: the counts,
    the commonest reason a label was made missing with its first file and line, then `hint`. Kept
    short (the CLIs print one line and may cut a long one in the middle)."""
    source = stats.source if stats else "reader"
    labelled = ", ".join(f"{a} {sum(1 for r in rows if r[a])}" for a in vocabulary.ATTRIBUTE_TYPES)
    message = (f"{source}: fam_eval would be empty: {num_dense} of {len(rows)} images have all "
               f"three labels (labelled: {labelled}; fam_eval_size={size})")
    if stats and stats.labels_missing:
        reason = max(stats.labels_missing, key=stats.labels_missing.get)  # first of the commonest
        message += f"; first missing label at {stats.first_label_missing[reason]} ({reason})"
    elif stats and any(stats.labels_dropped.values()):
        message += f"; labels outside the top-N classes: {stats.labels_dropped}"
    return message + (f". {hint}" if hint else "")


def label_attribute_rows(records: Sequence[Tuple[str, str, Mapping[str, str]]],
                         stats: ReadStats, domain: str, top_n: int,
                         class_table: Mapping[str, Mapping[str, str]],
                         fam_eval_size: int, seed: int, fallback: bool = True,
                         empty_fam_eval_hint: str = "") -> List[Row]:
    """Turns (path, instance_id, {type: source class}) records into attribute-set manifest rows.

    Per type, only the `top_n` source classes by image count are kept (mapped by
    `map_top_classes`); other labels become missing. Rows with at least one label go to
    attribute_train, rows with none to unlabelled; then `fam_eval_size` dense rows move to fam_eval.
    `fallback`: as in `map_top_classes` (False: an unmatched source class becomes missing).
    `empty_fam_eval_hint`: appended to the error raised when no fam_eval can be drawn.

    Raises:
        ManifestError: fam_eval_size > 0 but (almost) no row has all three labels (see
            `sample_fam_eval`).
    """
    rows = []
    for attribute in vocabulary.ATTRIBUTE_TYPES:
        counts = collections.Counter(r[2][attribute] for r in records if attribute in r[2])
        stats.class_maps[attribute] = map_top_classes(counts, attribute, top_n,
                                                      class_table[attribute], fallback)
        stats.labels_dropped[attribute] = sum(
            n for c, n in counts.items() if c not in stats.class_maps[attribute])
    for path, instance_id, source_labels in records:
        labels = {a: stats.class_maps[a][c] for a, c in source_labels.items()
                  if c in stats.class_maps[a]}
        rows.append(make_row(path, instance_id, domain,
                             "attribute_train" if labels else "unlabelled", labels=labels))
    if rows:  # no row at all is ReadStats.finish's "no images read" error
        sample_fam_eval(rows, fam_eval_size, seed, stats, empty_fam_eval_hint)
    return rows
