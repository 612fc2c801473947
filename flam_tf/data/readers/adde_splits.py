"""The attribute manipulation evaluation splits that ADDE published (Hou et al., ICCV 2021, GitHub
amzn/fashion-attribute-disentanglement, folder `splits/<Shopping100k|DeepFashion>/`, CC-BY-NC-4.0),
read into arrays so FLAM's T@k can be computed on the queries published work reports.

File semantics, from that repository's README ("Preparing Support Files") and loader code
(`src/dataloader.py` DataQuery / Data, `src/utils.py` get_idx_label / get_target_attr,
`src/eval.py`):

  attr_num.txt     integers, the number of values of each attribute, in ADDE's attribute order
                   (Shopping100k: `[16, 17, 19, 14, 10, 15, 2, 11, 16, 7, 9, 15]`, the first,
                   category, with 16 values).
  imgs_test.txt    one image path per line, relative to the data set's image root.
  labels_test.txt  one row per image of imgs_test.txt: the concatenated one-hot vectors of all
                   attributes (sum(attr_num) integers 0/1); an all-zero block = label missing.
  ref_test.txt     one integer per query: the reference image, a 0-based line of imgs_test.txt.
  indfull_test.txt one row per query, sum(attr_num) integers in {-1, 0, 1}: +1 at the target
                   value, -1 at the reference's value of the manipulated attribute (it is
                   label[target] - label[reference]); the manipulated attribute is the block
                   holding the +1.
  gt_test.txt      one row per query: the one-hot labels (all attributes) of the target.

ADDE's eval.py counts a query as a hit at k when one of the k nearest images of the whole test
gallery (imgs_test, the reference included) has exactly the label row gt_test (all attributes,
missing blocks included); T@k = hits / queries. `flam_tf.evaluation.public_splits` scores so.

Lines are whitespace separated, UTF-8 with or without BOM, LF or CRLF; every malformed line raises
`ManifestError` (a ValueError) whose one-line message starts with `<file>: line <n>:`.
"""

import dataclasses
import os
from typing import Dict, List, Mapping, Optional

import numpy as np
from absl import logging

from flam_tf import vocabulary
from flam_tf.data.manifest import ManifestError
from flam_tf.data.readers import classes, shopping100k
from flam_tf.data.readers.annotation_files import iter_lines, parse_ints

# ADDE attribute index of FLAM's attribute types. Shopping100k: category is attribute 0 (ADDE
# README); color 2 and pattern 8 follow from the attributes in alphabetical order (category,
# collar, color, fabric, fastening, fit, gender, neckline, pattern, pocket, sleeve length, sport),
# which matches attr_num (gender, index 6, has 2 values). No public source orders DeepFashion's
# attributes, so its indices must be given.
ATTRIBUTE_INDEX = {"Shopping100k": {"shape": 0, "color": 2, "pattern": 8}}
# Shopping100k's Attributes/<field>.txt of each FLAM type (ADDE's value index v of an attribute
# is taken to be the field's value code v: same counts, both 0-based).
SHOPPING100K_FIELDS = {"shape": "category", "color": "color", "pattern": "pattern"}
# A category value the code table leaves unnamed is named by its images' category folder when at
# least this share of them agree (the category is the folder in Shopping100k's own layout).
FOLDER_AGREEMENT = 0.9
FILES = (
    "attr_num.txt",
    "imgs_test.txt",
    "labels_test.txt",
    "ref_test.txt",
    "indfull_test.txt",
    "gt_test.txt",
)


@dataclasses.dataclass
class AddeSplit:
    """One data set's ADDE test split.

    Attributes:
        split_dir: the directory read.
        attr_num: int array [A], values per attribute.
        images: N image paths (imgs_test.txt).
        labels: int array [N, A], value index per attribute, -1 = missing (labels_test.txt).
        ref: int array [Q], reference image per query (ref_test.txt).
        target_attribute: int array [Q], the manipulated attribute (indfull_test.txt).
        target_value: int array [Q], its target value (indfull_test.txt).
        gt_labels: int array [Q, A], the target's labels, -1 = missing (gt_test.txt).
        attribute_index: FLAM attribute type -> ADDE attribute index ({} when unknown).
    """

    split_dir: str
    attr_num: np.ndarray
    images: List[str]
    labels: np.ndarray
    ref: np.ndarray
    target_attribute: np.ndarray
    target_value: np.ndarray
    gt_labels: np.ndarray
    attribute_index: Dict[str, int]

    def query_counts(self) -> Dict[str, int]:
        """Queries per FLAM attribute type, "all_attributes" (every query) and "all" (the
        category/color/pattern queries FLAM scores)."""
        counts = {
            t: int(np.sum(self.target_attribute == a)) for t, a in self.attribute_index.items()
        }
        counts["all"] = sum(counts.values())
        counts["all_attributes"] = int(len(self.ref))
        return counts


