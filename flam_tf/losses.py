"""Losses of FLAM: the triplet loss (Eq. 1) and Eq. 2-5 of the paper.

Each loss is a pure TensorFlow function that carries the math; `TripletLoss` is a thin
`keras.losses.Loss` wrapper for `model.compile`. The embedder and GAN losses have `*_per_example`
variants that return one value per example, so that a train_step can average them over the valid
rows of the global batch (`flam_tf.distribute.masked_mean`).

Triplet loss semantics follow TensorFlow Addons 0.23 (`tfa.losses.triplet_semihard_loss` and
`triplet_hard_loss`), which cannot be imported on TF 2.21 (BUILD.md, "No tensorflow-addons").
Our option names map to TFA's `distance_metric` as "cosine" -> "angular", "l2" -> "L2",
"squared_l2" -> "squared-L2". The only
intended differences: 0 instead of TFA's 0/0 = NaN for a semi-hard batch without any positive pair
and for an empty batch (every example masked out).
"""

import keras
import tensorflow as tf

from flam_tf.config import DISTANCES, FEATURE_MATCHING_MODES, MINING_STRATEGIES, check_option
from flam_tf.vocabulary import ATTRIBUTE_TYPES, MISSING

# ---------------------------------------------------------------------------------------------
# Distances
# ---------------------------------------------------------------------------------------------


def pairwise_distance(embeddings, distance="cosine"):
    """Pairwise distance matrix with the numerics of tensorflow-addons' metric_learning module.

    - "cosine" (TFA "angular"): `max(1 - <u_i, u_j>, 1e-16)` with `u = l2_normalize(embeddings)`;
      the diagonal is not zeroed (it is ~1e-16).
    - "squared_l2" (TFA "squared-L2"): `|x_i|^2 + |x_j|^2 - 2 <x_i, x_j>` clipped at 0, with a
      zero diagonal.
    - "l2" (TFA "L2"): the square root of the above; where the squared distance is 0, 1e-16 is
      added before the root and the result zeroed again, so the gradient stays finite.

    Args:
        embeddings: float Tensor [B, D].
        distance: one of DISTANCES.

    Returns:
        float Tensor [B, B].

    Raises:
        ValueError: for an unknown `distance`.
    """
    check_option("distance", distance, DISTANCES)
    embeddings = tf.convert_to_tensor(embeddings)
    if distance == "cosine":
        unit = tf.math.l2_normalize(embeddings, axis=1)
        return tf.maximum(1.0 - tf.matmul(unit, unit, transpose_b=True), 1e-16)

    squared_norms = tf.reduce_sum(tf.square(embeddings), axis=1)
    squared = (
        squared_norms[:, None]
        + squared_norms[None, :]
        - 2.0 * tf.matmul(embeddings, embeddings, transpose_b=True)
    )
    squared = tf.maximum(squared, 0.0)
    is_zero = tf.less_equal(squared, 0.0)
    if distance == "squared_l2":
        result = squared
    else:
        result = tf.sqrt(squared + tf.cast(is_zero, squared.dtype) * 1e-16)
    result = result * tf.cast(tf.logical_not(is_zero), result.dtype)
    off_diagonal = 1.0 - tf.eye(tf.shape(embeddings)[0], dtype=result.dtype)
    return result * off_diagonal


def cosine_similarity(x, y):
    """Row-wise cosine similarity `<x_i, y_i> / (|x_i| |y_i|)`.

    The paper (Sec. 3.2) uses cos(x, G(G(x, e^-), e)) as an approximate convergence measure.

    Args:
        x: float Tensor [..., D].
        y: float Tensor [..., D], broadcastable against `x`.

    Returns:
        float Tensor [...]; 0 where either row is all zeros.
    """
    x = tf.math.l2_normalize(x, axis=-1)
    y = tf.math.l2_normalize(y, axis=-1)
    return tf.reduce_sum(x * y, axis=-1)


def _masked_min(data, mask, fallback):
    """Minimum of `data` over `mask` along the last axis; `fallback` where the mask is empty."""
    big = tf.stop_gradient(tf.reduce_max(tf.abs(data)) + 1.0)
    masked = tf.reduce_min(tf.where(mask, data, big), axis=-1)
    return tf.where(tf.reduce_any(mask, axis=-1), masked, fallback)


def _masked_max(data, mask, fallback):
    """Maximum of `data` over `mask` along the last axis; `fallback` where the mask is empty."""
    big = tf.stop_gradient(tf.reduce_max(tf.abs(data)) + 1.0)
    masked = tf.reduce_max(tf.where(mask, data, -big), axis=-1)
    return tf.where(tf.reduce_any(mask, axis=-1), masked, fallback)


