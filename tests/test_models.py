"""Tests of flam_tf.models: shapes, norms, serialization, training, Table 3 switches, errors.

Every model is tiny (feature sizes 8-32, images 16x16) so the module runs in well under a minute on
2 CPU cores.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from flam_tf import losses
from flam_tf.models import (
    AttributeEmbedder,
    ClsConcat,
    Discriminator,
    EmbConcat,
    FeatureExtractor,
    FeatureManipulator,
    Generator,
    GlobalPooling,
    ImagenetPreprocessing,
    PixelConcat,
    build_backbone,
    select_partners,
)
from flam_tf.vocabulary import ATTRIBUTE_TYPES, CLASSES, NUM_CLASSES

D = 24  # feature size of the tiny models
K = 4  # embedding size k


def _norms(x):
    return np.linalg.norm(np.asarray(x), axis=-1)


def _save_load(model, tmp_path, name):
    path = os.path.join(tmp_path, f"{name}.keras")
    model.save(path)
    return keras.models.load_model(path)


def _separable_features(n, seed=0, noise=0.1):
    """Features whose three attribute classes (0..2 per type) are linearly separable.

    x = sum_a P_a[label_a] + noise, with random class prototypes P_a in R^D.
    """
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(3, 3, D))
    labels = rng.integers(0, 3, size=(n, 3))
    features = sum(prototypes[a][labels[:, a]] for a in range(3))
    features = features + noise * rng.normal(size=features.shape)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    return features.astype("float32"), labels.astype("int32")


def _tiny_embedder(**kwargs):
    return AttributeEmbedder(D, embedding_dim=K, hidden_units=16, **kwargs)


def _tiny_manipulator(embedder=None, **kwargs):
    """The paper's manipulator (MLP G, partners, no terms of ours) unless kwargs say otherwise;
    tests/test_manipulator.py covers the memory G and the retrieval term."""
    embedder = embedder or _tiny_embedder()
    settings = dict(
        generator="mlp",
        target_sampling="partner",
        adversarial=True,
        adv_weight=1.0,
        match_weight=1.0,
        cycle_weight=10.0,
        teacher_weight=0.0,
        retrieval_weight=0.0,
    )
    settings.update(kwargs)
    return FeatureManipulator(
        embedder, D, embedding_dim=K, g_hidden=(16,), d_hidden=(16,), **settings
    )


# ------------------------------------------------------------------------------- backbones


def test_small_cnn_shape_and_scaling():
    backbone = build_backbone("small_cnn", 16)
    images = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    assert backbone(images).shape == (2, 1, 1, 192)  # four stride-2 stages: 16 -> 1
    assert backbone.get_layer("rescale").scale == pytest.approx(1 / 255)


@pytest.mark.parametrize("name", ["resnet50", "densenet121", "inception_resnet_v2"])
def test_imagenet_preprocessing_matches_keras_applications(name):
    images = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    module = {
        "resnet50": keras.applications.resnet50,
        "densenet121": keras.applications.densenet,
        "inception_resnet_v2": keras.applications.inception_resnet_v2,
    }[name]
    expected = module.preprocess_input(images.copy())
    np.testing.assert_allclose(ImagenetPreprocessing(name)(images), expected, rtol=1e-6)


def test_global_pooling_against_numpy():
    x = np.random.default_rng(1).uniform(0.1, 2.0, (2, 3, 3, 4)).astype("float32")
    np.testing.assert_allclose(GlobalPooling("spoc")(x), x.sum(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(GlobalPooling("mac")(x), x.max(axis=(1, 2)), rtol=1e-6)
    gem = GlobalPooling("gem")
    np.testing.assert_allclose(gem(x), np.mean(x**3, axis=(1, 2)) ** (1 / 3), rtol=1e-5)
    assert float(gem.p) == 3.0 and gem.p.trainable
    # GeM clamps at eps: non-positive activations do not give NaN.
    assert np.all(np.isfinite(gem(-x)))
    clone = GlobalPooling.from_config(gem.get_config())
    assert clone.mode == "gem" and clone.eps == gem.eps
    with pytest.raises(ValueError, match="avg"):
        GlobalPooling("avg")


def test_backbone_errors(tmp_path):
    with pytest.raises(ValueError, match="vgg16.*small_cnn.*resnet50"):
        build_backbone("vgg16", 64)
    with pytest.raises(ValueError, match="offline.*local"):
        build_backbone("resnet50", 64, weights="imagenet")
    missing = os.path.join(tmp_path, "nope.weights.h5")
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        build_backbone("small_cnn", 16, weights=missing)
    with pytest.raises(ValueError, match="offline"):
        FeatureExtractor(backbone="resnet50", weights="imagenet")


def test_backbone_loads_local_weights_file(tmp_path):
    source = build_backbone("small_cnn", 16)
    path = os.path.join(tmp_path, "small.weights.h5")
    source.save_weights(path)
    loaded = build_backbone("small_cnn", 16, weights=path)
    for a, b in zip(source.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------- extractor


def _instance_images(num_instances=4, per_instance=4, size=16, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 255, (num_instances, size, size, 3))
    images = np.repeat(base, per_instance, axis=0)
    images = np.clip(images + rng.normal(0, 10, images.shape), 0, 255).astype("float32")
    instance = np.repeat(np.arange(num_instances), per_instance).astype("int32")
    return images, instance


def test_feature_extractor_shapes_config_and_save(tmp_path):
    model = FeatureExtractor(feature_dim=8, image_size=16, num_ce_classes=3, pooling="gem")
    images, _ = _instance_images(2, 2)
    out = model(images)
    assert out.shape == (4, 8)
    np.testing.assert_allclose(_norms(out), 1.0, rtol=1e-5)

    config = model.get_config()
    clone = FeatureExtractor.from_config(config)
    assert clone.get_config() == config
    assert [w.shape for w in clone.weights] == [w.shape for w in model.weights]

    loaded = _save_load(model, tmp_path, "extractor")
    np.testing.assert_allclose(loaded(images), out, rtol=1e-5, atol=1e-6)

    no_projection = FeatureExtractor(feature_dim=None, image_size=16, num_ce_classes=3)
    assert no_projection(images).shape == (4, 192)


def test_feature_extractor_training_lowers_loss():
    keras.utils.set_random_seed(0)
    images, instance = _instance_images()
    targets = {"instance": instance, "ce_class": np.where(instance < 3, instance, -1)}
    model = FeatureExtractor(feature_dim=16, image_size=16, num_ce_classes=3, margin=0.2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = model.evaluate(images, targets, batch_size=16, verbose=0, return_dict=True)
    history = model.fit(images, targets, batch_size=16, epochs=30, verbose=0, shuffle=False)
    after = model.evaluate(images, targets, batch_size=16, verbose=0, return_dict=True)
    assert set(history.history) == {"loss", "ce_loss", "triplet_loss"}
    assert after["loss"] < 0.5 * before["loss"]
    assert after["ce_loss"] < before["ce_loss"]


def test_feature_extractor_attribute_term_against_numpy_and_training():
    """The attribute term: per type, the mean CE of scale * cos(feature, w_c) over the rows with a
    label (-1 left out), averaged over types; it is added with its weight and lowers in training."""
    keras.utils.set_random_seed(0)
    images, instance = _instance_images()
    targets = {"instance": instance, "ce_class": np.where(instance < 3, instance, -1)}
    rng = np.random.default_rng(0)
    labels = np.stack([instance % 2, (instance + 1) % 3, rng.integers(0, 2, len(instance))], 1)
    labels[::3, 1] = -1  # missing labels
    labels[:, 2] = -1  # a type with no label at all contributes 0
    labels = labels.astype(np.int32)
    model = FeatureExtractor(
        feature_dim=16,
        image_size=16,
        num_ce_classes=3,
        attribute_weight=0.5,
        attribute_classes=(2, 3, 2),
    )
    f = model(images).numpy()
    expected = []
    for t, head in enumerate(model.attribute_heads):
        w = head.kernel.numpy()
        logits = (
            16.0
            * (f / np.linalg.norm(f, axis=1, keepdims=True))
            @ (w / np.linalg.norm(w, axis=0, keepdims=True))
        )
        known = labels[:, t] >= 0
        log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        expected.append(-log_p[known, labels[known, t]].mean() if known.any() else 0.0)
    got = float(model.attribute_loss(images, labels))
    np.testing.assert_allclose(got, np.mean(expected), rtol=1e-4)

    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    ds = tf.data.Dataset.zip(
        (
            tf.data.Dataset.from_tensor_slices((images, targets)).batch(16),
            tf.data.Dataset.from_tensor_slices((images, labels)).batch(16),
        )
    )
    before = model.evaluate(ds, verbose=0, return_dict=True)
    no_attr = FeatureExtractor.from_config({**model.get_config(), "attribute_weight": 0.0})
    by_path = {w.path: w for w in model.weights}
    for w in no_attr.weights:
        w.assign(by_path[w.path])
    no_attr.compile(optimizer=keras.optimizers.Adam(1e-2))
    plain = no_attr.evaluate(images, targets, batch_size=16, verbose=0, return_dict=True)
    # loss = CE + triplet + 0.5 * attribute (the same CE and triplet as without the term).
    np.testing.assert_allclose(
        before["loss"], plain["loss"] + 0.5 * before["attribute_loss"], rtol=1e-4
    )
    history = model.fit(ds, epochs=20, verbose=0)
    after = model.evaluate(ds, verbose=0, return_dict=True)
    assert "attribute_loss" in history.history
    assert after["attribute_loss"] < 0.5 * before["attribute_loss"]
    with pytest.raises(ValueError, match="attribute_images"):
        model.fit(images, targets, batch_size=16, epochs=1, verbose=0)
    assert FeatureExtractor.from_config(model.get_config()).get_config() == model.get_config()


def test_feature_extractor_nan_input_raises():
    model = FeatureExtractor(feature_dim=8, image_size=16, num_ce_classes=2)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    images, instance = _instance_images(2, 2)
    images[0, 0, 0, 0] = np.nan
    targets = {"instance": instance, "ce_class": instance}
    with pytest.raises(tf.errors.InvalidArgumentError, match="FeatureExtractor loss is NaN"):
        model.fit(images, targets, batch_size=4, epochs=1, verbose=0)


# ------------------------------------------------------------------------------- embedder


def test_attribute_embedder_outputs():
    model = _tiny_embedder()
    features, _ = _separable_features(6)
    out = np.asarray(model(features))
    assert out.shape == (6, 3 * K)
    embedded = model.embed(features)
    for i, attribute in enumerate(ATTRIBUTE_TYPES):  # blocks in ATTRIBUTE_TYPES order, unit norm
        np.testing.assert_allclose(out[:, i * K : (i + 1) * K], embedded[attribute], rtol=1e-6)
        np.testing.assert_allclose(_norms(embedded[attribute]), 1.0, rtol=1e-5)
        assert model.dictionary(attribute).shape == (NUM_CLASSES[attribute], K)
        np.testing.assert_allclose(_norms(model.dictionary(attribute)), 1.0, rtol=1e-5)

    vectors = model.dictionary_vector(tf.constant([0, 1, 2]), tf.constant([3, 0, 9]))
    np.testing.assert_allclose(vectors[0], model.dictionary("shape")[3], rtol=1e-6)
    np.testing.assert_allclose(vectors[1], model.dictionary("color")[0], rtol=1e-6)
    np.testing.assert_allclose(vectors[2], model.dictionary("pattern")[9], rtol=1e-6)

    predicted = model.classify(features)
    for attribute in ATTRIBUTE_TYPES:
        cosine = np.asarray(embedded[attribute]) @ np.asarray(model.dictionary(attribute)).T
        index, score = predicted[attribute]
        assert index.dtype == tf.int32
        np.testing.assert_array_equal(index, cosine.argmax(axis=1))
        np.testing.assert_allclose(score, cosine.max(axis=1), rtol=1e-5)
    with pytest.raises(ValueError, match="size"):
        model.dictionary("size")


def test_attribute_embedder_config_and_save(tmp_path):
    model = _tiny_embedder(dropout=0.1, mining="hard")
    assert AttributeEmbedder.from_config(model.get_config()).get_config() == model.get_config()
    features, _ = _separable_features(5)
    loaded = _save_load(model, tmp_path, "embedder")
    np.testing.assert_allclose(loaded(features), model(features), rtol=1e-5, atol=1e-6)
    for attribute in ATTRIBUTE_TYPES:
        np.testing.assert_allclose(loaded.dictionary(attribute), model.dictionary(attribute))


def test_attribute_embedder_training_separates_classes():
    keras.utils.set_random_seed(1)
    features, labels = _separable_features(48, seed=1)
    labels[::5, 1] = -1  # missing colour labels are masked, not a class
    model = _tiny_embedder(margin=0.2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = model.evaluate(features, labels, batch_size=48, verbose=0, return_dict=True)
    model.fit(features, labels, batch_size=48, epochs=40, verbose=0)
    after = model.evaluate(features, labels, batch_size=48, verbose=0, return_dict=True)
    assert set(after) == {"loss", "shape_loss", "color_loss", "pattern_loss"}
    assert after["loss"] < 0.5 * before["loss"]
    predicted = model.classify(features)
    for i, attribute in enumerate(ATTRIBUTE_TYPES):
        known = labels[:, i] >= 0
        accuracy = np.mean(np.asarray(predicted[attribute][0])[known] == labels[known, i])
        assert accuracy > 0.9, (attribute, accuracy)


def test_attribute_embedder_loss_is_eq2():
    model = _tiny_embedder()
    features, labels = _separable_features(8)
    labels[0, 2] = -1
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    result = model.evaluate(features, labels, batch_size=8, verbose=0, return_dict=True)
    embedded = model.embed(features)
    expected = 0.0
    for i, attribute in enumerate(ATTRIBUTE_TYPES):
        value = float(
            losses.embedder_triplet_loss(
                labels[:, i], embedded[attribute], model.dictionaries[attribute], margin=0.2
            )
        )
        np.testing.assert_allclose(result[f"{attribute}_loss"], value, rtol=1e-5)
        expected += value
    np.testing.assert_allclose(result["loss"], expected, rtol=1e-5)


# ------------------------------------------------------------------------------- manipulator


def test_generator_and_discriminator_shapes_and_config():
    generator = Generator(D, K, (16, 8))
    x, _ = _separable_features(3)
    e = tf.math.l2_normalize(tf.random.normal((3, K)), axis=-1)
    out = generator((x, e, tf.constant([0, 1, 2])))
    assert out.shape == (3, D)
    np.testing.assert_allclose(_norms(out), 1.0, rtol=1e-5)
    assert Generator.from_config(generator.get_config()).get_config() == generator.get_config()
    discriminator = Discriminator(D, K, 3, (16,))
    logits, matching = discriminator(x)
    assert logits.shape == (3,) and matching.shape == (3, 3 * K)
    clone = Discriminator.from_config(discriminator.get_config())
    assert clone.get_config() == discriminator.get_config()


def test_select_partners_online_sampling_by_hand():
    # Rows: target type 1 (colour) for every row. Row 0 has colour 0; rows 2 and 3 have another
    # colour, row 1 the same colour (invalid). Row 3 is closer to row 0 in shape and pattern.
    k = 2
    e = np.zeros((4, 3, k), "float32")
    e[:, :, 0] = 1.0
    e[2, 0] = [0.0, 1.0]  # row 2: shape far from row 0
    e[2, 2] = [0.0, 1.0]  # row 2: pattern far from row 0
    e[3, 0] = [0.8, 0.6]  # row 3: shape close to row 0
    e[1, 1] = [0.0, 1.0]  # only colour differs; must not matter for type 1
    classes = np.array([[0, 0, 0], [0, 0, 0], [0, 1, 0], [0, 2, 0]], "int32")
    target = np.array([1, 1, 1, 0], "int32")
    partner, valid = select_partners(e, classes, target, online_sampling=True)
    assert int(partner[0]) == 3  # valid (colour 2 != 0), closest in the remaining types
    assert int(partner[1]) == 3
    # Row 2 (colour 1): rows 0, 1, 3 are valid; shape cosines 0, 0, 0.6 and pattern 0, 0, 0.
    assert int(partner[2]) == 3
    assert not bool(valid[3]) and int(partner[3]) == 3  # every row has shape 0: no valid partner
    assert np.asarray(valid).tolist() == [True, True, True, False]

    # Without online sampling, the partner is a uniformly drawn valid one.
    seen = set()
    for i in range(30):
        partner, valid = select_partners(
            e, classes, target, online_sampling=False, seed=tf.constant([i, 0])
        )
        assert int(partner[0]) in (2, 3)
        seen.add(int(partner[0]))
    assert seen == {2, 3}


def test_manipulator_config_and_save_with_nested_embedder(tmp_path):
    embedder = _tiny_embedder()
    model = _tiny_manipulator(
        embedder, matching="S", adversarial=False, online_sampling=False, cycle_weight=5.0, seed=3
    )
    assert not model.embedder.trainable
    config = model.get_config()
    clone = FeatureManipulator.from_config(config)
    assert clone.get_config() == config
    assert isinstance(clone.embedder, AttributeEmbedder) and not clone.embedder.trainable

    x, _ = _separable_features(4)
    a = tf.constant([1, 1, 0, 2])
    e = model.embedder.dictionary_vector(a, tf.constant([0, 3, 2, 9]))
    loaded = _save_load(model, tmp_path, "manipulator")
    np.testing.assert_allclose(loaded((x, e, a)), model((x, e, a)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.embedder(x), model.embedder(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        loaded.manipulate(x, "color", "red"),
        model.manipulate(x, "color", "red"),
        rtol=1e-5,
        atol=1e-6,
    )


def test_manipulate_api():
    model = _tiny_manipulator()
    x, _ = _separable_features(3)
    red = CLASSES["color"].index("red")
    expected = model.generator(
        (x, tf.repeat(model.embedder.dictionary("color")[red : red + 1], 3, 0), tf.fill([3], 1))
    )
    out = model.manipulate(x, "color", "red")
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_allclose(_norms(out), 1.0, rtol=1e-5)
    indices = model.manipulate_indices(x, tf.constant([1, 1, 1]), tf.constant([red] * 3))
    np.testing.assert_allclose(indices, expected, rtol=1e-6)

    sequence = model.manipulate(x, [("color", "red"), ("pattern", "striped")])
    np.testing.assert_allclose(sequence, model.manipulate(out, "pattern", "striped"), rtol=1e-6)

    with pytest.raises(ValueError, match="'purple'"):
        model.manipulate(x, "color", "purple")
    with pytest.raises(ValueError, match="'size'"):
        model.manipulate(x, [("color", "red"), ("size", "XL")])


def _gan_batch(n=16, seed=0):
    features, _ = _separable_features(n, seed=seed)
    target = np.arange(n, dtype="int32") % 3
    return features, target


def _compiled(model, lr=1e-2):
    model.compile(g_optimizer=keras.optimizers.Adam(lr), d_optimizer=keras.optimizers.Adam(lr))
    return model


def test_manipulator_training_lowers_generator_losses():
    keras.utils.set_random_seed(2)
    features, target = _gan_batch(32)
    model = _compiled(_tiny_manipulator())
    before = model.evaluate(features, target, batch_size=32, verbose=0, return_dict=True)
    history = model.fit(features, target, batch_size=32, epochs=30, verbose=0)
    after = model.evaluate(features, target, batch_size=32, verbose=0, return_dict=True)
    assert set(history.history) == {
        "d_loss",
        "g_loss",
        "adv_loss",
        "match_loss",
        "cycle_loss",
        "retrieval_loss",
        "cycle_cosine",
    }
    assert after["g_loss"] < before["g_loss"]
    assert after["cycle_loss"] < before["cycle_loss"]
    assert after["match_loss"] < before["match_loss"]
    assert after["cycle_cosine"] > before["cycle_cosine"]
    # Random target types (no target in the data) also train.
    model.fit(features, batch_size=32, epochs=1, verbose=0)


def test_adversarial_off_leaves_real_fake_branch_untouched():
    features, target = _gan_batch()
    model = _compiled(_tiny_manipulator(adversarial=False))
    head = [np.array(w) for w in model.discriminator.logit_head.weights]
    matching = [np.array(w) for w in model.discriminator.matching_head.weights]
    result = model.fit(features, target, batch_size=16, epochs=2, verbose=0).history
    assert result["adv_loss"] == [0.0, 0.0]
    for before, after in zip(head, model.discriminator.logit_head.weights):
        np.testing.assert_array_equal(before, after)
    assert any(
        not np.array_equal(b, a)
        for b, a in zip(matching, model.discriminator.matching_head.weights)
    )

    on = _compiled(_tiny_manipulator(adversarial=True))
    on.set_weights(model.get_weights())
    assert on.evaluate(features, target, batch_size=16, verbose=0, return_dict=True)["adv_loss"] > 0


def test_matching_modes_compute_different_losses():
    features, target = _gan_batch()
    m_model = _compiled(_tiny_manipulator(matching="M"))
    s_model = _compiled(_tiny_manipulator(matching="S"))
    s_model.set_weights(m_model.get_weights())
    m = m_model.evaluate(features, target, batch_size=16, verbose=0, return_dict=True)
    s = s_model.evaluate(features, target, batch_size=16, verbose=0, return_dict=True)
    # S matches one block of three: strictly less distance to cover than M.
    assert 0.0 < s["match_loss"] < m["match_loss"]
    assert s["cycle_loss"] == pytest.approx(m["cycle_loss"], rel=1e-6)


def test_online_sampling_switch_changes_partners():
    features, target = _gan_batch(32)
    on = _compiled(_tiny_manipulator(online_sampling=True))
    off = _compiled(_tiny_manipulator(online_sampling=False))
    off.set_weights(on.get_weights())
    a = on.evaluate(features, target, batch_size=32, verbose=0, return_dict=True)
    b = off.evaluate(features, target, batch_size=32, verbose=0, return_dict=True)
    assert a["cycle_loss"] != pytest.approx(b["cycle_loss"], rel=1e-6)


def test_manipulator_nan_input_raises():
    features, target = _gan_batch()
    features[0, 0] = np.nan
    model = _compiled(_tiny_manipulator())
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
        model.fit(features, target, batch_size=16, epochs=1, verbose=0)


# ------------------------------------------------------------------------------- baselines


@pytest.mark.parametrize("cls", [ClsConcat, EmbConcat])
def test_baseline_train_represent_prototypes_manipulate(cls, tmp_path):
    keras.utils.set_random_seed(3)
    features, labels = _separable_features(48, seed=3)
    labels[::4, 0] = -1
    model = cls(D, block_dim=8)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = model.evaluate(features, labels, batch_size=48, verbose=0, return_dict=True)
    model.fit(features, labels, batch_size=48, epochs=30, verbose=0)
    after = model.evaluate(features, labels, batch_size=48, verbose=0, return_dict=True)
    assert after["loss"] < 0.7 * before["loss"]

    r = np.asarray(model.represent(features))
    assert r.shape == (48, 24)
    np.testing.assert_allclose(_norms(r), 1.0, rtol=1e-5)
    blocks = r.reshape(48, 3, 8) * np.sqrt(3.0)  # each block has norm 1/sqrt(3) in r
    np.testing.assert_allclose(np.linalg.norm(blocks, axis=-1), 1.0, rtol=1e-5)

    counts = model.fit_prototypes(features, labels)
    shape_class = labels[:, 0] == 1
    np.testing.assert_allclose(
        model.prototypes["shape"][1], blocks[shape_class, 0].mean(axis=0), rtol=1e-4, atol=1e-6
    )
    assert counts["shape"][1] == shape_class.sum() and counts["shape"][5] == 0

    manipulated = np.asarray(model.manipulate(r[:2], [0, 2], [1, 0]))
    np.testing.assert_allclose(_norms(manipulated), 1.0, rtol=1e-5)
    out_blocks = manipulated.reshape(2, 3, 8) * np.sqrt(3.0)
    prototype = np.asarray(model.prototypes["shape"][1])
    np.testing.assert_allclose(out_blocks[0, 0], prototype / np.linalg.norm(prototype), rtol=1e-4)
    np.testing.assert_allclose(out_blocks[0, 1:], blocks[0, 1:], rtol=1e-4, atol=1e-6)

    assert cls.from_config(model.get_config()).get_config() == model.get_config()
    loaded = _save_load(model, tmp_path, cls.__name__)
    np.testing.assert_allclose(loaded.represent(features), r, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.prototypes["shape"], model.prototypes["shape"])


def test_generator_slot_tells_attribute_types_apart():
    """The same e in another attribute's slot is a different request (Generator docstring)."""
    generator = Generator(D, K, (16,))
    x, _ = _separable_features(2)
    e = tf.math.l2_normalize(tf.random.normal((1, K), seed=1), axis=-1)
    e = tf.repeat(e, 2, axis=0)
    as_color = generator((x, e, tf.constant([1, 1])))
    as_shape = generator((x, e, tf.constant([0, 0])))
    assert np.max(np.abs(np.asarray(as_color) - np.asarray(as_shape))) > 1e-4


