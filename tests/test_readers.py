"""Data set readers: tiny fixture trees in the published layouts -> manifest rows, and bad input."""

import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from flam_tf.data.manifest import ManifestError, read_manifest
from flam_tf.data.readers import (build_manifest, read_darn, read_deepfashion_c2s,
                                  read_deepfashion_inshop, read_shopping100k)
from flam_tf.data.readers import common

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
    write_text(root, "list_eval_partition.txt",
               [str(len(entries) if count is None else count), header] + entries)


def by_path(rows):
    return {r["path"]: r for r in rows}


# ------------------------------------------------------------------------- DeepFashion In-shop

INSHOP_HEADER = "image_name item_id evaluation_status"


@pytest.fixture
def inshop_dir(tmp_path):
    entries = [
        "img/WOMEN/Dresses/id_00000001/01_1_front.jpg id_00000001 train",
        "img/WOMEN/Dresses/id_00000001/01_2_side.jpg id_00000001 train",
        "img/MEN/Denim/id_00000002/02_1_front.jpg id_00000002 query",
        "img/MEN/Denim/id_00000002/02_2_side.jpg id_00000002 gallery",
        "img/MEN/Denim/id_00000002/02_3_back.jpg   id_00000002   gallery",
    ]
    write_partition(tmp_path, INSHOP_HEADER, entries)
    write_jpegs(tmp_path, [e.split()[0] for e in entries])
    return tmp_path


def test_inshop_splits_roles_and_manifest_round_trip(inshop_dir):
    rows, stats = read_deepfashion_inshop(str(inshop_dir))
    rows = by_path(rows)
    assert len(rows) == 5
    front = rows["img/WOMEN/Dresses/id_00000001/01_1_front.jpg"]
    assert (front["split"], front["role"], front["domain"]) == ("extractor_train", "", "shop")
    assert rows["img/MEN/Denim/id_00000002/02_1_front.jpg"]["role"] == "inshop_query"
    assert rows["img/MEN/Denim/id_00000002/02_3_back.jpg"]["role"] == "inshop_gallery"
    assert all(r[a] == "" for r in rows.values() for a in ("shape", "color", "pattern"))
    assert stats.rows_by_split == {"extractor_train": 2, "fir_eval": 3}

    out = inshop_dir / "manifest.csv"
    build_manifest("deepfashion_inshop", str(inshop_dir), str(out))
    manifest = read_manifest(str(out))
    assert len(manifest) == 5
    assert manifest.has_role("inshop_gallery").sum() == 2
    assert all(os.path.isfile(p) for p in manifest.absolute_paths())


def test_inshop_missing_image_is_counted_not_silent(inshop_dir):
    os.remove(inshop_dir / "img/MEN/Denim/id_00000002/02_2_side.jpg")
    rows, stats = read_deepfashion_inshop(str(inshop_dir))
    assert len(rows) == 4
    assert stats.skipped == {"image file not found": 1}
    assert stats.first_skipped["image file not found"].endswith("list_eval_partition.txt: line 6")
    rows, stats = read_deepfashion_inshop(str(inshop_dir), check_images=False)
    assert len(rows) == 5 and not stats.skipped
    shutil.rmtree(inshop_dir / "img")
    with pytest.raises(ManifestError, match=r"no images read; skipped \{'image file not found': 5"):
        read_deepfashion_inshop(str(inshop_dir))


@pytest.mark.parametrize("entry, message", [
    ("img/a.jpg id_1", r"line 3: expected 3 fields"),
    ("img/a.jpg id_1 validation", r"line 3: unknown evaluation status 'validation'"),
    ("../outside/a.jpg id_1 train", r"line 3: image path '../outside/a.jpg' escapes"),
    ("img/../../a.jpg id_1 train", r"line 3: image path .* escapes"),
    ("/etc/a.jpg id_1 train", r"line 3: absolute image path '/etc/a.jpg'"),
])
def test_inshop_bad_lines_name_file_and_line(tmp_path, entry, message):
    write_partition(tmp_path, INSHOP_HEADER, [entry])
    with pytest.raises(ManifestError, match=r"list_eval_partition.txt: " + message):
        read_deepfashion_inshop(str(tmp_path), check_images=False)


