"""SavedModel export: layout, versions, models.config, warm-up records, the models read back
through `saved_model_cli` (TF Serving's variable-restore path) against the Keras models, and an
export that is atomic across the three models when killed after any of its steps."""

import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from serving_fixtures import (
    FEATURE_DIM,
    cosine_top_k,
    gallery_npz,
    keras_extract,
    load_png,
    make_run_dir,
    random_image,
)
from tensorflow.core.protobuf import saved_model_pb2

from flam_tf import vocabulary
from flam_tf.serving import dev_server, export, models_config, servables, warmup
from flam_tf.serving import signatures as sig
from flam_tf.serving import versions as versions_lib

SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def test_export_writes_serving_layout_and_config(exported):
    root = os.path.dirname(exported["models.config"])
    for model in sig.MODEL_NAMES:
        assert exported[model] == os.path.join(root, model, "1")
        assert versions_lib.existing_versions(os.path.join(root, model)) == [1]
        assert os.listdir(os.path.join(root, model)) == ["1"]  # no temp folder left behind
        for name in ("saved_model.pb", "variables", sig.WARMUP_FILE):
            assert os.path.exists(os.path.join(exported[model], name)), name
    config = models_config.read_config(exported["models.config"])
    assert models_config.base_paths(config) == {m: os.path.join(root, m) for m in sig.MODEL_NAMES}
    assert {c.model_platform for c in config.model_config_list.config} == {"tensorflow"}
    assert models_config.pinned_versions(config) == {m: [1] for m in sig.MODEL_NAMES}
    assert sorted(os.listdir(root)) == sorted([".export.lock", "models.config", *sig.MODEL_NAMES])


def test_warmup_files_are_prediction_logs_covering_every_signature(exported):
    expected = {
        sig.EXTRACTOR: {sig.SERVING_DEFAULT, sig.FROM_PIXELS},
        sig.MANIPULATOR: {sig.SERVING_DEFAULT, sig.DESCRIBE},
        sig.SEARCHER: {sig.SERVING_DEFAULT},
    }
    for model, signatures in expected.items():
        requests = warmup.read_warmup(os.path.join(exported[model], sig.WARMUP_FILE))
        assert {r.model_spec.name for r in requests} == {model}
        assert {r.model_spec.signature_name for r in requests} == signatures