# ---------------------------------------------------------------------------------------------
# Eq. 1: triplet loss with in-batch mining
# ---------------------------------------------------------------------------------------------


def triplet_loss(
    labels,
    embeddings,
    margin=1.0,
    mining="semi-hard",
    distance="cosine",
    sample_weight_mask=None,
):
    """Eq. 1, `max(0, dist(f, f+) - dist(f, f-) + mu)`, with in-batch mining (TFA semantics).

    Semi-hard mining (TFA `triplet_semihard_loss`): every ordered anchor-positive pair (a, p),
    a != p with the same label, is one triplet. Its negative is the closest negative farther than
    the positive (min d(a, n) with d(a, n) > d(a, p)); if there is none, the farthest negative of
    the anchor; if the anchor has no negative at all, the smallest entry of its distance row (TFA's
    `_masked_maximum` fallback, ~0: the diagonal). The loss is the mean over all positive pairs,
    and 0 when there is none (TFA: NaN).

    Hard mining (TFA `triplet_hard_loss`, soft=False): one triplet per anchor, every anchor
    counted, with the farthest positive and the closest negative. An anchor without positive uses
    the smallest entry of its distance row (~0) as positive distance; an anchor without negative
    uses the largest entry of its row as negative distance (TFA's `_masked_minimum` and
    `_masked_maximum` fallbacks).

    Args:
        labels: int Tensor [B] or [B, 1].
        embeddings: float Tensor [B, D] (L2-normalised for "l2"/"squared_l2", as TFA expects).
        margin: the margin mu.
        mining: "semi-hard" or "hard".
        distance: "cosine" (1 - cosine similarity, TFA "angular"), "l2" or "squared_l2".
        sample_weight_mask: optional bool Tensor [B]; examples with False are dropped before mining
            (missing labels).

    Returns:
        float32 scalar.

    Raises:
        ValueError: for an unknown `mining` or `distance`.
    """
    check_option("mining", mining, MINING_STRATEGIES)
    check_option("distance", distance, DISTANCES)
    labels = tf.reshape(tf.convert_to_tensor(labels), [-1])
    embeddings = tf.cast(tf.convert_to_tensor(embeddings), tf.float32)
    if sample_weight_mask is not None:
        keep = tf.reshape(tf.cast(sample_weight_mask, tf.bool), [-1])
        labels = tf.boolean_mask(labels, keep)
        embeddings = tf.boolean_mask(embeddings, keep)

    dist = pairwise_distance(embeddings, distance)  # [B, B]
    batch_size = tf.shape(labels)[0]
    same = tf.equal(labels[:, None], labels[None, :])
    negative = tf.logical_not(same)
    positive = tf.logical_and(same, tf.logical_not(tf.eye(batch_size, dtype=tf.bool)))
    row_min = tf.reduce_min(dist, axis=1)  # ~0, the diagonal
    row_max = tf.reduce_max(dist, axis=1)

    if mining == "hard":
        hardest_positive = _masked_max(dist, positive, fallback=row_min)  # [B]
        hardest_negative = _masked_min(dist, negative, fallback=row_max)  # [B]
        per_anchor = tf.maximum(hardest_positive - hardest_negative + margin, 0.0)
        return tf.math.divide_no_nan(tf.reduce_sum(per_anchor), tf.cast(batch_size, tf.float32))

    # Semi-hard. d_an[a, p, n] = dist[a, n]; candidate n: a negative of a farther than p.
    d_ap = dist[:, :, None]
    d_an = dist[:, None, :]
    outside = tf.logical_and(negative[:, None, :], d_an > d_ap)  # [B, B, B]
    farthest_negative = _masked_max(dist, negative, fallback=row_min)  # [B]
    farthest_negative = tf.broadcast_to(farthest_negative[:, None], tf.shape(dist))
    semi_hard_negative = _masked_min(
        tf.broadcast_to(d_an, tf.shape(outside)), outside, fallback=farthest_negative
    )  # [B, B]
    loss_matrix = tf.maximum(dist - semi_hard_negative + margin, 0.0)
    positive = tf.cast(positive, tf.float32)
    return tf.math.divide_no_nan(tf.reduce_sum(loss_matrix * positive), tf.reduce_sum(positive))


