"""`python -m flam_tf.train`: the files a run leaves, skipping and resuming, the report's numbers."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import SMOKE_FLAGS

from flam_tf import config as config_lib
from flam_tf import vocabulary
from flam_tf.evaluation import metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


COMPARISON_FILES = (
    "models/manipulator_paper_M_OS_adv.keras",
    "models/cls_concat.keras",
    "models/emb_concat.keras",
    "features/cls_concat_features.npz",
    "features/emb_concat_features.npz",
)


def test_comparison_rows_leave_their_files(smoke_run, smoke_run_compared):
    for name in COMPARISON_FILES:
        assert not os.path.exists(os.path.join(smoke_run[0], name)), name
        assert os.path.exists(os.path.join(smoke_run_compared[0], name)), name


def test_smoke_run_leaves_every_file(smoke_run):
    run_dir, output = smoke_run
    for name in (
        "config.json",
        "stages.json",
        "report.json",
        "report.md",
        "data/manifest.csv",
        "models/extractor.keras",
        "models/embedder.keras",
        "models/manipulator.keras",
        "models/cls_concat_on_x.keras",
        "models/emb_concat_on_x.keras",
        "features/features.npz",
        "features/fam_gallery.npz",
        "figures/figure2_manipulation.png",
        "figures/figure3_embeddings.png",
        "figures/training_curves.png",
        "export/models.config",
    ):
        assert os.path.exists(os.path.join(run_dir, name)), name
    assert os.path.isdir(os.path.join(run_dir, "checkpoints"))
    assert any(
        f.startswith("events.")
        for _, _, files in os.walk(os.path.join(run_dir, "logs"))
        for f in files
    ), "no TensorBoard event files under logs/"
    with open(os.path.join(run_dir, "stages.json")) as f:
        assert list(json.load(f)) == list(config_lib.STAGES)
    assert "report: " in output and "FAM T@10" in output  # the terminal summary table


def test_report_json_has_the_documented_keys(smoke_run_compared):
    run_dir, _ = smoke_run_compared
    with open(os.path.join(run_dir, "report.json")) as f:
        report = json.load(f)
    for key in (
        "fir",
        "fam",
        "twin_recall",
        "attribute_accuracy",
        "cycle_cosine",
        "num_queries",
        "timings_s",
        "dataset",
        "preset",
        "seed",
    ):
        assert key in report, key
    baselines = {"Cls-Concat", "Emb-Concat", "Cls-Concat (on x)", "Emb-Concat (on x)"}
    assert set(report["fir"]) == {"FLAM"} | baselines
    assert set(report["fir"]["FLAM"]) == {"in-shop", "consumer-to-shop"}
    assert set(report["fam"]) == {"Identity", "FLAM", "FLAM (paper)", "Mean-Shift"} | baselines
    for method in report["fam"].values():
        assert set(method) == {"shape", "color", "pattern", "all"}
        assert [f"T@{k}" for k in metrics.FAM_KS] == [
            k for k in method["all"] if k.startswith("T@")
        ]
    assert set(report["twin_recall"]["Identity"]) >= {"R@1", "R@10", "R@50"}
    assert set(report["attribute_accuracy"]) == {"original", "methods"}
    assert set(report["attribute_accuracy"]["methods"]) == {"FLAM", "FLAM (paper)", "Mean-Shift"}
    assert report["preset"] == "smoke" and report["dataset"] == "synthetic"
    assert report["timings_s"]["total"] > 0


# Two cosines closer than this may be ordered either way by the report's float32 arithmetic
# (64-wide unit vectors: a float32 dot product is within about 1e-6 of the exact value).
TIE = 2e-6


def test_fam_gallery_npz_recomputes_identity_t_at_k(smoke_run):
    """An independent numpy recomputation of the Identity row from the saved feature store."""
    run_dir, _ = smoke_run
    with np.load(os.path.join(run_dir, "features", "fam_gallery.npz"), allow_pickle=False) as z:
        feature, twin_of = z["feature"], z["twin_of"]
        labels = np.stack(
            [[vocabulary.CLASSES[a].index(v) for v in z[a]] for a in vocabulary.ATTRIBUTE_TYPES], 1
        )
        assert feature.dtype == np.float32 and feature.ndim == 2
        assert set(z.files) >= {"feature", "instance_id", "shape", "color", "pattern", "twin_of"}
    query = np.nonzero(twin_of == "")[0]
    unit = feature.astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    sims = unit @ unit.T
    # Near-ties at the k-th place (float32 features of look-alike 32x32 images) may be ordered
    # either way, so count a hit as certain (clearly inside the top k) or possible (within TIE
    # of the k-th score) and require the report to lie between the two rates.
    certain, possible = {k: [] for k in (1, 10)}, {k: [] for k in (1, 10)}
    combos = {tuple(r) for r in labels.tolist()}
    for q in query:
        others = np.array([g for g in range(len(labels)) if g != q])
        scores = sims[q, others]
        order = np.argsort(-scores, kind="stable")
        for a in range(3):
            for v in range(10):
                target = labels[q].copy()
                if v == target[a]:
                    continue
                target[a] = v
                if tuple(target) not in combos:
                    continue
                match = np.all(labels[others] == target, axis=1)
                for k in certain:
                    kth, next_out = scores[order[k - 1]], scores[order[k]]
                    # Certain: above the first item outside the top k by more than the tolerance.
                    certain[k].append(bool(np.any(match & (scores > next_out + TIE))))
                    possible[k].append(bool(np.any(match & (scores >= kth - TIE))))
    with open(os.path.join(run_dir, "report.json")) as f:
        identity = json.load(f)["fam"]["Identity"]["all"]
    for k in certain:
        assert np.mean(certain[k]) - 1e-9 <= identity[f"T@{k}"] <= np.mean(possible[k]) + 1e-9
        assert np.mean(possible[k]) - np.mean(certain[k]) < 0.05  # the bounds say something


def _fam_store(run_dir):
    with np.load(os.path.join(run_dir, "features", "fam_gallery.npz"), allow_pickle=False) as z:
        labels = np.stack(
            [[vocabulary.CLASSES[a].index(v) for v in z[a]] for a in vocabulary.ATTRIBUTE_TYPES], 1
        )
        return (
            z["feature"].astype(np.float64),
            labels,
            z["instance_id"],
            z["twin_of"],
            z["is_query"],
        )


def test_twin_recall_recomputed_from_the_saved_features_and_model(smoke_run):
    """Identity and FLAM twin R@k from fam_gallery.npz and models/manipulator.keras, in numpy."""
    import keras

    from flam_tf import models  # noqa: F401  (registers the classes load_model needs)

    run_dir, _ = smoke_run
    feature, labels, ids, twin_of, is_query = _fam_store(run_dir)
    model = keras.saving.load_model(os.path.join(run_dir, "models", "manipulator.keras"))
    first = {ids[g]: g for g in np.nonzero(is_query)[0]}  # instance id -> its query row
    pairs = []  # (query row, twin row, edited type, target value)
    for g in np.nonzero(twin_of != "")[0]:
        q = first[twin_of[g]]
        (a,) = np.nonzero(labels[q] != labels[g])[0]  # a twin differs in exactly one type
        pairs.append((q, g, a, labels[g, a]))
    q, g, a, v = (np.array(c) for c in zip(*pairs))
    unit = feature / np.linalg.norm(feature, axis=1, keepdims=True)
    edited = np.asarray(
        model.manipulate_indices(
            feature[q].astype(np.float32), a.astype(np.int32), v.astype(np.int32)
        )
    )
    with open(os.path.join(run_dir, "report.json")) as f:
        report = json.load(f)["twin_recall"]
    for method, vectors in (("Identity", feature[q]), ("FLAM", edited)):
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        scores = vectors @ unit.T
        scores[np.arange(len(q)), q] = -np.inf  # the query itself is never a result
        twin_score = scores[np.arange(len(q)), g]
        for k in (1, 10):
            # Certain: fewer than k items score even near the twin (within float32 error);
            # possible: fewer than k score clearly above it.
            near_or_above = (scores >= twin_score[:, None] - TIE).sum(1) - 1  # minus the twin
            clearly_above = (scores > twin_score[:, None] + TIE).sum(1)
            certain, possible = np.mean(near_or_above < k), np.mean(clearly_above < k)
            assert certain - 1e-9 <= report[method][f"R@{k}"] <= possible + 1e-9, (method, k)


def test_probe_accuracy_recomputed_from_the_saved_features(smoke_run):
    """Table 5 restated: a softmax regression per type on labelled attribute_train features."""
    import keras

    from flam_tf.data import manifest as manifest_lib

    run_dir, _ = smoke_run
    with np.load(os.path.join(run_dir, "features", "features.npz"), allow_pickle=False) as z:
        all_features, split = z["feature"], z["split"]
    m = manifest_lib.read_manifest(os.path.join(run_dir, "data", "manifest.csv"))
    with open(os.path.join(run_dir, "config.json")) as f:
        seed = json.load(f)["runtime"]["seed"]
    feature, labels, _, _, is_query = _fam_store(run_dir)
    with open(os.path.join(run_dir, "report.json")) as f:
        original = json.load(f)["attribute_accuracy"]["original"]
    for a, attribute in enumerate(vocabulary.ATTRIBUTE_TYPES):
        y = m.labels(attribute)
        rows = (split == "attribute_train") & (y >= 0)
        keras.utils.set_random_seed(seed)
        probe = keras.Sequential(
            [
                keras.Input((all_features.shape[1],)),
                keras.layers.Dense(vocabulary.NUM_CLASSES[attribute]),
            ]
        )
        probe.compile(
            optimizer=keras.optimizers.Adam(1e-2),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        probe.fit(all_features[rows], y[rows], epochs=30, batch_size=256, verbose=0)
        pred = np.argmax(probe.predict(feature[is_query].astype(np.float32), verbose=0), 1)
        accuracy = float(np.mean(pred == labels[is_query, a]))
        assert abs(accuracy - original[attribute]) <= 0.03, (attribute, accuracy, original)


def test_rerun_skips_finished_stages(smoke_run):
    run_dir, _ = smoke_run
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flam_tf.train",
            *SMOKE_FLAGS,
            f"--run_dir={run_dir}",
            "--stages=data,extractor",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "== data: finished earlier, skipped" in result.stdout
    assert "== extractor: finished earlier, skipped" in result.stdout


def test_comparison_rows_added_later_leave_every_other_figure_unchanged(
    smoke_run, smoke_run_compared
):
    """`--noevaluation_compare` (the shared smoke run, and the default preset's setting) trains
    neither the paper's G nor the pixel-trained baselines; adding them to the finished run
    (`smoke_run_compared`) trains just those, and every figure of the rows both runs report is
    equal (each model is seeded by its name)."""
    own_dir, _ = smoke_run
    full_dir, output = smoke_run_compared
    assert sorted(os.listdir(os.path.join(own_dir, "models"))) == [
        "cls_concat_on_x.keras",
        "emb_concat_on_x.keras",
        "embedder.keras",
        "extractor.keras",
        "manipulator.keras",
    ]
    with open(os.path.join(full_dir, "report.json")) as f:
        full = json.load(f)
    with open(os.path.join(own_dir, "report.json")) as f:
        own = json.load(f)
    assert list(own["fam"]) == [
        "Identity",
        "FLAM",
        "Mean-Shift",
        "Cls-Concat (on x)",
        "Emb-Concat (on x)",
    ]
    assert set(full["fam"]) - set(own["fam"]) == {"FLAM (paper)", "Cls-Concat", "Emb-Concat"}
    for method in own["fam"]:
        assert own["fam"][method] == full["fam"][method], method
        assert own["twin_recall"][method] == full["twin_recall"][method], method
    assert own["fir"] == {k: v for k, v in full["fir"].items() if k in own["fir"]}
    assert own["attribute_accuracy"]["methods"] == {
        k: v for k, v in full["attribute_accuracy"]["methods"].items() if k != "FLAM (paper)"
    }
    assert own["attribute_accuracy"]["original"] == full["attribute_accuracy"]["original"]
    with open(os.path.join(full_dir, "config.json")) as f:
        assert json.load(f)["evaluation"]["compare"] is True  # the additive setting, rewritten


def test_other_settings_in_the_same_run_dir_are_refused(smoke_run):
    run_dir, _ = smoke_run
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flam_tf.train",
            *SMOKE_FLAGS,
            f"--run_dir={run_dir}",
            "--extractor_epochs=7",
            "--stages=data",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "extractor.epochs: 2 -> 7" in result.stderr


# ------------------------------------------------------------------------------------------------
# errors: one line on stderr, exit code 2

# TensorFlow's C++ start-up lines ("WARNING: All log messages before absl::InitializeLog() ...",
# "I0000 ... port.cc] oneDNN ...") ignore TF_CPP_MIN_LOG_LEVEL, and absl's own log lines share their
# format; errors found before TensorFlow is imported (flags, config, run directory) have none.
_LOG_LINE = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl)")


def _train(*flags, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "flam_tf.train", *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def _one_error_line(result, allow_log_lines=False):
    """Asserts exit code 2 and exactly one non-empty stderr line; returns that line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if allow_log_lines:
        lines = [line for line in lines if not _LOG_LINE.match(line)]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("flam_tf.train: error: "), lines[0]
    return lines[0]


def _not_writable_dir(tmp_path):
    """A directory this user cannot write (root may write any mode-0555 directory; not /sys)."""
    if os.geteuid() == 0:
        return "/sys/flam_tf_run_dir"
    path = tmp_path / "read_only"
    path.mkdir()
    path.chmod(0o555)
    return str(path / "run")


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown_preset", r"Unknown preset. Received: preset='huge'"),
        ("unknown_stage", r"Unknown stages \['bogus'\]"),
        ("run_dir_is_a_file", r"--run_dir .*afile is a file"),
        ("run_dir_inside_a_file", r"--run_dir .*afile/run is inside a file"),
        ("run_dir_not_writable", r"--run_dir .* is not writable"),
        ("negative_epochs", r"extractor.epochs must be >= 1. Received: -1"),
        ("bad_flag_value", r"flag --extractor_epochs=many: invalid literal"),
        ("unknown_flag", r"Unknown command line flag 'bogus'"),
        ("extra_argument", r"unexpected arguments \['extra'\]"),
        ("damaged_config_json", r"config.json is damaged"),
        (
            "earlier_stage_missing",
            r"stage features needs the extractor stage, which has not finished",
        ),
    ],
)
def test_errors_are_one_line_with_exit_code_2(tmp_path, case, message):
    run_dir = tmp_path / "run"
    (tmp_path / "afile").write_text("")
    flags = {
        "unknown_preset": ["--preset=huge"],
        "unknown_stage": ["--stages=data,bogus"],
        "run_dir_is_a_file": [f"--run_dir={tmp_path / 'afile'}"],
        "run_dir_inside_a_file": [f"--run_dir={tmp_path / 'afile' / 'run'}"],
        "run_dir_not_writable": [f"--run_dir={_not_writable_dir(tmp_path)}"],
        "negative_epochs": ["--extractor_epochs=-1"],
        "bad_flag_value": ["--extractor_epochs=many"],
        "unknown_flag": ["--bogus=1"],
        "extra_argument": ["extra"],
        "damaged_config_json": [],
        "earlier_stage_missing": ["--stages=features"],
    }[case]
    if case == "damaged_config_json":
        run_dir.mkdir()
        (run_dir / "config.json").write_text('{"preset": "smoke", ')
    result = _train("--preset=smoke", f"--run_dir={run_dir}", "--stages=data", *flags)
    line = _one_error_line(result)
    assert re.search(message, line), line
    assert "usage" not in result.stdout.lower() + result.stderr.lower()  # no usage dump
    if case == "negative_epochs":  # nothing written: the run directory is not locked to -1
        assert not (run_dir / "config.json").exists()


