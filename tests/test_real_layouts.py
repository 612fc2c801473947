"""The main job, `python -m flam_tf.train`, end to end on tiny trees in the real release layouts:
Shopping100k (`Images/<Gender>/<n>_<Category>/<file>.jpg`, `Attributes/<field>.txt` with integer
value codes) as the attribute source and DeepFashion In-shop (`Eval/list_eval_partition.txt`,
`Img/img/...`) as the extractor source, with generated pixels: data -> report -> export. And what
the job says when Shopping100k's color / pattern codes are left unnamed (no class table).

Annotation lines:
  * In-shop: image names, item ids and statuses of the release's Eval/list_eval_partition.txt as
    listed, one file per status, in GitHub czla/cloth-image-retrieval `data/InShop/train.txt`,
    `query.txt`, `gallery.txt` (written from the release's partition file by that repository's
    `data/InShop/data_generate.py`); each of our partition lines is `<image> <item_id> <status>`
    rebuilt from them (the release's own line format, see mmpretrain `mmpretrain/datasets/
    inshop.py` and open-mmlab/mmfashion `docs/dataset/IN_SHOP_DATASET.md`).
  * Shopping100k: the line format `Male/1_Coats/0000095_13.jpg 1` (a line of the release's own
    Attributes/*.txt, quoted in the bug report against the reader; paths relative to `Images/`),
    field files as listed by ADDE (GitHub amzn/fashion-attribute-disentanglement, README
    "Preparing Support Files"). Only `Male/1_Coats/` is a quoted folder; the other category
    folders and the file numbers follow its pattern. No published source names the codes, so the
    code -> name table below is the test's own (what a user passes with --data_class_table).
"""

import json
import os
import subprocess
import sys
import time

import pytest
from PIL import Image

from flam_tf.data.manifest import ManifestError
from flam_tf.data.readers import read_deepfashion_inshop, read_shopping100k

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ----------------------------------------------------------------------------- DeepFashion In-shop
# item id -> {status: [image names]}, from czla/cloth-image-retrieval data/InShop/{train,query,
# gallery}.txt (first lines of each).
INSHOP_ITEMS = {
    "id_00000002": {
        "train": [
            "img/WOMEN/Dresses/id_00000002/02_4_full.jpg",
            "img/WOMEN/Dresses/id_00000002/02_1_front.jpg",
            "img/WOMEN/Dresses/id_00000002/02_7_additional.jpg",
            "img/WOMEN/Dresses/id_00000002/02_2_side.jpg",
        ]
    },
    "id_00000003": {
        "train": [
            "img/WOMEN/Skirts/id_00000003/02_2_side.jpg",
            "img/WOMEN/Skirts/id_00000003/02_1_front.jpg",
            "img/WOMEN/Skirts/id_00000003/02_7_additional.jpg",
            "img/WOMEN/Skirts/id_00000003/02_4_full.jpg",
            "img/WOMEN/Skirts/id_00000003/02_3_back.jpg",
        ]
    },
    "id_00000004": {
        "train": [
            "img/WOMEN/Blouses_Shirts/id_00000004/05_1_front.jpg",
            "img/WOMEN/Blouses_Shirts/id_00000004/03_1_front.jpg",
            "img/WOMEN/Blouses_Shirts/id_00000004/03_3_back.jpg",
            "img/WOMEN/Blouses_Shirts/id_00000004/05_7_additional.jpg",
        ]
    },
    "id_00000005": {
        "train": [
            "img/WOMEN/Blouses_Shirts/id_00000005/02_1_front.jpg",
            "img/WOMEN/Blouses_Shirts/id_00000005/02_2_side.jpg",
            "img/WOMEN/Blouses_Shirts/id_00000005/02_7_additional.jpg",
            "img/WOMEN/Blouses_Shirts/id_00000005/02_4_full.jpg",
        ]
    },
    "id_00000006": {
        "train": [
            "img/MEN/Sweatshirts_Hoodies/id_00000006/02_6_flat.jpg",
            "img/MEN/Sweatshirts_Hoodies/id_00000006/02_1_front.jpg",
            "img/MEN/Sweatshirts_Hoodies/id_00000006/01_7_additional.jpg",
            "img/MEN/Sweatshirts_Hoodies/id_00000006/02_7_additional.jpg",
        ]
    },
    "id_00000001": {
        "query": [
            "img/WOMEN/Blouses_Shirts/id_00000001/02_2_side.jpg",
            "img/WOMEN/Blouses_Shirts/id_00000001/02_4_full.jpg",
        ],
        "gallery": [
            "img/WOMEN/Blouses_Shirts/id_00000001/02_1_front.jpg",
            "img/WOMEN/Blouses_Shirts/id_00000001/02_3_back.jpg",
        ],
    },
    "id_00000007": {
        "query": [
            "img/WOMEN/Tees_Tanks/id_00000007/01_4_full.jpg",
            "img/WOMEN/Tees_Tanks/id_00000007/01_2_side.jpg",
        ],
        "gallery": [
            "img/WOMEN/Tees_Tanks/id_00000007/01_3_back.jpg",
            "img/WOMEN/Tees_Tanks/id_00000007/01_1_front.jpg",
        ],
    },
    "id_00000008": {
        "query": ["img/WOMEN/Dresses/id_00000008/02_7_additional.jpg"],
        "gallery": ["img/WOMEN/Dresses/id_00000008/02_3_back.jpg"],
    },
}
INSHOP_HEADER = "image_name item_id evaluation_status"


