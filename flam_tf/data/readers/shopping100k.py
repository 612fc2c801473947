"""Shopping100k (raw layout) -> manifest rows for attribute training and FAM evaluation.

Layout (Ak et al., WACV 2018 / CVPR 2018; as read by ADDE, GitHub
amzn/fashion-attribute-disentanglement, whose `imgs_*.txt` paths are relative to `Images/`):
`Images/<Gender>/<n>_<Category>/<id>.jpg` and one file per attribute under `Attributes/`,
`<field>.txt` (category, collar, color, fabric, fastening, fit, gender, neckline, pattern, pocket,
sleevelen, sport), each line `<relpath> <code>`: the image path relative to `Images/` (or to
`data_dir` if it starts with `Images/`) and an integer value code, e.g.
`Male/1_Coats/0000095_13.jpg 1`; -1 = missing. Only category, color and pattern are read; the
other files are ignored. Every image is its own instance (instance_id = its path under Images/
without extension); domain shop.

Codes are codes: a code is named only through the code table (`shopping100k_codes.json`, or
`code_table` / the CLI's `--class_table FILE`), then the name is mapped onto the canonical
vocabulary (`CLASS_TABLE`, names compared normalized). A code the table does not name, or one
beyond the field's number of values, makes that one label missing (counted and logged); it never
becomes a class of its own and never changes another row. A code that is not an integer >= -1 is
an error naming the file and line. The category is also read from the category folder name
(`1_Coats` -> `Coats`), used when category.txt is absent or its code is unmapped. A source name
with no canonical match is missing too (never mapped onto an unused class).

As in the paper's Table 1 the top-N classes of each attribute type are kept; 2K densely labelled
images form fam_eval. With the shipped table alone (color and pattern codes unnamed) no image has
all three labels, so asking for fam_eval is a one-line error that says so and names the first
unnamed code's file and line: pass a code table, or fam_eval_size=0 for a manifest without
fam_eval.
"""

import json
import os
import re
from typing import Dict, Mapping, Optional

from absl import logging

from flam_tf.data.manifest import ManifestError
from flam_tf.data.readers import annotation_files, classes, common

# Source attribute file (stem) -> attribute type; None = a Shopping100k field FLAM ignores. Files
# under Attributes/ that are not mapped to a type are not read.
FIELD_MAP = {
    "category": "shape",
    "color": "color",
    "pattern": "pattern",
    "collar": None,
    "fabric": None,
    "fastening": None,
    "fit": None,
    "gender": None,
    "neckline": None,
    "pocket": None,
    "sleevelen": None,
    "sport": None,
}

# Source class name -> canonical class where the normalized names differ. Only unambiguous
# renamings (plurals, spellings); a name with no entry and no same-named canonical class becomes
# a missing label.
CLASS_TABLE = {
    "shape": {
        "tshirts": "t-shirt",
        "tees": "t-shirt",
        "shirts": "shirt",
        "sweaters": "sweater",
        "jumper": "sweater",
        "jumpers": "sweater",
        "hoody": "hoodie",
        "hoodies": "hoodie",
        "dresses": "dress",
        "skirts": "skirt",
        "jeans": "trousers",
        "pants": "trousers",
        "jackets": "jacket",
        "coats": "coat",
    },
    "color": {"gray": "grey", "navyblue": "navy"},
    "pattern": {
        "plain": "solid",
        "stripe": "striped",
        "stripes": "striped",
        "check": "checked",
        "checks": "checked",
        "plaid": "checked",
        "dot": "dotted",
        "dots": "dotted",
        "polkadot": "dotted",
        "flower": "floral",
        "camo": "camouflage",
        "colourblock": "colorblock",
    },
}
CODE_TABLE_FILE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "shopping100k_codes.json"
)
FAM_EVAL_SIZE = 2000
MISSING_CODE = -1
CATEGORY_FOLDER = re.compile(r"^\d+_(.+)$")
EMPTY_FAM_EVAL_HINT = (  # the codes have no published names (see CODE_TABLE_FILE)
    "Name the color and pattern codes with a class table like "
    "flam_tf/data/readers/shopping100k_codes.json (flam_tf.train --data_class_table FILE, "
    "flam_tf.data.readers --class_table FILE), or use flam_tf.data.readers --fam_eval_size 0"
)