def test_verbose_adds_the_traceback(tmp_path):
    result = _train("--preset=smoke", f"--run_dir={tmp_path}", "--extractor_epochs=-1", "--verbose")
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "flam_tf.train: error: extractor.epochs must be >= 1. Received: -1"
    )


def test_error_messages_are_collapsed_to_one_line():
    from flam_tf import train

    assert train.one_line(ValueError("a\n  b\tc\n")) == "a b c"
    long = train.one_line(ValueError("start " + "x" * 5000 + " end"))
    assert len(long) <= train.MAX_MESSAGE_CHARS and long.startswith("start")
    assert long.endswith(" end") and " ... " in long
    assert train.report_error(OSError(13, "Permission denied", "/x")) == 2
    assert train.report_error(KeyError("a bug")) == 1  # traceback and "internal error", exit 1


def _tiny_real_sources(root):
    """A 4-image DeepFashion In-shop tree and a 6-image DARN tree (the readers' layouts)."""
    from PIL import Image

    def jpeg(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.new("RGB", (8, 8), (200, 30, 30)).save(path, "JPEG")

    entries = []
    for i, status in enumerate(("train", "train", "query", "gallery")):
        entries.append(f"img/id_{i // 2}/{i}.jpg id_{i // 2} {status}")
        jpeg(os.path.join(root, "inshop", entries[-1].split()[0]))
    with open(os.path.join(root, "inshop", "list_eval_partition.txt"), "w") as f:
        f.write("\n".join([str(len(entries)), "image_name item_id evaluation_status", *entries]))
    os.makedirs(os.path.join(root, "darn"))
    with (
        open(os.path.join(root, "darn", "label_train.txt"), "w") as labels,
        open(os.path.join(root, "darn", "filenames_train.txt"), "w") as names,
    ):
        for i in range(6):  # the DARN layout of ASEN/ASEN++ (see flam_tf/data/readers/darn.py)
            labels.write(f"{i}\t0\t0\t2\t0\t4\t0\n")
            names.write(f"pic/{i:03d}.jpg\n")
            jpeg(os.path.join(root, "darn", "pic", f"{i:03d}.jpg"))
    jpeg(os.path.join(root, "extra", "a.jpg"))
    return [
        "--preset=smoke",
        "--stages=data",
        "--data_fam_eval_size=2",
        "--data_extractor_source=deepfashion_inshop",
        f"--data_extractor_data_dir={os.path.join(root, 'inshop')}",
        "--data_attribute_source=darn",
        f"--data_attribute_data_dir={os.path.join(root, 'darn')}",
    ]


def test_missing_image_fails_the_data_stage_with_file_and_line(tmp_path):
    """The cheapest real path to a manifest row without its image: data_unlabelled_manifest
    (read only with real sources; the readers themselves skip and count missing images)."""
    flags = _tiny_real_sources(str(tmp_path))
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text(
        "path,instance_id,domain,split,shape,color,pattern\n"
        "extra/a.jpg,u1,street,unlabelled,,,\n"
        "extra/missing.jpg,u2,street,unlabelled,,,\n"
    )
    run_dir = tmp_path / "run"
    for _ in range(2):  # the rerun fails at the data stage the same way (it was not marked done)
        result = _train(*flags, f"--run_dir={run_dir}", f"--data_unlabelled_manifest={unlabelled}")
        line = _one_error_line(result, allow_log_lines=True)
        assert line == (
            f"flam_tf.train: error: 1 of 2 images cannot be used: {unlabelled}:3: "
            f"extra/missing.jpg: file not found"
        )
        assert not (run_dir / "stages.json").exists() or "data" not in json.loads(
            (run_dir / "stages.json").read_text()
        )
    (tmp_path / "extra" / "missing.jpg").write_bytes(b"not a JPEG")  # exists, does not decode
    result = _train(*flags, f"--run_dir={run_dir}", f"--data_unlabelled_manifest={unlabelled}")
    line = _one_error_line(result, allow_log_lines=True)
    assert re.search(
        r"1 of 12 images cannot be used: .*data/manifest.csv:\d+: "
        r".*extra/missing.jpg: not a decodable image",
        line,
    ), line
    os.remove(tmp_path / "extra" / "missing.jpg")
    (tmp_path / "extra" / "a.jpg").rename(tmp_path / "extra" / "missing.jpg")
    with open(unlabelled, "w", encoding="utf-8-sig", newline="") as f:  # BOM and CRLF
        f.write(
            "path,instance_id,domain,split,shape,color,pattern\r\n"
            "extra/missing.jpg,u2,street,unlabelled,,,\r\n"
        )
    result = _train(*flags, f"--run_dir={run_dir}", f"--data_unlabelled_manifest={unlabelled}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data" in json.loads((run_dir / "stages.json").read_text())


def test_manifest_with_a_bom_and_crlf_reads_the_same_rows(tmp_path):
    from flam_tf.data import manifest as manifest_lib

    text = (
        "path,instance_id,domain,split,shape,color,pattern,role\n"
        "a.png,i1,shop,fir_eval,dress,red,solid,inshop_query\n"
        "b.png,i2,street,unlabelled,,,,\n"
    )
    plain, bom = tmp_path / "plain.csv", tmp_path / "bom.csv"
    plain.write_text(text, encoding="utf-8")
    with open(bom, "w", encoding="utf-8-sig", newline="") as f:
        f.write(text.replace("\n", "\r\n"))
    a, b = manifest_lib.read_manifest(str(plain)), manifest_lib.read_manifest(str(bom))
    assert list(a.columns) == list(b.columns)
    for name in a.columns:
        assert a[name].tolist() == b[name].tolist(), name


def test_verify_images_names_file_line_and_count(tmp_path):
    from PIL import Image

    from flam_tf.data import manifest as manifest_lib
    from flam_tf.data import verify

    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    Image.new("RGB", (40, 30)).save(tmp_path / "big.jpg")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG but not really")
    rows = ["ok.png", "missing.png", "bad.png", "big.jpg", "ok.png", "gone.png"]
    path = tmp_path / "manifest.csv"
    path.write_text(
        "path,instance_id,domain,split,shape,color,pattern\n"
        + "".join(f"{r},i{i},shop,unlabelled,,,\n" for i, r in enumerate(rows))
    )
    m = manifest_lib.read_manifest(str(path))
    verify.verify_images(m.select(np.array([0, 3, 4])))  # the good rows pass
    with pytest.raises(ValueError) as e:
        verify.verify_images(m, max_image_pixels=1000)
    message = str(e.value)
    assert message.startswith(
        f"4 of 6 images cannot be used: {path}:3: missing.png: file not "
        f"found; {path}:4: bad.png: not a decodable image"
    )
    assert f"{path}:5: big.jpg: 40x30 pixels, more than max_image_pixels=1000" in message
    assert message.endswith("(and 1 more)") and "\n" not in message
    with pytest.raises(ValueError, match=r"^2 of 6 .*:3: missing.png.*:7: gone.png"):
        verify.verify_images(m, decode=False)
    assert verify.image_size((tmp_path / "big.jpg").read_bytes()) == (30, 40)


def test_verify_images_refuses_a_gif_whose_frame_exceeds_the_limit_without_decoding_it(tmp_path):
    """The data stage's decode pass uses the pipeline's bounded decoder: a GIF with a 1 x 1
    logical screen (all the header size check reads) and a 20,000 x 20,000 frame is refused by
    the frame's size, not decoded."""
    from test_hostile_input import gif_bytes

    from flam_tf.data import manifest as manifest_lib
    from flam_tf.data import verify

    (tmp_path / "bomb.gif").write_bytes(gif_bytes((1, 1), [(20000, 20000)]))
    path = tmp_path / "manifest.csv"
    path.write_text(
        "path,instance_id,domain,split,shape,color,pattern\nbomb.gif,i0,shop,unlabelled,,,\n"
    )
    m = manifest_lib.read_manifest(str(path))
    assert verify.image_size((tmp_path / "bomb.gif").read_bytes()) == (1, 1)
    with pytest.raises(
        ValueError,
        match=r"bomb.gif: not a decodable image \(.*Image of 20000 x "
        r"20000 pixels exceeds",
    ):
        verify.verify_images(m, max_image_pixels=4096 * 4096)


def test_a_model_file_that_cannot_be_loaded_names_itself_and_how_to_retrain_it(smoke_run, tmp_path):
    """A corrupt (or older-version) model file: one line naming it and what to do, not Keras'
    "File not found" for a file that is there; doing what the line says retrains that model
    (a stage skips a model whose file exists, so `--force` alone would keep the broken file)."""
    import shlex
    import shutil

    run_dir = str(tmp_path / "run")
    shutil.copytree(smoke_run[0], run_dir)
    model = os.path.join(run_dir, "models", "cls_concat_on_x.keras")
    with open(model, "w") as f:
        f.write("not a zip file")
    result = _train(*SMOKE_FLAGS, f"--run_dir={run_dir}", "--stages=evaluate", "--force")
    line = _one_error_line(result, allow_log_lines=True)
    assert f"{model} cannot be loaded" in line, line
    advice = re.search(
        r"to train it again with the run's other flags, remove (.+) and run python -m "
        r"flam_tf.train (.+)$",
        line,
    )
    assert advice, line
    assert shlex.split(advice.group(1)) == [model], line
    flags = shlex.split(advice.group(2))
    assert f"--run_dir={run_dir}" in flags and "--stages=baselines,evaluate" in flags, line
    assert "--noevaluation_compare" in flags and "--noevaluation_ablations" in flags, line
    os.remove(model)
    result = _train("--preset=smoke", *flags, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(run_dir, "report.json")) as f:
        assert "Cls-Concat (on x)" in json.load(f)["fam"]


def test_retrain_advice_lists_what_was_trained_on_a_model(smoke_run, tmp_path):
    """Each kind of model: the files to remove (those trained on it too, the pixel baseline's
    features; only files that exist), the stages, and the run's own comparison flags (a run
    with the ablations only keeps exactly that); a missing file is FileNotFoundError."""
    import dataclasses

    import tensorflow as tf

    from flam_tf import methods, stages
    from flam_tf.run_directory import RunDirectory

    run = RunDirectory(smoke_run[0])
    smoke = config_lib.get_preset("smoke")  # as the shared smoke run: --noevaluation_compare
    plain = dataclasses.replace(
        smoke, evaluation=dataclasses.replace(smoke.evaluation, compare=False)
    )
    ctx = stages.Context(plain, run, tf.distribute.get_strategy())
    flam = run.model_path("manipulator")
    embedder = ctx.retrain_advice("embedder")
    assert f"remove {run.model_path('embedder')} {flam} and run" in embedder, embedder
    assert (
        "--noevaluation_compare --noevaluation_ablations "
        "--stages=embedders,manipulator,evaluate,export --force" in embedder
    ), embedder
    assert "--stages=manipulator,evaluate,export --force" in ctx.retrain_advice("manipulator")
    extractor = ctx.retrain_advice("extractor")
    for path in (run.features_path, run.fam_gallery_path, flam, run.model_path("embedder")):
        assert f" {path} " in extractor, (path, extractor)
    stages_run = "--stages=extractor,features,embedders,manipulator,baselines,evaluate,export"
    assert stages_run in extractor, extractor
    # emb_concat (pixel-trained) is not in the smoke run: nothing to remove, only the command.
    assert "other flags, run python -m flam_tf.train" in ctx.retrain_advice("emb_concat")
    ablations_only = dataclasses.replace(
        plain, evaluation=dataclasses.replace(plain.evaluation, ablations=True)
    )
    paper = methods.variant_model_name(methods.FLAM_PAPER)
    advice = stages.Context(ablations_only, run, tf.distribute.get_strategy()).retrain_advice(paper)
    expected = "--noevaluation_compare --evaluation_ablations --stages=manipulator,evaluate --force"
    assert expected in advice, advice
    with pytest.raises(FileNotFoundError, match=r"emb_concat.keras is missing; to train it again"):
        ctx.load_model("emb_concat")
