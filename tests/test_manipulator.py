"""Behaviour of the query feature manipulator that a loss curve would not show.

Each test pins one property that a plausible bug breaks: G's residual form (identity with a zero
correction), the cycle term the report shows, which partners and targets training pairs get, the
retrieval term against an independent numpy reference, and the memory generator's start at the
class-mean shift.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from flam_tf import losses
from flam_tf.models import AttributeEmbedder, FeatureManipulator, Generator, MemoryGenerator
from flam_tf.models.manipulator import select_partners

D = 24
K = 4


def _unit(rows, seed=0):
    x = np.random.default_rng(seed).normal(size=(rows, D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _manipulator(**kwargs):
    keras.utils.set_random_seed(kwargs.pop("init_seed", 0))
    embedder = AttributeEmbedder(D, embedding_dim=K, hidden_units=16)
    return FeatureManipulator(
        embedder, D, embedding_dim=K, g_hidden=(16,), d_hidden=(16,), **kwargs
    )


def _compiled(model, lr=1e-2):
    model.compile(g_optimizer=keras.optimizers.Adam(lr), d_optimizer=keras.optimizers.Adam(lr))
    return model


def _zero_delta(generator):
    for weight in generator.delta.weights:
        weight.assign(np.zeros(weight.shape, np.float32))


@pytest.mark.parametrize("kind", ["mlp", "memory"])
def test_generator_with_zero_delta_is_the_identity_on_unit_features(kind):
    model = _manipulator(generator=kind, retrieval_weight=0.0)
    x = _unit(6)
    # Memory G: any memory, since e equal to the query's own embedding selects the same class twice.
    if kind == "memory":
        model.generator.memory.assign(
            np.random.default_rng(1).normal(size=model.generator.memory.shape).astype(np.float32)
        )
    _zero_delta(model.generator)
    a = tf.constant([0, 1, 2, 0, 1, 2])
    own = tf.stack(list(model.embedder.embed(x).values()), axis=1)
    e = tf.gather(own, a, batch_dims=1)
    np.testing.assert_allclose(model.generate(x, e, a), x, atol=1e-6)
    if kind == "mlp":  # the paper's G ignores which class e names once delta is zero
        other = tf.math.l2_normalize(tf.random.normal((6, K), seed=3), axis=-1)
        np.testing.assert_allclose(model.generate(x, other, a), x, atol=1e-6)


def test_memory_generator_starts_at_the_class_mean_shift():
    """Orthonormal dictionaries: w(d_{a,v}) is one-hot on v, so G = normalize(x + M[t] - M[s])."""
    counts = (3, 3, 3)
    dictionaries = np.zeros((3, 3, K), np.float32)
    for a in range(3):
        dictionaries[a, :, :3] = np.eye(3)
    generator = MemoryGenerator(
        D, K, counts, (8,), memory_temperature=0.01, dictionaries=dictionaries
    )
    memory = np.random.default_rng(2).normal(size=(3, 3, D)).astype(np.float32)
    generator.initialize_memory(memory)
    x = _unit(4)
    a = np.array([0, 1, 2, 1])
    target, source = np.array([2, 0, 1, 2]), np.array([0, 1, 1, 0])
    out = generator((x, dictionaries[a, target], a.astype(np.int32), dictionaries[a, source]))
    expected = x + memory[a, target] - memory[a, source]
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert np.allclose(out[2], x[2], atol=1e-6)  # target == source: nothing moves


def test_memory_generator_never_selects_padding_classes():
    generator = MemoryGenerator(D, K, (2, 3, 3), (8,), dictionaries=np.zeros((3, 3, K)))
    # All-zero dictionaries tie every class: the weight spreads over the real classes only.
    w = generator.class_weights(tf.ones((2, K)), tf.constant([0, 1]))
    np.testing.assert_allclose(w, [[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-6)


def test_reported_cycle_loss_is_the_mean_l1_over_valid_rows():
    model = _compiled(
        _manipulator(target_sampling="partner", generator="memory", retrieval_weight=0.0, seed=4)
    )
    x = _unit(16, seed=5)
    target = (np.arange(16) % 3).astype(np.int32)
    reported = model.evaluate(x, target, batch_size=16, verbose=0, return_dict=True)["cycle_loss"]

    embedded = model.embedder.embed(x)
    e = np.stack([np.asarray(embedded[a]) for a in ("shape", "color", "pattern")], 1)
    classes = np.stack(
        [np.asarray(model.embedder.classify(x)[a][0]) for a in ("shape", "color", "pattern")], 1
    )
    partner, valid = (np.asarray(v) for v in select_partners(e, classes, target))
    rows = np.arange(16)
    x_fake = np.asarray(model.generate(x, e[partner, target], target))
    x_rec = np.asarray(model.generate(x_fake, e[rows, target], target))  # back with phi_a(x)
    expected = np.abs(x - x_rec).mean(axis=1)[valid].mean()
    assert valid.any()
    np.testing.assert_allclose(reported, expected, rtol=1e-5)


@pytest.mark.parametrize("seed", range(20))
def test_every_valid_partner_differs_in_the_target_attribute(seed):
    """A property over random batches whose cosines are mostly negative."""
    rng = np.random.default_rng(seed)
    batch, k = 12, 3
    e = rng.normal(size=(batch, 3, k))
    e /= np.linalg.norm(e, axis=-1, keepdims=True)
    classes = rng.integers(0, 2, size=(batch, 3)).astype(np.int32)
    if seed % 2:
        # Rows of class 1 point the other way in every type: every valid partner then scores
        # below zero and every invalid one above, the case a mask "invalid -> 0" gets wrong.
        sign = np.where(rng.random(batch) < 0.5, 1.0, -1.0)
        e = sign[:, None, None] * np.abs(e[:1]) + 0.05 * rng.normal(size=e.shape)
        e /= np.linalg.norm(e, axis=-1, keepdims=True)
        classes[:] = (sign > 0)[:, None]
    target = rng.integers(0, 3, size=batch).astype(np.int32)
    for online in (True, False):
        partner, valid = select_partners(
            e.astype(np.float32), classes, target, online, seed=tf.constant([seed, 1])
        )
        partner, valid = np.asarray(partner), np.asarray(valid)
        for i in range(batch):
            differs = classes[:, target[i]] != classes[i, target[i]]
            assert valid[i] == differs.any()
            if valid[i]:
                assert classes[partner[i], target[i]] != classes[i, target[i]]
                if online:  # and it is the best-scoring valid one
                    score = sum(e[:, t] @ e[i, t] for t in range(3) if t != target[i])
                    assert score[partner[i]] == pytest.approx(score[differs].max(), abs=1e-5)
            else:
                assert partner[i] == i


def test_uniform_targets_change_only_the_target_type_and_cover_every_other_class():
    model = _manipulator(retrieval_weight=0.0, seed=7)
    x = _unit(64, seed=8)
    target = (np.arange(64) % 3).astype(np.int32)
    own = np.stack(
        [np.asarray(model.embedder.classify(x)[a][0]) for a in ("shape", "color", "pattern")], 1
    )
    seen = set()
    for _ in range(20):
        p = model._pairs(tf.constant(x), tf.constant(target))
        classes = np.asarray(p["target_classes"])
        rows = np.arange(64)
        assert np.all(classes[rows, target] != own[rows, target])
        kept = np.ones_like(own, bool)
        kept[rows, target] = False
        np.testing.assert_array_equal(classes[kept], own[kept])
        shape_rows = target == 0
        seen |= set(((classes[shape_rows, 0] - own[shape_rows, 0]) % 10).tolist())
        # G is given the dictionary vector of the drawn class.
        d = np.asarray(model.embedder.dictionary_vector(target, classes[rows, target]))
        np.testing.assert_allclose(np.asarray(p["e_neg"]), d, atol=1e-6)
    assert seen == set(range(1, 10))  # every other shape is drawn (offsets 1..9 of 10 classes)


def test_retrieval_loss_against_numpy():
    rng = np.random.default_rng(0)
    q, bank = rng.normal(size=(5, 6)), rng.normal(size=(9, 6))
    positive = rng.random((5, 9)) < 0.3
    positive[4] = False  # no positive: 0, and left out of the mean
    positive[0, 0] = True
    tau = 0.1
    s = (
        (q / np.linalg.norm(q, axis=1, keepdims=True))
        @ (bank / np.linalg.norm(bank, axis=1, keepdims=True)).T
        / tau
    )
    expected = np.log(np.exp(s).sum(1)) - np.log((np.exp(s) * positive).sum(1) + 1e-300)
    expected[4] = 0.0
    per = losses.retrieval_loss(q, bank, positive, tau, per_example=True)
    np.testing.assert_allclose(per, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        losses.retrieval_loss(q, bank, positive, tau), expected[:4].mean(), rtol=1e-5
    )
    # Every row a positive: the loss is 0 (all the softmax mass is on positives).
    np.testing.assert_allclose(
        losses.retrieval_loss(q, bank, np.ones((5, 9), bool), tau), 0.0, atol=1e-5
    )
    with pytest.raises(ValueError, match="temperature"):
        losses.retrieval_loss(q, bank, positive, 0.0)


def test_retrieval_term_needs_a_bank_and_lowers_with_training():
    model = _compiled(_manipulator(seed=1))
    x = _unit(64, seed=2)
    with pytest.raises(ValueError, match="set_retrieval_bank"):
        model.fit(x, batch_size=32, epochs=1, verbose=0)
    labels = model.pseudo_labels(x)
    model.initialize_memory(x, labels)
    model.set_retrieval_bank(x, labels)
    target = (np.arange(64) % 3).astype(np.int32)
    before = model.evaluate(x, target, batch_size=64, verbose=0, return_dict=True)
    model.fit(x, target, batch_size=64, epochs=40, verbose=0)
    after = model.evaluate(x, target, batch_size=64, verbose=0, return_dict=True)
    assert after["retrieval_loss"] < before["retrieval_loss"]
    with pytest.raises(ValueError, match="labels"):
        model.set_retrieval_bank(x, labels[:, :2])


def test_memory_is_initialised_at_class_means_and_saved(tmp_path):
    model = _manipulator()
    x = _unit(30, seed=3)
    labels = np.tile(np.array([[0, 1, 2]]), (30, 1))
    labels[:10] = [1, 1, 2]
    labels[5] = [-1, -1, -1]  # unknown rows are left out of every mean
    model.initialize_memory(x, labels)
    memory = np.asarray(model.generator.memory)
    np.testing.assert_allclose(memory[0, 1], x[[i for i in range(10) if i != 5]].mean(0), atol=1e-6)
    np.testing.assert_allclose(memory[0, 0], x[10:].mean(0), atol=1e-6)
    np.testing.assert_array_equal(memory[0, 2], 0.0)  # no row of that class
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded.generator.memory), memory)
    np.testing.assert_allclose(
        np.asarray(loaded.generator.dictionaries), np.asarray(model.generator.dictionaries)
    )
    np.testing.assert_allclose(
        loaded.manipulate(x, "color", "red"), model.manipulate(x, "color", "red"), atol=1e-6
    )


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="generator"):
        _manipulator(generator="transformer")
    with pytest.raises(ValueError, match="target_sampling"):
        _manipulator(target_sampling="random")


def test_generator_accepts_a_source_input_it_ignores():
    generator = Generator(D, K, (8,))
    x, e = _unit(2), tf.math.l2_normalize(tf.ones((2, K)), axis=-1)
    a = tf.constant([0, 1])
    np.testing.assert_allclose(generator((x, e, a)), generator((x, e, a, -e)))


@pytest.mark.parametrize("kind", ["mlp", "memory"])
def test_mixed_bfloat16_trains_in_bfloat16_and_keeps_x_at_full_precision(kind, tmp_path):
    """Under mixed_bfloat16 the Dense layers of G and D compute in bfloat16 while x, the memory,
    the outputs and every loss stay float32: a zero delta is still the identity to float32
    precision (x cast through bfloat16 would be off by about 4e-3), training lowers the loss
    like the float32 model, and the policy survives save/load."""
    x = _unit(64, seed=2)
    target = (np.arange(64) % 3).astype(np.int32)
    results = {}
    for precision in ("float32", "mixed_bfloat16"):
        model = _compiled(_manipulator(generator=kind, seed=1, precision=precision))
        if precision == "mixed_bfloat16":
            dense = model.generator.hidden[0]
            assert dense.compute_dtype == "bfloat16" and dense.kernel.dtype == "float32"
            assert model.discriminator.matching_head.compute_dtype == "bfloat16"
        labels = model.pseudo_labels(x)
        model.initialize_memory(x, labels)
        model.set_retrieval_bank(x, labels)
        a = tf.constant(target)
        own = tf.stack(list(model.embedder.embed(x).values()), axis=1)
        e = tf.gather(own, a, batch_dims=1)
        saved = [w.numpy() for w in model.generator.delta.weights]
        _zero_delta(model.generator)
        out = model.generate(x, e, a)
        assert out.dtype == tf.float32
        np.testing.assert_allclose(out, x, atol=1e-6)
        for w, value in zip(model.generator.delta.weights, saved):
            w.assign(value)
        before = model.evaluate(x, target, batch_size=64, verbose=0, return_dict=True)
        model.fit(x, target, batch_size=64, epochs=20, verbose=0)
        after = model.evaluate(x, target, batch_size=64, verbose=0, return_dict=True)
        assert np.isfinite(after["g_loss"]) and after["g_loss"] < before["g_loss"]
        results[precision] = (before["g_loss"], after["g_loss"], model)
    # bfloat16 keeps about 3 significant digits: the same start, a similar end.
    assert results["mixed_bfloat16"][0] == pytest.approx(results["float32"][0], rel=0.02)
    assert results["mixed_bfloat16"][1] == pytest.approx(results["float32"][1], rel=0.25)
    model = results["mixed_bfloat16"][2]
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.precision == "mixed_bfloat16"
    assert loaded.generator.hidden[0].compute_dtype == "bfloat16"
    np.testing.assert_allclose(
        loaded.manipulate(x, "color", "red"), model.manipulate(x, "color", "red"), atol=1e-6
    )


def test_unknown_precision_is_named():
    with pytest.raises(ValueError, match="precision"):
        _manipulator(precision="float16")