def _rows(path: str, width: int, allowed, what: str):
    """Rows of `width` integers from `allowed`, and where each was read."""
    rows, wheres = [], []
    for where, line in iter_lines(path):
        ints = parse_ints(line, where, what)
        if len(ints) != width:
            raise ManifestError(f"{where}: expected {width} integers ({what}), got {len(ints)}")
        bad = [x for x in ints if x not in allowed]
        if bad:
            raise ManifestError(f"{where}: value {bad[0]} not in {sorted(allowed)} ({what})")
        rows.append(ints)
        wheres.append(where)
    return rows, wheres


def _to_index_labels(rows_wheres, attr_num) -> np.ndarray:
    """One-hot rows -> value index per attribute (-1 = all-zero block), as ADDE's get_idx_label."""
    rows, wheres = rows_wheres
    onehot = np.asarray(rows, dtype=np.int8).reshape(len(rows), int(np.sum(attr_num)))
    starts = np.concatenate([[0], np.cumsum(attr_num)[:-1]])
    out = np.full((len(rows), len(attr_num)), -1, dtype=np.int64)
    for a, (start, n) in enumerate(zip(starts, attr_num)):
        block = onehot[:, start : start + n]
        ones = block.sum(axis=1)
        if np.any(ones > 1):
            row = int(np.argmax(ones > 1))
            raise ManifestError(
                f"{wheres[row]}: attribute {a} has {ones[row]} "
                "values set; a one-hot block holds at most one 1"
            )
        out[ones == 1, a] = np.argmax(block[ones == 1], axis=1)
    return out


def read_adde_split(
    split_dir: str, attribute_index: Optional[Mapping[str, int]] = None
) -> AddeSplit:
    """Reads ADDE's test split files from `split_dir` (e.g. `splits/Shopping100k`).

    Args:
        split_dir: directory holding the files of `FILES`.
        attribute_index: FLAM attribute type ("shape", "color", "pattern") -> ADDE attribute
            index; default `ATTRIBUTE_INDEX[basename(split_dir)]`, else {} (no type-restricted
            scores until given).

    Raises:
        FileNotFoundError: a file of `FILES` is missing.
        ManifestError: a malformed line, a count mismatch between paired files, an index out of
            range, or an indicator without exactly one +1 in one attribute, naming file and line.
        ValueError: an attribute index out of range.
    """
    path = {name: os.path.join(split_dir, name) for name in FILES}
    attr_num = []
    for where, line in iter_lines(path["attr_num.txt"]):
        attr_num += parse_ints(line.strip("[]").replace(",", " "), where, "values per attribute")
    if not attr_num or min(attr_num) < 1:
        raise ManifestError(f"{path['attr_num.txt']}: expected positive counts, got {attr_num}")
    attr_num = np.asarray(attr_num, dtype=np.int64)
    width = int(attr_num.sum())
    if attribute_index is None:
        attribute_index = ATTRIBUTE_INDEX.get(os.path.basename(os.path.normpath(split_dir)), {})
    for name, a in attribute_index.items():
        if not 0 <= a < len(attr_num):
            raise ValueError(f"attribute_index[{name!r}] = {a} out of range 0..{len(attr_num) - 1}")
    if len(set(attribute_index.values())) != len(attribute_index):
        raise ValueError(
            f"attribute_index gives one ADDE attribute to two types: {dict(attribute_index)}"
        )
    images = [line for _, line in iter_lines(path["imgs_test.txt"])]
    labels = _to_index_labels(
        _rows(path["labels_test.txt"], width, (0, 1), "one-hot labels"), attr_num
    )
    if len(labels) != len(images):
        raise ManifestError(
            f"{path['labels_test.txt']}: {len(labels)} label rows but "
            f"{len(images)} images in {path['imgs_test.txt']}"
        )
    ref = []
    for where, line in iter_lines(path["ref_test.txt"]):
        ints = parse_ints(line, where, "reference image index")
        if len(ints) != 1 or not 0 <= ints[0] < len(images):
            raise ManifestError(
                f"{where}: expected one image index in 0..{len(images) - 1}, got {line!r}"
            )
        ref.append(ints[0])
    ind_rows, ind_wheres = _rows(path["indfull_test.txt"], width, (-1, 0, 1), "indicator")
    ind = np.asarray(ind_rows, dtype=np.int8).reshape(-1, width)
    gt_rows = _rows(path["gt_test.txt"], width, (0, 1), "one-hot target labels")
    for name, count in (("indfull_test.txt", len(ind)), ("gt_test.txt", len(gt_rows[0]))):
        if count != len(ref):
            raise ManifestError(
                f"{path[name]}: {count} queries but {len(ref)} in {path['ref_test.txt']}"
            )
    gt_labels = _to_index_labels(gt_rows, attr_num)
    block_of = np.repeat(np.arange(len(attr_num)), attr_num)
    starts = np.concatenate([[0], np.cumsum(attr_num)[:-1]])
    target_attribute = np.empty(len(ref), dtype=np.int64)
    target_value = np.empty(len(ref), dtype=np.int64)
    for q, row in enumerate(ind):
        plus, changed = np.flatnonzero(row == 1), np.flatnonzero(row)
        if len(plus) != 1 or np.any(block_of[changed] != block_of[plus[0]] if len(plus) else 1):
            raise ManifestError(
                f"{ind_wheres[q]}: expected one +1 and changes within one attribute"
            )
        target_attribute[q] = block_of[plus[0]]
        target_value[q] = plus[0] - starts[target_attribute[q]]
        if gt_labels[q, target_attribute[q]] != target_value[q]:
            raise ManifestError(
                f"{gt_rows[1][q]}: target value {target_value[q]} of attribute "
                f"{target_attribute[q]} (from {ind_wheres[q]}) is not set"
            )
    return AddeSplit(
        split_dir,
        attr_num,
        images,
        labels,
        np.asarray(ref, dtype=np.int64),
        target_attribute,
        target_value,
        gt_labels,
        dict(attribute_index),
    )