def test_inshop_missing_file_and_bad_count(tmp_path):
    with pytest.raises(FileNotFoundError, match="list_eval_partition.txt"):
        read_deepfashion_inshop(str(tmp_path))
    write_partition(tmp_path, INSHOP_HEADER, ["img/a.jpg id_1 train"], count=2)
    with pytest.raises(ManifestError, match="line 1 declares 2 entries but the file has 1"):
        read_deepfashion_inshop(str(tmp_path), check_images=False)


def test_instance_in_two_splits_is_an_error(tmp_path):
    write_partition(tmp_path, INSHOP_HEADER, ["img/a.jpg id_1 train", "img/b.jpg id_1 query"])
    with pytest.raises(ManifestError, match="instance 'id_1' appears in splits"):
        read_deepfashion_inshop(str(tmp_path), check_images=False)


# ---------------------------------------------------------------- DeepFashion Consumer-to-shop

C2S_HEADER = "image_pair_name_1 image_pair_name_2 item_id evaluation_status"


def test_c2s_dedup_domains_and_roles(tmp_path):
    entries = [
        "img/TOPS/id_1/comsumer_01.jpg img/TOPS/id_1/shop_01.jpg id_1 train",
        "img/TOPS/id_1/comsumer_02.jpg img/TOPS/id_1/shop_01.jpg id_1 train",
        "img/TOPS/id_2/comsumer_01.jpg img/TOPS/id_2/shop_01.jpg id_2 test",
        "img/TOPS/id_2/comsumer_01.jpg img/TOPS/id_2/shop_02.jpg id_2 test",
        "img/TOPS/id_2/comsumer_02.jpg img/TOPS/id_2/shop_01.jpg id_2 test",
        "img/TOPS/id_3/comsumer_01.jpg img/TOPS/id_3/shop_01.jpg id_3 val",
    ]
    write_partition(tmp_path, C2S_HEADER, entries)
    write_jpegs(tmp_path, {p for e in entries for p in e.split()[:2]})
    rows, stats = read_deepfashion_c2s(str(tmp_path))
    rows = by_path(rows)
    assert len(rows) == 9  # 12 image mentions, 3 repeats merged
    assert stats.merged == 3
    train_shop = rows["img/TOPS/id_1/shop_01.jpg"]
    assert (train_shop["split"], train_shop["domain"], train_shop["role"]) == (
        "extractor_train", "shop", "")
    assert rows["img/TOPS/id_1/comsumer_02.jpg"]["domain"] == "street"
    queries = {p for p, r in rows.items() if r["role"] == "c2s_query"}
    gallery = {p for p, r in rows.items() if r["role"] == "c2s_gallery"}
    assert queries == {"img/TOPS/id_2/comsumer_01.jpg", "img/TOPS/id_2/comsumer_02.jpg",
                       "img/TOPS/id_3/comsumer_01.jpg"}
    assert gallery == {"img/TOPS/id_2/shop_01.jpg", "img/TOPS/id_2/shop_02.jpg",
                       "img/TOPS/id_3/shop_01.jpg"}
    assert all(rows[p]["domain"] == "street" for p in queries)
    assert all(rows[p]["split"] == "fir_eval" and rows[p]["domain"] == "shop" for p in gallery)


def test_c2s_image_in_two_splits_is_an_error(tmp_path):
    write_partition(tmp_path, C2S_HEADER, ["img/c.jpg img/s.jpg id_1 train",
                                           "img/c.jpg img/t.jpg id_2 test"])
    with pytest.raises(ManifestError, match=r"line 4: image 'img/c.jpg' contradicts .* line 3"):
        read_deepfashion_c2s(str(tmp_path), check_images=False)


