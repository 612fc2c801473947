"""Code every data set reader shares: line parsing, path safety, counting, class mapping, sampling.

A reader turns a published on-disk layout into manifest rows (dicts with the columns of
`flam_tf.data.manifest`). Image paths in the rows are relative to the reader's `data_dir`, so the
manifest belongs inside `data_dir` (or must be read with `read_manifest(path, root=data_dir)`).

Nothing is dropped silently: whatever a reader skips is counted in `ReadStats.skipped` under a
reason, and logged with the count and the first place it happened.
"""

import collections
import dataclasses
import os
import random
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from absl import logging

from flam_tf import vocabulary
from flam_tf.data.manifest import ManifestError
from flam_tf.data.readers import classes

Row = Dict[str, str]
FAM_ROLE = "fam_query;fam_gallery"
MIN_FAM_EVAL = 2  # a FAM gallery of one image ranks nothing


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
        lines = [
            f"{self.source}: {sum(self.rows_by_split.values())} rows by split {self.rows_by_split}"
        ]
        if self.merged:
            lines.append(f"{self.source}: merged {self.merged} repeated mentions of listed images")
        for reason, count in self.skipped.items():
            lines.append(
                f"{self.source}: skipped {count} ({reason}); first at {self.first_skipped[reason]}"
            )
        for reason, count in self.labels_missing.items():
            lines.append(
                f"{self.source}: {count} labels set to missing ({reason}); first at "
                f"{self.first_label_missing[reason]}"
            )
        for attribute, count in self.labels_dropped.items():
            if count:
                lines.append(
                    f"{self.source}: {count} {attribute} labels outside the kept top-N "
                    "classes set to missing (rarer, or no canonical match)"
                )
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
            raise ManifestError(
                f"{self.source}: no images read; skipped {self.skipped} (first "
                f"at {self.first_skipped}). Is data_dir the right directory?"
                + (f" {self.hint}" if self.hint else "")
            )
        self.rows_by_split = dict(collections.Counter(r["split"] for r in rows))
        logging.info(
            "%s: %d manifest rows by split: %s", self.source, len(rows), self.rows_by_split
        )
        if self.merged:
            logging.info(
                "%s: merged %d repeated mentions of already listed images", self.source, self.merged
            )
        for reason, count in self.skipped.items():
            logging.warning(
                "%s: skipped %d (%s); first at %s",
                self.source,
                count,
                reason,
                self.first_skipped[reason],
            )
        for reason, count in self.labels_missing.items():
            logging.warning(
                "%s: %d labels set to missing (%s); first at %s",
                self.source,
                count,
                reason,
                self.first_label_missing[reason],
            )
        for attribute, count in self.labels_dropped.items():
            if count:
                logging.warning(
                    "%s: %d %s labels outside the top-N classes set to missing",
                    self.source,
                    count,
                    attribute,
                )


def make_row(
    path: str,
    instance_id: str,
    domain: str,
    split: str,
    role: str = "",
    labels: Optional[Mapping[str, str]] = None,
) -> Row:
    """Returns one manifest row; `labels`: attribute type -> canonical class (absent = missing)."""
    row = {"path": path, "instance_id": instance_id, "domain": domain, "split": split, "role": role}
    for attribute in vocabulary.ATTRIBUTE_TYPES:
        row[attribute] = (labels or {}).get(attribute, "")
    return row


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
                    f"{self._where[path]}: {row} vs {self.rows[path]}"
                )
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
            raise ManifestError(
                f"{source}: instance {row['instance_id']!r} appears in splits "
                f"{first!r} and {row['split']!r}; splits must be disjoint by item"
            )


# ---------------------------------------------------------------- attribute data sets (Table 1)


def sample_fam_eval(
    rows: List[Row], size: int, seed: int, stats: Optional[ReadStats] = None, hint: str = ""
) -> None:
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
        logging.warning(
            "fam_eval_size=%d but only %d densely labelled images; taking all", size, len(dense)
        )
        size = len(dense)
    for index in random.Random(seed).sample(range(len(dense)), size):
        dense[index]["split"], dense[index]["role"] = "fam_eval", FAM_ROLE


def empty_fam_eval_message(
    rows: Sequence[Mapping[str, str]],
    num_dense: int,
    size: int,
    stats: Optional[ReadStats],
    hint: str,
) -> str:
    """The one-line error of `sample_fam_eval` when too few rows have all three labels: the counts,
    the commonest reason a label was made missing with its first file and line, then `hint`. Kept
    short (the CLIs print one line and may cut a long one in the middle)."""
    source = stats.source if stats else "reader"
    labelled = ", ".join(f"{a} {sum(1 for r in rows if r[a])}" for a in vocabulary.ATTRIBUTE_TYPES)
    message = (
        f"{source}: fam_eval would be empty: {num_dense} of {len(rows)} images have all "
        f"three labels (labelled: {labelled}; fam_eval_size={size})"
    )
    if stats and stats.labels_missing:
        reason = max(stats.labels_missing, key=stats.labels_missing.get)  # first of the commonest
        message += f"; first missing label at {stats.first_label_missing[reason]} ({reason})"
    elif stats and any(stats.labels_dropped.values()):
        message += f"; labels outside the top-N classes: {stats.labels_dropped}"
    return message + (f". {hint}" if hint else "")


def label_attribute_rows(
    records: Sequence[Tuple[str, str, Mapping[str, str]]],
    stats: ReadStats,
    domain: str,
    top_n: int,
    class_table: Mapping[str, Mapping[str, str]],
    fam_eval_size: int,
    seed: int,
    fallback: bool = True,
    empty_fam_eval_hint: str = "",
) -> List[Row]:
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
        stats.class_maps[attribute] = classes.map_top_classes(
            counts, attribute, top_n, class_table[attribute], fallback
        )
        stats.labels_dropped[attribute] = sum(
            n for c, n in counts.items() if c not in stats.class_maps[attribute]
        )
    for path, instance_id, source_labels in records:
        labels = {
            a: stats.class_maps[a][c] for a, c in source_labels.items() if c in stats.class_maps[a]
        }
        rows.append(
            make_row(
                path,
                instance_id,
                domain,
                "attribute_train" if labels else "unlabelled",
                labels=labels,
            )
        )
    if rows:  # no row at all is ReadStats.finish's "no images read" error
        sample_fam_eval(rows, fam_eval_size, seed, stats, empty_fam_eval_hint)
    return rows
