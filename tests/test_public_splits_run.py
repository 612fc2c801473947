"""A trained run scored on an ADDE-format split (`flam_tf.evaluation.public_splits`): the split's
images are embedded by the run's extractor as the run's own features were, and FLAM, Mean-Shift
and Identity T@k equal an independent numpy recount; the CLI writes the same figures; the
Shopping100k value naming (code table, category folders) and each error path.

The split is written in ADDE's file format (see test_public_splits.py) over the fam_eval images of
the shared smoke run, with their own labels (three attributes of 10 values, the project's class
order), so every figure can be recomputed from the run's saved features.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from test_public_splits import (
    CATEGORY,
    COLOR,
    IMAGES,
    PATTERN,
    line,
    onehot,
    write_split,
)

from flam_tf import methods, vocabulary
from flam_tf.data import manifest as manifest_lib
from flam_tf.data.readers.adde_splits import read_adde_split, shopping100k_value_classes
from flam_tf.evaluation import public_splits
from flam_tf.run_directory import FEATURES_NPZ, MANIFEST_CSV, RunDirectory, run_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATTR_NUM = [vocabulary.NUM_CLASSES[a] for a in vocabulary.ATTRIBUTE_TYPES]
NUM_IMAGES = 150
KS = (1, 10)
# The split's own attribute order and value numbering differ from the project's, as a real
# split's do: ADDE attribute COLUMN[type] holds that type, ADDE value v is class (v + SHIFT) % 10.
COLUMN = {"pattern": 0, "shape": 1, "color": 2}
SHIFT = 3


def _adde_labels(class_labels):
    """Project class labels [N, 3] (vocabulary order) -> ADDE value labels in COLUMN order."""
    out = np.empty_like(class_labels)
    for i, t in enumerate(vocabulary.ATTRIBUTE_TYPES):
        out[:, COLUMN[t]] = (class_labels[:, i] - SHIFT) % vocabulary.NUM_CLASSES[t]
    return out


def _value_table(path, drop=()):
    """The JSON value table of that numbering, without the (type, value) pairs of `drop`."""
    table = {
        t: {str(v): c[(v + SHIFT) % len(c)] for v in range(len(c)) if (t, v) not in drop}
        for t, c in vocabulary.CLASSES.items()
    }
    with open(path, "w") as f:
        json.dump(table, f)
    return path


def _split_from_run(run_dir, root):
    """ADDE files over the run's first NUM_IMAGES fully labelled fam_eval images; a query per
    (image, attribute) whose one-attribute edit exists among them. Returns (split dir, image
    root, manifest rows of the images)."""
    m = manifest_lib.read_manifest(run_file(run_dir, MANIFEST_CSV))
    labels = m.label_matrix()
    rows = np.flatnonzero((m["split"] == "fam_eval") & (labels >= 0).all(axis=1))[:NUM_IMAGES]
    image_labels = _adde_labels(labels[rows])
    queries = []
    for i in range(len(rows)):
        for a in range(3):
            same = np.all(np.delete(image_labels, a, 1) == np.delete(image_labels[i], a), 1)
            partners = np.flatnonzero(same & (image_labels[:, a] != image_labels[i, a]))
            if len(partners):
                queries.append((i, a, int(partners[0])))
    assert len(queries) >= 30, len(queries)

    def hot(label_row):
        return onehot(dict(enumerate(label_row)), ATTR_NUM)

    directory = os.path.join(root, "SmokeSplit")
    os.makedirs(directory)
    files = {
        "attr_num.txt": [str(n) for n in ATTR_NUM],
        "imgs_test.txt": [m["path"][r] for r in rows],
        "labels_test.txt": [line(hot(x)) for x in image_labels],
        "ref_test.txt": [str(i) for i, _, _ in queries],
        "indfull_test.txt": [
            line(np.subtract(hot(image_labels[t]), hot(image_labels[i]))) for i, _, t in queries
        ],
        "gt_test.txt": [line(hot(image_labels[t])) for _, _, t in queries],
    }
    for name, lines in files.items():
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return directory, m.root, rows


def _recount(split, gallery, queries_of, classes_of, ks):
    """T@k over every scored query, by plain numpy: a full cosine sort of the gallery."""
    unit = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    found = {k: [] for k in ks}
    for name, attribute in split.attribute_index.items():
        chosen = np.flatnonzero(split.target_attribute == attribute)
        classes = classes_of(name, split.target_value[chosen])
        chosen, classes = chosen[classes >= 0], classes[classes >= 0]
        q = queries_of(gallery[split.ref[chosen]], name, classes)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        order = np.argsort(-(q @ unit.T), axis=1, kind="stable")
        for k in ks:
            top = split.labels[order[:, :k]]
            found[k] += list(np.any(np.all(top == split.gt_labels[chosen][:, None], -1), 1))
    return {f"T@{k}": float(np.mean(v)) for k, v in found.items()}


@pytest.fixture(scope="module")
def scored(smoke_run, tmp_path_factory):
    run_dir, _ = smoke_run
    root = str(tmp_path_factory.mktemp("adde_run"))
    split_dir, image_root, rows = _split_from_run(run_dir, root)
    split = read_adde_split(split_dir, COLUMN)
    # One unnamed color value: its queries are counted, not scored.
    table_path = _value_table(os.path.join(root, "values.json"), drop=[("color", 3)])
    value_classes = public_splits.restrict_to_trained(
        public_splits.load_value_table(table_path, split), run_dir
    )
    gallery = public_splits.extract_split_features(run_dir, split, image_root)
    scores = public_splits.score_run(run_dir, split, gallery, value_classes, ks=KS)
    return dict(
        run_dir=run_dir,
        root=root,
        split=split,
        split_dir=split_dir,
        image_root=image_root,
        rows=rows,
        value_classes=value_classes,
        gallery=gallery,
        scores=scores,
    )


def test_split_images_embedded_as_the_run_embedded_them(scored):
    with np.load(run_file(scored["run_dir"], FEATURES_NPZ)) as z:
        saved = z["feature"][scored["rows"]]
    np.testing.assert_allclose(scored["gallery"], saved, atol=1e-4)


def test_scores_equal_an_independent_recount(scored):
    split, gallery, value_classes = scored["split"], scored["gallery"], scored["value_classes"]
    run_dir = scored["run_dir"]
    flam = keras.saving.load_model(
        RunDirectory.model_file(run_dir, methods.variant_model_name(methods.FLAM)), compile=False
    )
    assert all((value_classes[t] >= 0).sum() >= 9 for t in COLUMN)  # the test scores something
    m = manifest_lib.read_manifest(run_file(run_dir, MANIFEST_CSV))
    with np.load(run_file(run_dir, FEATURES_NPZ)) as z:
        train = m["split"] == "attribute_train"
        x_train, y_train = z["feature"][train], m.label_matrix()[train]

    def classes_of(name, values):
        return value_classes[name][values]

    def flam_edit(x, name, classes):
        a = np.full(len(classes), vocabulary.ATTRIBUTE_TYPES.index(name), np.int32)
        return flam.manipulate_indices(x, a, classes.astype(np.int32)).numpy()

    def mean_shift_edit(x, name, classes):
        # x + mean of the target class - mean of the class the embedder sees in x, the means
        # over the run's labelled attribute_train features.
        t = vocabulary.ATTRIBUTE_TYPES.index(name)
        source = flam.pseudo_labels(x)[:, t]
        means = np.stack(
            [x_train[y_train[:, t] == c].mean(axis=0) for c in range(vocabulary.NUM_CLASSES[name])]
        )
        return x + means[classes] - means[source]

    for method, edit in (
        (methods.IDENTITY, lambda x, n, c: x),
        (methods.FLAM, flam_edit),
        (methods.MEAN_SHIFT, mean_shift_edit),
    ):
        expected = _recount(split, gallery, edit, classes_of, KS)
        got = scored["scores"][method]["all"]
        assert {k: got[k] for k in expected} == pytest.approx(expected), method
    # The reference is in the gallery and ranks first, and it differs from the target in the
    # edited value: Identity's T@1 is 0.
    assert scored["scores"][methods.IDENTITY]["all"]["T@1"] == 0.0
    color = int(np.sum((split.target_attribute == COLUMN["color"]) & (split.target_value == 3)))
    assert color > 0
    assert scored["scores"][methods.FLAM]["color"]["num_unmapped"] == color
    assert scored["scores"][methods.FLAM]["all"]["num_queries"] == len(split.ref) - color
    assert set(scored["scores"]) == {methods.FLAM, methods.MEAN_SHIFT, methods.IDENTITY}


def test_cli_scores_a_run(scored, tmp_path):
    # No pattern value named: pattern has no scored query, written as null (strict JSON).
    table = _value_table(
        str(tmp_path / "values.json"), drop=[("pattern", v) for v in range(10)] + [("color", 3)]
    )
    out = str(tmp_path / "scores.json")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flam_tf.evaluation.public_splits",
            scored["split_dir"],
            f"--run_dir={scored['run_dir']}",
            f"--image_dir={scored['image_root']}",
            f"--value_table={table}",
            "--attribute_index=pattern=0,shape=1,color=2",
            f"--out={out}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out) as f:
        written = json.loads(f.read(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    split = scored["split"]
    expected = public_splits.score_run(
        scored["run_dir"],
        split,
        scored["gallery"],
        public_splits.restrict_to_trained(
            public_splits.load_value_table(table, split), scored["run_dir"]
        ),
    )
    assert written["scores"]["FLAM"]["pattern"]["T@10"] is None
    assert written["scores"]["FLAM"]["pattern"]["num_queries"] == 0
    for method, by_type in expected.items():
        for attribute, rates in by_type.items():
            for key, value in rates.items():
                got = written["scores"][method][attribute][key]
                if value != value:  # nan
                    assert got is None, (method, attribute, key)
                else:
                    assert got == pytest.approx(value, abs=1e-9), (method, attribute, key)
    assert f"{methods.FLAM:<12} all" in result.stdout


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "flam_tf.evaluation.public_splits", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bad_input_is_one_error_naming_it(tmp_path):
    shopping = write_split(str(tmp_path))
    deepfashion = write_split(str(tmp_path), name="DeepFashion")
    values = tmp_path / "values.json"
    values.write_text('{"color": {"5": "red"}}')
    cases = [
        (([shopping], dict(run_dir="/nowhere")), "--run_dir needs --image_dir"),
        (([shopping, deepfashion], dict(run_dir="/r", image_dir="/i")), "one SPLIT_DIR; got 2"),
        (([deepfashion], dict(run_dir="/r", image_dir="/i")), "no attribute type to score"),
        (
            ([deepfashion], dict(run_dir="/r", image_dir="/i", attribute_index="color=2")),
            "value indices have no published names; pass --value_table",
        ),
        (([shopping], dict(attribute_index="colour=2")), "--attribute_index: expected type=index"),
        (
            ([shopping], dict(attribute_index="shape=0,color=0")),
            "attribute_index gives one ADDE attribute to two types",
        ),
        (  # the fixture's images sit in no category folder, and color/pattern codes are unnamed
            ([shopping], dict(run_dir="/r", image_dir="/i")),
            "no query's target value has a project class; name the values with --class_table",
        ),
        (
            ([shopping], dict(run_dir="/r", image_dir=str(tmp_path), value_table=str(values))),
            f"6 of 6 images of {shopping}/imgs_test.txt not found under {tmp_path}, the first "
            f"{tmp_path}/Images/Female/0.jpg (line 1); --image_dir is the folder those paths are "
            "relative to (they start with Images/: the data set's root)",
        ),
    ]
    for (split_dirs, options), message in cases:
        with pytest.raises((ValueError, OSError)) as error:
            public_splits.run(split_dirs, **options)
        assert message in str(error.value), (message, str(error.value))
        assert "\n" not in str(error.value)


def test_cli_bad_input_is_one_line_with_exit_code_2(tmp_path):
    shopping = write_split(str(tmp_path))
    for args, message in [
        ((shopping, "--run_dir=/nowhere"), "--run_dir needs --image_dir"),
        ((shopping, "--run_dir=/r", "--image_dir=/i", "--value_table=/no.json"), "/no.json"),
    ]:
        result = _cli(*args)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("flam_tf.evaluation.public_splits: error: "), lines
        assert message in lines[-1], (message, lines[-1])
        assert "Traceback" not in result.stderr


def test_value_table_errors(tmp_path):
    split = read_adde_split(write_split(str(tmp_path)))
    path = str(tmp_path / "values.json")
    for table, message in [
        ("[1]", "expected {type:"),
        ("{", "line 1: not JSON"),
        ('{"fit": {}}', "type 'fit' is not scored on this split"),
        ('{"color": {"19": "red"}}', "color value '19' is not an index in 0..18"),
        ('{"color": {"x": "red"}}', "color value 'x' is not an index"),
        ('{"color": {"2": "mauve"}}', "mauve"),
        ('{"color": 5}', 'color: expected {"<value index>": "<class>"}, got 5'),
        ('{"color": {"2": 7}}', "color value '2': class 7 is not a name"),
    ]:
        with open(path, "w") as f:
            f.write(table)
        with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("(", r"\(")):
            public_splits.load_value_table(path, split)
    with open(path, "w") as f:
        f.write('{"color": {"5": "red"}}')
    classes = public_splits.load_value_table(path, split)
    assert classes["color"][5] == vocabulary.class_index("color", "red")
    assert (np.delete(classes["color"], 5) == -1).all() and (classes["shape"] == -1).all()


def _shopping_split(tmp_path, folders):
    def edit(files):
        files["imgs_test.txt"] = [f"{folders[i]}/{i}.jpg" for i in range(len(IMAGES))]

    return read_adde_split(write_split(str(tmp_path), edit=edit))


def test_shopping100k_values_named_by_code_table_and_category_folders(tmp_path):
    # Images 0, 1, 3, 4, 5 have category 1, image 2 category 2 (see test_public_splits.IMAGES).
    folders = ["Female/1_Coats"] * 6
    folders[2] = "Male/4_Dresses"
    split = _shopping_split(tmp_path / "a", folders)
    classes = shopping100k_value_classes(split)
    assert classes["shape"][1] == vocabulary.class_index("shape", "coat")
    assert classes["shape"][2] == vocabulary.class_index("shape", "dress")
    assert (np.delete(classes["shape"], [1, 2]) == -1).all()
    assert (classes["color"] == -1).all() and (classes["pattern"] == -1).all()  # no names
    assert len(classes["color"]) == 19 and len(classes["pattern"]) == 16
    named = shopping100k_value_classes(
        split,
        code_table={
            "fields": {"color": {"codes": {"5": "Red"}}, "pattern": {"codes": {"4": "Stripe"}}}
        },
    )
    assert named["color"][5] == vocabulary.class_index("color", "red")
    assert named["pattern"][4] == vocabulary.class_index("pattern", "striped")
    # Folders that disagree (4 of 5 images of value 1 in one folder: below 0.9) name nothing,
    # and a folder name with no canonical class (Tracksuits) neither.
    folders[3] = "Female/9_Tracksuits"
    folders[2] = "Male/7_Tracksuits"
    classes = shopping100k_value_classes(_shopping_split(tmp_path / "b", folders))
    assert classes["shape"][1] == -1 and classes["shape"][2] == -1


def test_unmapped_targets_are_counted_not_scored(tmp_path):
    split = read_adde_split(write_split(str(tmp_path)))
    gallery = np.eye(len(IMAGES), dtype=np.float32)
    value_classes = {
        "shape": np.full(16, -1),
        "color": np.where(np.arange(19) == 5, 7, -1),
        "pattern": np.arange(16),
    }
    seen = []

    def record(reference, attribute, targets):
        seen.append((attribute, targets.tolist()))
        return reference

    scores = public_splits.adde_top_k_accuracy(
        split, gallery, record, ks=(1,), value_classes=value_classes
    )
    assert seen == [("color", [7]), ("pattern", [4])]  # class indices, unmapped left out
    assert scores["shape"]["num_unmapped"] == 1 and scores["shape"]["num_queries"] == 0
    assert scores["color"]["num_unmapped"] == 1 and scores["color"]["num_queries"] == 1
    assert scores["all"]["num_unmapped"] == 2 and scores["all"]["num_queries"] == 2
    assert CATEGORY == 0 and COLOR == 2 and PATTERN == 8


def test_run_files_are_checked_before_any_work(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"Not a trained run directory: missing .*config.json"
    ):
        public_splits.run_files(str(tmp_path))
    assert os.listdir(tmp_path) == []  # nothing written into the run directory


def test_importing_the_scorer_claims_no_flag_of_the_main_job():
    from flam_tf import train  # noqa: F401  (defines --run_dir, --verbose, ...: must not clash)

    assert public_splits.FLAGS is train.FLAGS


def test_no_scored_query_names_which_classes_were_missing(scored):
    """Before the run is read a target needs a project class; after, a class the run trained
    on: the error says which of the two was missing."""
    split = scored["split"]
    none = {t: np.full(int(split.target_value.max()) + 1, -1) for t in split.attribute_index}
    for what in ("a project class", "a class the run trained on"):
        with pytest.raises(ValueError, match=f"no query's target value has {what}; name the"):
            public_splits._count_scored(split, none, "SPLIT", what)