def test_c2s_malformed_line(tmp_path):
    write_partition(tmp_path, C2S_HEADER, ["img/c.jpg img/s.jpg id_1 train",
                                           "img/c.jpg img/s.jpg train"])
    with pytest.raises(ManifestError, match=r"line 4: expected 4 fields"):
        read_deepfashion_c2s(str(tmp_path), check_images=False)


# -------------------------------------------------------------------------------- Shopping100k

SHOPPING_LABELS = {  # image -> (category, color, pattern); -1 = missing in the source
    "Male/1_Coats/0000001_1.jpg": ("T-shirt", "Black", "Plain"),
    "Male/1_Coats/0000002_1.jpg": ("T-shirt", "Black", "Plain"),
    "Male/1_Coats/0000003_1.jpg": ("T-shirt", "Olive", "Print"),
    "Female/2_Dresses/0000004_1.jpg": ("Dress", "Olive", "Plain"),
    "Female/2_Dresses/0000005_1.jpg": ("Dress", "Black", "-1"),
    "Female/2_Dresses/0000006_1.jpg": ("Tracksuit_Bottoms", "Beige", "Print"),
    "Female/2_Dresses/0000007_1.jpg": ("-1", "-1", "-1"),
}


@pytest.fixture
def shopping_dir(tmp_path):
    write_jpegs(tmp_path / "Images", SHOPPING_LABELS)
    for i, field in enumerate(("category", "color", "pattern")):
        write_text(tmp_path, f"Attributes/{field}.txt",
                   [f"{p} {labels[i]}" for p, labels in SHOPPING_LABELS.items()])
    write_text(tmp_path, "Attributes/collar.txt", [f"{p} Round" for p in SHOPPING_LABELS])
    return tmp_path


def test_shopping100k_top_n_mapping_and_missing(shopping_dir):
    rows, stats = read_shopping100k(str(shopping_dir), top_n=2, fam_eval_size=0)
    # Top-2 by image count; ties in count broken by name. Olive has no natural match: it takes
    # the first canonical color not already used (black is), i.e. white. Print likewise -> striped.
    assert stats.class_maps == {
        "shape": {"T-shirt": "t-shirt", "Dress": "dress"},
        "color": {"Black": "black", "Olive": "white"},
        "pattern": {"Plain": "solid", "Print": "striped"},
    }
    assert stats.labels_dropped == {"shape": 1, "color": 1, "pattern": 0}
    rows = by_path(rows)
    first = rows["Images/Male/1_Coats/0000001_1.jpg"]
    assert (first["shape"], first["color"], first["pattern"]) == ("t-shirt", "black", "solid")
    assert (first["domain"], first["instance_id"], first["split"]) == (
        "shop", "Male/1_Coats/0000001_1", "attribute_train")
    outside = rows["Images/Female/2_Dresses/0000006_1.jpg"]  # shape and color outside top-2
    assert (outside["shape"], outside["color"], outside["pattern"]) == ("", "", "striped")
    assert rows["Images/Female/2_Dresses/0000007_1.jpg"]["split"] == "unlabelled"


def test_shopping100k_class_table_override_and_fam_eval(shopping_dir):
    rows, stats = read_shopping100k(str(shopping_dir), top_n=2, fam_eval_size=3, seed=1,
                                    class_table={"color": {"olive": "green"}})
    assert stats.class_maps["color"]["Olive"] == "green"
    fam = [r for r in rows if r["split"] == "fam_eval"]
    # Dense after mapping: images 1-4 only; 3 of them are sampled.
    assert len(fam) == 3 and all(r["shape"] and r["color"] and r["pattern"] for r in fam)
    assert {r["role"] for r in fam} == {"fam_query;fam_gallery"}
    out = shopping_dir / "manifest.csv"
    build_manifest("shopping100k", str(shopping_dir), str(out), top_n=2, fam_eval_size=3, seed=1)
    manifest = read_manifest(str(out))
    assert manifest.has_role("fam_query").sum() == 3
    assert sorted(manifest.split("fam_eval")["path"]) == sorted(r["path"] for r in fam)


