"""ADDE's published attribute manipulation splits (GitHub amzn/fashion-attribute-disentanglement,
`splits/`): reading, T@k counted as ADDE's src/eval.py counts, query counts, and each error path.

The split files there are stored with git-lfs and no public mirror serves their lines, so the
fixtures below are written in the format that repository's README ("Preparing Support Files") and
loader (`src/dataloader.py`, `src/utils.py`) define; only the attr_num of Shopping100k,
`[16, 17, 19, 14, 10, 15, 2, 11, 16, 7, 9, 15]`, is real (quoted in that README).
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from flam_tf.data.manifest import ManifestError
from flam_tf.data.readers.adde_splits import read_adde_split
from flam_tf.evaluation.public_splits import adde_top_k_accuracy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOPPING_ATTR_NUM = [16, 17, 19, 14, 10, 15, 2, 11, 16, 7, 9, 15]  # ADDE README
CATEGORY, COLOR, PATTERN, GENDER = 0, 2, 8, 6
# Image labels as {attribute: value}; attributes left out are missing (all-zero block).
IMAGES = [
    {CATEGORY: 1, COLOR: 3, PATTERN: 0, GENDER: 0},  # 0
    {CATEGORY: 1, COLOR: 5, PATTERN: 0, GENDER: 0},  # 1: 0 with color 5
    {CATEGORY: 2, COLOR: 3, PATTERN: 0, GENDER: 0},  # 2: 0 with category 2
    {CATEGORY: 1, COLOR: 3, PATTERN: 4, GENDER: 0},  # 3: 0 with pattern 4
    {CATEGORY: 1, COLOR: 3, PATTERN: 0, GENDER: 1},  # 4: 0 with gender 1
    {CATEGORY: 1, COLOR: 5, PATTERN: 0},  # 5: like 1, gender missing
]
# (reference, attribute, target value, target image): ADDE's queries, gt = the target's labels.
QUERIES = [
    (0, COLOR, 5, 1),
    (0, CATEGORY, 2, 2),
    (0, PATTERN, 4, 3),
    (0, GENDER, 1, 4),
    (1, COLOR, 3, 0),
]


def onehot(labels, attr_num=SHOPPING_ATTR_NUM):
    row = []
    for a, n in enumerate(attr_num):
        block = [0] * n
        if a in labels:
            block[labels[a]] = 1
        row += block
    return row


def line(values):
    return " ".join(str(v) for v in values)


def write_split(
    root,
    name="Shopping100k",
    images=IMAGES,
    queries=QUERIES,
    newline="\n",
    encoding="utf-8",
    edit=None,
):
    """Writes the six ADDE test files; `edit(files)` may change their lines first."""
    directory = os.path.join(root, name)
    os.makedirs(directory, exist_ok=True)
    files = {
        "attr_num.txt": [str(n) for n in SHOPPING_ATTR_NUM],
        "imgs_test.txt": [f"Images/Female/{i}.jpg" for i in range(len(images))],
        "labels_test.txt": [line(onehot(labels)) for labels in images],
        "ref_test.txt": [str(q[0]) for q in queries],
        "indfull_test.txt": [
            line(np.subtract(onehot(images[t]), onehot(images[r]))) for r, _, _, t in queries
        ],
        "gt_test.txt": [line(onehot(images[t])) for _, _, _, t in queries],
    }
    if edit:
        edit(files)
    for file, lines in files.items():
        with open(os.path.join(directory, file), "w", encoding=encoding, newline="") as f:
            f.write(newline.join(lines) + newline)
    return directory


def test_read_maps_one_hot_rows_and_queries(tmp_path):
    split = read_adde_split(write_split(str(tmp_path), newline="\r\n", encoding="utf-8-sig"))
    assert split.attr_num.tolist() == SHOPPING_ATTR_NUM
    assert split.attribute_index == {"shape": 0, "color": 2, "pattern": 8}
    assert split.images[2] == "Images/Female/2.jpg"
    assert split.labels[0].tolist() == [1, -1, 3, -1, -1, -1, 0, -1, 0, -1, -1, -1]
    assert split.labels[5, GENDER] == -1
    assert split.ref.tolist() == [0, 0, 0, 0, 1]
    assert split.target_attribute.tolist() == [COLOR, CATEGORY, PATTERN, GENDER, COLOR]
    assert split.target_value.tolist() == [5, 2, 4, 1, 3]
    assert split.gt_labels[1].tolist() == split.labels[2].tolist()
    assert split.query_counts() == {
        "shape": 1,
        "color": 2,
        "pattern": 1,
        "all": 4,
        "all_attributes": 5,
    }


def test_unknown_data_set_needs_attribute_index(tmp_path):
    split = read_adde_split(write_split(str(tmp_path), name="DeepFashion"))
    assert split.attribute_index == {} and split.query_counts()["all"] == 0
    split = read_adde_split(
        write_split(str(tmp_path), name="DeepFashion"), attribute_index={"color": 2}
    )
    assert split.query_counts()["color"] == 2
    with pytest.raises(ValueError, match=r"attribute_index\['color'\] = 12 out of range 0..11"):
        read_adde_split(str(tmp_path / "DeepFashion"), attribute_index={"color": 12})


def test_top_k_counts_hits_on_all_attributes_as_adde(tmp_path):
    split = read_adde_split(write_split(str(tmp_path)))
    gallery = np.eye(len(IMAGES), dtype=np.float32)

    def oracle(ref_features, attribute, values):
        # Color queries go to image 5 first (right color, gender missing: not the target labels),
        # then to the exact target; the others straight to their target.
        out = []
        for q, (r, a, v, t) in enumerate(
            [
                q
                for q in QUERIES
                if q[1] == {"shape": CATEGORY, "color": COLOR, "pattern": PATTERN}[attribute]
            ]
        ):
            assert values[q] == v and np.array_equal(ref_features[q], gallery[r])
            out.append(
                gallery[5] * 2 + gallery[t] if attribute == "color" and t == 1 else gallery[t]
            )
        return np.stack(out)

    scores = adde_top_k_accuracy(split, gallery, oracle, ks=(1, 2, 30))
    assert scores["shape"] == {
        "T@1": 1.0,
        "T@2": 1.0,
        "T@30": 1.0,
        "num_queries": 1,
        "num_unmapped": 0,
    }
    assert scores["color"]["T@1"] == 0.5 and scores["color"]["T@2"] == 1.0
    assert scores["all"]["T@1"] == 0.75 and scores["all"]["num_queries"] == 4

    def identity(ref_features, attribute, values):  # the reference itself never hits
        return ref_features

    assert adde_top_k_accuracy(split, gallery, identity, ks=(1,))["all"]["T@1"] == 0.0
    with pytest.raises(ValueError, match="gallery_features has 2 rows"):
        adde_top_k_accuracy(split, gallery[:2], identity)


def _set(name, index, text):
    def edit(files):
        files[name][index] = text

    return edit


def _drop(name):
    def edit(files):
        files[name].pop()

    return edit


WIDTH = sum(SHOPPING_ATTR_NUM)


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set("attr_num.txt", 1, "x"), r"attr_num.txt: line 2: expected integers"),
        (_set("attr_num.txt", 1, "0"), r"attr_num.txt: expected positive counts"),
        (_set("labels_test.txt", 2, "0 1"), r"labels_test.txt: line 3: expected 151 integers"),
        (
            _set("labels_test.txt", 2, line([2] + [0] * (WIDTH - 1))),
            r"labels_test.txt: line 3: value 2 not in \[0, 1\]",
        ),
        (
            _set("labels_test.txt", 2, line([1, 1] + [0] * (WIDTH - 2))),
            r"labels_test.txt: line 3: attribute 0 has 2 values set",
        ),
        (_drop("labels_test.txt"), r"labels_test.txt: 5 label rows but 6 images"),
        (_set("ref_test.txt", 1, "6"), r"ref_test.txt: line 2: expected one image index in 0..5"),
        (_set("ref_test.txt", 1, "1 2"), r"ref_test.txt: line 2: expected one image index"),
        (_drop("ref_test.txt"), r"indfull_test.txt: 5 queries but 4 in .*ref_test.txt"),
        (_drop("gt_test.txt"), r"gt_test.txt: 4 queries but 5 in .*ref_test.txt"),
        (
            _set("indfull_test.txt", 0, line([0] * WIDTH)),
            r"indfull_test.txt: line 1: expected one \+1 and changes within one attribute",
        ),
        (
            _set("indfull_test.txt", 0, line([-1] + [0] * 16 + [1] + [0] * (WIDTH - 18))),
            r"indfull_test.txt: line 1: expected one \+1 and changes within one attribute",
        ),
        (
            _set("indfull_test.txt", 0, line([0] * (WIDTH - 1) + [-2])),
            r"indfull_test.txt: line 1: value -2 not in \[-1, 0, 1\]",
        ),
        (
            _set("gt_test.txt", 0, line(onehot(IMAGES[0]))),
            r"gt_test.txt: line 1: target value 5 of attribute 2 \(from .*indfull_test.txt: line 1\) "
            r"is not set",
        ),
    ],
)
def test_bad_split_files(tmp_path, edit, message):
    directory = write_split(str(tmp_path), edit=edit)
    with pytest.raises(ManifestError, match=message) as error:
        read_adde_split(directory)
    assert "\n" not in str(error.value)


def test_missing_file(tmp_path):
    directory = write_split(str(tmp_path))
    os.remove(os.path.join(directory, "gt_test.txt"))
    with pytest.raises(FileNotFoundError, match="gt_test.txt"):
        read_adde_split(directory)


def test_cli_reports_query_counts(tmp_path):
    directory = write_split(str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "flam_tf.evaluation.public_splits", directory],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "6 test images, queries {'shape': 1, 'color': 2, 'pattern': 1, 'all': 4, "
        "'all_attributes': 5}"
    ) in result.stdout