def test_versions_are_atomic_and_increase(run_dir, keras_models, tmp_path):
    """Second export: version 2 with a manifest gallery and a container base path; an existing
    version is never overwritten; a failed export leaves no version and no temp folder."""
    out = str(tmp_path / "export")
    first = export.export_run(run_dir, out, top_k=3)
    manifest = os.path.join(run_dir, "data", "manifest.csv")
    second = export.export_run(
        run_dir, out, top_k=3, gallery_manifest=manifest, base_path_prefix="/models/"
    )
    assert (first["version"], second["version"]) == ("1", "2")
    for model in sig.MODEL_NAMES:
        assert sorted(os.listdir(os.path.join(out, model))) == ["1", "2"]
    config = models_config.read_config(second["models.config"])
    assert models_config.base_paths(config) == {m: f"/models/{m}" for m in sig.MODEL_NAMES}
    assert models_config.pinned_versions(config) == {m: [2] for m in sig.MODEL_NAMES}
    with pytest.raises(FileExistsError):
        export.export_run(run_dir, out, version=2)
    with pytest.raises(FileNotFoundError):
        export.export_run(run_dir, out, gallery_manifest=str(tmp_path / "missing.csv"))
    for model in sig.MODEL_NAMES:
        assert sorted(os.listdir(os.path.join(out, model))) == ["1", "2"]

    # The dev server serves the latest version, or those a `specific` version policy names.
    config = models_config.build_config(
        {m: os.path.join(out, m) for m in sig.MODEL_NAMES}, versions={sig.SEARCHER: [1, 2]}
    )
    config_path = models_config.write_config(str(tmp_path / "models.config"), config)
    registry = servables.ModelRegistry(config_path)
    assert registry.loaded_versions() == {
        sig.EXTRACTOR: [2],
        sig.MANIPULATOR: [2],
        sig.SEARCHER: [1, 2],
    }

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
    procs = [
        subprocess.Popen(
            [SAVED_MODEL_CLI, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=ENV,
            text=True,
        )
        for args in runs
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]


def test_saved_model_cli_show_lists_named_inputs_and_outputs(exported):
    (rc1, shown, err1), (rc2, shown_extractor, err2) = _saved_model_cli(
        ["show", "--dir", exported[sig.MANIPULATOR], "--all"],
        ["show", "--dir", exported[sig.EXTRACTOR], "--all"],
    )
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
        sig.EXTRACTOR: [
            "--signature_def",
            sig.FROM_PIXELS,
            "--inputs",
            f"{sig.IMAGES}={tmp_path / 'images.npy'}",
        ],
        sig.MANIPULATOR: [
            "--signature_def",
            sig.SERVING_DEFAULT,
            "--inputs",
            f"{sig.FEATURE}={tmp_path / 'feature.npy'}",
            "--input_exprs",
            f"{sig.ATTRIBUTE}={['color'] * 3};{sig.VALUE}={['red'] * 3}",
        ],
        sig.SEARCHER: [
            "--signature_def",
            sig.SERVING_DEFAULT,
            "--inputs",
            f"{sig.FEATURE}={tmp_path / 'feature.npy'}",
        ],
    }
    runs[sig.MANIPULATOR + "_bad"] = [  # an unknown value: INVALID_ARGUMENT naming it
        "--signature_def",
        sig.SERVING_DEFAULT,
        "--inputs",
        f"{sig.FEATURE}={tmp_path / 'feature.npy'}",
        "--input_exprs",
        f"{sig.ATTRIBUTE}=['color'];{sig.VALUE}=['purple']",
    ]
    results = _saved_model_cli(
        *[
            [
                "run",
                "--dir",
                exported[model.replace("_bad", "")],
                "--tag_set",
                "serve",
                "--outdir",
                str(tmp_path / model),
                *args,
            ]
            for model, args in runs.items()
        ]
    )
    for model, (returncode, _, stderr) in zip(runs, results):
        if model.endswith("_bad"):
            assert returncode != 0 and "InvalidArgumentError" in stderr
            assert "Unknown color value. Received: value=purple" in stderr
            assert ", ".join(vocabulary.CLASSES["color"]) in stderr
        else:
            assert returncode == 0, f"{model}: {stderr[-2000:]}"
    load = lambda model, name: np.load(  # noqa: E731 (ids: an object array of bytes)
        tmp_path / model / f"{name}.npy", allow_pickle=True
    )

    np.testing.assert_allclose(
        load(sig.EXTRACTOR, sig.FEATURE), keras_extract(extractor, pixels), atol=1e-5
    )
    expected = manipulator.manipulate_indices(
        features,
        np.full(3, vocabulary.attribute_index("color"), np.int32),
        np.full(3, vocabulary.class_index("color", "red"), np.int32),
    )
    np.testing.assert_allclose(load(sig.MANIPULATOR, sig.FEATURE), expected, atol=1e-5)
    gallery, ids = gallery_npz(run_dir)
    expected_ids, expected_scores = cosine_top_k(features, gallery, ids, 10)
    np.testing.assert_array_equal(load(sig.SEARCHER, sig.IDS).astype(str), expected_ids)
    np.testing.assert_allclose(load(sig.SEARCHER, sig.SCORES), expected_scores, atol=1e-5)