def test_shopping100k_errors(shopping_dir):
    with open(shopping_dir / "Attributes/color.txt", "a") as f:
        f.write("Male/1_Coats/0000008_1.jpg Black extra\n")
    with pytest.raises(ManifestError, match=r"color.txt: line 8: expected 2 fields"):
        read_shopping100k(str(shopping_dir))
    os.remove(shopping_dir / "Attributes/pattern.txt")
    with pytest.raises(FileNotFoundError, match="pattern.txt"):
        read_shopping100k(str(shopping_dir), field_map={"color": None})
    with pytest.raises(ValueError, match="Unknown attribute type for source field 'category'"):
        read_shopping100k(str(shopping_dir), field_map={"category": "shap"})
    with pytest.raises(ValueError, match="both map to attribute type 'color'"):
        read_shopping100k(str(shopping_dir), field_map={"collar": "color"})
    with pytest.raises(ValueError, match="Unknown pattern value"):
        read_shopping100k(str(shopping_dir), class_table={"pattern": {"print": "paisley"}})


# ------------------------------------------------------------------------------------------ DARN

DARN_COLORS = ("black", "red", "rose_red")
DARN_PATTERNS = ("solid_color", "flower", "abstract")


@pytest.fixture
def darn_dir(tmp_path):
    """30 images: 24 densely labelled, 6 with sparse or no labels; fid 029 has no label line."""
    labels, images = [], []
    for i in range(30):
        fid = f"{i:03d}"
        images.append(f"{fid} images/{fid}.jpg")
        if i == 29:
            continue
        category = "hoodies" if i % 2 else "sweater"
        color = DARN_COLORS[i % 3] if i < 24 else "-1"
        pattern = DARN_PATTERNS[i % 3] if i < 26 else "-1"
        labels.append(f"{fid} clothes_category {category} clothes_color {color} "
                      f"clothes_pattern {pattern} sleeve_length long")
    labels.append("999 clothes_category sweater")  # labelled fid without an image
    write_text(tmp_path, "label_train.txt", labels)
    write_text(tmp_path, "filename_train.txt", images)
    write_jpegs(tmp_path, [f"images/{i:03d}.jpg" for i in range(30)])
    return tmp_path


def test_darn_mapping_fam_sampling_and_counts(darn_dir):
    rows, stats = read_darn(str(darn_dir), top_n=3, fam_eval_size=5, seed=7)
    assert stats.class_maps["shape"] == {"hoodies": "hoodie", "sweater": "sweater"}
    assert stats.class_maps["pattern"] == {"abstract": "striped", "flower": "floral",
                                           "solid_color": "solid"}
    assert stats.class_maps["color"]["rose_red"] == "white"  # first unused canonical color
    assert stats.skipped == {"labelled fid missing from the image lists": 1}
    rows = by_path(rows)
    assert len(rows) == 30
    first = rows["images/000.jpg"]
    assert (first["instance_id"], first["domain"]) == ("000", "street")
    assert (first["shape"], first["color"], first["pattern"]) == ("sweater", "black", "solid")
    assert rows["images/029.jpg"]["split"] == "unlabelled"
    fam = {p for p, r in rows.items() if r["split"] == "fam_eval"}
    assert len(fam) == 5 and fam <= {f"images/{i:03d}.jpg" for i in range(24)}
    assert {r["role"] for r in rows.values() if r["split"] == "attribute_train"} == {""}
    # Deterministic by seed; another seed draws another sample.
    again, _ = read_darn(str(darn_dir), top_n=3, fam_eval_size=5, seed=7)
    assert {r["path"] for r in again if r["split"] == "fam_eval"} == fam
    other, _ = read_darn(str(darn_dir), top_n=3, fam_eval_size=5, seed=8)
    assert {r["path"] for r in other if r["split"] == "fam_eval"} != fam


