"""A tiny fake run directory and its export, shared by tests/test_export.py and test_serving.py.

The run directory follows the contract written by `python -m flam_tf.train`
(config.json, models/*.keras, features/fam_gallery.npz, data/ with manifest.csv and PNGs), with
the real model classes, untrained and of tiny sizes, so every test stays fast on 2 CPU cores.

The run directory and its export are built once per test session (module-level cache), because
pytest would build a fixture imported into two test modules twice.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from flam_tf import vocabulary
from flam_tf.data import manifest as manifest_lib
from flam_tf.models import AttributeEmbedder, FeatureExtractor, FeatureManipulator

IMAGE_SIZE = 16
FEATURE_DIM = 8
NUM_GALLERY = 50
NUM_IMAGES = 6


def build_models(image_size=IMAGE_SIZE, feature_dim=FEATURE_DIM):
    """Returns (extractor, embedder, manipulator): the real classes, tiny and untrained."""
    keras.utils.set_random_seed(0)
    extractor = FeatureExtractor(
        backbone="small_cnn", feature_dim=feature_dim, image_size=image_size, num_ce_classes=4
    )
    embedder = AttributeEmbedder(feature_dim=feature_dim, embedding_dim=4, hidden_units=8)
    manipulator = FeatureManipulator(
        embedder, feature_dim=feature_dim, embedding_dim=4, g_hidden=(8,), d_hidden=(8,)
    )
    extractor(np.zeros((1, image_size, image_size, 3), np.float32))
    return extractor, embedder, manipulator


def random_image(rng, height, width):
    """A uint8 RGB image [H, W, 3] with some structure (so resizing matters)."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack(
        [
            x * 255 / max(width - 1, 1),
            y * 255 / max(height - 1, 1),
            np.full((height, width), rng.uniform(0, 255)),
        ],
        axis=-1,
    )
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def make_run_dir(root, image_size=IMAGE_SIZE, feature_dim=FEATURE_DIM, num_gallery=NUM_GALLERY):
    """Writes a fake run directory under `root`; returns its path."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "models"))
    os.makedirs(os.path.join(root, "features"))
    os.makedirs(os.path.join(root, "data", "images"))
    with open(os.path.join(root, "config.json"), "w") as f:
        json.dump(
            {"data": {"image_size": image_size}, "extractor": {"feature_dim": feature_dim}}, f
        )
    extractor, embedder, manipulator = build_models(image_size, feature_dim)
    for name, model in (
        ("extractor", extractor),
        ("embedder", embedder),
        ("manipulator", manipulator),
    ):
        model.save(os.path.join(root, "models", f"{name}.keras"))
    rows = []
    for i in range(NUM_IMAGES):  # sizes differ from image_size: the graph must resize
        path = f"images/item{i}.png"
        tf.io.write_file(
            os.path.join(root, "data", path),
            tf.io.encode_png(random_image(rng, 20 + 3 * i, 24 - i)),
        )
        rows.append(
            {
                "path": path,
                "instance_id": f"item{i}",
                "domain": "shop",
                "split": "fam_eval",
                "shape": "shirt",
                "color": "red",
                "pattern": "solid",
                "role": "fam_gallery",
            }
        )
    manifest_lib.write_manifest(os.path.join(root, "data", "manifest.csv"), rows, ["role"])
    feature = rng.normal(size=(num_gallery, feature_dim)).astype(np.float32)
    feature /= np.linalg.norm(feature, axis=1, keepdims=True)
    pick = lambda a: rng.choice(vocabulary.CLASSES[a], num_gallery)  # noqa: E731
    np.savez(
        os.path.join(root, "features", "fam_gallery.npz"),
        feature=feature,
        instance_id=np.array([f"g{i}" for i in range(num_gallery)]),
        path=np.array([f"images/g{i:03d}.png" for i in range(num_gallery)]),
        shape=pick("shape"),
        color=pick("color"),
        pattern=pick("pattern"),
        twin_of=np.array([""] * num_gallery),
    )
    return root


_CACHE = {}


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """Path of the session's tiny fake run directory (built once)."""
    if "run_dir" not in _CACHE:
        _CACHE["run_dir"] = make_run_dir(str(tmp_path_factory.mktemp("run") / "run"))
    return _CACHE["run_dir"]


@pytest.fixture(scope="session")
def exported(run_dir):
    """dict from `export_run(run_dir, output=<run_dir>/export)` (export built once)."""
    from flam_tf.serving import export

    if "exported" not in _CACHE:
        _CACHE["exported"] = export.export_run(run_dir, top_k=10)
    return _CACHE["exported"]


@pytest.fixture(scope="session")
def keras_models(run_dir):
    """(extractor, manipulator) loaded from the run directory's .keras files."""
    if "models" not in _CACHE:
        from flam_tf.serving import export

        _CACHE["models"] = export.load_run_models(run_dir)[1:]
    return _CACHE["models"]


def load_png(path):
    """uint8 [H, W, 3] pixels of a PNG, decoded with PIL (independent of the graph's decoder)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def keras_extract(extractor, pixels, image_size=IMAGE_SIZE):
    """Reference feature of uint8 images [B, H, W, 3]: bilinear resize, float [0, 255], Keras."""
    images = tf.image.resize(tf.cast(pixels, tf.float32), [image_size, image_size])
    return np.asarray(extractor(images, training=False))


def cosine_top_k(queries, gallery, ids, k):
    """numpy reference of the searcher: (ids [B, k], scores [B, k]), best first."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    scores = q @ g.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.asarray(ids)[order], np.take_along_axis(scores, order, axis=1)


def gallery_npz(run_dir):
    """(features [N, D], ids [N]) of the fake run's fam_gallery.npz."""
    with np.load(os.path.join(run_dir, "features", "fam_gallery.npz")) as data:
        return data["feature"], data["path"].astype(str)


@pytest.fixture(scope="module")
def server(exported):
    """A dev server on a free loopback port for one test module; yields "127.0.0.1:<port>"."""
    from flam_tf.serving import dev_server

    grpc_server, port, _ = dev_server.create_server(
        exported["models.config"], port=0, max_workers=8
    )
    grpc_server.start()
    yield f"127.0.0.1:{port}"
    grpc_server.stop(0).wait()


@pytest.fixture(scope="module")
def client(server):
    """A FlamClient of `server`."""
    from flam_tf.serving.client import FlamClient

    with FlamClient(server, timeout_s=30.0) as c:
        yield c