def test_export_cli_smoke(run_dir, tmp_path):
    """Smoke test of `python -m export` (flags reach export_run) and its one-line errors."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [
        sys.executable,
        "-m",
        "export",
        "--run_dir",
        run_dir,
        "--output",
        str(tmp_path),
        "--version",
        "7",
        "--top_k",
        "5",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=root, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert versions_lib.existing_versions(str(tmp_path / sig.SEARCHER)) == [7]
    result = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=root, timeout=180)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: Version folder exists")
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------------------
# An export is atomic across the three models, whenever it stops.
#
# Version 1 comes from the fake run (feature width 8), version 2 from a second run of width 6, so a
# server serving models of two exports fails the round trip below (and, with equal widths, would
# return silently wrong results).

WIDTH_B = 6
CI_KILL_STEPS = ("manipulator_renamed", "config_staged")  # SIGKILLed subprocesses run in CI
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir_b(tmp_path_factory):
    return make_run_dir(str(tmp_path_factory.mktemp("run_b") / "run"), feature_dim=WIDTH_B)


@pytest.fixture(scope="module")
def version_1(run_dir, tmp_path_factory):
    """A complete version-1 export of `run_dir` with relative base paths (it can be copied)."""
    out = str(tmp_path_factory.mktemp("version_1") / "E")
    export.export_run(run_dir, out, top_k=3, base_path_prefix=".")
    return out


def _copy(src, dst):
    shutil.copytree(src, dst, symlinks=True)
    return str(dst)


def _width(tensor_info):
    return tensor_info.tensor_shape.dim[1].size


def _served_widths(export_dir):
    """Without loading anything: model -> (versions the dev server would load under
    models.config, feature width of each such version's serving_default)."""
    config = models_config.read_config(os.path.join(export_dir, "models.config"))
    out = {}
    for entry in config.model_config_list.config:
        versions = servables._select_versions(
            entry, versions_lib.existing_versions(entry.base_path)
        )
        widths = []
        for v in versions:
            saved_model = saved_model_pb2.SavedModel()
            with open(os.path.join(entry.base_path, str(v), "saved_model.pb"), "rb") as f:
                saved_model.ParseFromString(f.read())
            signature = saved_model.meta_graphs[0].signature_def[sig.SERVING_DEFAULT]
            widths.append(
                _width(
                    signature.inputs[sig.FEATURE]
                    if entry.name != sig.EXTRACTOR
                    else signature.outputs[sig.FEATURE]
                )
            )
        out[entry.name] = (versions, widths)
    return out


def assert_serves_one_export(export_dir, version, width, load=True):
    """What a server started on export_dir/models.config serves: every model at `version`, all
    of one export. load=True: loaded by the dev server's loader, and a real request goes through
    all three models; load=False: the same selection of versions, widths read from the files."""
    assert _served_widths(export_dir) == {m: ([version], [width]) for m in sig.MODEL_NAMES}
    if not load:
        return
    registry = servables.ModelRegistry(os.path.join(export_dir, "models.config"))
    assert registry.loaded_versions() == {m: [version] for m in sig.MODEL_NAMES}
    served = {m: registry.servables[m][version] for m in sig.MODEL_NAMES}
    defs = {m: s.signature_defs[sig.SERVING_DEFAULT] for m, s in served.items()}
    assert (
        _width(defs[sig.EXTRACTOR].outputs[sig.FEATURE]),
        _width(defs[sig.MANIPULATOR].inputs[sig.FEATURE]),
        _width(defs[sig.SEARCHER].inputs[sig.FEATURE]),
    ) == (width, width, width)
    pixels = tf.constant(np.full((1, 9, 9, 3), 100, np.uint8))
    feature = served[sig.EXTRACTOR].signatures[sig.FROM_PIXELS](images=pixels)[sig.FEATURE]
    feature = served[sig.MANIPULATOR].signatures[sig.SERVING_DEFAULT](
        feature=feature, attribute=tf.constant(["color"]), value=tf.constant(["red"])
    )[sig.FEATURE]
    ids = served[sig.SEARCHER].signatures[sig.SERVING_DEFAULT](feature=feature)[sig.IDS]
    assert ids.shape == (1, 3)


def leftovers(export_dir):
    """Temporaries in export_dir: `<model>/.tmp-*` folders and `models.config.tmp-*` files."""
    found = [
        os.path.join(m, n)
        for m in sig.MODEL_NAMES
        if os.path.isdir(os.path.join(export_dir, m))
        for n in os.listdir(os.path.join(export_dir, m))
        if n.startswith(".tmp-")
    ]
    return found + [n for n in os.listdir(export_dir) if n.startswith("models.config.tmp-")]


def folders(export_dir):
    return {m: sorted(os.listdir(os.path.join(export_dir, m))) for m in sig.MODEL_NAMES}


def test_export_steps_are_the_documented_sequence():
    assert export.EXPORT_STEPS == (
        "locked",
        "cleaned",
        "extractor_saved",
        "extractor_staged",
        "extractor_renamed",
        "manipulator_saved",
        "manipulator_staged",
        "manipulator_renamed",
        "searcher_saved",
        "searcher_staged",
        "searcher_renamed",
        "config_staged",
        "committed",
    )


def test_stop_after_any_step_leaves_one_export_served(version_1, run_dir_b, tmp_path):
    """In-process sweep of every step: the state on disk after each step (copied by the on_step
    hook: what a kill there leaves) is served as one export, version 1 until the commit and 2
    from it; the next export's start removes the leftovers and chooses 2 (3 after the commit).
    The dev server loads three of the states (the others: same selection, read from the files)."""
    out = _copy(version_1, tmp_path / "E")
    snapshots = []

    def on_step(name):
        snapshots.append((name, _copy(out, tmp_path / f"after-{len(snapshots):02d}-{name}")))

    written = export.export_run(run_dir_b, out, top_k=3, base_path_prefix=".", on_step=on_step)
    assert written["version"] == "2"
    assert [name for name, _ in snapshots] == list(export.EXPORT_STEPS)
    for name, snapshot in snapshots:
        committed = 2 if name == "committed" else 1
        assert_serves_one_export(
            snapshot,
            committed,
            WIDTH_B if committed == 2 else FEATURE_DIM,
            load=name in ("extractor_renamed", "config_staged", "committed"),
        )
        assert versions_lib.committed_version(snapshot) == committed, name
        assert versions_lib.next_version(snapshot) == committed + 1, name
        with versions_lib.export_lock(snapshot):
            versions_lib.remove_uncommitted(snapshot, versions_lib.committed_version(snapshot))
        assert not leftovers(snapshot), name
        assert folders(snapshot) == {
            m: [str(v) for v in range(1, committed + 1)] for m in sig.MODEL_NAMES
        }, name
    assert not leftovers(out)


def test_an_ordinary_error_after_renames_removes_the_new_version(version_1, run_dir_b, tmp_path):
    out = _copy(version_1, tmp_path / "E")

    def fail(name):
        if name == "config_staged":
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        export.export_run(run_dir_b, out, top_k=3, on_step=fail)
    assert folders(out) == {m: ["1"] for m in sig.MODEL_NAMES} and not leftovers(out)
    assert_serves_one_export(out, 1, FEATURE_DIM, load=False)


def test_kill_hook_stops_like_a_kill(version_1, run_dir_b, tmp_path):
    """`ExportKilled` from on_step skips the error clean-up: the stale temp folder and the
    extractor's orphan version 2 stay (unserved) for the next export to remove."""
    out = _copy(version_1, tmp_path / "E")

    def kill(name):
        if name == "manipulator_saved":
            raise export.ExportKilled(name)

    with pytest.raises(export.ExportKilled):
        export.export_run(run_dir_b, out, top_k=3, on_step=kill)
    assert folders(out)[sig.EXTRACTOR] == ["1", "2"]
    assert [os.path.dirname(p) for p in leftovers(out)] == [sig.MANIPULATOR]
    assert_serves_one_export(out, 1, FEATURE_DIM, load=False)
    assert versions_lib.next_version(out) == 2


@pytest.mark.parametrize(
    "step",
    [
        s if s in CI_KILL_STEPS else pytest.param(s, marks=pytest.mark.slow)
        for s in export.EXPORT_STEPS
    ],
)
def test_sigkilled_export_then_next_export(step, version_1, run_dir_b, tmp_path):
    """A real `python -m export` SIGKILLed after `step` (FLAM_EXPORT_KILL_AT) on top of a complete
    version 1: one export is served; the next export gets the next version (no skip) and leaves
    no temporaries."""
    out = _copy(version_1, tmp_path / "E")
    result = subprocess.run(
        [sys.executable, "-m", "export", "--run_dir", run_dir_b, "--output", out, "--top_k", "3"],
        env={**ENV, export.KILL_AT_ENV: step},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    committed = 2 if step == "committed" else 1
    assert_serves_one_export(out, committed, WIDTH_B if committed == 2 else FEATURE_DIM)
    written = export.export_run(run_dir_b, out, top_k=3)
    assert written["version"] == str(committed + 1)
    assert folders(out) == {m: [str(v) for v in range(1, committed + 2)] for m in sig.MODEL_NAMES}
    assert not leftovers(out)
    assert_serves_one_export(out, committed + 1, WIDTH_B, load=False)


def test_versions_follow_the_committed_one(tmp_path):
    """Without a real export: committed = what models.config pins; a models.config without pins
    (older exports) or none at all commits the highest version all three models have."""
    out = str(tmp_path)
    for model, versions in (
        (sig.EXTRACTOR, [1, 2, 3]),
        (sig.MANIPULATOR, [1, 2]),
        (sig.SEARCHER, [1, 2]),
    ):
        for v in versions:
            os.makedirs(os.path.join(out, model, str(v)))
    assert versions_lib.committed_version(out) == 2 and versions_lib.next_version(out) == 3
    base = {m: os.path.join(out, m) for m in sig.MODEL_NAMES}
    config_path = os.path.join(out, "models.config")
    models_config.write_config(config_path, models_config.build_config(base))
    assert versions_lib.committed_version(out) == 2
    models_config.write_config(
        config_path, models_config.build_config(base, {m: [1] for m in sig.MODEL_NAMES})
    )
    assert versions_lib.committed_version(out) == 1
    os.makedirs(os.path.join(out, sig.SEARCHER, ".tmp-2-99999"))
    open(os.path.join(out, "models.config.tmp-99999"), "w").close()
    with versions_lib.export_lock(out):
        removed = versions_lib.remove_uncommitted(out, versions_lib.committed_version(out))
    assert sorted(os.path.relpath(p, out) for p in removed) == sorted(
        [
            "extractor/2",
            "extractor/3",
            "manipulator/2",
            "searcher/2",
            "searcher/.tmp-2-99999",
            "models.config.tmp-99999",
        ]
    )
    assert folders(out) == {m: ["1"] for m in sig.MODEL_NAMES}
    with open(config_path, "w") as f:
        f.write("not a config {")
    with pytest.raises(ValueError, match="not a valid ModelServerConfig"):
        versions_lib.committed_version(out)


def test_two_exports_never_run_at_once(tmp_path):
    out = str(tmp_path / "E")
    with versions_lib.export_lock(out):
        with pytest.raises(versions_lib.ExportBusyError, match=f"pid {os.getpid()}"):
            with versions_lib.export_lock(out):
                pass
    with versions_lib.export_lock(out):  # released when the holder ends
        pass


def test_unknown_kill_step_is_rejected(run_dir, monkeypatch):
    monkeypatch.setenv(export.KILL_AT_ENV, "nope")
    with pytest.raises(ValueError, match="Unknown export step"):
        export.export_run(run_dir, "/nonexistent/never-written")


# ----------------------------------------------------------------------------------------------
# The client's side: one version for all three models, even while a server moves between exports.


@pytest.mark.serving
def test_client_pins_one_version_available_for_all_three(exported, run_dir, tmp_path):
    """A server mid-transition (extractor and manipulator at 1 and 2, searcher still at 1 only):
    the client sends every request for version 1; a pinned version the server dropped is chosen
    again once and the call retried; no common version is NOT_FOUND."""
    import grpc

    from flam_tf.serving.client import FlamClient, FlamServingError

    layout = {sig.EXTRACTOR: [1, 2], sig.MANIPULATOR: [1, 2], sig.SEARCHER: [1]}
    for model, versions in layout.items():
        os.makedirs(tmp_path / model)
        for v in versions:  # every version is the fixture's export (symlinked)
            os.symlink(exported[model], tmp_path / model / str(v))
    config = models_config.write_config(
        str(tmp_path / "models.config"),
        models_config.build_config({m: str(tmp_path / m) for m in layout}, versions=layout),
    )
    server, port, registry = dev_server.create_server(config, port=0, max_workers=2)
    asked = []
    get = registry.get
    registry.get = lambda spec: asked.append((spec.name, spec.version.value)) or get(spec)
    server.start()
    try:
        png = open(os.path.join(run_dir, "data", "images", "item0.png"), "rb").read()
        with FlamClient(f"127.0.0.1:{port}", timeout_s=30.0) as client:
            assert client.version is None and client.common_version() == 1
            ids, scores = client.retrieve([png], "color", "red", k=2)
            assert ids.shape == scores.shape == (1, 2)
            assert client.version == 1
            assert asked == [(sig.EXTRACTOR, 1), (sig.MANIPULATOR, 1), (sig.SEARCHER, 1)]
            asked.clear()
            client._version = 7  # as if the server had since unloaded the pinned version
            feature = client.extract([png])
            assert client.version == 1 and asked == [(sig.EXTRACTOR, 7), (sig.EXTRACTOR, 1)]
            client.model_status = lambda m: (
                {1: "AVAILABLE"} if m == sig.SEARCHER else {1: "UNLOADING", 2: "AVAILABLE"}
            )
            with pytest.raises(FlamServingError) as e:
                client.common_version()
            assert e.value.code == grpc.StatusCode.NOT_FOUND
            assert "No version is available for all" in e.value.message
        asked.clear()
        with FlamClient(f"127.0.0.1:{port}", consistent_versions=False) as client:
            client.search(feature)
            assert client.version is None and asked == [(sig.SEARCHER, 0)]  # no version sent
    finally:
        server.stop(0).wait()
