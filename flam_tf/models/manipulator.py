"""The query feature manipulator (Sec. 3.2-3.3): generator G, discriminator D and their GAN.

Training (the manipulating stage) needs only unlabelled features: the frozen AttributeEmbedder of
the embedding stage is the teacher of D (Eq. 4) and the pseudo-labeler that decides which pairs
(x, x^-) have different classes of the target attribute type (Sec. 4, NFD).
"""

import keras
import numpy as np
import tensorflow as tf

from flam_tf import losses
from flam_tf.config import (
    FEATURE_MATCHING_MODES,
    GENERATORS,
    PRECISIONS,
    TARGET_SAMPLING,
    EmbedderConfig,
    ManipulatorConfig,
    check_option,
)
from flam_tf.distribute import check_finite, masked_mean, scaled_loss
from flam_tf.models.attribute_embedder import AttributeEmbedder  # noqa: F401 (registration)
from flam_tf.models.manipulator_networks import (
    Discriminator,
    Generator,
    MemoryGenerator,
    class_means,
)
from flam_tf.vocabulary import ATTRIBUTE_TYPES, NUM_CLASSES, NUM_TYPES, attribute_index, class_index

# The constructor's defaults are the config's (flam_tf.config), the one source of defaults.
_DEFAULTS = ManipulatorConfig()
_EMBEDDER = EmbedderConfig()

# Replica r of a MirroredStrategy draws with seed + [0, r * stride]: distinct streams per replica.
_REPLICA_SEED_STRIDE = 1000003


def select_partners(embeddings, classes, target_index, online_sampling=True, seed=None):
    """Chooses x^- for every x in a batch (Sec. 4.1, online sampling).

    A valid partner j of row i has a different class of the target type a_i:
    `classes[j, a_i] != classes[i, a_i]`. With online sampling the valid partner closest to x in the
    remaining attributes is taken: the one maximising sum_{t != a_i} cos(e_t(x_i), e_t(x_j)). Without
    it a valid partner is drawn uniformly at random. Ties go to the lowest index.

    Args:
        embeddings: float32 [B, n, k], the (unit norm) embeddings of each row per attribute type.
        classes: int32 [B, n], the (pseudo-)class of each row per attribute type.
        target_index: int32 [B], the target attribute type a_i of each row.
        online_sampling: closest-in-remaining-attributes (True) or uniform (False).
        seed: int32/int64 Tensor [2], stateless seed for the uniform draw (required if not
            `online_sampling`).

    Returns:
        (partner int32 [B], valid bool [B]): for a row without any valid partner, `valid` is False
        and `partner` is the row itself (mask such rows out of the losses).
    """
    embeddings = tf.convert_to_tensor(embeddings, tf.float32)
    classes = tf.cast(classes, tf.int32)
    target_index = tf.cast(tf.reshape(target_index, [-1]), tf.int32)
    num_types = tf.shape(classes)[1]
    batch = tf.shape(classes)[0]

    own_class = tf.gather(classes, target_index, batch_dims=1)  # [B], class_{a_i}(x_i)
    # [i, j] = class_{a_i}(x_j): gather gives [j, i], hence the transpose.
    partner_class = tf.transpose(tf.gather(classes, target_index, axis=1))
    valid_pair = tf.not_equal(partner_class, own_class[:, None])

    if online_sampling:
        similarity = tf.einsum("itk,jtk->tij", embeddings, embeddings)  # [n, B, B] per type
        target_mask = tf.one_hot(target_index, num_types, dtype=tf.float32)  # [B, n]
        # Sum over the remaining types t != a_i only.
        score = tf.einsum("tij,it->ij", similarity, 1.0 - target_mask)
    else:
        if seed is None:
            raise ValueError("select_partners(online_sampling=False) needs a seed tensor")
        score = tf.random.stateless_uniform(tf.stack([batch, batch]), seed=seed)
    lowest = tf.reduce_min(score) - 1.0
    partner = tf.argmax(tf.where(valid_pair, score, lowest), axis=1, output_type=tf.int32)
    valid = tf.reduce_any(valid_pair, axis=1)
    partner = tf.where(valid, partner, tf.range(batch, dtype=tf.int32))
    return partner, valid