@keras.saving.register_keras_serializable(package="flam_tf")
class TripletLoss(keras.losses.Loss):
    """Keras wrapper of `triplet_loss` (Eq. 1): `y_true` labels [B], `y_pred` embeddings [B, D].

    The result is a batch-level scalar: under `tf.distribute` divide it by `num_replicas_in_sync`;
    mining happens within each replica's slice of the batch.
    """

    def __init__(
        self, margin=1.0, mining="semi-hard", distance="cosine", name="triplet_loss", **kwargs
    ):
        check_option("mining", mining, MINING_STRATEGIES)
        check_option("distance", distance, DISTANCES)
        super().__init__(name=name, **kwargs)
        self.margin = margin
        self.mining = mining
        self.distance = distance

    def call(self, y_true, y_pred):
        return triplet_loss(
            y_true, y_pred, margin=self.margin, mining=self.mining, distance=self.distance
        )

    def get_config(self):
        config = super().get_config()
        config.update({"margin": self.margin, "mining": self.mining, "distance": self.distance})
        return config


# ---------------------------------------------------------------------------------------------
# Eq. 2: embedder loss with dictionary anchors
# ---------------------------------------------------------------------------------------------


def _mine_negative(d_ap, d_an, negative, mining):
    """Negative distance per row for one triplet term; rows without negative return +inf.

    Args:
        d_ap: float [B], anchor-positive distance.
        d_an: float [B, M], anchor to every candidate.
        negative: bool [B, M], which candidates are negatives of the row's anchor.
        mining: "semi-hard" (closest negative farther than the positive, else the farthest negative)
            or "hard" (closest negative).
    """
    inf = tf.fill(tf.shape(d_ap), tf.constant(float("inf"), d_ap.dtype))
    closest = _masked_min(d_an, negative, fallback=inf)
    if mining == "hard":
        return closest
    farthest = _masked_max(d_an, negative, fallback=inf)
    outside = tf.logical_and(negative, d_an > d_ap[:, None])
    return _masked_min(d_an, outside, fallback=farthest)


def embedder_triplet_loss_per_example(
    labels, embeddings, dictionary, margin=1.0, mining="semi-hard"
):
    """Eq. 2 per example: `l(d_y, e_i, e^-) + l(e_i, d_y, d^-)`, 0 for a missing label.

    With cosine distance `dist` (Eq. 1) and `y = labels[i]`:
      - term 1, dictionary anchor: anchor `d_y`, positive `e_i`, negatives the embeddings `e_j`
        of the valid examples with `labels[j] != y`;
      - term 2, embedding anchor: anchor `e_i`, positive `d_y`, negatives every dictionary vector
        `d_c`, `c != y` (all C classes, present in the batch or not).
    Each term mines one negative with the rule of `triplet_loss`: "semi-hard" takes the closest
    negative farther than the positive, else the farthest negative; "hard" takes the closest
    negative. A term whose anchor has no negative (term 1 when every valid example shares the label)
    contributes 0: no triplet exists.

    Args:
        labels: int Tensor [B]; MISSING (-1) marks a missing label (never a class).
        embeddings: float Tensor [B, k], the embeddings e_a (normalised here anyway).
        dictionary: float Tensor [C, k], the dictionary vectors d_a.
        margin: the margin mu.
        mining: "semi-hard" or "hard".

    Returns:
        float32 Tensor [B]: term 1 + term 2 per valid example, 0 for missing labels.

    Raises:
        ValueError: for an unknown `mining`.
    """
    check_option("mining", mining, MINING_STRATEGIES)
    labels = tf.reshape(tf.cast(tf.convert_to_tensor(labels), tf.int32), [-1])
    embeddings = tf.cast(tf.convert_to_tensor(embeddings), tf.float32)
    dictionary = tf.cast(tf.convert_to_tensor(dictionary), tf.float32)
    num_classes = tf.shape(dictionary)[0]
    valid = tf.not_equal(labels, MISSING)
    safe_labels = tf.where(valid, labels, 0)

    e = tf.math.l2_normalize(embeddings, axis=1)
    d = tf.math.l2_normalize(dictionary, axis=1)
    d_y = tf.gather(d, safe_labels)  # [B, k]
    d_pos = 1.0 - tf.reduce_sum(d_y * e, axis=1)  # dist(d_y, e_i) = dist(e_i, d_y), [B]

    # Term 1: anchor d_{y_i}, negatives e_j with a valid, different label.
    d_an_1 = 1.0 - tf.matmul(d_y, e, transpose_b=True)  # [B, B]
    negative_1 = tf.logical_and(tf.not_equal(labels[:, None], labels[None, :]), valid[None, :])
    term_1 = tf.maximum(d_pos - _mine_negative(d_pos, d_an_1, negative_1, mining) + margin, 0.0)

    # Term 2: anchor e_i, negatives d_c for every class c != y_i.
    d_an_2 = 1.0 - tf.matmul(e, d, transpose_b=True)  # [B, C]
    negative_2 = tf.not_equal(safe_labels[:, None], tf.range(num_classes)[None, :])
    term_2 = tf.maximum(d_pos - _mine_negative(d_pos, d_an_2, negative_2, mining) + margin, 0.0)

    # Rows without negative mined +inf: max(finite - inf, 0) = 0, which is the "no triplet" value.
    return tf.where(valid, term_1 + term_2, 0.0)


