"""`python -m flam_tf.train`: the files a run leaves, skipping and resuming, the report's numbers."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from flam_tf import config as config_lib
from flam_tf import vocabulary
from flam_tf.evaluation import metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_smoke_run_leaves_every_file(smoke_run):
    run_dir, output = smoke_run
    for name in ("config.json", "stages.json", "report.json", "report.md", "data/manifest.csv",
                 "models/extractor.keras", "models/embedder.keras", "models/manipulator.keras",
                 "models/manipulator_paper_M_OS_adv.keras",
                 "models/cls_concat.keras", "models/emb_concat.keras",
                 "models/cls_concat_on_x.keras", "models/emb_concat_on_x.keras",
                 "features/cls_concat_features.npz", "features/emb_concat_features.npz",
                 "features/features.npz", "features/fam_gallery.npz",
                 "figures/figure2_manipulation.png", "figures/figure3_embeddings.png",
                 "figures/training_curves.png", "export/models.config"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    assert os.path.isdir(os.path.join(run_dir, "checkpoints"))
    assert any(f.startswith("events.") for _, _, files in os.walk(os.path.join(run_dir, "logs"))
               for f in files), "no TensorBoard event files under logs/"
    with open(os.path.join(run_dir, "stages.json")) as f:
        assert list(json.load(f)) == list(config_lib.STAGES)
    assert "report: " in output and "FAM T@10" in output  # the terminal summary table


def test_report_json_has_the_documented_keys(smoke_run):
    run_dir, _ = smoke_run
    with open(os.path.join(run_dir, "report.json")) as f:
        report = json.load(f)
    for key in ("fir", "fam", "twin_recall", "attribute_accuracy", "cycle_cosine", "num_queries",
                "timings_s", "dataset", "preset", "seed"):
        assert key in report, key
    baselines = {"Cls-Concat", "Emb-Concat", "Cls-Concat (on x)", "Emb-Concat (on x)"}
    assert set(report["fir"]) == {"FLAM"} | baselines
    assert set(report["fir"]["FLAM"]) == {"in-shop", "consumer-to-shop"}
    assert set(report["fam"]) == {"Identity", "FLAM", "FLAM (paper)", "Mean-Shift"} | baselines
    for method in report["fam"].values():
        assert set(method) == {"shape", "color", "pattern", "all"}
        assert [f"T@{k}" for k in metrics.FAM_KS] == [k for k in method["all"] if k.startswith("T@")]
    assert set(report["twin_recall"]["Identity"]) >= {"R@1", "R@10", "R@50"}
    assert set(report["attribute_accuracy"]) == {"original", "methods"}
    assert set(report["attribute_accuracy"]["methods"]) == {"FLAM", "FLAM (paper)", "Mean-Shift"}
    assert report["preset"] == "smoke" and report["dataset"] == "synthetic"
    assert report["timings_s"]["total"] > 0


def test_fam_gallery_npz_recomputes_identity_t_at_k(smoke_run):
    """An independent numpy recomputation of the Identity row from the saved feature store."""
    run_dir, _ = smoke_run
    with np.load(os.path.join(run_dir, "features", "fam_gallery.npz"), allow_pickle=False) as z:
        feature, twin_of = z["feature"], z["twin_of"]
        labels = np.stack([[vocabulary.CLASSES[a].index(v) for v in z[a]]
                           for a in vocabulary.ATTRIBUTE_TYPES], 1)
        assert feature.dtype == np.float32 and feature.ndim == 2
        assert set(z.files) >= {"feature", "instance_id", "shape", "color", "pattern", "twin_of"}
    query = np.nonzero(twin_of == "")[0]
    unit = feature.astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    sims = unit @ unit.T
    # Near-ties at the k-th place (float32 features of look-alike 32x32 images) may be ordered
    # either way, so count a hit as certain (clearly inside the top k) or possible (within 1e-5
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
                    certain[k].append(bool(np.any(match & (scores > next_out + 1e-5))))
                    possible[k].append(bool(np.any(match & (scores >= kth - 1e-5))))
    with open(os.path.join(run_dir, "report.json")) as f:
        identity = json.load(f)["fam"]["Identity"]["all"]
    for k in certain:
        assert np.mean(certain[k]) - 1e-9 <= identity[f"T@{k}"] <= np.mean(possible[k]) + 1e-9
        assert np.mean(possible[k]) - np.mean(certain[k]) < 0.02  # ties are rare


def _fam_store(run_dir):
    with np.load(os.path.join(run_dir, "features", "fam_gallery.npz"), allow_pickle=False) as z:
        labels = np.stack([[vocabulary.CLASSES[a].index(v) for v in z[a]]
                           for a in vocabulary.ATTRIBUTE_TYPES], 1)
        return (z["feature"].astype(np.float64), labels, z["instance_id"], z["twin_of"],
                z["is_query"])


def test_twin_recall_recomputed_from_the_saved_features_and_model(smoke_run):
    """Identity and FLAM twin R@k from fam_gallery.npz and models/manipulator.keras, in numpy."""
    import keras

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
    edited = np.asarray(model.manipulate_indices(feature[q].astype(np.float32),
                                                 a.astype(np.int32), v.astype(np.int32)))
    with open(os.path.join(run_dir, "report.json")) as f:
        report = json.load(f)["twin_recall"]
    for method, vectors in (("Identity", feature[q]), ("FLAM", edited)):
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        scores = vectors @ unit.T
        scores[np.arange(len(q)), q] = -np.inf  # the query itself is never a result
        twin_score = scores[np.arange(len(q)), g]
        for k in (1, 10):
            kth = -np.sort(-scores, axis=1)[:, k - 1]
            above = (scores > twin_score[:, None] + 1e-5).sum(1)
            certain = np.mean(above < k)  # clearly inside the top k
            possible = np.mean(twin_score >= kth - 1e-5)
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
        probe = keras.Sequential([keras.Input((all_features.shape[1],)),
                                  keras.layers.Dense(vocabulary.NUM_CLASSES[attribute])])
        probe.compile(optimizer=keras.optimizers.Adam(1e-2),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        probe.fit(all_features[rows], y[rows], epochs=30, batch_size=256, verbose=0)
        pred = np.argmax(probe.predict(feature[is_query].astype(np.float32), verbose=0), 1)
        accuracy = float(np.mean(pred == labels[is_query, a]))
        assert abs(accuracy - original[attribute]) <= 0.03, (attribute, accuracy, original)


def test_rerun_skips_finished_stages(smoke_run):
    run_dir, _ = smoke_run
    result = subprocess.run([sys.executable, "-m", "flam_tf.train", "--preset=smoke",
                             f"--run_dir={run_dir}", "--stages=data,extractor"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "== data: finished earlier, skipped" in result.stdout
    assert "== extractor: finished earlier, skipped" in result.stdout


def test_other_settings_in_the_same_run_dir_are_refused(smoke_run):
    run_dir, _ = smoke_run
    result = subprocess.run([sys.executable, "-m", "flam_tf.train", "--preset=smoke",
                             f"--run_dir={run_dir}", "--extractor_epochs=7", "--stages=data"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "extractor.epochs: 2 -> 7" in result.stderr


def test_unknown_stage_and_preset_are_usage_errors(tmp_path):
    for flag in ("--stages=data,bogus", "--preset=huge"):
        result = subprocess.run([sys.executable, "-m", "flam_tf.train", flag,
                                 f"--run_dir={tmp_path}"], cwd=REPO, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode != 0
        assert ("bogus" in result.stderr) or ("huge" in result.stderr)


def test_killed_run_resumes_from_its_last_epoch(tmp_path):
    """Really interrupts a run mid-extractor (SIGKILL), then reruns the same command."""
    run_dir = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "flam_tf.train", "--preset=smoke", f"--run_dir={run_dir}",
           "--stages=data,extractor", "--extractor_epochs=6"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    backup = os.path.join(run_dir, "checkpoints", "extractor")
    deadline = time.time() + 240
    # Wait for the second epoch's backup, then kill without warning.
    while time.time() < deadline:
        history = os.path.join(backup, "training_metadata.json")
        if os.path.exists(history):
            with open(history) as f:
                if json.load(f).get("epoch", -1) >= 1:
                    break
        time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read()[-3000:]
    else:
        pytest.fail("no epoch backup appeared")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open(os.path.join(run_dir, "stages.json")) as f:
        assert list(json.load(f)) == ["data"]  # the extractor never finished
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "== data: finished earlier, skipped" in result.stdout
    out = result.stdout + result.stderr
    assert "Epoch 1/6" not in out and "Epoch 6/6" in out  # resumed, not restarted
    assert os.path.exists(os.path.join(run_dir, "models", "extractor.keras"))