def inshop_lines():
    return [
        f"{image} {item} {status}"
        for item, by_status in INSHOP_ITEMS.items()
        for status, images in by_status.items()
        for image in images
    ]


def jpeg(path, rgb):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (16, 16), rgb).save(path, "JPEG")


def write_inshop_release(root):
    """In-shop in the release layout: Eval/list_eval_partition.txt and Img/img/... (generated
    pixels, one shade per item)."""
    lines = inshop_lines()
    os.makedirs(os.path.join(root, "Eval"), exist_ok=True)
    with open(os.path.join(root, "Eval", "list_eval_partition.txt"), "w") as f:
        f.write("\n".join([str(len(lines)), INSHOP_HEADER, *lines]) + "\n")
    for i, item in enumerate(INSHOP_ITEMS):
        for images in INSHOP_ITEMS[item].values():
            for image in images:
                shade = 30 * i
                jpeg(os.path.join(root, "Img", image), (shade, 255 - shade, 90))
    return root


# ----------------------------------------------------------------------------------- Shopping100k
REAL_SHOPPING_LINE = "Male/1_Coats/0000095_13.jpg 1"
FOLDERS = ("Male/1_Coats", "Female/4_Dresses", "Male/7_Shirts")  # category code 0, 1, 2
COLORS = {0: (20, 20, 20), 1: (220, 30, 30), 2: (30, 30, 120)}  # code -> generated pixel
# The test's own code table, in the format of flam_tf/data/readers/shopping100k_codes.json.
CLASS_TABLE = {
    "fields": {
        "category": {"codes": {"0": "Coats", "1": "Dresses", "2": "Shirts"}},
        "color": {"codes": {"0": "Black", "1": "Red", "2": "Navy"}},
        "pattern": {"codes": {"0": "Plain", "1": "Striped"}},
    }
}


