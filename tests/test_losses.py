"""Tests of flam_tf.losses against independent numpy references and hand-worked values."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from flam_tf import losses

COMBOS = list(itertools.product(losses.MINING_STRATEGIES, losses.DISTANCES))


# ---------------------------------------------------------------------------------------------
# Numpy references, written from the definitions (float64, loops)
# ---------------------------------------------------------------------------------------------


def np_distance_matrix(emb, distance):
    """TFA's distance matrices: angular 1 - cos (clipped at 1e-16), L2 and squared L2 (0 diag)."""
    emb = np.asarray(emb, np.float64)
    n = len(emb)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if distance == "cosine":
                u = emb[i] / np.linalg.norm(emb[i])
                v = emb[j] / np.linalg.norm(emb[j])
                out[i, j] = max(1.0 - u @ v, 1e-16)
            elif i != j:
                squared = np.sum((emb[i] - emb[j]) ** 2)
                out[i, j] = squared if distance == "squared_l2" else np.sqrt(squared)
    return out


def np_triplet_semihard(labels, emb, margin, distance):
    dist = np_distance_matrix(emb, distance)
    n = len(labels)
    total, count = 0.0, 0
    for a in range(n):
        negatives = [dist[a, j] for j in range(n) if labels[j] != labels[a]]
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            count += 1
            outside = [d for d in negatives if d > dist[a, p]]
            if outside:
                negative = min(outside)  # semi-hard negative
            elif negatives:
                negative = max(negatives)  # TFA: farthest negative
            else:
                negative = min(dist[a])  # TFA fallback: row minimum (the ~0 diagonal)
            total += max(dist[a, p] - negative + margin, 0.0)
    return total / count if count else 0.0


def np_triplet_hard(labels, emb, margin, distance):
    dist = np_distance_matrix(emb, distance)
    n = len(labels)
    total = 0.0
    for a in range(n):
        positives = [dist[a, j] for j in range(n) if j != a and labels[j] == labels[a]]
        negatives = [dist[a, j] for j in range(n) if labels[j] != labels[a]]
        hardest_positive = max(positives) if positives else min(dist[a])  # TFA fallbacks
        hardest_negative = min(negatives) if negatives else max(dist[a])
        total += max(hardest_positive - hardest_negative + margin, 0.0)
    return total / n


def np_triplet(labels, emb, margin, mining, distance):
    fn = np_triplet_semihard if mining == "semi-hard" else np_triplet_hard
    return fn(list(np.reshape(labels, [-1])), emb, margin, distance)


