"""DARN (street photos with attribute labels) -> manifest rows for attribute training and FAM eval.

Layout in `data_dir`:
  label files (default `label_*.txt`): `<fid> <field> <value> <field> <value> ...`, e.g.
      `000123 clothes_category sweater clothes_color red clothes_pattern solid_color`;
      value -1 (or a field left out) = label missing.
  image list files (default `filename*.txt`): `<fid> <relpath>`, relpath relative to `data_dir`.
Every image is its own instance (instance_id = fid); domain street. A listed image without a label
line goes to unlabelled; a labelled fid without an image is skipped and counted.

As in the paper's Table 1 the top-N classes of each attribute type are kept and mapped onto the
canonical vocabulary (`common.map_top_classes`); 5K densely labelled images form fam_eval.
"""

import os

from flam_tf.data.manifest import ManifestError
from flam_tf.data.readers import common

# Source field -> attribute type; None = a known DARN field FLAM ignores. Any other field in a
# label line is an error (likely a typo or another data set's file).
FIELD_MAP = {
    "clothes_category": "shape", "clothes_color": "color", "clothes_pattern": "pattern",
    "clothes_button": None, "clothes_length": None, "clothes_shape": None, "collar_shape": None,
    "sleeve_length": None, "sleeve_shape": None,
}

# Source class -> canonical class where the names differ (Table 1: sweater, hoodies, ...,
# cotton_clothes; black, red, ..., rose_red; solid_color, flower, ..., abstract). Classes with no
# natural match (e.g. cotton_clothes, rose_red, abstract) fall through to unused canonical classes.
CLASS_TABLE = {
    "shape": {"hoodies": "hoodie", "t_shirt": "t-shirt", "pants": "trousers",
              "down_coat": "coat", "woolen_coat": "coat", "knitwear": "sweater",
              "dresses": "dress", "skirts": "skirt"},
    "color": {"gray": "grey", "navy_blue": "navy", "dark_blue": "navy", "coffee": "brown"},
    "pattern": {"solid_color": "solid", "pure_color": "solid", "stripe": "striped",
                "stripes": "striped", "lattice": "checked", "plaid": "checked", "grid": "checked",
                "dot": "dotted", "dots": "dotted", "polka_dot": "dotted", "flower": "floral",
                "splice": "colorblock", "color_block": "colorblock"},
}
FAM_EVAL_SIZE = 5000
MISSING_VALUES = ("-1",)


def read_darn(data_dir: str, top_n: int = 10, fam_eval_size: int = FAM_EVAL_SIZE, seed: int = 0,
              field_map=None, class_table=None, label_files=("label_*.txt",),
              image_list_files=("filename*.txt",), check_images: bool = True):
    """Reads DARN into manifest rows.

    Args:
        data_dir: the data set directory.
        top_n: classes kept per attribute type, by image count.
        fam_eval_size: densely labelled images sampled into fam_eval.
        seed: seed of that sample.
        field_map: overrides merged into `FIELD_MAP` (field -> type, or None to ignore a field).
        class_table: overrides merged into `CLASS_TABLE` ({type: {source class: canonical}}).
        label_files: label file names or glob patterns, relative to `data_dir`.
        image_list_files: fid -> image path file names or glob patterns, relative to `data_dir`.
        check_images: skip (and count) images whose file does not exist.

    Returns:
        (rows, stats): manifest row dicts, paths relative to `data_dir`, and a `ReadStats`.

    Raises:
        FileNotFoundError: a label or image list file (pattern) is missing.
        ManifestError: a malformed line, an unknown field, an unsafe path, or a fid and an image
            paired inconsistently, naming the file and line.
        ValueError: a bad field map or class table.
    """
    stats = common.ReadStats("darn")
    fields = common.resolve_field_map(FIELD_MAP, field_map)
    table = common.resolve_class_table(CLASS_TABLE, class_table)
    paths, path_where, fid_of = {}, {}, {}  # fid -> relpath, fid -> where listed, relpath -> fid
    for file in common.expand_files(data_dir, image_list_files):
        for where, parts in common.read_fields(file):
            common.expect_fields(parts, 2, where, "<fid> <relpath>")
            fid, path = parts[0], common.safe_relpath(parts[1], where)
            if fid in paths and paths[fid] != path:
                raise ManifestError(f"{where}: fid {fid!r} listed as {path!r}, but as "
                                    f"{paths[fid]!r} at {path_where[fid]}")
            if fid_of.setdefault(path, fid) != fid:
                raise ManifestError(f"{where}: image {path!r} listed for fid {fid!r} and for fid "
                                    f"{fid_of[path]!r}")
            if fid in paths:
                stats.merged += 1
            paths.setdefault(fid, path)
            path_where.setdefault(fid, where)
    labels = {}  # fid -> {type: source class}
    for file in common.expand_files(data_dir, label_files):
        for where, parts in common.read_fields(file):
            if len(parts) % 2 == 0:
                raise ManifestError(f"{where}: expected <fid> followed by <field> <value> pairs, "
                                    f"got {len(parts)} fields: {' '.join(parts)!r}")
            fid, pairs = parts[0], list(zip(parts[1::2], parts[2::2]))
            names = [field for field, _ in pairs]
            for field in names:
                if field not in fields:
                    raise ManifestError(f"{where}: unknown attribute field {field!r}; expected "
                                        f"one of {sorted(fields)} (extend field_map to add one)")
            if len(set(names)) != len(names):
                raise ManifestError(f"{where}: a field appears twice: {' '.join(parts)!r}")
            if fid in labels:
                stats.skip("repeated label line for a fid (first kept)", where)
                continue
            if fid not in paths:
                stats.skip("labelled fid missing from the image lists", where)
                continue
            labels[fid] = {fields[f]: v for f, v in pairs
                           if fields[f] is not None and v not in MISSING_VALUES}
    records = []
    for fid, path in paths.items():
        if check_images and not os.path.isfile(os.path.join(data_dir, path)):
            stats.skip("image file not found", path_where[fid])
            continue
        records.append((path, fid, labels.get(fid, {})))
    rows = common.label_attribute_rows(records, stats, "street", top_n, table, fam_eval_size, seed)
    stats.finish(rows)
    return rows, stats
