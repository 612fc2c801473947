"""Data set readers: tiny fixture trees in the published layouts -> manifest rows, and bad input."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from flam_tf.data import readers
from flam_tf.data.manifest import ManifestError, read_manifest
from flam_tf.data.readers import (
    build_manifest,
    classes,
    read_deepfashion_c2s,
    read_deepfashion_inshop,
    read_shopping100k,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_jpegs(root, paths):
    for path in paths:
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        Image.new("RGB", (8, 8), (200, 30, 30)).save(full, "JPEG")


def write_text(root, name, lines):
    full = os.path.join(root, name)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_partition(root, header, entries, count=None):
    write_text(
        root,
        "list_eval_partition.txt",
        [str(len(entries) if count is None else count), header] + entries,
    )


def by_path(rows):
    return {r["path"]: r for r in rows}


# ------------------------------------------------------------------------- DeepFashion In-shop

INSHOP_HEADER = "image_name item_id evaluation_status"


# Real In-shop entries: image names, item ids and statuses as listed in GitHub
# czla/cloth-image-retrieval `data/InShop/train.txt`, `query.txt` and `gallery.txt` (written from the
# release's Eval/list_eval_partition.txt by its `data/InShop/data_generate.py`), in the release's
# line format `<image> <item_id> <status>` (see REAL_INSHOP below); one with wider spacing.
INSHOP_TRAIN = "img/WOMEN/Dresses/id_00000002"
INSHOP_TEST = "img/WOMEN/Blouses_Shirts/id_00000001"


@pytest.fixture
def inshop_dir(tmp_path):
    entries = [
        f"{INSHOP_TRAIN}/02_4_full.jpg id_00000002 train",
        f"{INSHOP_TRAIN}/02_1_front.jpg id_00000002 train",
        f"{INSHOP_TEST}/02_2_side.jpg id_00000001 query",
        f"{INSHOP_TEST}/02_1_front.jpg id_00000001 gallery",
        f"{INSHOP_TEST}/02_3_back.jpg   id_00000001   gallery",
    ]
    write_partition(tmp_path, INSHOP_HEADER, entries)
    write_jpegs(tmp_path, [e.split()[0] for e in entries])
    return tmp_path


def test_inshop_splits_roles_and_manifest_round_trip(inshop_dir):
    rows, stats = read_deepfashion_inshop(str(inshop_dir))
    rows = by_path(rows)
    assert len(rows) == 5
    front = rows[f"{INSHOP_TRAIN}/02_1_front.jpg"]
    assert (front["split"], front["role"], front["domain"]) == ("extractor_train", "", "shop")
    assert rows[f"{INSHOP_TEST}/02_2_side.jpg"]["role"] == "inshop_query"
    assert rows[f"{INSHOP_TEST}/02_3_back.jpg"]["role"] == "inshop_gallery"
    assert all(r[a] == "" for r in rows.values() for a in ("shape", "color", "pattern"))
    assert stats.rows_by_split == {"extractor_train": 2, "fir_eval": 3}

    out = inshop_dir / "manifest.csv"
    build_manifest("deepfashion_inshop", str(inshop_dir), str(out))
    manifest = read_manifest(str(out))
    assert len(manifest) == 5
    assert manifest.has_role("inshop_gallery").sum() == 2
    assert all(os.path.isfile(p) for p in manifest.absolute_paths())


def test_inshop_missing_image_is_counted_not_silent(inshop_dir):
    os.remove(inshop_dir / f"{INSHOP_TEST}/02_1_front.jpg")
    rows, stats = read_deepfashion_inshop(str(inshop_dir))
    assert len(rows) == 4
    assert stats.skipped == {"image file not found": 1}
    assert stats.first_skipped["image file not found"].endswith("list_eval_partition.txt: line 6")
    rows, stats = read_deepfashion_inshop(str(inshop_dir), check_images=False)
    assert len(rows) == 5 and not stats.skipped
    shutil.rmtree(inshop_dir / "img")
    with pytest.raises(ManifestError, match=r"no images read; skipped \{'image file not found': 5"):
        read_deepfashion_inshop(str(inshop_dir))


@pytest.mark.parametrize(
    "entry, message",
    [
        ("img/a.jpg id_1", r"line 3: expected 3 fields"),
        ("img/a.jpg id_1 validation", r"line 3: unknown evaluation status 'validation'"),
        ("../outside/a.jpg id_1 train", r"line 3: image path '../outside/a.jpg' escapes"),
        ("img/../../a.jpg id_1 train", r"line 3: image path .* escapes"),
        ("/etc/a.jpg id_1 train", r"line 3: absolute image path '/etc/a.jpg'"),
    ],
)
def test_inshop_bad_lines_name_file_and_line(tmp_path, entry, message):
    write_partition(tmp_path, INSHOP_HEADER, [entry])
    with pytest.raises(ManifestError, match=r"list_eval_partition.txt: " + message):
        read_deepfashion_inshop(str(tmp_path), check_images=False)


def test_inshop_missing_file_and_bad_count(tmp_path):
    with pytest.raises(FileNotFoundError, match="list_eval_partition.txt"):
        read_deepfashion_inshop(str(tmp_path))
    write_partition(tmp_path, INSHOP_HEADER, ["img/a.jpg id_1 train"], count=2)
    with pytest.raises(ManifestError, match="line 1: declares 2 entries but the file has 1"):
        read_deepfashion_inshop(str(tmp_path), check_images=False)


def test_instance_in_two_splits_is_an_error(tmp_path):
    write_partition(
        tmp_path,
        INSHOP_HEADER,
        [
            f"{INSHOP_TRAIN}/02_4_full.jpg id_00000002 train",
            f"{INSHOP_TRAIN}/02_1_front.jpg id_00000002 query",
        ],
    )
    with pytest.raises(ManifestError, match="instance 'id_00000002' appears in splits"):
        read_deepfashion_inshop(str(tmp_path), check_images=False)


# In-shop Eval/list_eval_partition.txt: count line (52,712 images, the release README), header and
# entries as in open-mmlab/mmpretrain `tests/test_datasets/test_datasets.py` (InShop: the header
# `image_name item_id evaluation_status`, `02_1_front.jpg id_00000002 train`, `02_2_side.jpg
# id_00000002 train`, there with the folders left out); the folders and the query / gallery
# entries from czla/cloth-image-retrieval `data/InShop/{train,query,gallery}.txt` (see
# INSHOP_TRAIN above). Layout `Eval/list_eval_partition.txt` + `Img/img/...` from mmpretrain
# `mmpretrain/datasets/inshop.py` (ann_file='Eval/list_eval_partition.txt', data_prefix='Img') and
# mmfashion docs/dataset/IN_SHOP_DATASET.md.
REAL_INSHOP = [
    "52712",
    "image_name item_id evaluation_status",
    "img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train",
    "img/WOMEN/Dresses/id_00000002/02_2_side.jpg id_00000002 train",
]


def test_inshop_release_layout_bom_crlf(tmp_path):
    entries = REAL_INSHOP[2:] + [
        f"{INSHOP_TEST}/02_3_back.jpg id_00000001 gallery",
        f"{INSHOP_TEST}/02_4_full.jpg id_00000001 query",
    ]
    text = "\r\n".join([str(len(entries)), REAL_INSHOP[1]] + entries) + "\r\n"
    (tmp_path / "Eval").mkdir()
    (tmp_path / "Eval/list_eval_partition.txt").write_bytes(b"\xef\xbb\xbf" + text.encode())
    write_jpegs(tmp_path / "Img", [e.split()[0] for e in entries])
    rows, stats = read_deepfashion_inshop(str(tmp_path))
    rows = by_path(rows)
    assert set(rows) == {"Img/" + e.split()[0] for e in entries}
    assert rows["Img/img/WOMEN/Dresses/id_00000002/02_1_front.jpg"]["instance_id"] == "id_00000002"
    assert stats.rows_by_split == {"extractor_train": 2, "fir_eval": 2}


def test_inshop_no_images_names_where_it_looked(tmp_path):
    write_partition(tmp_path, REAL_INSHOP[1], REAL_INSHOP[2:])
    with pytest.raises(ManifestError, match=r"no images read.*Looked for .*img/ and .*Img/img/"):
        read_deepfashion_inshop(str(tmp_path))


def test_partition_missing_names_both_paths(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"Eval/list_eval_partition.txt and .*"
        r"list_eval_partition.txt",
    ):
        read_deepfashion_c2s(str(tmp_path))


# ---------------------------------------------------------------- DeepFashion Consumer-to-shop

C2S_HEADER = "image_pair_name_1 image_pair_name_2 item_id evaluation_status"  # skipped (line 2)
# Real Consumer-to-shop pairs. No public repository quotes list_eval_partition.txt itself; its pairs
# are rebuilt here from GitHub czla/cloth-image-retrieval `data/DeepFashion/test.txt` and
# `val.txt` (one line per shop image of the test / val pairs, then its consumer images; written
# from the release's Eval/list_eval_partition.txt by that repository's
# `data/DeepFashion/data_generate.py`), in the release's line format `<consumer image> <shop
# image> <item id> <evaluation status>` (the release README, a copy of which is czla's
# `data/DeepFashion/README.txt`: "<image pair name 1> <image pair name 2> <item id> <evaluation
# status>"; open-mmlab/mmfashion `data/prepare_consumer_to_shop.py` reads `consumer, shop, _,
# cate`). Note the release's own spelling `comsumer`.
C2S_TEST = "img/TOPS/T_Shirt/id_00000001"
C2S_VAL = "img/TOPS/T_Shirt/id_00000283"
REAL_C2S = [
    f"{C2S_TEST}/comsumer_01.jpg {C2S_TEST}/shop_02.jpg id_00000001 test",
    f"{C2S_TEST}/comsumer_06.jpg {C2S_TEST}/shop_02.jpg id_00000001 test",
    f"{C2S_TEST}/comsumer_03.jpg {C2S_TEST}/shop_01.jpg id_00000001 test",
    f"{C2S_TEST}/comsumer_02.jpg {C2S_TEST}/shop_01.jpg id_00000001 test",
    f"{C2S_TEST}/comsumer_05.jpg {C2S_TEST}/shop_01.jpg id_00000001 test",
    f"{C2S_VAL}/comsumer_02.jpg {C2S_VAL}/shop_01.jpg id_00000283 val",
    f"{C2S_VAL}/comsumer_03.jpg {C2S_VAL}/shop_01.jpg id_00000283 val",
    f"{C2S_VAL}/comsumer_01.jpg {C2S_VAL}/shop_01.jpg id_00000283 val",
]
# No public source lists a train pair; these reuse the real names of val item id_00000468
# (czla's val.txt) with status train, only to test how train pairs are mapped.
C2S_TRAIN_ITEM = "img/TOPS/T_Shirt/id_00000468"
C2S_TRAIN = [
    f"{C2S_TRAIN_ITEM}/comsumer_0{i}.jpg {C2S_TRAIN_ITEM}/shop_01.jpg id_00000468 train"
    for i in (1, 2)
]


def test_c2s_dedup_domains_and_roles(tmp_path):
    entries = C2S_TRAIN + REAL_C2S
    write_partition(tmp_path, C2S_HEADER, entries)
    write_jpegs(tmp_path, {p for e in entries for p in e.split()[:2]})
    rows, stats = read_deepfashion_c2s(str(tmp_path))
    rows = by_path(rows)
    assert len(rows) == 14  # 20 image mentions; repeated shop images merged
    assert stats.merged == 6
    train_shop = rows[f"{C2S_TRAIN_ITEM}/shop_01.jpg"]
    assert (train_shop["split"], train_shop["domain"], train_shop["role"]) == (
        "extractor_train",
        "shop",
        "",
    )
    assert rows[f"{C2S_TRAIN_ITEM}/comsumer_02.jpg"]["domain"] == "street"
    queries = {p for p, r in rows.items() if r["role"] == "c2s_query"}
    gallery = {p for p, r in rows.items() if r["role"] == "c2s_gallery"}
    assert queries == {e.split()[0] for e in REAL_C2S}
    assert gallery == {
        f"{C2S_TEST}/shop_01.jpg",
        f"{C2S_TEST}/shop_02.jpg",
        f"{C2S_VAL}/shop_01.jpg",
    }
    assert all(rows[p]["domain"] == "street" for p in queries)
    assert all(rows[p]["split"] == "fir_eval" and rows[p]["domain"] == "shop" for p in gallery)
    assert rows[f"{C2S_TEST}/comsumer_06.jpg"]["instance_id"] == "id_00000001"


def test_c2s_release_layout_bom_crlf(tmp_path):
    text = "\r\n".join([str(len(REAL_C2S)), C2S_HEADER] + REAL_C2S) + "\r\n"
    (tmp_path / "Eval").mkdir()
    (tmp_path / "Eval/list_eval_partition.txt").write_bytes(b"\xef\xbb\xbf" + text.encode())
    write_jpegs(tmp_path / "Img", {p for e in REAL_C2S for p in e.split()[:2]})
    rows, stats = read_deepfashion_c2s(str(tmp_path))
    assert {r["path"] for r in rows} == {"Img/" + p for e in REAL_C2S for p in e.split()[:2]}
    assert stats.rows_by_split == {"fir_eval": 11} and stats.merged == 5


def test_c2s_image_in_two_splits_is_an_error(tmp_path):
    moved = REAL_C2S[5].replace("id_00000283 val", "id_00000283 train")  # val and train at once
    write_partition(tmp_path, C2S_HEADER, REAL_C2S[5:7] + [moved])
    with pytest.raises(
        ManifestError,
        match=r"line 5: image '.*id_00000283/comsumer_02.jpg' "
        r"contradicts .* line 3",
    ):
        read_deepfashion_c2s(str(tmp_path), check_images=False)


@pytest.mark.parametrize(
    "entry, message",
    [
        (" ".join(REAL_C2S[0].split()[:3]), r"line 4: expected 4 fields"),
        (REAL_C2S[0].replace(" test", " query"), r"line 4: unknown evaluation status 'query'"),
        (REAL_C2S[0].replace("img/TOPS", "../TOPS", 1), r"line 4: image path '../TOPS/.*' escapes"),
    ],
)
def test_c2s_malformed_line(tmp_path, entry, message):
    write_partition(tmp_path, C2S_HEADER, [REAL_C2S[1], entry])
    with pytest.raises(ManifestError, match=r"list_eval_partition.txt: " + message):
        read_deepfashion_c2s(str(tmp_path), check_images=False)


# -------------------------------------------------------------------------------- Shopping100k
# Real line format: `Male/1_Coats/0000095_13.jpg 1`, a line of the data set's own Attributes/*.txt
# quoted in the bug report against this reader (integer value codes, paths relative to Images/).
# The field files (category, collar, color, fabric, fastening, fit, gender, neckline, pattern,
# pocket, sleevelen, sport) and value counts: ADDE (GitHub amzn/fashion-attribute-disentanglement,
# splits/Shopping100k/attr_num.txt, README "Preparing Support Files").

REAL_SHOPPING_LINE = "Male/1_Coats/0000095_13.jpg 1"
SHOPPING_CODES = {  # image under Images/ -> (category, color, pattern) codes; -1 = missing
    "Male/1_Coats/0000095_13.jpg": (1, 1, 0),
    "Male/1_Coats/0000096_13.jpg": (1, 2, 0),
    "Female/4_Dresses/0000301_2.jpg": (3, 1, 1),
    "Female/4_Dresses/0000302_2.jpg": (3, 1, -1),
    "Female/9_Tracksuit_Bottoms/0000501_1.jpg": (8, 5, 0),
}
NAMED = {
    "fields": {
        "color": {"codes": {"1": "Black", "2": "Navy", "5": "Olive"}},
        "pattern": {"codes": {"0": "Plain", "1": "Striped"}},
    }
}


def write_shopping(root, codes=SHOPPING_CODES, bom=False, crlf=False):
    write_jpegs(root / "Images", codes)
    end = "\r\n" if crlf else "\n"
    for i, field in enumerate(("category", "color", "pattern")):
        text = "".join(f"{p} {c[i]}{end}" for p, c in codes.items())
        (root / "Attributes").mkdir(exist_ok=True)
        (root / "Attributes" / f"{field}.txt").write_bytes(
            (b"\xef\xbb\xbf" if bom else b"") + text.encode()
        )
    for field in ("sleevelen", "collar", "gender"):  # real unused fields: ignored
        write_text(root, f"Attributes/{field}.txt", [f"{p} 0" for p in codes])


def test_shopping100k_real_line_format():
    assert REAL_SHOPPING_LINE.split() == ["Male/1_Coats/0000095_13.jpg", "1"]
    assert REAL_SHOPPING_LINE.split()[0] in SHOPPING_CODES


def test_shopping100k_shipped_table_gives_no_guessed_label(tmp_path):
    write_shopping(tmp_path)
    rows, stats = read_shopping100k(str(tmp_path), fam_eval_size=0)
    rows = by_path(rows)
    # Category from the folder name; no color/pattern code has a published name: all missing.
    assert {p: (r["shape"], r["color"], r["pattern"]) for p, r in rows.items()} == {
        "Images/Male/1_Coats/0000095_13.jpg": ("coat", "", ""),
        "Images/Male/1_Coats/0000096_13.jpg": ("coat", "", ""),
        "Images/Female/4_Dresses/0000301_2.jpg": ("dress", "", ""),
        "Images/Female/4_Dresses/0000302_2.jpg": ("dress", "", ""),
        "Images/Female/9_Tracksuit_Bottoms/0000501_1.jpg": ("", "", ""),  # no canonical match
    }
    assert stats.class_maps["shape"] == {"Coats": "coat", "Dresses": "dress"}
    assert stats.labels_missing == {
        "color code with no published name": 5,
        "pattern code with no published name": 4,
    }
    assert stats.first_label_missing["color code with no published name"].endswith(
        "color.txt: line 1"
    )
    assert rows["Images/Male/1_Coats/0000095_13.jpg"]["instance_id"] == "Male/1_Coats/0000095_13"
    assert rows["Images/Female/9_Tracksuit_Bottoms/0000501_1.jpg"]["split"] == "unlabelled"


def test_shopping100k_named_codes_map_and_bom_crlf(tmp_path):
    write_shopping(tmp_path, bom=True, crlf=True)
    rows, stats = read_shopping100k(str(tmp_path), fam_eval_size=0, code_table=NAMED)
    rows = by_path(rows)
    first = rows["Images/Male/1_Coats/0000095_13.jpg"]  # the BOM line keeps its labels
    assert (first["shape"], first["color"], first["pattern"]) == ("coat", "black", "solid")
    assert rows["Images/Male/1_Coats/0000096_13.jpg"]["color"] == "navy"
    # Olive has no canonical class: missing, never moved onto an unused one.
    assert rows["Images/Female/9_Tracksuit_Bottoms/0000501_1.jpg"]["color"] == ""
    assert stats.class_maps["color"] == {"Black": "black", "Navy": "navy"}
    assert stats.class_maps["pattern"] == {"Plain": "solid", "Striped": "striped"}
    assert not stats.skipped


@pytest.mark.parametrize("bad", ["99", "16"])
def test_shopping100k_out_of_range_code_changes_no_other_row(tmp_path, bad):
    write_shopping(tmp_path)
    good, _ = read_shopping100k(str(tmp_path), fam_eval_size=0, code_table=NAMED)
    with open(tmp_path / "Attributes/pattern.txt", "a") as f:
        f.write(f"Male/1_Coats/0000097_13.jpg {bad}\n")
    write_jpegs(tmp_path / "Images", ["Male/1_Coats/0000097_13.jpg"])
    rows, stats = read_shopping100k(str(tmp_path), fam_eval_size=0, code_table=NAMED)
    rows = by_path(rows)
    assert all(rows[r["path"]] == r for r in good)
    assert rows["Images/Male/1_Coats/0000097_13.jpg"]["pattern"] == ""
    reason = "pattern code out of range (the field has 16 values)"
    assert stats.labels_missing[reason] == 1
    assert stats.first_label_missing[reason].endswith("pattern.txt: line 6")


@pytest.mark.parametrize("bad", ["-2", "Black", "1.5"])
def test_shopping100k_non_code_is_a_file_line_error(tmp_path, bad):
    write_shopping(tmp_path)
    with open(tmp_path / "Attributes/color.txt", "a") as f:
        f.write(f"Male/1_Coats/0000097_13.jpg {bad}\n")
    with pytest.raises(
        ManifestError, match=r"color.txt: line 6: color code .* is not a value code"
    ):
        read_shopping100k(str(tmp_path))


def test_shopping100k_paths_inside_accepted_escaping_refused(tmp_path):
    write_shopping(tmp_path)
    write_text(
        tmp_path,
        "Attributes/category.txt",
        ["Male/../../Images/Male/1_Coats/0000095_13.jpg 1", "Images/Male/1_Coats/0000096_13.jpg 1"],
    )
    rows, _ = read_shopping100k(str(tmp_path), fam_eval_size=0)
    assert by_path(rows)["Images/Male/1_Coats/0000095_13.jpg"]["shape"] == "coat"
    write_text(tmp_path, "Attributes/category.txt", ["Male/../../../x.jpg 1"])
    with pytest.raises(ManifestError, match=r"category.txt: line 1: image path .* escapes"):
        read_shopping100k(str(tmp_path))


def test_shopping100k_category_file_absent_uses_folders(tmp_path):
    write_shopping(tmp_path)
    os.remove(tmp_path / "Attributes/category.txt")
    rows, _ = read_shopping100k(str(tmp_path), fam_eval_size=0)
    assert by_path(rows)["Images/Female/4_Dresses/0000301_2.jpg"]["shape"] == "dress"


def test_shopping100k_fam_eval_and_manifest(tmp_path):
    write_shopping(tmp_path)
    rows, _ = read_shopping100k(str(tmp_path), top_n=2, fam_eval_size=2, seed=1, code_table=NAMED)
    fam = [r for r in rows if r["split"] == "fam_eval"]
    assert len(fam) == 2 and all(r["shape"] and r["color"] and r["pattern"] for r in fam)
    out = tmp_path / "manifest.csv"
    build_manifest(
        "shopping100k", str(tmp_path), str(out), top_n=2, fam_eval_size=2, seed=1, code_table=NAMED
    )
    assert read_manifest(str(out)).has_role("fam_query").sum() == 2


def test_shopping100k_errors(tmp_path):
    write_shopping(tmp_path)
    with open(tmp_path / "Attributes/color.txt", "a") as f:
        f.write("Male/1_Coats/0000097_13.jpg\n")
    with pytest.raises(ManifestError, match=r"color.txt: line 6: expected 2 fields"):
        read_shopping100k(str(tmp_path))
    (tmp_path / "Attributes/color.txt").write_bytes(b"Male/x.jpg \xff\n")
    with pytest.raises(ManifestError, match=r"color.txt: line 1: not UTF-8"):
        read_shopping100k(str(tmp_path))
    os.remove(tmp_path / "Attributes/pattern.txt")
    with pytest.raises(FileNotFoundError, match="pattern.txt"):
        read_shopping100k(str(tmp_path), field_map={"color": None})
    with pytest.raises(FileNotFoundError, match="Attributes"):
        read_shopping100k(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="Unknown attribute type for source field 'category'"):
        read_shopping100k(str(tmp_path), field_map={"category": "shap"})
    with pytest.raises(ValueError, match="both map to attribute type 'color'"):
        read_shopping100k(str(tmp_path), field_map={"collar": "color"})
    with pytest.raises(ValueError, match="Unknown pattern value"):
        read_shopping100k(str(tmp_path), class_table={"pattern": {"print": "paisley"}})
    with pytest.raises(ValueError, match=r"expected code"):
        read_shopping100k(str(tmp_path), code_table={"fields": {"color": {"codes": {"x": "Red"}}}})


def test_shopping100k_images_missing_names_where_it_looked(tmp_path):
    write_shopping(tmp_path)
    shutil.rmtree(tmp_path / "Images")
    with pytest.raises(ManifestError, match=r"no images read.*Looked for .* under .*Images/"):
        read_shopping100k(str(tmp_path))


# ------------------------------------------------------------------------------------------ DARN
# DARN's reader tests (ASEN++ layout, real label lines, error paths) are in tests/test_darn.py.


@pytest.fixture
def darn_dir(tmp_path):
    """30 DARN images in the ASEN++ layout, 29 labelled (category, color, pattern), 1 not."""
    names = [f"pic/{i:03d}.jpg" for i in range(30)]
    write_text(tmp_path, "filenames_train.txt", names)
    write_text(
        tmp_path, "label_train.txt", [f"{i}\t0\t{i % 2}\t2\t{i % 3}\t4\t{i % 3}" for i in range(29)]
    )
    write_jpegs(tmp_path, names)
    return tmp_path


# ---------------------------------------------------------------------------- shared and CLI


def test_map_top_classes_contested_canonical_goes_to_fallback():
    # 'gray' (table) and 'grey' (same name) both claim grey: the more frequent keeps it.
    mapping = classes.map_top_classes(
        {"grey": 5, "gray": 3, "teal": 2}, "color", 3, {"gray": "grey"}
    )
    assert mapping == {"grey": "grey", "gray": "black", "teal": "white"}
    with pytest.raises(ValueError, match="top_n must be in"):
        classes.map_top_classes({"grey": 1}, "color", 11, {})


def test_cli_smoke_and_readers_import_no_tensorflow(darn_dir):
    """Smoke test of `python -m flam_tf.data.readers`, run in a fresh interpreter."""
    out = darn_dir / "manifest.csv"
    env = dict(os.environ, PYTHONPATH=REPO)
    script = (
        "import sys, runpy; sys.argv = ['readers'] + sys.argv[1:]\n"
        "try:\n    runpy.run_module('flam_tf.data.readers', run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'tensorflow' not in sys.modules, 'readers must not import tensorflow'\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "--source",
            "darn",
            "--data_dir",
            str(darn_dir),
            "--out",
            str(out),
            "--top_n",
            "3",
            "--fam_eval_size",
            "4",
            "--seed",
            "3",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Wrote 30 rows" in result.stdout
    manifest = read_manifest(str(out))
    assert len(manifest.split("fam_eval")) == 4


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, "-m", "flam_tf.data.readers", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_bad_input_is_one_line_exit_2_and_verbose_traceback(tmp_path):
    write_shopping(tmp_path)
    with open(tmp_path / "Attributes/color.txt", "a") as f:
        f.write("Male/1_Coats/0000097_13.jpg 99x\n")
    args = (
        "--source",
        "shopping100k",
        "--data_dir",
        str(tmp_path),
        "--out",
        str(tmp_path / "manifest.csv"),
    )
    result = run_cli(*args)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "color.txt: line 6: color code '99x' is not a value code" in errors[0]
    verbose = run_cli(*args, "--verbose")
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr
    missing = run_cli(
        "--source",
        "deepfashion_inshop",
        "--data_dir",
        str(tmp_path / "no"),
        "--out",
        str(tmp_path / "m.csv"),
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "Eval/list_eval_partition.txt" in missing.stderr


def test_cli_class_table_and_summary(tmp_path):
    write_shopping(tmp_path)
    table = tmp_path / "codes.json"
    table.write_text(json.dumps(NAMED))
    result = run_cli(
        "--source",
        "shopping100k",
        "--data_dir",
        str(tmp_path),
        "--out",
        str(tmp_path / "manifest.csv"),
        "--fam_eval_size",
        "0",
        "--class_table",
        str(table),
    )
    assert result.returncode == 0, result.stderr
    assert (
        "color classes (source -> canonical): {'Black': 'black', 'Navy': 'navy'}" in result.stdout
    )
    assert "Summary:" in result.stdout  # Olive and Tracksuit_Bottoms: no canonical class
    assert "1 color labels outside the kept top-N classes set to missing" in result.stdout
    table.write_text("{not json")
    bad = run_cli(
        "--source",
        "shopping100k",
        "--data_dir",
        str(tmp_path),
        "--out",
        str(tmp_path / "manifest.csv"),
        "--class_table",
        str(table),
    )
    assert bad.returncode == 2 and "codes.json: line 1: not JSON" in bad.stderr


def test_class_table_options_name_the_right_reader_option(tmp_path):
    darn = tmp_path / "darn.json"
    darn.write_text('\ufeff{"shape": {"3": "dress"}}', encoding="utf-8")
    assert readers.class_table_options("darn", str(darn)) == {
        "class_table": {"shape": {"3": "dress"}}
    }
    codes = tmp_path / "codes.json"
    codes.write_text('{"fields": {"color": {"num_values": 19, "codes": {"0": "Black"}}}}')
    assert set(readers.class_table_options("shopping100k", str(codes))) == {"code_table"}
    with pytest.raises(ValueError, match="shopping100k and darn only"):
        readers.class_table_options("deepfashion_inshop", str(darn))
    broken = tmp_path / "broken.json"
    broken.write_text('{"shape": ')
    with pytest.raises(ValueError, match=r"broken.json: line 1: not valid JSON"):
        readers.class_table_options("darn", str(broken))
    from flam_tf import config as config_lib

    config = config_lib.get_preset("smoke")
    config.data.class_table = str(darn)
    with pytest.raises(ValueError, match="applies to a darn or shopping100k attribute_source"):
        config.validate()
    config.data.attribute_source, config.data.extractor_source = "darn", "deepfashion_inshop"
    config.data.attribute_data_dir = config.data.extractor_data_dir = str(tmp_path)
    config.validate()
    config.data.class_table = str(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="no such file"):
        config.validate()