def embedder_triplet_loss(labels, embeddings, dictionary, margin=1.0, mining="semi-hard"):
    """Eq. 2, `L_emb = l(d_a, e_a+, e_a-) + l(e_a, d_a+, d_a-)`, averaged over valid examples.

    See `embedder_triplet_loss_per_example` for the exact triplets. Examples with a MISSING label
    are masked out; with fewer than 2 valid examples the loss is 0.

    Args:
        labels: int Tensor [B]; MISSING (-1) marks a missing label.
        embeddings: float Tensor [B, k].
        dictionary: float Tensor [C, k].
        margin: the margin mu.
        mining: "semi-hard" or "hard".

    Returns:
        float32 scalar.

    Raises:
        ValueError: for an unknown `mining`.
    """
    per_example = embedder_triplet_loss_per_example(labels, embeddings, dictionary, margin, mining)
    labels = tf.reshape(tf.convert_to_tensor(labels), [-1])
    num_valid = tf.reduce_sum(tf.cast(tf.not_equal(labels, MISSING), tf.float32))
    mean = tf.math.divide_no_nan(tf.reduce_sum(per_example), num_valid)
    return tf.where(num_valid < 2.0, 0.0, mean)


# ---------------------------------------------------------------------------------------------
# Eq. 3: adversarial loss (non-saturating)
# ---------------------------------------------------------------------------------------------


def _flatten_logits(logits):
    return tf.reshape(tf.cast(tf.convert_to_tensor(logits), tf.float32), [-1])


def discriminator_adversarial_loss_per_example(real_logits, fake_logits):
    """Eq. 3 for D, per example: `-log D(x_i) - log(1 - D(G(x_i, e^-)))`, D = sigmoid(logit).

    Computed as sigmoid cross-entropy (real -> 1, fake -> 0) from logits, which is stable.

    Args:
        real_logits: float Tensor [B] or [B, 1], D's logits on real features x.
        fake_logits: float Tensor [B] or [B, 1], D's logits on manipulated features G(x, e^-).

    Returns:
        float32 Tensor [B].
    """
    real_logits = _flatten_logits(real_logits)
    fake_logits = _flatten_logits(fake_logits)
    real = tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.ones_like(real_logits), logits=real_logits
    )
    fake = tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.zeros_like(fake_logits), logits=fake_logits
    )
    return real + fake


def discriminator_adversarial_loss(real_logits, fake_logits):
    """Eq. 3 for D: batch mean of `discriminator_adversarial_loss_per_example` (float32 scalar)."""
    return tf.reduce_mean(discriminator_adversarial_loss_per_example(real_logits, fake_logits))


def generator_adversarial_loss_per_example(fake_logits):
    """Eq. 3 for G, non-saturating, per example: `-log D(G(x_i, e^-))`.

    The paper's Eq. 3 writes `log(1 - G(x, e^-))`; it means `log(1 - D(G(x, e^-)))`, and G
    minimises the usual non-saturating form `-log D(G(.))` instead (Goodfellow et al., 2014).

    Args:
        fake_logits: float Tensor [B] or [B, 1], D's logits on G(x, e^-).

    Returns:
        float32 Tensor [B].
    """
    fake_logits = _flatten_logits(fake_logits)
    return tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.ones_like(fake_logits), logits=fake_logits
    )


def generator_adversarial_loss(fake_logits):
    """Eq. 3 for G: batch mean of `generator_adversarial_loss_per_example` (float32 scalar)."""
    return tf.reduce_mean(generator_adversarial_loss_per_example(fake_logits))


# ---------------------------------------------------------------------------------------------
# Eq. 4: feature matching; Eq. 5: cycle consistency
# ---------------------------------------------------------------------------------------------


def _safe_norm(x):
    """L2 norm over the last axis with a zero (not NaN) gradient at 0."""
    squared = tf.reduce_sum(tf.square(x), axis=-1)
    positive = squared > 0.0
    return tf.where(positive, tf.sqrt(tf.where(positive, squared, 1.0)), 0.0)