def _folder_category(image_path: str) -> Optional[str]:
    """`[Images/]<Gender>/<n>_<Name>/<file>` -> `<Name>`, else None."""
    path = image_path.replace("\\", "/")
    if not path.startswith("Images/"):
        path = "Images/" + path
    return shopping100k.category_from_folder(path)


def shopping100k_value_classes(
    split: AddeSplit, code_table=None, class_table=None
) -> Dict[str, np.ndarray]:
    """ADDE value index -> project class index (vocabulary order), per FLAM type, for
    Shopping100k; -1 where the value has no name, or its name no canonical class.

    A value is named by the Shopping100k code table (`shopping100k_codes.json` with `code_table`
    merged over it, as the reader's `--class_table`), then mapped onto the vocabulary as the
    reader maps names (`shopping100k.CLASS_TABLE` with `class_table` merged over it). A category
    value the table leaves unnamed takes the category folder name (`1_Coats` -> `Coats`) of the
    split's images labelled with it, when at least `FOLDER_AGREEMENT` of them share one folder
    name (images whose path holds no category folder do not vote). Two values mapped onto one class
    are both kept (the class is what G is asked for; the hit test compares ADDE's own labels).

    Args:
        split: the Shopping100k `AddeSplit`.
        code_table: {"fields": {field: {"num_values": n, "codes": {code: name}}}}, or None.
        class_table: {type: {source name: canonical class}}, or None.

    Returns:
        {type: int array [attr_num of that attribute]}.
    """
    codes = shopping100k.merge_code_tables(
        shopping100k.load_code_table(shopping100k.CODE_TABLE_FILE), code_table
    )
    table = classes.resolve_class_table(shopping100k.CLASS_TABLE, class_table)
    folders = np.asarray([_folder_category(p) or "" for p in split.images])
    out = {}
    for attribute, a in split.attribute_index.items():
        field = SHOPPING100K_FIELDS[attribute]
        named = codes.get(field, {"codes": {}})["codes"]
        by_name = {classes.normalize_class_name(c): c for c in vocabulary.CLASSES[attribute]}
        mapped = np.full(int(split.attr_num[a]), vocabulary.MISSING, dtype=np.int64)
        for value in range(len(mapped)):
            name = named.get(value)
            if name is None and attribute == "shape":
                held = folders[(split.labels[:, a] == value) & (folders != "")]
                if len(held):
                    names, counts = np.unique(held, return_counts=True)
                    if counts.max() >= FOLDER_AGREEMENT * len(held):
                        name = str(names[np.argmax(counts)])
            key = classes.normalize_class_name(name) if name else ""
            canonical = table[attribute].get(key, by_name.get(key))
            if canonical is not None:
                mapped[value] = vocabulary.class_index(attribute, canonical)
        unmapped = int(np.sum(mapped < 0))
        if unmapped:
            logging.info(
                "ADDE %s (%s): %d of %d values have no class (unnamed code, or a name with no "
                "canonical class); their queries are not scored",
                attribute,
                field,
                unmapped,
                len(mapped),
            )
        out[attribute] = mapped
    return out