@keras.saving.register_keras_serializable(package="flam_tf")
class FeatureManipulator(keras.Model):
    """The FLAM manipulating stage: a GAN on features with a frozen AttributeEmbedder teacher.

    Per training step, for a batch of real features x (unit norm, [B, D]):
      (a) a target attribute type a per row, uniform over the 3 types (or given with the data);
      (b) pseudo-classes of every row and type from the frozen embedder (nearest dictionary vector);
      (c) the target: with `target_sampling="partner"` (the paper) a partner x^- in the batch with a
          different class of a (`select_partners`) and e^- = phi_a(x^-); with "uniform" a target
          class t != the row's own, drawn uniformly, and e^- = d_{a,t}, the vector G is given at
          test time;
      (d) x~ = G(x, e^-), x_rec = G(x~, phi_a(x));
      (e) D minimises adv_weight * L_adv (Eq. 3) + match_weight * L_match real term (Eq. 4);
          G minimises adv_weight * L_adv (non-saturating) + match_weight * L_match fake term (Eq. 4)
          + cycle_weight * L_cycle (Eq. 5) + the terms of ours below.
    Rows without a valid target are masked out of every loss.

    Terms of ours (all 0 = the paper):
      - teacher_weight: Eq. 4's fake term measured by the frozen embedders themselves, phi(x~).
      - retrieval_weight: a multi-positive softmax (InfoNCE) of x~ against a bank of real
        training features (`set_retrieval_bank`): pulled toward the bank rows whose (pseudo-)labels
        equal the full target combination (the row's classes with class t on type a), pushed from
        the rest. It is what T@k measures, on training features only.
      - distance_weight: ||x~ - x||^2, keeps x~ near the query (its instance).

    Table 3 switches: `matching` "M"/"S" (with/without the remaining attributes in L_match),
    `adversarial` on/off, `online_sampling` on/off (with `target_sampling="partner"`). With
    adversarial=False the real/fake branch of D gets no gradient and keeps its initial weights
    (adv_loss reads 0); D's feature-matching branch is still trained on real features (Eq. 4, real
    term), otherwise f(x~) would be matched through an untrained network.

    At test time G is queried with a dictionary vector d_{a, value} (Sec. 3.3): `manipulate` and
    `manipulate_indices`.

    Args:
        embedder: a trained `AttributeEmbedder`; it is frozen here (trainable=False).
        feature_dim: D.
        embedding_dim: k (must equal the embedder's).
        g_hidden: hidden widths of G.
        d_hidden: hidden widths of D.
        generator: "memory" (`MemoryGenerator`, ours) or "mlp" (`Generator`, the paper's G).
        target_sampling: "uniform" (ours) or "partner" (the paper's, Sec. 4.1).
        matching: "M" or "S" (Eq. 4).
        adversarial: use L_adv (Eq. 3).
        online_sampling: choose x^- closest in the remaining attributes (Sec. 4.1).
        adv_weight, match_weight, cycle_weight: loss weights of Eq. 3-5 (L_cycle is a
            per-dimension L1 mean, small for unit-norm features).
        teacher_weight, retrieval_weight, distance_weight: the terms of ours above.
        retrieval_temperature: softmax temperature of the retrieval term.
        memory_temperature: the `MemoryGenerator`'s class-reading temperature.
        precision: "float32", or "mixed_bfloat16" (G's and D's Dense layers compute in
            bfloat16; variables, inputs, outputs and losses stay float32).
        seed: seed of the target-type, target-class and uniform-partner draws.

    Call args:
        inputs: tuple (features float32 [B, D], embeddings float32 [B, k], attribute_index
            int32 [B]) -> G(x, e) on type a; or features alone -> G(x, phi_shape(x)), x
            re-generated with its own shape embedding (a reconstruction).

    Returns:
        float32 [B, D], G's output.
    """

    def __init__(
        self,
        embedder,
        feature_dim,
        embedding_dim=_EMBEDDER.embedding_dim,
        g_hidden=(_DEFAULTS.g_hidden, _DEFAULTS.g_hidden),
        d_hidden=(_DEFAULTS.d_hidden, _DEFAULTS.d_hidden),
        generator=_DEFAULTS.generator,
        target_sampling=_DEFAULTS.target_sampling,
        matching=_DEFAULTS.matching,
        adversarial=_DEFAULTS.adversarial,
        online_sampling=_DEFAULTS.online_sampling,
        adv_weight=_DEFAULTS.adv_weight,
        match_weight=_DEFAULTS.match_weight,
        cycle_weight=_DEFAULTS.cycle_weight,
        teacher_weight=_DEFAULTS.teacher_weight,
        retrieval_weight=_DEFAULTS.retrieval_weight,
        distance_weight=_DEFAULTS.distance_weight,
        retrieval_temperature=_DEFAULTS.retrieval_temperature,
        memory_temperature=_DEFAULTS.memory_temperature,
        precision=_DEFAULTS.precision,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_option("precision", precision, PRECISIONS)
        check_option("matching", matching, FEATURE_MATCHING_MODES)
        check_option("generator", generator, GENERATORS)
        check_option("target_sampling", target_sampling, TARGET_SAMPLING)
        if isinstance(embedder, dict):
            embedder = keras.saving.deserialize_keras_object(embedder)
        if embedder.embedding_dim != embedding_dim:
            raise ValueError(
                f"embedding_dim must equal the embedder's. Received: embedding_dim={embedding_dim}, "
                f"embedder.embedding_dim={embedder.embedding_dim}"
            )
        self.embedder = embedder
        self.embedder.trainable = False  # the teacher / pseudo-labeler of the embedding stage
        self.feature_dim = feature_dim
        self.embedding_dim = embedding_dim
        self.g_hidden = tuple(g_hidden)
        self.d_hidden = tuple(d_hidden)
        self.generator_type = generator
        self.target_sampling = target_sampling
        self.matching = matching
        self.adversarial = adversarial
        self.online_sampling = online_sampling
        self.adv_weight = adv_weight
        self.match_weight = match_weight
        self.cycle_weight = cycle_weight
        self.teacher_weight = teacher_weight
        self.retrieval_weight = retrieval_weight
        self.distance_weight = distance_weight
        self.retrieval_temperature = retrieval_temperature
        self.memory_temperature = memory_temperature
        self.seed = seed
        self.precision = precision
        self.class_counts = tuple(NUM_CLASSES[a] for a in ATTRIBUTE_TYPES)

        if generator == "memory":
            self.generator = MemoryGenerator(
                feature_dim,
                embedding_dim,
                self.class_counts,
                self.g_hidden,
                memory_temperature=memory_temperature,
                dictionaries=embedder.stacked_dictionaries(),
                name="generator",
                dtype=precision,
            )
        else:
            self.generator = Generator(
                feature_dim, embedding_dim, self.g_hidden, name="generator", dtype=precision
            )
        self.discriminator = Discriminator(
            feature_dim,
            embedding_dim,
            NUM_TYPES,
            self.d_hidden,
            name="discriminator",
            dtype=precision,
        )
        self.seed_generator = keras.random.SeedGenerator(seed, name="manipulator_seed")
        self._bank = None  # (features [N, D], labels int32 [N, 3]), see set_retrieval_bank
        self.built = True

        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.adv_tracker = keras.metrics.Mean(name="adv_loss")
        self.match_tracker = keras.metrics.Mean(name="match_loss")
        self.cycle_tracker = keras.metrics.Mean(name="cycle_loss")
        self.retrieval_tracker = keras.metrics.Mean(name="retrieval_loss")
        self.cycle_cosine_tracker = keras.metrics.Mean(name="cycle_cosine")

    @property
    def metrics(self):
        return [
            self.d_loss_tracker,
            self.g_loss_tracker,
            self.adv_tracker,
            self.match_tracker,
            self.cycle_tracker,
            self.retrieval_tracker,
            self.cycle_cosine_tracker,
        ]

    def compile(self, g_optimizer, d_optimizer, **kwargs):
        """Sets G's and D's optimizers; call inside `strategy.scope()`.

        `g_optimizer` becomes `self.optimizer` (passed explicitly, so Keras creates no stray default
        optimizer) and both are built here on their own network's variables: an optimizer built
        lazily inside the first replica step fails with 2 replicas.
        """
        super().compile(optimizer=g_optimizer, **kwargs)
        self.g_optimizer = self.optimizer
        self.d_optimizer = d_optimizer
        self.g_optimizer.build(self.generator.trainable_variables)
        self.d_optimizer.build(self.discriminator.trainable_variables)

    def get_compile_config(self):
        # Two optimizers do not fit Keras' single-optimizer compile config: a loaded model is
        # returned uncompiled (no warning); call `compile(g_optimizer, d_optimizer)` to resume.
        return None

    def set_retrieval_bank(self, features, labels):
        """The real training features the retrieval term ranks x~ against (not saved with the model).

        Args:
            features: float32 [N, D], unit norm rows.
            labels: int [N, 3] classes in ATTRIBUTE_TYPES order: known labels, else the embedder's
                pseudo-labels (`pseudo_labels`); a row with a -1 is never a positive.
        """
        features = np.asarray(features, np.float32)
        labels = np.asarray(labels, np.int32)
        if (
            features.ndim != 2
            or features.shape[1] != self.feature_dim
            or labels.shape != (len(features), NUM_TYPES)
        ):
            raise ValueError(
                f"Expected features [N, {self.feature_dim}] and labels [N, {NUM_TYPES}]."
                f" Received: {features.shape} and {labels.shape}"
            )
        # One id per attribute combination: a single comparison per (query, bank row) pair.
        combination = np.where((labels >= 0).all(1), labels @ self._combination_strides(), -1)
        self._bank = (tf.constant(features), tf.constant(combination.astype(np.int32)))

    def _combination_strides(self):
        counts = self.class_counts
        return np.array([int(np.prod(counts[t + 1 :])) for t in range(NUM_TYPES)], np.int32)

    def pseudo_labels(self, features, batch_size=4096):
        """The frozen embedder's nearest-dictionary classes: int32 numpy [N, 3]."""
        return self.embedder.pseudo_labels(features, batch_size)

    def initialize_memory(self, features, labels):
        """Starts the MemoryGenerator at per-class means of `features` (labels int [N, 3], -1 skip)."""
        if self.generator_type == "memory":
            self.generator.initialize_memory(class_means(features, labels, self.class_counts))

    def generate(self, features, embeddings, attribute_index, source_embeddings=None):
        """x~ = G(x, e) on attribute type `attribute_index`.

        The memory G also takes the query's own embedding phi_a(x) (`source_embeddings`, computed
        here when not given).
        """
        features = tf.convert_to_tensor(features, tf.float32)
        attribute_index = tf.cast(tf.reshape(attribute_index, [-1]), tf.int32)
        if self.generator_type == "memory":
            if source_embeddings is None:
                own = tf.stack(
                    [self.embedder.embed(features)[a] for a in ATTRIBUTE_TYPES], axis=1
                )  # [B, 3, k]
                source_embeddings = tf.gather(own, attribute_index, batch_dims=1)
            return self.generator((features, embeddings, attribute_index, source_embeddings))
        return self.generator((features, embeddings, attribute_index))

    def call(self, inputs):
        """G on `(features, embeddings, attribute_index)`; bare features go through G(x, phi_0(x))."""
        if isinstance(inputs, (tuple, list)):
            features, embeddings, attribute_index = inputs
        else:
            features = inputs
            embeddings = self.embedder.embed(features)[ATTRIBUTE_TYPES[0]]
            attribute_index = tf.zeros(tf.shape(features)[:1], tf.int32)
        return self.generate(features, embeddings, attribute_index)

    # ------------------------------------------------------------------ training

    def _unpack(self, data):
        if isinstance(data, (tuple, list)):
            features = data[0]
            target_index = data[1] if len(data) > 1 else None
        else:
            features, target_index = data, None
        features = tf.convert_to_tensor(features, tf.float32)
        batch = tf.shape(features)[0]
        if target_index is None:
            # (a) uniform target type. The replica id is folded into the seed so replicas of a
            # MirroredStrategy do not draw the same types for their slices.
            target_index = tf.random.stateless_uniform(
                [batch], seed=self._replica_seed(), minval=0, maxval=NUM_TYPES, dtype=tf.int32
            )
        target_index = tf.reshape(tf.cast(target_index, tf.int32), [-1])
        return features, target_index

    def _replica_seed(self):
        seed = tf.cast(self.seed_generator.next(), tf.int64)
        context = tf.distribute.get_replica_context()
        replica = 0 if context is None else context.replica_id_in_sync_group
        return seed + tf.cast(tf.stack([0, replica]), tf.int64) * _REPLICA_SEED_STRIDE

    def _pairs(self, features, target_index):
        """Steps (b)-(d): embeddings, pseudo-classes, targets and the Eq. 4 targets.

        Returns:
            dict with e_neg [B, k] (what G is given), e_own [B, k] (phi_a(x), the cycle's way
            back), real_target / fake_target [B, 3k] (Eq. 4), target_classes int32 [B, 3] (the
            full target combination) and valid bool [B].
        """
        embedded = self.embedder.embed(features)
        embeddings = tf.stack([embedded[a] for a in ATTRIBUTE_TYPES], axis=1)  # [B, 3, k]
        dictionaries = self.embedder.stacked_dictionaries()  # [3, C_max, k]
        classes = self.embedder.nearest_classes(embeddings)  # [B, 3] pseudo-labels (b)
        own_class = tf.gather(classes, target_index, batch_dims=1)  # [B]
        if self.target_sampling == "partner":
            seed = None if self.online_sampling else self._replica_seed()
            partner, valid = select_partners(
                embeddings, classes, target_index, self.online_sampling, seed
            )  # (c)
            target_embeddings = tf.gather(embeddings, partner)  # [B, 3, k]
            target_class = tf.gather(tf.gather(classes, partner), target_index, batch_dims=1)
        else:
            counts = tf.gather(tf.constant(self.class_counts, tf.int32), target_index)
            offset = tf.random.stateless_uniform(
                tf.shape(target_index),
                seed=self._replica_seed(),
                minval=0,
                maxval=tf.int32.max,
                dtype=tf.int32,
            ) % tf.maximum(counts - 1, 1)
            target_class = (own_class + 1 + offset) % counts  # uniform over the other classes
            valid = counts > 1
            target_vectors = tf.gather_nd(dictionaries, tf.stack([target_index, target_class], 1))
            target_embeddings = tf.where(
                tf.one_hot(target_index, NUM_TYPES)[:, :, None] > 0.5,
                target_vectors[:, None, :],
                embeddings,
            )
        e_neg = tf.gather(target_embeddings, target_index, batch_dims=1)  # [B, k]
        e_own = tf.gather(embeddings, target_index, batch_dims=1)  # phi_a(x), [B, k]
        is_target = tf.one_hot(target_index, NUM_TYPES)[:, :, None] > 0.5
        batch = tf.shape(features)[0]
        real_target = tf.reshape(embeddings, [batch, NUM_TYPES * self.embedding_dim])
        fake_target = tf.reshape(
            tf.where(is_target, target_embeddings, embeddings),
            [batch, NUM_TYPES * self.embedding_dim],
        )  # [e^-]_target (+) [phi_abar(x)]_remain, Eq. 4 fake term
        target_classes = tf.where(
            tf.one_hot(target_index, NUM_TYPES) > 0.5, target_class[:, None], classes
        )
        return {
            "e_neg": e_neg,
            "e_own": e_own,
            "real_target": real_target,
            "fake_target": fake_target,
            "target_classes": target_classes,
            "valid": valid,
        }

    def _retrieval(self, x_fake, target_classes, valid):
        """Per-example multi-positive softmax loss against the bank, and the rows it applies to."""
        bank_features, bank_combination = self._bank
        target = tf.reduce_sum(target_classes * self._combination_strides()[None, :], axis=1)
        positive = tf.equal(bank_combination[None, :], target[:, None])  # [B, N]
        per_example = losses.retrieval_loss(
            x_fake, bank_features, positive, self.retrieval_temperature, per_example=True
        )
        return per_example, tf.logical_and(valid, tf.reduce_any(positive, axis=1))

    def _step(self, data, training):
        features, target_index = self._unpack(data)
        p = self._pairs(features, target_index)
        valid = p["valid"]
        zero = tf.constant(0.0)

        # Discriminator: Eq. 3 (D side) + Eq. 4 real term.
        with tf.GradientTape() as d_tape:
            # phi_a(x) is the source of both edits of x (computed once, in _pairs).
            x_fake = tf.stop_gradient(self.generate(features, p["e_neg"], target_index, p["e_own"]))
            real_logits, f_real = self.discriminator(features)
            match_real = masked_mean(
                losses.feature_matching_loss(
                    f_real, p["real_target"], target_index, self.matching, per_example=True
                ),
                valid,
            )
            if self.adversarial:
                fake_logits, _ = self.discriminator(x_fake)
                adv_d = masked_mean(
                    losses.discriminator_adversarial_loss_per_example(real_logits, fake_logits),
                    valid,
                )
            else:
                adv_d = zero
            d_loss = check_finite(
                self.adv_weight * adv_d + self.match_weight * match_real,
                "FeatureManipulator d_loss",
            )
            d_replica_loss = scaled_loss(d_loss)
        if training:
            d_variables = self.discriminator.trainable_variables
            if not self.adversarial:  # the real/fake branch is not part of any loss
                head = {id(v) for v in self.discriminator.logit_head.trainable_variables}
                d_variables = [v for v in d_variables if id(v) not in head]
            d_grads = d_tape.gradient(d_replica_loss, d_variables)
            self.d_optimizer.apply(d_grads, d_variables)

        # Generator: Eq. 3 (non-saturating) + Eq. 4 fake term + Eq. 5 + the terms of ours.
        with tf.GradientTape() as g_tape:
            x_fake = self.generate(features, p["e_neg"], target_index, p["e_own"])  # G(x, e^-)
            fake_logits, f_fake = self.discriminator(x_fake)
            if self.adversarial:
                adv_g = masked_mean(
                    losses.generator_adversarial_loss_per_example(fake_logits), valid
                )
            else:
                adv_g = zero
            match_fake = masked_mean(
                losses.feature_matching_loss(
                    f_fake, p["fake_target"], target_index, self.matching, per_example=True
                ),
                valid,
            )
            g_loss = self.adv_weight * adv_g + self.match_weight * match_fake
            if self.teacher_weight:
                # The Eq. 4 fake term measured by the frozen embedders themselves (phi(x~)), not
                # only through D's learned copy f.
                teacher = masked_mean(
                    losses.feature_matching_loss(
                        self.embedder(x_fake),
                        p["fake_target"],
                        target_index,
                        self.matching,
                        per_example=True,
                    ),
                    valid,
                )
                g_loss += self.teacher_weight * teacher
            x_rec = self.generate(x_fake, p["e_own"], target_index)  # G(G(x, e^-), phi_a(x))
            cycle = masked_mean(
                losses.cycle_consistency_loss(features, x_rec, per_example=True), valid
            )
            g_loss += self.cycle_weight * cycle
            retrieval = zero
            if self.retrieval_weight:
                if self._bank is None:
                    raise ValueError(
                        "retrieval_weight > 0 needs set_retrieval_bank(features, "
                        "labels) before training"
                    )
                per_example, rows = self._retrieval(x_fake, p["target_classes"], valid)
                retrieval = masked_mean(per_example, rows)
                g_loss += self.retrieval_weight * retrieval
            if self.distance_weight:
                distance = masked_mean(tf.reduce_sum(tf.square(x_fake - features), axis=-1), valid)
                g_loss += self.distance_weight * distance
            g_loss = check_finite(g_loss, "FeatureManipulator g_loss")
            g_replica_loss = scaled_loss(g_loss)
        if training:
            g_variables = self.generator.trainable_variables
            g_grads = g_tape.gradient(g_replica_loss, g_variables)
            self.g_optimizer.apply(g_grads, g_variables)

        cycle_cosine = masked_mean(losses.cosine_similarity(features, x_rec), valid)
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        self.adv_tracker.update_state(adv_g)
        self.match_tracker.update_state(match_real + match_fake)  # Eq. 4, both terms
        self.cycle_tracker.update_state(cycle)
        self.retrieval_tracker.update_state(retrieval)
        self.cycle_cosine_tracker.update_state(cycle_cosine)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        """One D step then one G step on `features [B, D]` or `(features, target_index int [B])`."""
        return self._step(data, training=True)

    def test_step(self, data):
        return self._step(data, training=False)

    # ------------------------------------------------------------------ inference (Sec. 3.3)

    def manipulate_indices(self, features, attribute_idx, value_idx):
        """x~ = G(x, d_{a, value}) with tensor indices (graph friendly, for SavedModel signatures).

        Args:
            features: float32 [B, D].
            attribute_idx: int32 [B], index into ATTRIBUTE_TYPES.
            value_idx: int32 [B], class index within that attribute type.

        Returns:
            float32 [B, D], unit norm rows.
        """
        dictionary_vectors = self.embedder.dictionary_vector(attribute_idx, value_idx)
        return self.generate(features, dictionary_vectors, attribute_idx)

    def manipulate(self, features, attribute, value=None):
        """Manipulates features by attribute and class names.

        Args:
            features: float32 [B, D].
            attribute: an attribute type name ("color") with `value` a class name ("red"); or a list
                of (attribute, value) pairs applied one after another (`value` None).
            value: the class name when `attribute` is a single name.

        Returns:
            float32 Tensor [B, D], unit norm rows.

        Raises:
            ValueError: naming an unknown attribute or value.
        """
        if isinstance(attribute, str):
            if value is None:
                raise ValueError(f"manipulate needs a value for attribute={attribute!r}")
            pairs = [(attribute, value)]
        else:
            if value is not None:
                raise ValueError("Pass either (attribute, value) or a list of pairs, not both")
            pairs = list(attribute)
        indices = [(attribute_index(a), class_index(a, v)) for a, v in pairs]  # validates all
        x = tf.convert_to_tensor(features, tf.float32)
        batch = tf.shape(x)[0]
        attribute_idx = tf.tile(tf.constant([[a for a, _ in indices]], tf.int32), [batch, 1])
        value_idx = tf.tile(tf.constant([[v for _, v in indices]], tf.int32), [batch, 1])
        return self.manipulate_sequence(
            x, attribute_idx, value_idx, tf.ones_like(attribute_idx, tf.bool)
        )

    def manipulate_sequence(self, features, attribute_idx, value_idx, mask, max_edits=None):
        """Several edits per row, applied one after another (graph friendly: the served
        manipulator's signature calls this).

        Args:
            features: float32 [B, D].
            attribute_idx, value_idx: int32 [B, E], edit i of each row in column i.
            mask: bool [B, E], whether row b has an edit i; a row's edits come first (a row
                without edit i keeps its feature through step i).
            max_edits: E, when the tensors' second dimension is not static.

        Returns:
            float32 [B, D]; only as many edits run as the longest row needs.
        """
        feature = tf.convert_to_tensor(features, tf.float32)
        steps = tf.reduce_max(tf.reduce_sum(tf.cast(mask, tf.int32), axis=1))  # empty batch: -inf
        for i in range(max_edits or mask.shape[1]):

            def edit(f=feature, i=i):
                new = self.manipulate_indices(f, attribute_idx[:, i], value_idx[:, i])
                return tf.where(mask[:, i : i + 1], tf.cast(new, tf.float32), f)

            feature = tf.cond(i < steps, edit, lambda f=feature: tf.identity(f))
        return feature

    # ------------------------------------------------------------------ serialization

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "embedder": keras.saving.serialize_keras_object(self.embedder),
                "feature_dim": self.feature_dim,
                "embedding_dim": self.embedding_dim,
                "g_hidden": list(self.g_hidden),
                "d_hidden": list(self.d_hidden),
                "generator": self.generator_type,
                "target_sampling": self.target_sampling,
                "matching": self.matching,
                "adversarial": self.adversarial,
                "online_sampling": self.online_sampling,
                "adv_weight": self.adv_weight,
                "match_weight": self.match_weight,
                "cycle_weight": self.cycle_weight,
                "teacher_weight": self.teacher_weight,
                "retrieval_weight": self.retrieval_weight,
                "distance_weight": self.distance_weight,
                "retrieval_temperature": self.retrieval_temperature,
                "memory_temperature": self.memory_temperature,
                "precision": self.precision,
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["embedder"] = keras.saving.deserialize_keras_object(config["embedder"])
        return cls(**config)
