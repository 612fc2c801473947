"""DARN in the ASEN / ASEN++ layout (GitHub Maryeon/asenpp, `config/DARN/DARN.yaml`,
`modules/data/samplers/samplers.py`): real label lines, each error path, and the main job
end to end with DARN as the attribute source."""

import json
import os
import subprocess
import sys
import time

import pytest
from PIL import Image
from test_real_layouts import write_inshop_release

from flam_tf.data.manifest import ManifestError
from flam_tf.data.readers import darn, read_darn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Real lines of DARN's label_train.txt (tab separated), quoted in GitHub issue Maryeon/asenpp#1
# ("DARN dataset - can't understand attribute values from configs", 2021-05-11).
REAL_LABEL_LINES = (
    "0\t0\t4\t1\t12\t2\t4\t3\t4\t4\t0\t5\t1\t6\t0\t7\t0\t8\t5",
    "1\t0\t2\t1\t1\t2\t15\t3\t4\t4\t1\t5\t1\t6\t3\t7\t0\t8\t2",
    "2\t0\t7\t1\t8\t2\t7\t3\t2\t4\t0\t5\t5\t6\t3\t7\t2\t8\t2",
)


def jpeg(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path, "JPEG")


def write(root, name, lines, encoding="utf-8", newline="\n"):
    with open(os.path.join(root, name), "w", encoding=encoding, newline="") as f:
        f.write(newline.join(lines) + newline)


def write_darn_tree(root, num_train=30, num_test=0, images=True):
    """A DARN tree in the ASEN++ layout: train images i < num_train - 1 labelled (category
    i % 2, color i % 3 for i < 24, pattern i % 3 for i < 26; all nine attributes otherwise),
    the last one unlabelled; test images labelled through query/candidate lines."""
    os.makedirs(root, exist_ok=True)
    names = [f"pic/train_{i:03d}.jpg" for i in range(num_train)]
    labels = []
    for i in range(num_train - 1):
        pairs = [(0, i % 2), (1, 0)] + ([(2, i % 3)] if i < 24 else []) + [(3, 1)]
        pairs += ([(4, i % 3)] if i < 26 else []) + [(5, 0), (6, 2), (7, 1), (8, 0)]
        labels.append("\t".join(str(x) for x in [i, *sum(pairs, ())]))
    write(root, "filenames_train.txt", names)
    write(root, "label_train.txt", labels)
    if num_test:
        test = [f"pic/test_{i:03d}.jpg" for i in range(num_test)]
        write(root, "filenames_test.txt", test)
        write(root, "query_test.txt", [f"{i} 0 {i % 2}" for i in range(num_test)])
        write(
            root,
            "candidate_test.txt",
            [f"{i} {a} {i % 3}" for i in range(num_test) for a in (2, 4)],
        )
        names += test
    if images:
        for name in names:
            jpeg(os.path.join(root, name))
    return root


def test_real_label_lines_with_bom_and_crlf(tmp_path):
    write(
        tmp_path,
        "filenames_train.txt",
        ["pic/a.jpg", "pic/b.jpg", "pic/c.jpg"],
        encoding="utf-8-sig",
        newline="\r\n",
    )
    write(tmp_path, "label_train.txt", REAL_LABEL_LINES, encoding="utf-8-sig", newline="\r\n")
    rows, stats = read_darn(str(tmp_path), top_n=3, fam_eval_size=0, check_images=False)
    # Category ids 4, 2, 7; color ids 4, 15, 7; pattern ids 0, 1, 0 (attributes 0, 2, 4).
    assert set(stats.class_maps["shape"]) == {"2", "4", "7"}
    assert set(stats.class_maps["color"]) == {"4", "7", "15"}
    assert set(stats.class_maps["pattern"]) == {"0", "1"}
    by_path = {r["path"]: r for r in rows}
    assert by_path["pic/a.jpg"]["shape"] == stats.class_maps["shape"]["4"]
    assert by_path["pic/b.jpg"]["color"] == stats.class_maps["color"]["15"]
    assert by_path["pic/c.jpg"]["pattern"] == stats.class_maps["pattern"]["0"]
    assert {r["split"] for r in rows} == {"attribute_train"}
    assert {(r["instance_id"], r["domain"]) for r in rows} == {
        ("pic/a.jpg", "street"),
        ("pic/b.jpg", "street"),
        ("pic/c.jpg", "street"),
    }


def test_layout_constants_follow_asenpp_config():
    assert len(darn.ATTRIBUTES) == len(darn.VALUE_COUNTS) == 9
    assert [darn.ATTRIBUTES[i] for i in sorted(darn.ATTRIBUTE_TYPES)] == [
        "clothes category",
        "clothes color",
        "clothes pattern",
    ]


def test_splits_top_n_fam_sampling_and_class_table(tmp_path):
    write_darn_tree(str(tmp_path), num_train=30, num_test=6)
    rows, stats = read_darn(
        str(tmp_path), top_n=3, fam_eval_size=5, seed=7, class_table={"color": {"0": "red"}}
    )
    assert len(rows) == 36 and stats.rows_by_split["unlabelled"] == 1
    assert stats.class_maps["color"]["0"] == "red"
    by_path = {r["path"]: r for r in rows}
    assert by_path["pic/train_029.jpg"]["split"] == "unlabelled"
    test_row = by_path["pic/test_004.jpg"]  # query: category 0; candidates: color, pattern 1
    assert test_row["shape"] == stats.class_maps["shape"]["0"]
    assert test_row["pattern"] == stats.class_maps["pattern"]["1"]
    fam = {p for p, r in by_path.items() if r["split"] == "fam_eval"}
    assert len(fam) == 5 and all(
        all(by_path[p][a] for a in ("shape", "color", "pattern")) for p in fam
    )
    again, _ = read_darn(str(tmp_path), top_n=3, fam_eval_size=5, seed=7)
    assert {r["path"] for r in again if r["split"] == "fam_eval"} == fam
    rows, stats = read_darn(str(tmp_path), top_n=2, fam_eval_size=0)
    assert stats.labels_dropped["color"] == 8 + 2  # id 2: train i % 3 == 2 (i < 24), 2 test


