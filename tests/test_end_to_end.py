"""End to end: a smoke training run, its export, the dev server on a loopback port, the client.

image bytes -> extractor -> manipulator (color=red) -> searcher through gRPC must equal the same
computation done in-process with the Keras models the run saved.
"""

import os

import keras
import numpy as np
import pytest

from flam_tf import (
    models,  # noqa: F401  (registers the classes for load_model)
    vocabulary,
)
from flam_tf.data import manifest as manifest_lib
from flam_tf.data import pipeline
from flam_tf.serving import dev_server
from flam_tf.serving.client import FlamClient

pytestmark = pytest.mark.serving


@pytest.fixture(scope="module")
def served(smoke_run):
    run_dir, _ = smoke_run
    grpc_server, port, _ = dev_server.create_server(
        os.path.join(run_dir, "export", "models.config"), port=0, max_workers=4
    )
    grpc_server.start()
    with FlamClient(f"127.0.0.1:{port}", timeout_s=60.0) as client:
        yield run_dir, client
    grpc_server.stop(0).wait()


def test_served_search_equals_in_process_keras(served):
    import tensorflow as tf

    run_dir, client = served
    m = manifest_lib.read_manifest(os.path.join(run_dir, "data", "manifest.csv"))
    queries = m.select(m.has_role("fam_query"))
    paths = queries.absolute_paths()[:4]
    image_bytes = [open(p, "rb").read() for p in paths]

    extractor = keras.saving.load_model(os.path.join(run_dir, "models", "extractor.keras"))
    manipulator = keras.saving.load_model(os.path.join(run_dir, "models", "manipulator.keras"))
    size = extractor.image_size
    pixels = tf.stack([pipeline.decode_image(b, size) for b in image_bytes])
    expected_feature = extractor(pixels, training=False).numpy()
    expected_red = np.asarray(manipulator.manipulate(expected_feature, "color", "red"))
    with np.load(os.path.join(run_dir, "features", "fam_gallery.npz"), allow_pickle=False) as z:
        gallery, gallery_ids = z["feature"], z["path"]
    scores = expected_red @ (gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).T
    expected_top = np.argsort(-scores, axis=1, kind="stable")[:, :10]

    feature = client.extract(image_bytes)
    np.testing.assert_allclose(feature, expected_feature, atol=1e-4)
    red = client.manipulate(feature, "color", "red")
    np.testing.assert_allclose(red, expected_red, atol=1e-4)
    ids, top_scores = client.search(red, k=10)
    np.testing.assert_allclose(top_scores, np.take_along_axis(scores, expected_top, 1), atol=1e-4)
    # Ids equal where scores are not tied within float tolerance.
    assert np.mean(ids.astype(str) == gallery_ids[expected_top]) > 0.95


def test_served_describe_after_manipulation_reproduces_the_report(served):
    """Over the run's FAM queries (every query item x attribute x reachable target value), the
    served `describe` after the served `manipulate` answers the target as often as the report's
    `describe_success` (computed in-process by the evaluation), and more often than chance."""
    import json

    from flam_tf.evaluation import metrics

    run_dir, client = served
    with np.load(os.path.join(run_dir, "features", "fam_gallery.npz"), allow_pickle=False) as z:
        gallery = z["feature"]
        labels = np.stack(
            [[vocabulary.CLASSES[a].index(v) for v in z[a]] for a in vocabulary.ATTRIBUTE_TYPES], 1
        )
        queries = metrics.fam_queries(labels, z["is_query"])
    with open(os.path.join(run_dir, "report.json")) as f:
        expected = json.load(f)["describe_success"]
    attributes = np.asarray(vocabulary.ATTRIBUTE_TYPES)[queries.attribute_index]
    values = [vocabulary.CLASSES[a][v] for a, v in zip(attributes, queries.target_value)]
    limit = 1024  # the signatures' largest batch
    answers = []
    for start in range(0, len(values), limit):
        rows = slice(start, start + limit)
        edited = client.manipulate(
            gallery[queries.query_index[rows]], list(attributes[rows]), values[rows]
        )
        described = client.describe(edited)
        answers += [described[a][i] for i, a in enumerate(attributes[rows])]
    hit = np.asarray(answers) == np.asarray(values)
    for a, attribute in enumerate(vocabulary.ATTRIBUTE_TYPES):
        chosen = queries.attribute_index == a
        # Equal up to the rare float near-tie between two dictionary vectors.
        assert abs(hit[chosen].mean() - expected[attribute]) < 0.01, attribute
    chance = np.mean([1 / (vocabulary.NUM_CLASSES[a] - 1) for a in vocabulary.ATTRIBUTE_TYPES])
    assert hit.mean() > chance, (hit.mean(), chance)


def test_check_export_cli_smoke(smoke_run):
    """Smoke test of `python -m serving.check_export` (describe fractions + a tiny load test)."""
    import subprocess
    import sys

    run_dir, _ = smoke_run
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.check_export",
            f"--run_dir={run_dir}",
            "--clients=2",
            "--requests=5",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "color=red: describe says red for" in result.stdout
    assert "10 done, 0 errors" in result.stdout
