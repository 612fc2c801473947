"""SavedModel export: layout, versions, models.config, warm-up records, and the models read back
through `saved_model_cli` (TF Serving's variable-restore path) against the Keras models."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from flam_tf import vocabulary
from flam_tf.serving import dev_server, export, models_config
from flam_tf.serving import signatures as sig
from serving_fixtures import (FEATURE_DIM, cosine_top_k, exported,  # noqa: F401
                              gallery_npz, keras_extract, keras_models, load_png, random_image,
                              run_dir)

SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def test_export_writes_serving_layout_and_config(exported):
    root = os.path.dirname(exported["models.config"])
    for model in sig.MODEL_NAMES:
        assert exported[model] == os.path.join(root, model, "1")
        assert export.existing_versions(os.path.join(root, model)) == [1]
        assert os.listdir(os.path.join(root, model)) == ["1"]  # no temp folder left behind
        for name in ("saved_model.pb", "variables", sig.WARMUP_FILE):
            assert os.path.exists(os.path.join(exported[model], name)), name
    config = models_config.read_config(exported["models.config"])
    assert models_config.base_paths(config) == {m: os.path.join(root, m) for m in sig.MODEL_NAMES}
    assert {c.model_platform for c in config.model_config_list.config} == {"tensorflow"}


def test_warmup_files_are_prediction_logs_covering_every_signature(exported):
    expected = {sig.EXTRACTOR: {sig.SERVING_DEFAULT, sig.FROM_PIXELS},
                sig.MANIPULATOR: {sig.SERVING_DEFAULT, sig.DESCRIBE},
                sig.SEARCHER: {sig.SERVING_DEFAULT}}
    for model, signatures in expected.items():
        requests = export.read_warmup(os.path.join(exported[model], sig.WARMUP_FILE))
        assert {r.model_spec.name for r in requests} == {model}
        assert {r.model_spec.signature_name for r in requests} == signatures


def test_versions_are_atomic_and_increase(run_dir, keras_models, tmp_path):
    """Second export: version 2 with a manifest gallery and a container base path; an existing
    version is never overwritten; a failed export leaves no version and no temp folder."""
    out = str(tmp_path / "export")
    first = export.export_run(run_dir, out, top_k=3)
    manifest = os.path.join(run_dir, "data", "manifest.csv")
    second = export.export_run(run_dir, out, top_k=3, gallery_manifest=manifest,
                               base_path_prefix="/models/")
    assert (first["version"], second["version"]) == ("1", "2")
    for model in sig.MODEL_NAMES:
        assert sorted(os.listdir(os.path.join(out, model))) == ["1", "2"]
    config = models_config.read_config(second["models.config"])
    assert models_config.base_paths(config) == {m: f"/models/{m}" for m in sig.MODEL_NAMES}
    with pytest.raises(FileExistsError):
        export.export_run(run_dir, out, version=2)
    with pytest.raises(FileNotFoundError):
        export.export_run(run_dir, out, gallery_manifest=str(tmp_path / "missing.csv"))
    for model in sig.MODEL_NAMES:
        assert sorted(os.listdir(os.path.join(out, model))) == ["1", "2"]

    # The dev server serves the latest version, or those a `specific` version policy names.
    config = models_config.build_config({m: os.path.join(out, m) for m in sig.MODEL_NAMES},
                                        versions={sig.SEARCHER: [1, 2]})
    config_path = models_config.write_config(str(tmp_path / "models.config"), config)
    registry = dev_server.ModelRegistry(config_path)
    assert registry.loaded_versions() == {sig.EXTRACTOR: [2], sig.MANIPULATOR: [2],
                                          sig.SEARCHER: [1, 2]}

    # The manifest gallery: its images, extracted as the served extractor does, ids = paths.
    searcher = tf.saved_model.load(second[sig.SEARCHER]).signatures[sig.SERVING_DEFAULT]
    extractor, _ = keras_models
    pixels = load_png(os.path.join(run_dir, "data", "images", "item2.png"))
    result = searcher(feature=tf.constant(keras_extract(extractor, pixels[np.newaxis])))
    assert result[sig.IDS].shape == (1, 3)
    assert result[sig.IDS][0, 0].numpy().decode() == "images/item2.png"
    np.testing.assert_allclose(result[sig.SCORES][0, 0], 1.0, atol=1e-5)


def _saved_model_cli(*runs):
    """Runs `saved_model_cli` once per argument list, concurrently (each run pays TensorFlow's
    import); returns [(returncode, stdout, stderr)]."""
    procs = [subprocess.Popen([SAVED_MODEL_CLI, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=ENV, text=True) for args in runs]
    outputs = [p.communicate(timeout=180) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]


def test_saved_model_cli_show_lists_named_inputs_and_outputs(exported):
    (rc1, shown, err1), (rc2, shown_extractor, err2) = _saved_model_cli(
        ["show", "--dir", exported[sig.MANIPULATOR], "--all"],
        ["show", "--dir", exported[sig.EXTRACTOR], "--all"])
    assert rc1 == 0 and rc2 == 0, err1[-2000:] + err2[-2000:]
    for name in (sig.SERVING_DEFAULT, sig.DESCRIBE):
        assert f"signature_def['{name}']" in shown
    for tensor in (sig.FEATURE, sig.ATTRIBUTE, sig.VALUE):
        assert f"inputs['{tensor}']" in shown
    for attribute in vocabulary.ATTRIBUTE_TYPES:
        assert f"outputs['{attribute}']" in shown
        assert f"outputs['{attribute}{sig.SCORE_SUFFIX}']" in shown
    assert f"shape: (-1, {FEATURE_DIM})" in shown and "DT_STRING" in shown
    shown = shown_extractor
    assert f"inputs['{sig.IMAGE_BYTES}']" in shown and f"inputs['{sig.IMAGES}']" in shown
    assert "shape: (-1, -1, -1, 3)" in shown and "DT_UINT8" in shown


def test_saved_model_cli_run_matches_keras(exported, keras_models, run_dir, tmp_path):
    """Each model through `saved_model_cli run` equals the in-process Keras computation; an
    unknown value fails with a message naming it and the accepted ones."""
    extractor, manipulator = keras_models
    rng = np.random.default_rng(1)
    pixels = np.stack([random_image(rng, 21, 27) for _ in range(2)])
    features = rng.normal(size=(3, FEATURE_DIM)).astype(np.float32)
    np.save(tmp_path / "images.npy", pixels)
    np.save(tmp_path / "feature.npy", features)
    runs = {
        sig.EXTRACTOR: ["--signature_def", sig.FROM_PIXELS,
                        "--inputs", f"{sig.IMAGES}={tmp_path / 'images.npy'}"],
        sig.MANIPULATOR: ["--signature_def", sig.SERVING_DEFAULT,
                          "--inputs", f"{sig.FEATURE}={tmp_path / 'feature.npy'}",
                          "--input_exprs", f"{sig.ATTRIBUTE}={['color'] * 3};{sig.VALUE}={['red'] * 3}"],
        sig.SEARCHER: ["--signature_def", sig.SERVING_DEFAULT,
                       "--inputs", f"{sig.FEATURE}={tmp_path / 'feature.npy'}"],
    }
    runs[sig.MANIPULATOR + "_bad"] = [  # an unknown value: INVALID_ARGUMENT naming it
        "--signature_def", sig.SERVING_DEFAULT,
        "--inputs", f"{sig.FEATURE}={tmp_path / 'feature.npy'}",
        "--input_exprs", f"{sig.ATTRIBUTE}=['color'];{sig.VALUE}=['purple']"]
    results = _saved_model_cli(*[
        ["run", "--dir", exported[model.replace("_bad", "")], "--tag_set", "serve",
         "--outdir", str(tmp_path / model), *args] for model, args in runs.items()])
    for model, (returncode, _, stderr) in zip(runs, results):
        if model.endswith("_bad"):
            assert returncode != 0 and "InvalidArgumentError" in stderr
            assert "Unknown color value. Received: value=purple" in stderr
            assert ", ".join(vocabulary.CLASSES["color"]) in stderr
        else:
            assert returncode == 0, f"{model}: {stderr[-2000:]}"
    load = lambda model, name: np.load(  # noqa: E731 (ids: an object array of bytes)
        tmp_path / model / f"{name}.npy", allow_pickle=True)

    np.testing.assert_allclose(load(sig.EXTRACTOR, sig.FEATURE),
                               keras_extract(extractor, pixels), atol=1e-5)
    expected = manipulator.manipulate_indices(
        features, np.full(3, vocabulary.attribute_index("color"), np.int32),
        np.full(3, vocabulary.class_index("color", "red"), np.int32))
    np.testing.assert_allclose(load(sig.MANIPULATOR, sig.FEATURE), expected, atol=1e-5)
    gallery, ids = gallery_npz(run_dir)
    expected_ids, expected_scores = cosine_top_k(features, gallery, ids, 10)
    np.testing.assert_array_equal(load(sig.SEARCHER, sig.IDS).astype(str), expected_ids)
    np.testing.assert_allclose(load(sig.SEARCHER, sig.SCORES), expected_scores, atol=1e-5)


def test_export_cli_smoke(run_dir, tmp_path):
    """Smoke test of `python -m export` (flags reach export_run) and its one-line errors."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "export", "--run_dir", run_dir, "--output", str(tmp_path),
           "--version", "7", "--top_k", "5"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=root, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert export.existing_versions(str(tmp_path / sig.SEARCHER)) == [7]
    result = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=root, timeout=180)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: Version folder exists")
    assert "Traceback" not in result.stderr