def load_code_table(path: str) -> Dict[str, dict]:
    """Reads a code table file: {"fields": {field: {"num_values": n|null, "codes": {code: name}}}}.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, or not that shape (the message names the file).
    """
    try:
        with open(annotation_files.require_file(path), encoding="utf-8-sig") as f:
            table = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {e.lineno}: not JSON ({e.msg})") from None
    return check_code_table(table, path)


def check_code_table(table, where: str) -> Dict[str, dict]:
    """Validates a code table (see `load_code_table`) and returns its "fields" with int codes."""
    fields = table.get("fields") if isinstance(table, dict) else None
    if not isinstance(fields, dict):
        raise ValueError(
            f'{where}: expected a JSON object with a "fields" object '
            '({field: {"num_values": n, "codes": {code: name}}})'
        )
    out = {}
    for field, spec in fields.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("codes", {}), dict):
            raise ValueError(
                f'{where}: field {field!r}: expected {{"num_values": n, "codes": {{code: name}}}}'
            )
        num_values = spec.get("num_values")
        if num_values is not None and (not isinstance(num_values, int) or num_values < 1):
            raise ValueError(
                f"{where}: field {field!r}: num_values must be a positive integer "
                f"or null. Received: {num_values!r}"
            )
        codes = {}
        for code, name in spec.get("codes", {}).items():
            if not re.fullmatch(r"\d+", str(code)) or not isinstance(name, str) or not name:
                raise ValueError(
                    f'{where}: field {field!r}: expected code "<integer >= 0>": '
                    f'"<name>". Received: {code!r}: {name!r}'
                )
            codes[int(code)] = name
        out[field] = {"num_values": num_values, "codes": codes}
    return out


def merge_code_tables(default: Mapping[str, dict], override: Optional[Mapping]) -> Dict[str, dict]:
    """Merges a code table (`{"fields": ...}` as in the file) over the default, per field."""
    merged = {
        f: {"num_values": s["num_values"], "codes": dict(s["codes"])} for f, s in default.items()
    }
    if override:
        for field, spec in check_code_table(override, "code_table").items():
            target = merged.setdefault(field, {"num_values": None, "codes": {}})
            if "num_values" in override["fields"][field]:
                target["num_values"] = spec["num_values"]
            target["codes"].update(spec["codes"])
    return merged


def parse_code(token: str, field: str, where: str) -> int:
    """The integer code of `token`; ManifestError at `where` unless an integer >= -1."""
    try:
        code = int(token)
    except ValueError:
        code = None
    if code is None or code < MISSING_CODE:
        raise ManifestError(
            f"{where}: {field} code {token!r} is not a value code (expected an "
            f"integer >= 0, or {MISSING_CODE} = missing)"
        )
    return code


def category_from_folder(path: str) -> Optional[str]:
    """`Images/<Gender>/<n>_<Name>/<file>` -> `<Name>` (e.g. `1_Coats` -> `Coats`), else None."""
    parts = path.split("/")
    if len(parts) == 4 and parts[0] == "Images":
        match = CATEGORY_FOLDER.match(parts[2])
        if match:
            return match.group(1)
    return None


