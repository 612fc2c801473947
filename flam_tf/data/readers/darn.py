"""DARN (street photos with attribute labels) -> manifest rows for attribute training and FAM eval.

DARN itself (Huang et al., ICCV 2015) was published as image URLs; the only public, machine
readable layout of its labels is the one of ASEN / ASEN++ (GitHub Maryeon/asen, Maryeon/asenpp:
`modules/data/datasets/datasets.py`, `modules/data/samplers/samplers.py`, `config/DARN/DARN.yaml`),
which this reader follows. Layout in `data_dir` (ASEN++'s `data/DARN`):

  filenames_{train,valid,test}.txt  one image path per line, relative to `data_dir` (the images
                                    are downloaded into `pic/`); the 0-based line number is the
                                    image index that the other files use.
  label_train.txt                   `<index> <attribute> <value> <attribute> <value> ...`, all
                                    integers, whitespace (tab) separated; index into
                                    filenames_train.txt, e.g. (quoted in Maryeon/asenpp issue #1)
                                    `0 0 4 1 12 2 4 3 4 4 0 5 1 6 0 7 0 8 5`.
  query_{valid,test}.txt,           `<index> <attribute> <value>`: one image of
  candidate_{valid,test}.txt        filenames_{valid,test}.txt and its value of one attribute.

Attributes are numbered in the order of `DARN.yaml` (`ATTRIBUTES`, value counts in
`VALUE_COUNTS`); values are 0-based class ids. No public source names DARN's class ids, so a
class is known by its id ("0", "1", ...) and `classes.map_top_classes` maps the top-N ids of
category / color / pattern onto unused canonical classes (logged); pass `class_table`
({"color": {"3": "red"}}) to name them. Every image is its own instance (instance_id = its path);
domain street. Labelled images of all three splits go to attribute_train, listed images without a
category/color/pattern label to unlabelled; then `fam_eval_size` densely labelled images move to
fam_eval.

Files are read as UTF-8 with or without a BOM, LF or CRLF. Every malformed line raises
`ManifestError` (a ValueError) whose one-line message starts with `<file>: line <n>:`.
"""

import os
from typing import Dict, Optional

from flam_tf.data.manifest import ManifestError
from flam_tf.data.readers import annotation_files, classes, common

# Maryeon/asenpp config/DARN/DARN.yaml (commit b443271): DATA.ATTRIBUTES.NAME and .NUM.
ATTRIBUTES = (
    "clothes category",
    "clothes button",
    "clothes color",
    "clothes length",
    "clothes pattern",
    "clothes shape",
    "collar shape",
    "sleeve length",
    "sleeve shape",
)
VALUE_COUNTS = (20, 13, 55, 7, 28, 11, 26, 8, 17)
# Attribute index -> FLAM attribute type; the other six attributes are read and checked, not used.
ATTRIBUTE_TYPES = {0: "shape", 2: "color", 4: "pattern"}
SPLITS = ("train", "valid", "test")
CLASS_TABLE: Dict[str, Dict[str, str]] = {}  # no published class names: ids map by frequency
FAM_EVAL_SIZE = 5000


def check_label(
    index: int, attribute: int, value: int, num_images: int, where: str, names_file: str
) -> None:
    """Raises ManifestError at `where` for an image index, attribute or value out of range."""
    if not 0 <= index < num_images:
        raise ManifestError(
            f"{where}: image index {index} is not a line of {names_file} ({num_images} images)"
        )
    if not 0 <= attribute < len(ATTRIBUTES):
        raise ManifestError(f"{where}: attribute {attribute} out of range 0..{len(ATTRIBUTES) - 1}")
    if not 0 <= value < VALUE_COUNTS[attribute]:
        raise ManifestError(
            f"{where}: value {value} of attribute {attribute} "
            f"({ATTRIBUTES[attribute]}) out of range "
            f"0..{VALUE_COUNTS[attribute] - 1}"
        )


