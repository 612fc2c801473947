"""The gRPC client against the dev server (and a real tensorflow_model_server when one is on PATH):
results equal the Keras models and numpy references, errors carry TF Serving's status codes, bad
input never takes the server down, and concurrent load ends without errors."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from serving_fixtures import FEATURE_DIM, cosine_top_k, gallery_npz, keras_extract, load_png

from flam_tf import vocabulary
from flam_tf.serving import client_cli
from flam_tf.serving import signatures as sig
from flam_tf.serving.client import FlamClient, FlamServingError, parse_edits

pytestmark = pytest.mark.serving
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _image_paths(run_dir, n=3):
    return [os.path.join(run_dir, "data", "images", f"item{i}.png") for i in range(n)]


def check_client_matches_keras(client, run_dir, keras_models):
    """The served results equal the Keras models / numpy on the same inputs (any server)."""
    extractor, manipulator = keras_models
    paths = _image_paths(run_dir)
    expected = np.concatenate([keras_extract(extractor, load_png(p)[np.newaxis]) for p in paths])
    png_bytes = [open(p, "rb").read() for p in paths]
    features = client.extract(png_bytes)
    np.testing.assert_allclose(features, expected, atol=1e-5)
    np.testing.assert_allclose(
        client.extract_pixels(load_png(paths[0])[np.newaxis]), expected[:1], atol=1e-5
    )

    # One edit per row, different per row; then two edits in sequence on one row.
    def idx(a, v):
        return np.int32(vocabulary.attribute_index(a)), np.int32(vocabulary.class_index(a, v))

    edits = [("color", "red"), ("pattern", "striped"), ("shape", "dress")]
    got = client.manipulate(features, [a for a, _ in edits], [v for _, v in edits])
    a_idx, v_idx = (np.array(x) for x in zip(*(idx(a, v) for a, v in edits)))
    np.testing.assert_allclose(
        got, manipulator.manipulate_indices(features, a_idx, v_idx), atol=1e-5
    )
    got = client.manipulate(features[:1], *parse_edits("color=red,pattern=striped"))
    step = manipulator.manipulate_indices(
        features[:1], *(np.array([i]) for i in idx("color", "red"))
    )
    step = manipulator.manipulate_indices(step, *(np.array([i]) for i in idx("pattern", "striped")))
    np.testing.assert_allclose(got, step, atol=1e-5)

    described = client.describe(features)
    classified = manipulator.embedder.classify(features)
    for a in vocabulary.ATTRIBUTE_TYPES:
        index, score = (np.asarray(t) for t in classified[a])
        assert list(described[a]) == [vocabulary.CLASSES[a][i] for i in index]
        np.testing.assert_allclose(described[a + sig.SCORE_SUFFIX], score, atol=1e-5)

    gallery, ids = gallery_npz(run_dir)
    got_ids, got_scores = client.search(features, k=5)
    want_ids, want_scores = cosine_top_k(features, gallery, ids, 5)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)


def test_client_matches_keras_and_numpy(client, run_dir, keras_models):
    check_client_matches_keras(client, run_dir, keras_models)


def test_metadata_status_and_versions(client):
    assert client.model_status(sig.MANIPULATOR) == {1: "AVAILABLE"}
    defs = client.signature_defs(sig.MANIPULATOR)
    assert {sig.SERVING_DEFAULT, sig.DESCRIBE} <= set(defs)
    assert set(defs[sig.SERVING_DEFAULT].inputs) == {sig.FEATURE, sig.ATTRIBUTE, sig.VALUE}
    feature = np.ones((1, FEATURE_DIM), np.float32)
    out = client.predict(sig.SEARCHER, sig.SERVING_DEFAULT, {sig.FEATURE: feature}, version=1)
    assert out[sig.IDS].shape == (1, 10)
    with pytest.raises(FlamServingError) as e:
        client.predict(sig.SEARCHER, sig.SERVING_DEFAULT, {sig.FEATURE: feature}, version=9)
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    assert e.value.message == f"Servable not found for request: Specific({sig.SEARCHER}, 9)"
    with pytest.raises(FlamServingError) as e:
        client.model_status("nope")
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_metadata_field_other_than_signature_def_is_invalid(server):
    from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

    with grpc.insecure_channel(server) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = sig.SEARCHER
        request.metadata_field.append("labels")
        with pytest.raises(grpc.RpcError) as e:
            stub.GetModelMetadata(request, timeout=10)
    assert e.value.code() == INVALID
    assert e.value.details() == "Metadata field labels is not supported"


_F = np.full((2, FEATURE_DIM), 0.5, np.float32)
BAD_REQUESTS = {  # name -> (call, expected code, substrings of the message)
    "not_an_image": (
        lambda c: c.extract([b"definitely not an image"]),
        INVALID,
        ["Unknown image file format"],
    ),
    "wrong_width": (
        lambda c: c.search(np.ones((1, FEATURE_DIM + 3), np.float32)),
        INVALID,
        [f"{sig.FEATURE} has shape [1, {FEATURE_DIM + 3}]"],
    ),
    "nan_feature": (
        lambda c: c.manipulate(np.full((1, FEATURE_DIM), np.nan), "color", "red"),
        INVALID,
        ["feature must be finite", "NaN"],
    ),
    "unknown_model": (
        lambda c: c.predict("nope", sig.SERVING_DEFAULT, {}),
        grpc.StatusCode.NOT_FOUND,
        ["Servable not found for request: Latest(nope)"],
    ),
    "unknown_signature": (
        lambda c: c.predict(sig.SEARCHER, "nope", {sig.FEATURE: _F}),
        INVALID,
        ['Serving signature name: "nope" not found in signature def'],
    ),
    "missing_input": (
        lambda c: c.predict(sig.MANIPULATOR, sig.SERVING_DEFAULT, {sig.FEATURE: _F}),
        INVALID,
        ["Missing but required: {attribute,value}"],
    ),
    "wrong_dtype": (
        lambda c: c.predict(
            sig.SEARCHER, sig.SERVING_DEFAULT, {sig.FEATURE: _F.astype(np.float64)}
        ),
        INVALID,
        ["to be float32 but float64 is provided"],
    ),
    "unknown_attribute": (
        lambda c: c.manipulate(_F, ["color", "colour"], ["red", "red"]),
        INVALID,
        [
            "Unknown attribute. Received: attribute=colour",
            "expected one of [shape, color, pattern]",
        ],
    ),
    "unknown_value": (
        lambda c: c.manipulate(_F, "color;pattern", "red;plaid"),
        INVALID,
        ["Unknown pattern value. Received: value=plaid", ", ".join(vocabulary.CLASSES["pattern"])],
    ),
    "edit_count_mismatch": (
        lambda c: c.manipulate(_F, "color;pattern", "red"),
        INVALID,
        ["as many edits"],
    ),
    "too_many_edits": (
        lambda c: c.manipulate(_F, "color;pattern;shape;color", "red;solid;dress;blue"),
        INVALID,
        [f"At most {sig.MAX_EDITS} edits"],
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_request_gets_clear_error_and_server_survives(client, name):
    call, code, fragments = BAD_REQUESTS[name]
    with pytest.raises(FlamServingError) as e:
        call(client)
    assert e.value.code == code, e.value
    for fragment in fragments:
        assert fragment in e.value.message
    assert client.search(_F, k=2)[0].shape == (2, 2)  # the next valid request succeeds


def test_empty_batch_returns_empty_outputs(client):
    """Documented choice (signatures.py): 0 rows in, 0 rows out, for every signature."""
    empty = np.zeros((0, FEATURE_DIM), np.float32)
    assert client.extract([]).shape == (0, FEATURE_DIM)
    assert client.extract_pixels(np.zeros((0, 9, 9, 3), np.uint8)).shape == (0, FEATURE_DIM)
    assert client.manipulate(empty, [], []).shape == (0, FEATURE_DIM)
    assert all(len(v) == 0 for v in client.describe(empty).values())
    ids, scores = client.search(empty)
    assert ids.shape == scores.shape == (0, 10)


def test_unavailable_server_is_retried_then_reported():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with FlamClient(f"127.0.0.1:{port}", timeout_s=2.0, retries=2) as c:
        with pytest.raises(FlamServingError) as e:
            c.search(_F)
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - start >= 0.1 + 0.2  # two backoffs happened


def test_parse_edits():
    assert parse_edits("color=red, pattern=striped") == ("color;pattern", "red;striped")
    assert parse_edits(["shape=dress", "color=red"]) == ("shape;color", "dress;red")
    for bad in ("color", "=red", "color=", ""):
        with pytest.raises(ValueError, match="attribute=value"):
            parse_edits(bad)


def test_cli_search_prints_table_and_contact_sheet(server, run_dir, tmp_path, capsys):
    from PIL import Image

    sheet = str(tmp_path / "sheet.png")
    code = client_cli.run_cli(
        "search",
        server,
        images=_image_paths(run_dir, 1),
        sets=["color=red"],
        k=3,
        contact_sheet=sheet,
        gallery_root=os.path.join(run_dir, "data"),
    )
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].split() == ["query", "rank", "score", "id"]
    assert [line.split()[1] for line in out[1:4]] == ["1", "2", "3"]
    with Image.open(sheet) as image:
        assert image.size == (4 * 128, 128 + 14)


def test_cli_error_is_one_line(server, run_dir, capsys):
    code = client_cli.run_cli(
        "manipulate", server, images=_image_paths(run_dir, 1), sets=["colour=red"]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: INVALID_ARGUMENT: ")
    assert "attribute=colour" in err


def test_command_lines_smoke(exported, run_dir, tmp_path):
    """Smoke test of `python -m serving.dev_server` (startup line, SIGTERM shutdown) and
    `python -m serving.client` (table on stdout; an error as one line, exit code 1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving.dev_server",
            "--model_config_file",
            exported["models.config"],
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with FlamClient(f"127.0.0.1:{port}") as c:
            c.wait_until_available(timeout_s=120)
        base = [sys.executable, "-m", "serving.client", "--server", f"127.0.0.1:{port}"]
        ok = subprocess.run(
            base + ["describe", "--image", _image_paths(run_dir, 1)[0]],
            cwd=ROOT,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ok.returncode == 0, ok.stderr[-2000:]
        assert ok.stdout.split()[:4] == ["query", *vocabulary.ATTRIBUTE_TYPES]
        bad = subprocess.run(
            base + ["search", "--feature_npy", str(tmp_path / "missing.npy")],
            cwd=ROOT,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert bad.returncode == 1 and "Traceback" not in bad.stderr
        assert bad.stderr.strip().splitlines()[-1].startswith("error: ")
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=60)
    assert server.returncode == 0, err[-2000:]
    assert f"on 127.0.0.1:{port} serving extractor [1], manipulator [1], searcher [1]" in err
    assert "dev server stopped" in err


def test_load_8_threads_zero_errors(client, server):
    """8 threads x up to 200 requests (manipulate / search / describe), bounded at 120 s."""
    threads, per_thread, deadline = 8, 200, time.monotonic() + 120
    latencies, errors, lock = [], [], threading.Lock()
    calls = [
        lambda c: c.search(_F, k=5),
        lambda c: c.manipulate(_F, "color", "red"),
        lambda c: c.describe(_F),
    ]

    def worker(seed):
        with FlamClient(server, timeout_s=30.0) as c:
            for i in range(per_thread):
                if time.monotonic() > deadline:
                    break
                start = time.perf_counter()
                try:
                    calls[(seed + i) % len(calls)](c)
                except Exception as e:  # noqa: BLE001 - every failure is counted
                    with lock:
                        errors.append(repr(e))
                    continue
                with lock:
                    latencies.append(time.perf_counter() - start)

    pool = [threading.Thread(target=worker, args=(s,)) for s in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    print(
        f"\nload: {len(ms)} ok, {len(errors)} errors in {wall:.1f} s "
        f"({len(ms) / wall:.0f} req/s); latency p50 {np.percentile(ms, 50):.1f} ms, "
        f"p99 {np.percentile(ms, 99):.1f} ms"
    )
    assert not errors, errors[:3]
    assert len(ms) > 0


@pytest.mark.skipif(
    shutil.which("tensorflow_model_server") is None,
    reason="tensorflow_model_server is not on PATH (not on PyPI or Debian; "
    "install it or use the tensorflow/serving container to run this)",
)
def test_real_tensorflow_model_server(exported, run_dir, keras_models):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            shutil.which("tensorflow_model_server"),
            f"--port={port}",
            "--rest_api_port=0",
            f"--model_config_file={exported['models.config']}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with FlamClient(f"127.0.0.1:{port}", timeout_s=30.0) as c:
            c.wait_until_available(timeout_s=120)
            check_client_matches_keras(c, run_dir, keras_models)
            for name in ("unknown_model", "unknown_signature", "unknown_value", "not_an_image"):
                call, code, fragments = BAD_REQUESTS[name]
                with pytest.raises(FlamServingError) as e:
                    call(c)
                assert e.value.code == code and fragments[0] in e.value.message
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