def read_shopping100k(
    data_dir: str,
    top_n: int = 10,
    fam_eval_size: int = FAM_EVAL_SIZE,
    seed: int = 0,
    field_map=None,
    class_table=None,
    code_table=None,
    check_images: bool = True,
):
    """Reads Shopping100k into manifest rows.

    Args:
        data_dir: the data set directory (holding Images/ and Attributes/).
        top_n: classes kept per attribute type, by image count.
        fam_eval_size: densely labelled images sampled into fam_eval.
        seed: seed of that sample.
        field_map: overrides merged into `FIELD_MAP` (field -> type, or None to ignore a field).
        class_table: overrides merged into `CLASS_TABLE` ({type: {source name: canonical}}).
        code_table: a code table as in `shopping100k_codes.json` ({"fields": {field:
            {"num_values": n, "codes": {"<code>": "<name>"}}}}), merged over the shipped one.
        check_images: skip (and count) images whose file does not exist.

    Returns:
        (rows, stats): manifest row dicts, paths relative to `data_dir`, and a `ReadStats`.

    Raises:
        FileNotFoundError: Attributes/<field>.txt is missing for color or pattern (or another field
            mapped to a type; category.txt may be absent: the folder names give the category).
        ManifestError: a malformed line, a code that is not an integer >= -1, or a path leaving
            data_dir, naming the file and line; or fam_eval_size > 0 while (almost) no image has
            all three labels (e.g. color / pattern codes left unnamed: no class table), naming
            the first unnamed code's file and line.
        ValueError: a bad field map, class table or code table.
    """
    stats = common.ReadStats("shopping100k")
    fields = classes.resolve_field_map(FIELD_MAP, field_map)
    table = classes.resolve_class_table(CLASS_TABLE, class_table)
    codes = merge_code_tables(load_code_table(CODE_TABLE_FILE), code_table)
    attribute_dir = os.path.join(data_dir, "Attributes")
    if not os.path.isdir(attribute_dir):
        raise FileNotFoundError(
            f"Data set directory not found: {attribute_dir} (expected "
            "Attributes/<field>.txt and Images/ under data_dir)"
        )
    unused = sorted(
        n
        for n in os.listdir(attribute_dir)
        if n.endswith(".txt") and fields.get(os.path.splitext(n)[0]) is None
    )
    if unused:
        logging.info("shopping100k: not used: %s", ", ".join(unused))
    labels: Dict[str, Dict[str, str]] = {}  # path -> {type: source name}
    first_seen: Dict[str, str] = {}  # path -> where
    for field, attribute in fields.items():
        if attribute is None:
            continue
        path_of_field = os.path.join(attribute_dir, field + ".txt")
        if field == "category" and attribute == "shape" and not os.path.isfile(path_of_field):
            logging.info(
                "shopping100k: %s absent; category taken from the folder names", path_of_field
            )
            continue
        spec = codes.get(field, {"num_values": None, "codes": {}})
        seen = set()
        for where, line in annotation_files.iter_lines(path_of_field):
            parts = line.rsplit(None, 1)
            annotation_files.expect_fields(parts, 2, where, "<relpath> <code>")
            relpath, token = parts
            if relpath.replace("\\", "/").startswith("Images/"):
                path = annotation_files.safe_relpath(relpath, where)
            else:
                path = annotation_files.safe_relpath(relpath, where, base="Images")
            code = parse_code(token, field, where)
            image_labels = labels.setdefault(path, {})
            first_seen.setdefault(path, where)
            if path in seen:
                stats.skip(f"repeated {field} line for an image (first kept)", where)
                continue
            seen.add(path)
            if code == MISSING_CODE:
                continue
            if spec["num_values"] is not None and code >= spec["num_values"]:
                stats.missing_label(
                    f"{field} code out of range (the field has {spec['num_values']} values)", where
                )
            elif code in spec["codes"]:
                image_labels[attribute] = spec["codes"][code]
            elif not (attribute == "shape" and category_from_folder(path)):
                stats.missing_label(f"{field} code with no published name", where)
    records = []
    from_folder = 0
    for path, image_labels in labels.items():
        if check_images and not os.path.isfile(os.path.join(data_dir, path)):
            stats.skip("image file not found", first_seen[path])
            continue
        if "shape" not in image_labels and fields.get("category") == "shape":
            folder = category_from_folder(path)
            if folder:
                image_labels["shape"] = folder
                from_folder += 1
        instance_id = os.path.splitext(
            path[len("Images/") :] if path.startswith("Images/") else path
        )[0]
        records.append((path, instance_id, image_labels))
    if from_folder:
        logging.info("shopping100k: category of %d images taken from the folder name", from_folder)
    stats.hint = (
        f"Looked for the images listed in {attribute_dir}/*.txt under "
        f"{os.path.join(data_dir, 'Images')}/."
    )
    rows = common.label_attribute_rows(
        records,
        stats,
        "shop",
        top_n,
        table,
        fam_eval_size,
        seed,
        fallback=False,
        empty_fam_eval_hint=EMPTY_FAM_EVAL_HINT,
    )
    stats.finish(rows)
    return rows, stats