def shopping_codes(num_images):
    """image path under Images/ -> (category, color, pattern) codes; image 0 is the quoted one."""
    codes = {}
    for i in range(num_images):
        category, color, pattern = i % 3, (i // 3) % 3, (i // 9) % 2
        codes[f"{FOLDERS[category]}/{95 + i:07d}_13.jpg"] = (category, color, pattern)
    return codes


def write_shopping_release(root, num_images=54):
    """Shopping100k in the release layout: Images/<Gender>/<n>_<Category>/*.jpg and
    Attributes/<field>.txt, one `<path under Images/> <code>` line per image (plus the real unused
    fields sleevelen and gender, which the reader must skip)."""
    codes = shopping_codes(num_images)
    os.makedirs(os.path.join(root, "Attributes"), exist_ok=True)
    fields = {"category": 0, "color": 1, "pattern": 2}
    for field, index in fields.items():
        with open(os.path.join(root, "Attributes", f"{field}.txt"), "w") as f:
            f.writelines(f"{path} {c[index]}\n" for path, c in codes.items())
    for field in ("sleevelen", "gender"):
        with open(os.path.join(root, "Attributes", f"{field}.txt"), "w") as f:
            f.writelines(f"{path} {int(path.startswith('Female'))}\n" for path in codes)
    for path, (category, color, pattern) in codes.items():
        rgb = COLORS[color]
        jpeg(
            os.path.join(root, "Images", path),
            (rgb[0], rgb[1] + 40 * category, rgb[2] + 60 * pattern),
        )
    return codes


def write_class_table(path):
    with open(path, "w") as f:
        json.dump(CLASS_TABLE, f)
    return str(path)


def run_train(tmp_path, *extra, run_dir="run", timeout=300):
    """`python -m flam_tf.train --preset=smoke` on the two trees, smoke-sized."""
    run_dir = tmp_path / run_dir
    start = time.time()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flam_tf.train",
            "--preset=smoke",
            f"--run_dir={run_dir}",
            "--data_extractor_source=deepfashion_inshop",
            f"--data_extractor_data_dir={tmp_path / 'inshop'}",
            "--data_attribute_source=shopping100k",
            f"--data_attribute_data_dir={tmp_path / 'shopping100k'}",
            "--data_fam_eval_size=12",
            "--data_top_n_classes=3",
            "--extractor_instances_per_batch=4",
            "--extractor_images_per_instance=2",
            "--extractor_steps_per_epoch=2",
            "--baselines_pixel_epochs=0",
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    return result, run_dir, time.time() - start


@pytest.fixture
def trees(tmp_path):
    write_inshop_release(str(tmp_path / "inshop"))
    write_shopping_release(str(tmp_path / "shopping100k"))
    return tmp_path


# ------------------------------------------------------------------------------- the readers alone


def test_fixture_lines_are_the_real_formats():
    assert REAL_SHOPPING_LINE.split()[0] in shopping_codes(1)
    for line in inshop_lines():
        image, item, status = line.split()
        assert (
            image.startswith("img/")
            and f"/{item}/" in image
            and status in ("train", "query", "gallery")
        )


def test_inshop_release_layout_reads(tmp_path):
    write_inshop_release(str(tmp_path))
    rows, stats = read_deepfashion_inshop(str(tmp_path))
    assert stats.rows_by_split == {"extractor_train": 21, "fir_eval": 10}
    assert all(r["path"].startswith("Img/img/") for r in rows)
    roles = {r["path"]: r["role"] for r in rows}
    assert roles["Img/img/WOMEN/Tees_Tanks/id_00000007/01_4_full.jpg"] == "inshop_query"
    assert roles["Img/img/WOMEN/Dresses/id_00000008/02_3_back.jpg"] == "inshop_gallery"


def test_shopping100k_release_layout_with_class_table(tmp_path):
    codes = write_shopping_release(str(tmp_path))
    rows, stats = read_shopping100k(
        str(tmp_path), top_n=3, fam_eval_size=12, code_table=CLASS_TABLE
    )
    by_path = {r["path"]: r for r in rows}
    first = by_path["Images/" + REAL_SHOPPING_LINE.split()[0]]
    assert (first["shape"], first["color"], first["pattern"]) == ("coat", "black", "solid")
    names = {
        "shape": ("coat", "dress", "shirt"),
        "color": ("black", "red", "navy"),
        "pattern": ("solid", "striped"),
    }
    for path, values in codes.items():  # every label is the one its code names
        row = by_path["Images/" + path]
        assert tuple(row[a] for a in names) == tuple(names[a][v] for a, v in zip(names, values)), (
            path
        )
    assert stats.rows_by_split == {"attribute_train": 42, "fam_eval": 12}
    assert not stats.skipped and not stats.labels_missing


def test_shopping100k_without_class_table_says_why_fam_eval_is_empty(tmp_path):
    write_shopping_release(str(tmp_path))
    rows, stats = read_shopping100k(str(tmp_path), fam_eval_size=0)  # no fam_eval asked: fine
    assert {r["color"] for r in rows} == {""} and {r["shape"] for r in rows} == {
        "coat",
        "dress",
        "shirt",
    }
    with pytest.raises(ManifestError) as error:
        read_shopping100k(str(tmp_path), fam_eval_size=12)
    message = str(error.value)
    assert "\n" not in message
    assert "fam_eval would be empty" in message
    assert "color.txt: line 1" in message  # where the first unnamed code is
    assert "class table" in message


def test_one_densely_labelled_image_is_too_few_for_fam_eval(tmp_path):
    write_shopping_release(str(tmp_path), num_images=9)  # colors 0, 0, 0, 1, 1, 1, 2, 2, 2
    only = {"fields": {"color": {"codes": {"0": "Black"}}, "pattern": {"codes": {"0": "Plain"}}}}
    rows, _ = read_shopping100k(str(tmp_path), top_n=1, fam_eval_size=0, code_table=only)
    assert [r["path"] for r in rows if all(r[a] for a in ("shape", "color", "pattern"))] == [
        "Images/" + REAL_SHOPPING_LINE.split()[0]
    ]  # top-1 category Coats, Black, Plain
    with pytest.raises(
        ManifestError,
        match=r"shopping100k: fam_eval would be empty: 1 of 9 images "
        r"have all three labels .*color.txt: line 4 "
        r"\(color code with no published name\)",
    ):
        read_shopping100k(str(tmp_path), top_n=1, fam_eval_size=5, code_table=only)


def test_darn_without_dense_labels_is_the_same_error(tmp_path):
    from flam_tf.data.readers import read_darn

    names = [f"pic/{i:03d}.jpg" for i in range(6)]
    (tmp_path / "filenames_train.txt").write_text("\n".join(names) + "\n")
    # Category and color, never pattern (attributes 0, 2; pattern is attribute 4).
    (tmp_path / "label_train.txt").write_text(
        "".join(f"{i}\t0\t{i % 2}\t2\t{i % 3}\n" for i in range(6))
    )
    rows, _ = read_darn(str(tmp_path), fam_eval_size=0, check_images=False)
    assert len(rows) == 6
    with pytest.raises(
        ManifestError,
        match=r"^darn: fam_eval would be empty: 0 of 6 images .*"
        r"pattern 0",
    ):
        read_darn(str(tmp_path), fam_eval_size=3, check_images=False)


def run_readers_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "flam_tf.data.readers", *args],
        env={**os.environ, "PYTHONPATH": REPO},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_readers_cli_without_class_table_one_line_exit_2(tmp_path):
    write_shopping_release(str(tmp_path))
    args = (
        "--source",
        "shopping100k",
        "--data_dir",
        str(tmp_path),
        "--out",
        str(tmp_path / "manifest.csv"),
    )
    result = run_readers_cli(*args)  # default fam_eval_size 2000
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "fam_eval would be empty" in errors[0]
    assert "color.txt: line 1" in errors[0] and "--class_table FILE" in errors[0]
    assert not (tmp_path / "manifest.csv").exists()
    result = run_readers_cli(*args, "--fam_eval_size", "0")
    assert result.returncode == 0, result.stderr
    assert "Wrote 54 rows" in result.stdout
    table = write_class_table(tmp_path / "codes.json")
    result = run_readers_cli(*args, "--fam_eval_size", "12", "--class_table", table)
    assert result.returncode == 0, result.stderr
    assert "'fam_eval': 12" in result.stdout