def test_darn_top_n_makes_rare_labels_missing(darn_dir):
    rows, stats = read_darn(str(darn_dir), top_n=2, fam_eval_size=0)
    assert set(stats.class_maps["color"]) == {"black", "red"}
    assert stats.labels_dropped["color"] == 8  # rose_red: i % 3 == 2 for i < 24
    rose = by_path(rows)["images/002.jpg"]
    assert rose["color"] == "" and rose["shape"] == "sweater"


@pytest.mark.parametrize("line, error, message", [
    ("000 clothes_category sweater clothes_colour red", ManifestError,
     r"label_train.txt: line 2: unknown attribute field 'clothes_colour'"),
    ("000 clothes_category sweater clothes_color", ManifestError,
     r"label_train.txt: line 2: expected <fid> followed by <field> <value> pairs, got 4"),
    ("000 clothes_color red clothes_color black", ManifestError,
     r"label_train.txt: line 2: a field appears twice"),
])
def test_darn_bad_label_lines(tmp_path, line, error, message):
    write_text(tmp_path, "filename_train.txt", ["000 images/000.jpg"])
    write_text(tmp_path, "label_train.txt", ["001 clothes_color red", line])
    with pytest.raises(error, match=message):
        read_darn(str(tmp_path), check_images=False)


def test_darn_bad_image_lists(tmp_path):
    write_text(tmp_path, "label_train.txt", ["000 clothes_color red"])
    with pytest.raises(FileNotFoundError, match=r"filename\*.txt"):
        read_darn(str(tmp_path))
    write_text(tmp_path, "filename_train.txt", ["000 ../../etc/passwd"])
    with pytest.raises(ManifestError, match=r"filename_train.txt: line 1: .* escapes"):
        read_darn(str(tmp_path))
    write_text(tmp_path, "filename_train.txt", ["000 images/a.jpg", "001 images/a.jpg"])
    with pytest.raises(ManifestError, match=r"line 2: image 'images/a.jpg' listed for fid '001'"):
        read_darn(str(tmp_path))


# ---------------------------------------------------------------------------- shared and CLI

def test_map_top_classes_contested_canonical_goes_to_fallback():
    # 'gray' (table) and 'grey' (same name) both claim grey: the more frequent keeps it.
    mapping = common.map_top_classes({"grey": 5, "gray": 3, "teal": 2}, "color", 3,
                                     {"gray": "grey"})
    assert mapping == {"grey": "grey", "gray": "black", "teal": "white"}
    with pytest.raises(ValueError, match="top_n must be in"):
        common.map_top_classes({"grey": 1}, "color", 11, {})


def test_cli_smoke_and_readers_import_no_tensorflow(darn_dir):
    """Smoke test of `python -m flam_tf.data.readers`, run in a fresh interpreter."""
    out = darn_dir / "manifest.csv"
    env = dict(os.environ, PYTHONPATH=REPO)
    script = ("import sys, runpy; sys.argv = ['readers'] + sys.argv[1:]\n"
              "try:\n    runpy.run_module('flam_tf.data.readers', run_name='__main__')\n"
              "except SystemExit as e:\n    assert not e.code, e.code\n"
              "assert 'tensorflow' not in sys.modules, 'readers must not import tensorflow'\n")
    result = subprocess.run(
        [sys.executable, "-c", script, "--source", "darn", "--data_dir", str(darn_dir),
         "--out", str(out), "--top_n", "3", "--fam_eval_size", "4", "--seed", "3"],
        env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Wrote 30 rows" in result.stdout
    manifest = read_manifest(str(out))
    assert len(manifest.split("fam_eval")) == 4