def np_embedder_loss(labels, emb, dictionary, margin, mining):
    """Eq. 2 with the triplets documented in losses.embedder_triplet_loss_per_example."""
    labels = list(labels)
    valid = [i for i, y in enumerate(labels) if y != -1]
    if len(valid) < 2:
        return 0.0
    e = np.asarray(emb, np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    d = np.asarray(dictionary, np.float64)
    d = d / np.linalg.norm(d, axis=1, keepdims=True)

    def term(d_ap, negatives):
        if not negatives:
            return 0.0
        if mining == "hard":
            negative = min(negatives)
        else:
            outside = [v for v in negatives if v > d_ap]
            negative = min(outside) if outside else max(negatives)
        return max(d_ap - negative + margin, 0.0)

    total = 0.0
    for i in valid:
        y = labels[i]
        d_ap = 1.0 - d[y] @ e[i]
        negatives_1 = [1.0 - d[y] @ e[j] for j in valid if labels[j] != y]
        negatives_2 = [1.0 - e[i] @ d[c] for c in range(len(d)) if c != y]
        total += term(d_ap, negatives_1) + term(d_ap, negatives_2)
    return total / len(valid)


def random_batch(seed, batch_size=12, dim=5, num_labels=4):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_labels, size=batch_size).astype(np.int32)
    emb = rng.normal(size=(batch_size, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return labels, emb


# ---------------------------------------------------------------------------------------------
# Triplet loss (Eq. 1, TFA semantics)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mining,distance", COMBOS)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("margin", [1.0, 0.3])
@pytest.mark.parametrize("num_labels", [2, 4])  # 2 labels: far positives, more TFA fallbacks
def test_triplet_matches_numpy_reference(mining, distance, seed, margin, num_labels):
    labels, emb = random_batch(seed, num_labels=num_labels)
    got = losses.triplet_loss(labels, emb, margin=margin, mining=mining, distance=distance)
    assert got.dtype == tf.float32 and got.shape == ()
    np.testing.assert_allclose(
        got.numpy(), np_triplet(labels, emb, margin, mining, distance), atol=1e-5
    )


# Four unit vectors in 2-D: x0=(1,0) and x1=(0.6,0.8) with label 0; x2=(0.8,0.6) and x3=(-1,0)
# with label 1. Cosine distances: d01=0.4, d02=0.2, d03=2, d12=0.04, d13=1.6, d23=1.8.
HAND_LABELS = np.array([0, 0, 1, 1], np.int32)
HAND_EMB = np.array([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [-1.0, 0.0]], np.float32)


def test_triplet_semihard_hand_worked():
    # Pairs (a,p) with margin 1:
    #   (0,1): d_ap=0.4, negatives of 0 {0.2, 2}, semi-hard 2   -> max(0.4-2+1, 0)   = 0
    #   (1,0): d_ap=0.4, negatives of 1 {0.04, 1.6}, semi 1.6  -> max(0.4-1.6+1, 0) = 0
    #   (2,3): d_ap=1.8, negatives of 2 {0.2, 0.04}, none > 1.8: farthest 0.2 -> 2.6
    #   (3,2): d_ap=1.8, negatives of 3 {2, 1.6}, semi-hard 2  -> 0.8
    # Mean over the 4 positive pairs: 3.4 / 4 = 0.85.
    got = losses.triplet_loss(
        HAND_LABELS, HAND_EMB, margin=1.0, mining="semi-hard", distance="cosine"
    )
    np.testing.assert_allclose(got.numpy(), 0.85, atol=1e-6)


def test_triplet_hard_hand_worked():
    # Per anchor, margin 1: hardest positive - hardest negative + 1
    #   a0: 0.4 - 0.2 + 1 = 1.2    a1: 0.4 - 0.04 + 1 = 1.36
    #   a2: 1.8 - 0.04 + 1 = 2.76  a3: 1.8 - 1.6 + 1 = 1.2      mean = 6.52 / 4 = 1.63
    got = losses.triplet_loss(HAND_LABELS, HAND_EMB, margin=1.0, mining="hard", distance="cosine")
    np.testing.assert_allclose(got.numpy(), 1.63, atol=1e-6)


def test_triplet_l2_hand_worked():
    # Unit square corners x0=(1,0), x1=(0,1) label 0; x2=(-1,0), x3=(0,-1) label 1.
    # L2: adjacent corners sqrt(2), opposite corners 2. For every positive pair d_ap = sqrt(2) and
    # the anchor's negatives are {sqrt(2), 2}: the semi-hard negative (> sqrt(2)) is 2, so each pair
    # gives sqrt(2) - 2 + 1 = 0.41421356. Hard: sqrt(2) - sqrt(2) + 1 = 1 per anchor.
    labels = np.array([0, 0, 1, 1])
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], np.float32)
    semi = losses.triplet_loss(labels, emb, margin=1.0, mining="semi-hard", distance="l2")
    hard = losses.triplet_loss(labels, emb, margin=1.0, mining="hard", distance="l2")
    np.testing.assert_allclose(semi.numpy(), 0.41421356, atol=1e-6)
    np.testing.assert_allclose(hard.numpy(), 1.0, atol=1e-6)
    # Squared L2 doubles the cosine distances here (2 and 4): hard = 2 - 2 + 1 = 1.
    sq = losses.triplet_loss(labels, emb, margin=1.0, mining="hard", distance="squared_l2")
    np.testing.assert_allclose(sq.numpy(), 1.0, atol=1e-6)


@pytest.mark.parametrize("mining,distance", COMBOS)
def test_triplet_singleton_label(mining, distance):
    # Label 7 has a single example: it is never a positive pair, but as a hard-mining anchor it
    # still counts (TFA: hardest positive falls back to the row minimum).
    labels, emb = random_batch(3, batch_size=7)
    labels = np.array([0, 0, 1, 1, 1, 2, 7], np.int32)
    got = losses.triplet_loss(labels, emb, margin=1.0, mining=mining, distance=distance)
    np.testing.assert_allclose(
        got.numpy(), np_triplet(labels, emb, 1.0, mining, distance), atol=1e-5
    )