# ---------------------------------------------------------------------------------- the main job


@pytest.mark.slow
def test_main_job_end_to_end_shopping100k_and_inshop(trees):
    """data -> report -> export on Shopping100k (codes named by --data_class_table) and In-shop,
    both in their release layouts (about 100 s on 2 CPU cores)."""
    table = write_class_table(trees / "codes.json")
    result, run_dir, elapsed = run_train(trees, f"--data_class_table={table}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
    stages = json.loads((run_dir / "stages.json").read_text())
    for stage in ("data", "extractor", "embedders", "manipulator", "evaluate", "export"):
        assert stage in stages, (stage, sorted(stages))
    report = json.loads((run_dir / "report.json").read_text())
    counts = report["num_queries"]
    assert counts["fam_gallery"] == 12 and counts["fam"] > 0
    assert all(counts["fam_per_attribute"][a] > 0 for a in ("shape", "color", "pattern"))
    for method in ("Identity", "FLAM"):
        figures = report["fam"][method]["all"]
        assert figures["num_queries"] == counts["fam"]
        assert all(0.0 <= figures[k] <= 1.0 for k in ("T@1", "T@10", "T@50"))
    assert "FLAM" in (run_dir / "report.md").read_text()
    assert (run_dir / "export").is_dir() and any((run_dir / "export").iterdir())
    manifest = (run_dir / "data" / "manifest.csv").read_text()
    assert "Male/1_Coats/0000095_13.jpg" in manifest and "Img/img/WOMEN/Dresses" in manifest
    print(f"end-to-end run on Shopping100k + In-shop took {elapsed:.0f} s")


def test_main_job_without_class_table_is_one_line_exit_2(trees):
    """No class table: Shopping100k's color and pattern codes stay unnamed, so no image has all
    three labels and FAM evaluation would be empty. The job must say so in one line, exit 2."""
    result, run_dir, _ = run_train(trees, run_dir="run_no_table", timeout=180)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-4000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith("flam_tf.train: error: shopping100k:")
    assert "fam_eval would be empty" in errors[0] and "--data_class_table" in errors[0]
    assert not (run_dir / "report.json").exists()