def test_teacher_weight_adds_the_embedder_matching_term():
    features, target = _gan_batch()
    off = _compiled(_tiny_manipulator(teacher_weight=0.0))
    on = _compiled(_tiny_manipulator(teacher_weight=2.0))
    on.set_weights(off.get_weights())
    g_off = off.evaluate(features, target, batch_size=16, verbose=0, return_dict=True)["g_loss"]
    g_on = on.evaluate(features, target, batch_size=16, verbose=0, return_dict=True)["g_loss"]
    # g_loss gains 2 * ||phi(x~) - target||, a positive distance for an untrained G.
    assert g_on > g_off + 1e-3
    assert on.get_config()["teacher_weight"] == 2.0


@pytest.mark.parametrize("head_cls", [ClsConcat, EmbConcat])
def test_pixel_baseline_trains_from_images_and_round_trips(head_cls, tmp_path):
    keras.utils.set_random_seed(4)
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, size=(32, 3)).astype("int32")
    # Images whose colour channels carry the three labels.
    images = (np.ones((32, 16, 16, 3)) * labels[:, None, None, :] * 80.0).astype("float32")
    images += rng.uniform(0, 10, size=images.shape).astype("float32")
    labels[::5, 1] = -1
    model = PixelConcat(head_cls(8, block_dim=6), feature_dim=8, image_size=16)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    # Training-mode losses (the encoder's BatchNorm statistics lag behind in 15 steps).
    history = model.fit(images, labels, batch_size=32, epochs=15, verbose=0).history
    assert np.mean(history["loss"][-3:]) < np.mean(history["loss"][:3])
    r = np.asarray(model(images))
    assert r.shape == (32, 18)
    np.testing.assert_allclose(_norms(r), 1.0, rtol=1e-5)
    np.testing.assert_allclose(model.head.represent(model.encode(images)), r, rtol=1e-5, atol=1e-6)
    model.head.fit_prototypes(np.asarray(model.encode(images)), labels)
    loaded = _save_load(model, tmp_path, f"pixel_{head_cls.__name__}")
    np.testing.assert_allclose(loaded(images), r, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loaded.head.prototypes["color"], model.head.prototypes["color"])
    with pytest.raises(ValueError, match="feature_dim"):
        PixelConcat(head_cls(8, block_dim=6), feature_dim=12, image_size=16)
