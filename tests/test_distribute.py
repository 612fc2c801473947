"""One custom train_step on 2 replicas equals the same step on one device.

tests/conftest.py splits the CPU into two logical devices, so MirroredStrategy(["/cpu:0",
"/cpu:1"]) runs 2 real replicas. For each model: build one copy on the default strategy and one in
the mirrored scope, copy the weights, run one SGD step on the same global batch (the mirrored run
splits it into two contiguous halves), and compare the weight updates.

Tolerance: the replicas sum their gradients in a different order than one device summing over the
whole batch (and the all-reduce adds one more float32 addition), so elements agree to float32
rounding of the accumulated sums, not bit for bit. An element that is a small difference of large
terms (cancellation, e.g. through the BatchNorm backward pass) keeps the absolute rounding error of
those terms, so the bound is scaled per tensor: |update_2 - update_1| <= 1e-4 * |update_1| +
1e-4 * max|update_1 of that tensor|. The worst case seen is ~3e-6 of the tensor's largest update
(extractor conv weights), a 30x margin, while a missing 1/N loss scaling would be off by
100% on every element.

Making the 2-replica step equal to the global step needs in-batch mining to give the same triplets:
  - extractor: triplet_weight=0 (CE only, a setting that does not mine); the CE is a masked mean
    whose count is all-reduced (`distribute.masked_mean`), and the halves hold different numbers of
    CE-labelled rows to exercise it. The small_cnn's BatchNorm is synchronized, so batch statistics
    are global on both runs.
  - embedder: the second half is a copy of the first. Eq. 2 mines negatives among the batch rows of
    another class; every copy has the distance of its original, so the mined distance and the mean
    over valid rows are the same on a half and on the whole batch.
  - GAN: the same copied halves, plus the target attribute types passed with the data (no random
    draw). With online sampling a row's best partner on the whole batch is its half's best partner or
    that partner's copy: the same feature either way.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from flam_tf import distribute
from flam_tf.models import AttributeEmbedder, FeatureExtractor, FeatureManipulator

D = 16
K = 4
RTOL = 1e-4


@pytest.fixture(scope="module")
def mirrored():
    strategy = distribute.get_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    return strategy


def _assert_same_step(build, compile_fn, fit_args, mirrored, weight_rounding=False):
    """Builds, copies weights, steps once on each strategy, compares the updates.

    `fit_args` is (x, y, batch_size) or a tf.data.Dataset of one batch. With `weight_rounding`
    the tolerance also admits float32 rounding of |w|: an update is read back as
    (w0 + u) - w0, exact only to that."""
    reference = build()
    compile_fn(reference)
    with mirrored.scope():
        replicated = build()
        compile_fn(replicated)
    replicated.set_weights(reference.get_weights())
    start = [np.array(w) for w in reference.get_weights()]

    if isinstance(fit_args, tf.data.Dataset):
        reference.fit(fit_args, epochs=1, verbose=0)
        replicated.fit(fit_args, epochs=1, verbose=0)
    else:
        x, y, batch_size = fit_args
        reference.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
        replicated.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)

    changed = 0
    for w0, a, b in zip(start, reference.get_weights(), replicated.get_weights()):
        scale = float(np.max(np.abs(a - w0)))
        rounding = (
            4 * float(np.finfo(np.float32).eps) * float(np.max(np.abs(w0)))
            if weight_rounding
            else 1e-12
        )
        np.testing.assert_allclose(b - w0, a - w0, rtol=RTOL, atol=RTOL * scale + rounding)
        changed += int(not np.array_equal(a, w0))
    assert changed > 0  # the step did something
    return reference, replicated, start


def _duplicated_features(n_half, seed):
    rng = np.random.default_rng(seed)
    half = rng.normal(size=(n_half, D)).astype("float32")
    half /= np.linalg.norm(half, axis=1, keepdims=True)
    return np.concatenate([half, half])


def test_extractor_step_matches_on_two_replicas(mirrored):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    instance = np.arange(8, dtype="int32")
    ce_class = np.array([0, 1, 2, -1, 0, -1, -1, -1], "int32")  # 3 labelled rows vs 1
    targets = {"instance": instance, "ce_class": ce_class}

    def build():
        keras.utils.set_random_seed(0)
        return FeatureExtractor(feature_dim=8, image_size=16, num_ce_classes=3, triplet_weight=0.0)

    _assert_same_step(
        build,
        lambda m: m.compile(optimizer=keras.optimizers.SGD(0.1)),
        (images, targets, 8),
        mirrored,
    )


def test_extractor_attribute_term_matches_on_two_replicas(mirrored):
    """The attribute stream is split across replicas like the PK batch; its masked means count
    the known labels of the global batch (uneven between the two halves here)."""
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    targets = {
        "instance": np.arange(8, dtype="int32"),
        "ce_class": np.array([0, 1, 2, -1, 0, -1, -1, -1], "int32"),
    }
    attribute_images = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    labels = np.array(
        [
            [0, 1, -1],
            [1, -1, -1],
            [0, 0, -1],
            [1, 1, -1],
            [-1, 0, 1],
            [-1, -1, -1],
            [0, -1, -1],
            [-1, -1, -1],
        ],
        "int32",
    )
    ds = tf.data.Dataset.zip(
        (
            tf.data.Dataset.from_tensors((images, targets)),
            tf.data.Dataset.from_tensors((attribute_images, labels)),
        )
    )

    def build():
        keras.utils.set_random_seed(0)
        return FeatureExtractor(
            feature_dim=8,
            image_size=16,
            num_ce_classes=3,
            triplet_weight=0.0,
            attribute_weight=1.0,
            attribute_classes=(2, 2, 2),
        )

    reference, _, start = _assert_same_step(
        build,
        lambda m: m.compile(optimizer=keras.optimizers.SGD(0.1)),
        ds,
        mirrored,
        weight_rounding=True,
    )
    head = reference.attribute_heads[0].kernel
    assert not np.array_equal(
        np.array(head), start[[w.path for w in reference.weights].index(head.path)]
    )


def test_embedder_step_matches_on_two_replicas(mirrored):
    features = _duplicated_features(8, seed=1)
    rng = np.random.default_rng(1)
    labels = np.tile(rng.integers(-1, 3, size=(8, 3)), (2, 1)).astype("int32")

    def build():
        keras.utils.set_random_seed(1)
        return AttributeEmbedder(D, embedding_dim=K, hidden_units=8, margin=0.5)

    _assert_same_step(
        build,
        lambda m: m.compile(optimizer=keras.optimizers.SGD(0.5)),
        (features, labels, 16),
        mirrored,
    )


@pytest.mark.parametrize("generator", ["mlp", "memory"])
def test_manipulator_step_matches_on_two_replicas(mirrored, generator):
    """The paper's G, and the memory G with the retrieval term (partners chosen by online
    sampling, so both runs draw nothing at random)."""
    features = _duplicated_features(8, seed=2)
    target = np.tile(np.arange(8) % 3, 2).astype("int32")

    def build():
        keras.utils.set_random_seed(2)
        embedder = AttributeEmbedder(D, embedding_dim=K, hidden_units=8)
        model = FeatureManipulator(
            embedder,
            D,
            embedding_dim=K,
            g_hidden=(8,),
            d_hidden=(8,),
            generator=generator,
            target_sampling="partner",
            adversarial=generator == "mlp",
            retrieval_weight=1.0 if generator == "memory" else 0.0,
            retrieval_temperature=0.5,
        )
        if generator == "memory":
            labels = model.pseudo_labels(features)
            model.initialize_memory(features, labels)
            model.set_retrieval_bank(features, labels)
        return model

    def compile_fn(model):
        model.compile(g_optimizer=keras.optimizers.SGD(0.5), d_optimizer=keras.optimizers.SGD(0.5))

    reference, replicated, _ = _assert_same_step(
        build, compile_fn, (features, target, 16), mirrored
    )
    # The D optimizer was built in the scope, on D's variables only (else 2 replicas fail).
    assert replicated.d_optimizer.iterations.numpy() == 1


def test_manipulator_random_draws_on_two_replicas_smoke(mirrored):
    """Smoke test: target types and uniform partners drawn per replica (seed + replica id) run."""
    features = _duplicated_features(8, seed=3)
    with mirrored.scope():
        embedder = AttributeEmbedder(D, embedding_dim=K, hidden_units=8)
        model = FeatureManipulator(
            embedder,
            D,
            embedding_dim=K,
            g_hidden=(8,),
            d_hidden=(8,),
            target_sampling="partner",
            online_sampling=False,
            adversarial=True,
            retrieval_weight=0.0,
        )
        model.compile(
            g_optimizer=keras.optimizers.Adam(1e-3), d_optimizer=keras.optimizers.Adam(1e-3)
        )
    history = model.fit(features, batch_size=16, epochs=2, verbose=0).history
    assert all(np.isfinite(v).all() for v in history.values())


def test_get_strategy_choices(monkeypatch):
    assert distribute.get_strategy() is tf.distribute.get_strategy()
    with pytest.raises(ValueError, match="'tpu'.*default.*mirrored.*multi_worker"):
        distribute.get_strategy("tpu")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.get_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        distribute.get_strategy("multi_worker")


def test_scaled_loss_and_masked_mean(mirrored):
    assert float(distribute.scaled_loss(tf.constant(3.0))) == 3.0
    with mirrored.scope():
        assert float(distribute.scaled_loss(tf.constant(3.0))) == 1.5

    values = tf.constant([1.0, 2.0, 3.0, 4.0])
    mask = tf.constant([True, False, True, True])
    assert float(distribute.masked_mean(values, mask)) == pytest.approx(8.0 / 3.0)

    # On 2 replicas: replica 0 holds [1, 2] (mask 1, 0), replica 1 holds [3, 4] (mask 1, 1).
    # Estimates N * local_sum / global_count: 2 * 1 / 3 and 2 * 7 / 3; their mean is 8/3.
    dataset = tf.data.Dataset.from_tensor_slices((values, mask)).batch(4)
    batch = next(iter(mirrored.experimental_distribute_dataset(dataset)))
    estimates = mirrored.run(lambda v, m: distribute.masked_mean(v, m), args=batch)
    local = [float(t) for t in mirrored.experimental_local_results(estimates)]
    np.testing.assert_allclose(local, [2.0 / 3.0, 14.0 / 3.0], rtol=1e-6)
    assert np.mean(local) == pytest.approx(8.0 / 3.0)


def test_check_finite_names_the_loss():
    with pytest.raises(tf.errors.InvalidArgumentError, match="my_loss is NaN"):
        distribute.check_finite(tf.constant(np.nan), "my_loss")
