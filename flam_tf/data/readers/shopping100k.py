"""Shopping100k (raw layout) -> manifest rows for attribute training and FAM evaluation.

Layout: `Images/<Gender>/<n_Category>/<id>.jpg` and one file per attribute under `Attributes/`,
named `<field>.txt` (e.g. category.txt, color.txt, pattern.txt), each line `<relpath> <value>` with
value -1 for a missing label. A relpath is taken relative to `data_dir` if it starts with
`Images/`, else relative to `data_dir/Images/`. Every image is its own instance (instance_id = its
path under Images/ without extension); domain shop.

As in the paper's Table 1 the top-N classes of each attribute type are kept and mapped onto the
canonical vocabulary (`common.map_top_classes`); 2K densely labelled images form fam_eval.
"""

import os

from absl import logging

from flam_tf.data.readers import common

# Source attribute file (stem) -> attribute type; None = a known Shopping100k field FLAM ignores.
FIELD_MAP = {
    "category": "shape", "color": "color", "pattern": "pattern",
    "collar": None, "fabric": None, "fastening": None, "fit": None, "gender": None,
    "length": None, "neckline": None, "pocket": None, "sleeve_length": None, "sport": None,
}

# Source class -> canonical class where the names differ (Table 1: T-shirt ... Tracksuit_Bottoms,
# Black, Navy ... Olive, Plain, Print ... Colourful). Names are compared normalized, so 'T-shirt'
# needs no entry; classes with no natural match fall through to the unused canonical classes.
CLASS_TABLE = {
    "shape": {"jumper": "sweater", "knitwear": "sweater", "hoody": "hoodie", "hoodies": "hoodie",
              "sweatshirt": "hoodie", "jeans": "trousers", "pants": "trousers",
              "dresses": "dress", "skirts": "skirt", "jackets": "jacket", "coats": "coat"},
    "color": {"gray": "grey", "navy_blue": "navy", "dark_blue": "navy", "beige": "brown"},
    "pattern": {"plain": "solid", "stripe": "striped", "stripes": "striped", "check": "checked",
                "checks": "checked", "plaid": "checked", "dot": "dotted", "dots": "dotted",
                "polka_dot": "dotted", "flower": "floral", "camo": "camouflage",
                "colour_block": "colorblock", "colourblock": "colorblock"},
}
FAM_EVAL_SIZE = 2000
MISSING_VALUES = ("-1", "")


def read_shopping100k(data_dir: str, top_n: int = 10, fam_eval_size: int = FAM_EVAL_SIZE,
                      seed: int = 0, field_map=None, class_table=None, check_images: bool = True):
    """Reads Shopping100k into manifest rows.

    Args:
        data_dir: the data set directory (holding Images/ and Attributes/).
        top_n: classes kept per attribute type, by image count.
        fam_eval_size: densely labelled images sampled into fam_eval.
        seed: seed of that sample.
        field_map: overrides merged into `FIELD_MAP` (field -> type, or None to ignore a field).
        class_table: overrides merged into `CLASS_TABLE` ({type: {source class: canonical}}).
        check_images: skip (and count) images whose file does not exist.

    Returns:
        (rows, stats): manifest row dicts, paths relative to `data_dir`, and a `ReadStats`.

    Raises:
        FileNotFoundError: Attributes/<field>.txt is missing for a field mapped to a type.
        ManifestError: a malformed line or an unsafe path, naming the file and line.
        ValueError: a bad field map or class table.
    """
    stats = common.ReadStats("shopping100k")
    fields = common.resolve_field_map(FIELD_MAP, field_map)
    table = common.resolve_class_table(CLASS_TABLE, class_table)
    attribute_dir = os.path.join(data_dir, "Attributes")
    if os.path.isdir(attribute_dir):
        for name in sorted(os.listdir(attribute_dir)):
            stem = os.path.splitext(name)[0]
            if name.endswith(".txt") and stem not in fields:
                logging.warning("shopping100k: %s is not in the field map; not read",
                                os.path.join(attribute_dir, name))
    labels = {}  # path -> {type: source class}
    first_seen = {}  # path -> where
    for field, attribute in fields.items():
        if attribute is None:
            continue
        for where, parts in common.read_fields(os.path.join(attribute_dir, field + ".txt")):
            common.expect_fields(parts, 2, where, "<relpath> <value>")
            path = common.safe_relpath(parts[0], where)
            if not path.startswith("Images/"):
                path = "Images/" + path
            image_labels = labels.setdefault(path, {})
            first_seen.setdefault(path, where)
            if attribute in image_labels:
                stats.skip(f"repeated {field} line for an image (first kept)", where)
            elif parts[1] not in MISSING_VALUES:
                image_labels[attribute] = parts[1]
    records = []
    for path, image_labels in labels.items():
        if check_images and not os.path.isfile(os.path.join(data_dir, path)):
            stats.skip("image file not found", first_seen[path])
            continue
        instance_id = os.path.splitext(path[len("Images/"):])[0]
        records.append((path, instance_id, image_labels))
    rows = common.label_attribute_rows(records, stats, "shop", top_n, table, fam_eval_size, seed)
    stats.finish(rows)
    return rows, stats