def test_triplet_two_singletons_hand_worked():
    # x0=(1,0) label 0, x1=(0,1) label 1, cosine distance 1. No positive pair: semi-hard gives 0
    # (TFA would give 0/0 = NaN). Hard: each anchor's positive distance falls back to its row
    # minimum (the ~1e-16 diagonal): max(0 - 1 + 1.5, 0) = 0.5.
    labels = np.array([0, 1])
    emb = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    semi = losses.triplet_loss(labels, emb, margin=1.5, mining="semi-hard")
    hard = losses.triplet_loss(labels, emb, margin=1.5, mining="hard")
    assert semi.numpy() == 0.0
    np.testing.assert_allclose(hard.numpy(), 0.5, atol=1e-6)


@pytest.mark.parametrize("distance", losses.DISTANCES)
def test_triplet_all_labels_same(distance):
    # No negatives. Hard: the negative distance falls back to the row maximum, which is the
    # hardest positive itself, so every anchor gives exactly the margin.
    labels = np.zeros(5, np.int32)
    _, emb = random_batch(4, batch_size=5)
    hard = losses.triplet_loss(labels, emb, margin=0.7, mining="hard", distance=distance)
    np.testing.assert_allclose(hard.numpy(), 0.7, atol=1e-6)
    # Semi-hard: the negative falls back to the row minimum (~0): mean d_ap + margin.
    semi = losses.triplet_loss(labels, emb, margin=0.7, mining="semi-hard", distance=distance)
    dist = np_distance_matrix(emb, distance)
    expected = dist[~np.eye(5, dtype=bool)].mean() + 0.7
    np.testing.assert_allclose(semi.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("distance", losses.DISTANCES)
def test_triplet_all_labels_distinct(distance):
    labels = np.arange(6, dtype=np.int32)
    _, emb = random_batch(5, batch_size=6)
    semi = losses.triplet_loss(labels, emb, mining="semi-hard", distance=distance)
    assert semi.numpy() == 0.0  # no positive pair
    hard = losses.triplet_loss(labels, emb, mining="hard", distance=distance)
    np.testing.assert_allclose(
        hard.numpy(), np_triplet(labels, emb, 1.0, "hard", distance), atol=1e-5
    )


@pytest.mark.parametrize("mining,distance", COMBOS)
def test_triplet_sample_weight_mask(mining, distance):
    labels, emb = random_batch(6)
    keep = np.array([True, False] * 6)
    got = losses.triplet_loss(
        labels, emb, mining=mining, distance=distance, sample_weight_mask=keep
    )
    expected = np_triplet(labels[keep], emb[keep], 1.0, mining, distance)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    # Changing masked-out examples changes nothing.
    emb2 = emb.copy()
    emb2[~keep] = np.random.default_rng(9).normal(size=emb2[~keep].shape)
    labels2 = labels.copy()
    labels2[~keep] = labels[keep][0]
    got2 = losses.triplet_loss(
        labels2, emb2, mining=mining, distance=distance, sample_weight_mask=keep
    )
    np.testing.assert_allclose(got2.numpy(), got.numpy(), atol=1e-7)


def test_triplet_all_masked_is_zero():
    labels, emb = random_batch(7, batch_size=4)
    for mining in losses.MINING_STRATEGIES:
        got = losses.triplet_loss(labels, emb, mining=mining, sample_weight_mask=[False] * 4)
        assert got.numpy() == 0.0


def test_triplet_labels_column_vector():
    labels, emb = random_batch(8)
    flat = losses.triplet_loss(labels, emb)
    column = losses.triplet_loss(labels[:, None], emb)
    np.testing.assert_allclose(column.numpy(), flat.numpy())


@pytest.mark.parametrize("mining,distance", COMBOS)
def test_triplet_gradient_finite_for_identical_embeddings(mining, distance):
    labels = tf.constant([0, 0, 1, 1])
    emb = tf.Variable(np.tile([[0.6, 0.8]], (4, 1)).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = losses.triplet_loss(labels, emb, mining=mining, distance=distance)
    grad = tape.gradient(loss, emb)
    assert np.isfinite(loss.numpy())
    assert np.all(np.isfinite(grad.numpy()))


@pytest.mark.parametrize("mining,distance", COMBOS)
def test_triplet_inside_tf_function(mining, distance):
    labels, emb = random_batch(10)
    fn = tf.function(lambda y, e: losses.triplet_loss(y, e, mining=mining, distance=distance))
    np.testing.assert_allclose(
        fn(labels, emb).numpy(), np_triplet(labels, emb, 1.0, mining, distance), atol=1e-5
    )


def test_triplet_bad_options():
    labels, emb = random_batch(0, batch_size=4)
    with pytest.raises(ValueError, match=r"mining='easy'.*semi-hard.*hard"):
        losses.triplet_loss(labels, emb, mining="easy")
    with pytest.raises(ValueError, match=r"distance='L2'.*cosine.*l2.*squared_l2"):
        losses.triplet_loss(labels, emb, distance="L2")
    with pytest.raises(ValueError, match="mining='x'"):
        losses.TripletLoss(mining="x")


def test_triplet_keras_wrapper_value_and_config():
    labels, emb = random_batch(11)
    loss_fn = losses.TripletLoss(margin=0.5, mining="hard", distance="l2")
    np.testing.assert_allclose(
        loss_fn(labels, emb).numpy(), np_triplet(labels, emb, 0.5, "hard", "l2"), atol=1e-5
    )
    clone = losses.TripletLoss.from_config(loss_fn.get_config())
    assert (clone.margin, clone.mining, clone.distance) == (0.5, "hard", "l2")


# ---------------------------------------------------------------------------------------------
# Eq. 2: embedder loss
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mining", losses.MINING_STRATEGIES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_embedder_loss_matches_numpy(mining, seed):
    rng = np.random.default_rng(100 + seed)
    labels = rng.integers(-1, 4, size=12).astype(np.int32)  # -1 = missing
    emb = rng.normal(size=(12, 5)).astype(np.float32)
    dictionary = rng.normal(size=(4, 5)).astype(np.float32)
    for margin in (1.0, 0.2):
        got = losses.embedder_triplet_loss(labels, emb, dictionary, margin=margin, mining=mining)
        expected = np_embedder_loss(labels, emb, dictionary, margin, mining)
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


# k=2, C=2, dictionary d0=(1,0), d1=(0,1); e0=(0.6,0.8) label 0, e1=(1,0) label 1, e2 missing.
EMB_DICT = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
EMB_LABELS = np.array([0, 1, -1], np.int32)
EMB_E = np.array([[0.6, 0.8], [1.0, 0.0], [0.3, -0.2]], np.float32)


def test_embedder_loss_hand_worked():
    # Example 0 (y=0): d_ap = dist(d0, e0) = 1 - 0.6 = 0.4.
    #   term 1 (anchor d0): negative e1, dist(d0, e1) = 0, not > 0.4 -> farthest = 0 -> 1.4
    #   term 2 (anchor e0): negative d1, dist(e0, d1) = 0.2            -> 0.4 - 0.2 + 1 = 1.2
    # Example 1 (y=1): d_ap = dist(d1, e1) = 1.
    #   term 1 (anchor d1): negative e0, dist(d1, e0) = 0.2            -> 1 - 0.2 + 1 = 1.8
    #   term 2 (anchor e1): negative d0, dist(e1, d0) = 0              -> 1 - 0 + 1 = 2.0
    # Per example [2.6, 3.8, 0 (missing)]; mean over the 2 valid examples = 3.2.
    per_example = losses.embedder_triplet_loss_per_example(EMB_LABELS, EMB_E, EMB_DICT)
    np.testing.assert_allclose(per_example.numpy(), [2.6, 3.8, 0.0], atol=1e-6)
    for mining in losses.MINING_STRATEGIES:  # one negative each: both minings agree
        got = losses.embedder_triplet_loss(EMB_LABELS, EMB_E, EMB_DICT, margin=1.0, mining=mining)
        np.testing.assert_allclose(got.numpy(), 3.2, atol=1e-6)


def test_embedder_loss_ignores_missing_examples():
    base = losses.embedder_triplet_loss(EMB_LABELS, EMB_E, EMB_DICT)
    changed = EMB_E.copy()
    changed[2] = [-5.0, 7.0]
    again = losses.embedder_triplet_loss(EMB_LABELS, changed, EMB_DICT)
    np.testing.assert_allclose(again.numpy(), base.numpy(), atol=1e-7)


def test_embedder_loss_fewer_than_two_valid_is_zero():
    got = losses.embedder_triplet_loss([0, -1, -1], EMB_E, EMB_DICT)
    assert got.numpy() == 0.0
    got = losses.embedder_triplet_loss([-1, -1, -1], EMB_E, EMB_DICT)
    assert got.numpy() == 0.0


def test_embedder_loss_same_label_batch_keeps_dictionary_term():
    # Both valid examples have label 0: term 1 has no negative (0); term 2 still applies.
    # e0: d_ap 0.4, dist(e0, d1) = 0.2 -> 1.2; e1=(1,0): d_ap 0, dist(e1, d1) = 1 -> 0.
    got = losses.embedder_triplet_loss([0, 0, -1], EMB_E, EMB_DICT, margin=1.0)
    np.testing.assert_allclose(got.numpy(), (1.2 + 0.0) / 2, atol=1e-6)


def test_embedder_loss_gradients_finite():
    emb = tf.Variable(EMB_E)
    dictionary = tf.Variable(EMB_DICT)
    with tf.GradientTape() as tape:
        loss = losses.embedder_triplet_loss([0, 0, -1], emb, dictionary)
    for grad in tape.gradient(loss, [emb, dictionary]):
        assert np.all(np.isfinite(grad.numpy()))


def test_embedder_loss_bad_mining():
    with pytest.raises(ValueError, match="mining='soft'"):
        losses.embedder_triplet_loss(EMB_LABELS, EMB_E, EMB_DICT, mining="soft")


# ---------------------------------------------------------------------------------------------
# Eq. 3: adversarial loss
# ---------------------------------------------------------------------------------------------


def test_adversarial_losses_at_zero_logits():
    zeros = np.zeros([4, 1], np.float32)
    # D(x) = 0.5 everywhere: -log 0.5 for the real and for the fake half.
    np.testing.assert_allclose(
        losses.discriminator_adversarial_loss(zeros, zeros).numpy(), 2 * np.log(2.0), atol=1e-6
    )
    np.testing.assert_allclose(
        losses.generator_adversarial_loss(zeros).numpy(), np.log(2.0), atol=1e-6
    )


def test_adversarial_losses_match_numpy():
    rng = np.random.default_rng(0)
    real = rng.normal(size=6).astype(np.float32) * 3
    fake = rng.normal(size=6).astype(np.float32) * 3

    def sigmoid(z):
        return 1.0 / (1.0 + np.exp(-z.astype(np.float64)))

    d_expected = -np.log(sigmoid(real)) - np.log(1.0 - sigmoid(fake))
    g_expected = -np.log(sigmoid(fake))
    d_per = losses.discriminator_adversarial_loss_per_example(real, fake)
    g_per = losses.generator_adversarial_loss_per_example(fake[:, None])
    assert d_per.shape == (6,) and g_per.shape == (6,)
    np.testing.assert_allclose(d_per.numpy(), d_expected, atol=1e-5)
    np.testing.assert_allclose(g_per.numpy(), g_expected, atol=1e-5)
    np.testing.assert_allclose(
        losses.discriminator_adversarial_loss(real, fake).numpy(), d_expected.mean(), atol=1e-5
    )
    np.testing.assert_allclose(
        losses.generator_adversarial_loss(fake).numpy(), g_expected.mean(), atol=1e-5
    )


def test_adversarial_losses_confident_discriminator():
    # D sure and right: real logit +30, fake -30 -> D loss ~0, non-saturating G loss ~30.
    d = losses.discriminator_adversarial_loss([30.0], [-30.0])
    g = losses.generator_adversarial_loss([-30.0])
    np.testing.assert_allclose(d.numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(g.numpy(), 30.0, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Eq. 4: feature matching; Eq. 5: cycle consistency
# ---------------------------------------------------------------------------------------------

K = 32
N_TYPES = 3


def test_feature_matching_m_and_s_match_numpy():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(5, N_TYPES * K)).astype(np.float32)
    t = rng.normal(size=(5, N_TYPES * K)).astype(np.float32)
    idx = np.array([0, 1, 2, 1, 0], np.int32)
    m = losses.feature_matching_loss(f, t, idx, mode="M", per_example=True).numpy()
    s = losses.feature_matching_loss(f, t, idx, mode="S", per_example=True).numpy()
    m_expected = np.linalg.norm(f - t, axis=1)
    s_expected = [np.linalg.norm((f - t)[i, idx[i] * K : (idx[i] + 1) * K]) for i in range(5)]
    np.testing.assert_allclose(m, m_expected, rtol=1e-5)
    np.testing.assert_allclose(s, s_expected, rtol=1e-5)
    assert np.all(m > s)  # M also matches the remaining blocks
    mean = losses.feature_matching_loss(f, t, idx, mode="M")
    np.testing.assert_allclose(mean.numpy(), m_expected.mean(), rtol=1e-5)


def test_feature_matching_hand_worked():
    # k=2, 3 types; target type 1 (color). Difference f - t = [3,4 | 0,1 | 2,0]:
    # S = |(0,1)| = 1; M = sqrt(9 + 16 + 1 + 4) = sqrt(30).
    f = np.array([[3.0, 4.0, 0.0, 1.0, 2.0, 0.0]], np.float32)
    t = np.zeros_like(f)
    s = losses.feature_matching_loss(f, t, [1], mode="S")
    m = losses.feature_matching_loss(f, t, [1], mode="M")
    np.testing.assert_allclose(s.numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(m.numpy(), np.sqrt(30.0), atol=1e-5)


def test_feature_matching_s_ignores_other_blocks():
    rng = np.random.default_rng(2)
    f = rng.normal(size=(4, N_TYPES * K)).astype(np.float32)
    t = rng.normal(size=(4, N_TYPES * K)).astype(np.float32)
    idx = np.array([2, 0, 1, 2], np.int32)
    s = losses.feature_matching_loss(f, t, idx, mode="S", per_example=True)
    m = losses.feature_matching_loss(f, t, idx, mode="M", per_example=True)
    f2 = f.copy()
    for i, a in enumerate(idx):  # perturb every non-target block
        keep = f2[i, a * K : (a + 1) * K].copy()
        f2[i] += 5.0
        f2[i, a * K : (a + 1) * K] = keep
    s2 = losses.feature_matching_loss(f2, t, idx, mode="S", per_example=True)
    m2 = losses.feature_matching_loss(f2, t, idx, mode="M", per_example=True)
    np.testing.assert_allclose(s2.numpy(), s.numpy(), atol=1e-6)
    assert np.all(np.abs(m2.numpy() - m.numpy()) > 1e-3)


def test_feature_matching_zero_and_finite_gradient_when_equal():
    f = tf.Variable(np.ones((2, N_TYPES * K), np.float32))
    for mode in losses.FEATURE_MATCHING_MODES:
        with tf.GradientTape() as tape:
            loss = losses.feature_matching_loss(f, np.ones((2, N_TYPES * K)), [0, 2], mode=mode)
        assert loss.numpy() == 0.0
        assert np.all(np.isfinite(tape.gradient(loss, f).numpy()))


def test_feature_matching_bad_mode():
    with pytest.raises(ValueError, match=r"mode='X'.*'M', 'S'"):
        losses.feature_matching_loss(np.zeros((1, 6)), np.zeros((1, 6)), [0], mode="X")


def test_cycle_consistency():
    x = np.array([[1.0, -2.0, 3.0, 0.0], [0.5, 0.5, 0.5, 0.5]], np.float32)
    assert losses.cycle_consistency_loss(x, x).numpy() == 0.0
    rec = x + np.array([[1.0, -1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.4]], np.float32)
    # Mean absolute difference per example: (1+1+0+2)/4 = 1.0 and 0.4/4 = 0.1; batch mean 0.55.
    per = losses.cycle_consistency_loss(x, rec, per_example=True)
    np.testing.assert_allclose(per.numpy(), [1.0, 0.1], atol=1e-6)
    np.testing.assert_allclose(losses.cycle_consistency_loss(x, rec).numpy(), 0.55, atol=1e-6)


def test_cosine_similarity():
    x = np.array([[1.0, 0.0], [3.0, 4.0], [1.0, 1.0]], np.float32)
    y = np.array([[0.0, 2.0], [6.0, 8.0], [-1.0, -1.0]], np.float32)
    np.testing.assert_allclose(losses.cosine_similarity(x, y).numpy(), [0.0, 1.0, -1.0], atol=1e-6)


@pytest.mark.parametrize("mining", losses.MINING_STRATEGIES)
def test_cosine_triplet_loss_ignores_row_scale(mining):
    """Cosine distance is between directions: rescaling rows (by 0.01-100) changes nothing."""
    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(12, 5)).astype(np.float32)
    labels = rng.integers(0, 3, size=12)
    scaled = embeddings * rng.uniform(0.01, 100.0, size=(12, 1)).astype(np.float32)
    reference = losses.triplet_loss(
        labels, embeddings, margin=0.3, mining=mining, distance="cosine"
    )
    assert float(reference) > 0.0
    np.testing.assert_allclose(
        losses.triplet_loss(labels, scaled, margin=0.3, mining=mining, distance="cosine"),
        reference,
        rtol=1e-5,
    )
    # The same for Eq. 2 (embeddings and dictionary vectors as anchors, cosine distance).
    dictionary = rng.normal(size=(3, 5)).astype(np.float32)
    eq2 = losses.embedder_triplet_loss(labels, embeddings, dictionary, margin=0.3, mining=mining)
    np.testing.assert_allclose(
        losses.embedder_triplet_loss(labels, scaled, dictionary * 7.0, margin=0.3, mining=mining),
        eq2,
        rtol=1e-5,
    )