def feature_matching_loss(
    f_pred,
    target_embeddings,
    target_index,
    mode="M",
    per_example=False,
    num_types=len(ATTRIBUTE_TYPES),
):
    """Eq. 4, `L_match`: `|| f(x) - [phi_a(.)]_target (+) [phi_abar(x)]_remain ||`.

    `f_pred` and `target_embeddings` are split in `num_types` blocks of k, one per attribute type
    in ATTRIBUTE_TYPES order. The caller builds `target_embeddings`: for a real x the embedders'
    outputs on x; for a fake x~ the target block holds phi_a(x^-) and the remaining blocks
    phi_abar(x). The distance is the (unsquared) L2 norm of the difference per example, the
    paper's `||.||`:
      - mode "M" (paper's M, with remaining attributes): the norm over all blocks;
      - mode "S" (paper's S): the norm over the target block only; other blocks are ignored.
    Call it once for the real term and once for the fake term and add the results.

    Args:
        f_pred: float Tensor [B, num_types * k], D's feature matching head.
        target_embeddings: float Tensor [B, num_types * k].
        target_index: int Tensor [B], index in ATTRIBUTE_TYPES of the manipulated type.
        mode: "M" or "S".
        per_example: return [B] instead of the batch mean.
        num_types: number of blocks.

    Returns:
        float32 scalar, or [B] when `per_example`.

    Raises:
        ValueError: for an unknown `mode`.
    """
    check_option("mode", mode, FEATURE_MATCHING_MODES)
    f_pred = tf.cast(tf.convert_to_tensor(f_pred), tf.float32)
    target_embeddings = tf.cast(tf.convert_to_tensor(target_embeddings), tf.float32)
    difference = f_pred - target_embeddings
    if mode == "S":
        block_size = tf.shape(f_pred)[-1] // num_types
        target_index = tf.reshape(tf.cast(target_index, tf.int32), [-1])
        block_mask = tf.one_hot(target_index, num_types, dtype=tf.float32)  # [B, n]
        mask = tf.repeat(block_mask, block_size, axis=1)  # [B, n * k]
        difference = difference * mask
    loss = _safe_norm(difference)
    return loss if per_example else tf.reduce_mean(loss)


def cycle_consistency_loss(x, x_rec, per_example=False):
    """Eq. 5, `L_cycle = || x - G(G(x, e^-), e) ||`, as the mean absolute difference per example.

    The paper does not name the norm; we use L1 (mean over the feature dimensions), the choice of
    CycleGAN, its reference [24]: it keeps the loss scale independent of the feature size.

    Args:
        x: float Tensor [B, D], the original features.
        x_rec: float Tensor [B, D], the recovered features G(G(x, e^-), e).
        per_example: return [B] instead of the batch mean.

    Returns:
        float32 scalar, or [B] when `per_example`.
    """
    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    x_rec = tf.cast(tf.convert_to_tensor(x_rec), tf.float32)
    loss = tf.reduce_mean(tf.abs(x - x_rec), axis=-1)
    return loss if per_example else tf.reduce_mean(loss)


def retrieval_loss(queries, bank, positive_mask, temperature=0.05, per_example=False):
    """A multi-positive softmax (InfoNCE) of queries against a bank of real features (ours).

    Per query i, with s_ij = cos(q_i, b_j) / temperature:
    `loss_i = logsumexp_j(s_ij) - logsumexp_{j in P_i}(s_ij)`, the negative log of the softmax mass
    on the positives P_i. It is 0 for a query without any positive (mask such rows out).

    Args:
        queries: float Tensor [B, D].
        bank: float Tensor [N, D].
        positive_mask: bool Tensor [B, N], True where bank row j is a positive of query i.
        temperature: softmax temperature (> 0).
        per_example: return [B] instead of the mean over queries that have a positive.

    Returns:
        float32 scalar, or [B] when `per_example`.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0. Received: temperature={temperature}")
    queries = tf.math.l2_normalize(tf.cast(queries, tf.float32), axis=-1)
    bank = tf.math.l2_normalize(tf.cast(bank, tf.float32), axis=-1)
    positive_mask = tf.cast(positive_mask, tf.bool)
    scores = tf.matmul(queries, bank, transpose_b=True) / temperature  # [B, N]
    has_positive = tf.reduce_any(positive_mask, axis=1)
    positive_scores = tf.where(positive_mask, scores, tf.fill(tf.shape(scores), -1e9))
    loss = tf.reduce_logsumexp(scores, axis=1) - tf.reduce_logsumexp(positive_scores, axis=1)
    loss = tf.where(has_positive, loss, 0.0)
    if per_example:
        return loss
    count = tf.reduce_sum(tf.cast(has_positive, tf.float32))
    return tf.math.divide_no_nan(tf.reduce_sum(loss), count)