def test_missing_images_are_skipped_and_counted(tmp_path):
    write_darn_tree(str(tmp_path), num_train=5, images=False)
    jpeg(str(tmp_path / "pic" / "train_000.jpg"))
    rows, stats = read_darn(str(tmp_path), top_n=2, fam_eval_size=0)
    assert len(rows) == 1 and stats.skipped == {"image file not found": 4}
    assert stats.first_skipped["image file not found"].endswith("filenames_train.txt: line 2")


@pytest.mark.parametrize(
    "line, message",
    [
        ("0 0 4 2", r"line 2: expected <index> <attribute> <value> \.\.\. \(an odd count"),
        ("0", r"line 2: expected <index> <attribute> <value> \.\.\. \(an odd count"),
        ("0 0 x", r"line 2: expected integers"),
        ("5 0 1", r"line 2: image index 5 is not a line of .*filenames_train.txt \(2 images\)"),
        ("-1 0 1", r"line 2: image index -1 is not a line"),
        ("0 9 1", r"line 2: attribute 9 out of range 0\.\.8"),
        ("0 2 55", r"line 2: value 55 of attribute 2 \(clothes color\) out of range 0\.\.54"),
        ("0 0 1 0 1", r"line 2: an attribute appears twice"),
        (
            "1 0 3",
            r"line 2: 'pic/a.jpg' gets value 3 of attribute 0 \(clothes category\), but 4 "
            r"at .*label_train.txt: line 1",
        ),
    ],
)
def test_bad_label_lines(tmp_path, line, message):
    write(tmp_path, "filenames_train.txt", ["pic/a.jpg", "pic/a.jpg"])  # one image listed twice
    write(tmp_path, "label_train.txt", ["0 0 4", line])
    with pytest.raises(ManifestError, match=r"label_train.txt: " + message) as error:
        read_darn(str(tmp_path), check_images=False)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "name, line, message",
    [
        ("query_test.txt", "0 0", r"query_test.txt: line 1: expected 3 integers"),
        ("candidate_test.txt", "0 2 1 4 1", r"candidate_test.txt: line 1: expected 3 integers"),
        (
            "candidate_test.txt",
            "1 2 1",
            r"candidate_test.txt: line 1: image index 1 is not a line of"
            r" .*filenames_test.txt",
        ),
    ],
)
def test_bad_query_and_candidate_lines(tmp_path, name, line, message):
    write(tmp_path, "filenames_train.txt", ["pic/a.jpg"])
    write(tmp_path, "label_train.txt", ["0 0 4"])
    write(tmp_path, "filenames_test.txt", ["pic/t.jpg"])
    write(tmp_path, name, [line])
    with pytest.raises(ManifestError, match=message):
        read_darn(str(tmp_path), check_images=False)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"filenames_train.txt"):
        read_darn(str(tmp_path))
    write(tmp_path, "filenames_train.txt", ["pic/a.jpg"])
    with pytest.raises(FileNotFoundError, match=r"label_train.txt"):
        read_darn(str(tmp_path))
    write(tmp_path, "label_train.txt", ["0 0 4"])
    write(tmp_path, "query_valid.txt", ["0 0 4"])
    with pytest.raises(FileNotFoundError, match=r"filenames_valid.txt"):
        read_darn(str(tmp_path))
    os.remove(tmp_path / "query_valid.txt")
    write(tmp_path, "filenames_train.txt", ["../../etc/passwd"])
    with pytest.raises(ManifestError, match=r"filenames_train.txt: line 1: .* escapes"):
        read_darn(str(tmp_path))
    write(tmp_path, "filenames_train.txt", ["/abs/a.jpg"])
    with pytest.raises(ManifestError, match=r"filenames_train.txt: line 1: absolute image path"):
        read_darn(str(tmp_path))
    (tmp_path / "filenames_train.txt").write_bytes(b"pic/a.jpg\npic/\xff.jpg\n")
    with pytest.raises(ManifestError, match=r"filenames_train.txt: line 2: not UTF-8 text"):
        read_darn(str(tmp_path))


@pytest.mark.slow  # about 130 s on 2 CPU cores
def test_main_job_end_to_end_with_darn(tmp_path):
    """`python -m flam_tf.train --preset=smoke`, all stages (data -> report -> export), on a tiny
    DeepFashion In-shop tree in the release layout, real entries (extractor; see
    tests/test_real_layouts.py) and a tiny DARN tree in the ASEN++ layout (attributes)."""
    write_inshop_release(str(tmp_path / "inshop"))
    write_darn_tree(str(tmp_path / "darn"), num_train=60, num_test=12)
    run_dir = tmp_path / "run"
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
            "--data_attribute_source=darn",
            f"--data_attribute_data_dir={tmp_path / 'darn'}",
            "--data_fam_eval_size=12",
            "--extractor_instances_per_batch=4",
            "--extractor_images_per_instance=2",
            "--extractor_steps_per_epoch=2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    elapsed = time.time() - start
    assert result.returncode == 0, result.stderr[-4000:]
    stages = json.loads((run_dir / "stages.json").read_text())
    for stage in ("data", "extractor", "embedders", "manipulator", "evaluate", "export"):
        assert stage in stages, (stage, sorted(stages))
    assert (run_dir / "export").is_dir() and any((run_dir / "export").iterdir())
    print(f"end-to-end run with DARN took {elapsed:.0f} s")