def read_darn(
    data_dir: str,
    top_n: int = 10,
    fam_eval_size: int = FAM_EVAL_SIZE,
    seed: int = 0,
    class_table: Optional[Dict[str, Dict[str, str]]] = None,
    check_images: bool = True,
):
    """Reads DARN in the ASEN / ASEN++ layout into manifest rows.

    Args:
        data_dir: the directory with `filenames_*.txt`, `label_train.txt`, `query_*.txt`,
            `candidate_*.txt` (ASEN++'s `data/DARN`).
        top_n: classes kept per attribute type, by image count.
        fam_eval_size: densely labelled images sampled into fam_eval.
        seed: seed of that sample.
        class_table: {type: {class id: canonical class}} naming DARN's class ids.
        check_images: skip (and count) images whose file does not exist.

    Returns:
        (rows, stats): manifest row dicts, paths relative to `data_dir`, and a `ReadStats`.

    Raises:
        FileNotFoundError: filenames_train.txt or label_train.txt is missing, or a query /
            candidate file of a split whose filenames file is missing.
        ManifestError: a malformed line, an index / attribute / value out of range, an unsafe
            path, or an image given two values of one attribute, naming the file and line.
        ValueError: a bad class table.
    """
    stats = common.ReadStats("darn")
    table = classes.resolve_class_table(CLASS_TABLE, class_table)
    paths, where_listed, labels = [], {}, {}  # labels: path -> {attribute: (value, where)}

    def add_label(names, index, attribute, value, where, names_file):
        check_label(index, attribute, value, len(names), where, names_file)
        path = names[index]
        known = labels.setdefault(path, {})
        if attribute in known and known[attribute][0] != value:
            raise ManifestError(
                f"{where}: {path!r} gets value {value} of attribute {attribute} "
                f"({ATTRIBUTES[attribute]}), but {known[attribute][0]} at "
                f"{known[attribute][1]}"
            )
        known.setdefault(attribute, (value, where))

    for split in SPLITS:
        names_file = os.path.join(data_dir, f"filenames_{split}.txt")
        label_files = (
            [f"label_{split}.txt"]
            if split == "train"
            else [f"query_{split}.txt", f"candidate_{split}.txt"]
        )
        if split != "train" and not os.path.isfile(names_file):
            for name in label_files:
                if os.path.isfile(os.path.join(data_dir, name)):
                    annotation_files.require_file(names_file)  # FileNotFoundError naming it
            continue
        names = []
        for where, line in annotation_files.iter_lines(names_file):
            path = annotation_files.safe_relpath(line, where)
            names.append(path)
            if path in where_listed:
                stats.merged += 1
            else:
                where_listed[path] = where
                paths.append(path)
        for name in label_files:
            file = os.path.join(data_dir, name)
            if split != "train" and not os.path.isfile(file):
                continue
            for where, line in annotation_files.iter_lines(file):
                if split == "train":
                    layout = "<index> <attribute> <value> ..."
                    ints = annotation_files.parse_ints(line, where, layout)
                    if len(ints) < 3 or len(ints) % 2 == 0:
                        raise ManifestError(
                            f"{where}: expected {layout} (an odd count of at "
                            f"least 3 integers), got {len(ints)}: {line!r}"
                        )
                    attributes = ints[1::2]
                    if len(set(attributes)) != len(attributes):
                        raise ManifestError(f"{where}: an attribute appears twice: {line!r}")
                    for attribute, value in zip(ints[1::2], ints[2::2]):
                        add_label(names, ints[0], attribute, value, where, names_file)
                else:
                    layout = "<index> <attribute> <value>"
                    ints = annotation_files.parse_ints(line, where, layout)
                    if len(ints) != 3:
                        raise ManifestError(
                            f"{where}: expected 3 integers ({layout}), got {len(ints)}: {line!r}"
                        )
                    add_label(names, *ints, where, names_file)
    records = []
    for path in paths:
        if check_images and not os.path.isfile(os.path.join(data_dir, path)):
            stats.skip("image file not found", where_listed[path])
            continue
        source = {
            ATTRIBUTE_TYPES[a]: str(v)
            for a, (v, _) in labels.get(path, {}).items()
            if a in ATTRIBUTE_TYPES
        }
        records.append((path, path, source))
    rows = common.label_attribute_rows(records, stats, "street", top_n, table, fam_eval_size, seed)
    stats.finish(rows)
    return rows, stats
