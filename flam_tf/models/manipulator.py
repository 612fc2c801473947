"""The query feature manipulator (Sec. 3.2-3.3): generator G, discriminator D and their GAN.

Training (the manipulating stage) needs only unlabelled features: the frozen AttributeEmbedder of
the embedding stage is the teacher of D (Eq. 4) and the pseudo-labeler that decides which pairs
(x, x^-) have different classes of the target attribute type (Sec. 4, NFD).
"""

import keras
import tensorflow as tf
from keras import ops

from flam_tf import losses
from flam_tf.distribute import check_finite, masked_mean, scaled_loss
from flam_tf.models.attribute_embedder import AttributeEmbedder  # noqa: F401 (registration)
from flam_tf.vocabulary import ATTRIBUTE_TYPES, attribute_index, class_index

NUM_TYPES = len(ATTRIBUTE_TYPES)


def _mlp(hidden_units, name):
    return [
        keras.layers.Dense(units, activation="leaky_relu", name=f"{name}_dense{i}")
        for i, units in enumerate(hidden_units)
    ]


@keras.saving.register_keras_serializable(package="flam_tf")
class Generator(keras.Model):
    """G(x, e) -> x~: a feature with the attribute described by e, the rest of x kept (Eq. 3).

    Residual formulation: x~ = l2_normalize(x + MLP([x ; slot_a(e)])). The MLP only has to learn
    the change, so G starts close to the identity (which is what the remaining attributes need) and
    the output is a unit vector like every real feature, so it can be searched with cosine
    similarity.

    slot_a(e) places the k-dim embedding e in block a of a (n_types * k) zero vector. The paper
    feeds [x ; e] (Sec. 3.2), but the three embedding spaces are all unit vectors in R^k, so a bare
    e does not say which attribute type it describes; the slot does. (On the synthetic default
    preset it measured neutral with the paper-like loss weights, all-T@10 0.182 -> 0.183; it is
    kept because without it G(x, d) is ambiguous by construction. BUILD.md, section 8.)

    Args:
        feature_dim: D.
        embedding_dim: k.
        hidden_units: widths of the hidden layers (LeakyReLU).
        num_attribute_types: n_types, the number of slots.

    Call args:
        inputs: tuple (features float32 [B, D], embeddings float32 [B, k], attribute_index
            int32 [B]).

    Returns:
        float32 [B, D], unit norm rows.
    """

    def __init__(self, feature_dim, embedding_dim=32, hidden_units=(512, 512),
                 num_attribute_types=NUM_TYPES, **kwargs):
        super().__init__(**kwargs)
        self.feature_dim = feature_dim
        self.embedding_dim = embedding_dim
        self.hidden_units = tuple(hidden_units)
        self.num_attribute_types = num_attribute_types
        self.hidden = _mlp(self.hidden_units, "g")
        self.delta = keras.layers.Dense(feature_dim, name="g_delta")
        width = feature_dim + num_attribute_types * embedding_dim
        for layer in self.hidden:
            layer.build((None, width))
            width = layer.units
        self.delta.build((None, width))
        self.built = True

    def call(self, inputs):
        features, embeddings, attribute_index = inputs
        slots = tf.one_hot(tf.cast(attribute_index, tf.int32), self.num_attribute_types)
        slotted = tf.reshape(slots[:, :, None] * embeddings[:, None, :],
                             [-1, self.num_attribute_types * self.embedding_dim])
        h = ops.concatenate([features, slotted], axis=-1)  # [x ; slot_a(e)], Sec. 3.2
        for layer in self.hidden:
            h = layer(h)
        return ops.normalize(features + self.delta(h), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "feature_dim": self.feature_dim,
                "embedding_dim": self.embedding_dim,
                "hidden_units": list(self.hidden_units),
                "num_attribute_types": self.num_attribute_types,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="flam_tf")
class Discriminator(keras.Model):
    """D(x) -> (real/fake logit, f(x)): a shared MLP trunk split into two branches (Sec. 3.2).

    The paper's matching branch has (n+1)*k outputs for n remaining types plus the target type:
    with three attribute types that is `num_attribute_types * k`, one block per type in
    ATTRIBUTE_TYPES order, matched against the embedders' outputs (Eq. 4).

    Args:
        feature_dim: D.
        embedding_dim: k.
        num_attribute_types: n + 1 (3).
        hidden_units: widths of the shared hidden layers (LeakyReLU).

    Call args:
        features: float32 [B, D].

    Returns:
        tuple (logits float32 [B], f(x) float32 [B, num_attribute_types * k]).
    """

    def __init__(self, feature_dim, embedding_dim=32, num_attribute_types=NUM_TYPES,
                 hidden_units=(512, 512), **kwargs):
        super().__init__(**kwargs)
        self.feature_dim = feature_dim
        self.embedding_dim = embedding_dim
        self.num_attribute_types = num_attribute_types
        self.hidden_units = tuple(hidden_units)
        self.hidden = _mlp(self.hidden_units, "d")
        self.logit_head = keras.layers.Dense(1, name="d_logit")
        self.matching_head = keras.layers.Dense(num_attribute_types * embedding_dim,
                                                name="d_matching")
        width = feature_dim
        for layer in self.hidden:
            layer.build((None, width))
            width = layer.units
        self.logit_head.build((None, width))
        self.matching_head.build((None, width))
        self.built = True

    def call(self, features):
        h = features
        for layer in self.hidden:
            h = layer(h)
        return ops.squeeze(self.logit_head(h), axis=-1), self.matching_head(h)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "feature_dim": self.feature_dim,
                "embedding_dim": self.embedding_dim,
                "num_attribute_types": self.num_attribute_types,
                "hidden_units": list(self.hidden_units),
            }
        )
        return config


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
      (c) a partner x^- in the batch with a different class of a (`select_partners`);
      (d) e^- = phi_a(x^-), x~ = G(x, e^-), x_rec = G(x~, phi_a(x));
      (e) D minimises adv_weight * L_adv (Eq. 3) + match_weight * L_match real term (Eq. 4);
          G minimises adv_weight * L_adv (non-saturating) + match_weight * L_match fake term (Eq. 4)
          + cycle_weight * L_cycle (Eq. 5).
    Rows without a valid partner are masked out of every loss.

    Table 3 switches: `matching` "M"/"S" (with/without the remaining attributes in L_match),
    `adversarial` on/off, `online_sampling` on/off. With adversarial=False the real/fake branch of D
    gets no gradient and keeps its initial weights (adv_loss reads 0); D's feature-matching branch is
    still trained on real features (Eq. 4, real term), otherwise f(x~) would be matched through an
    untrained network and L_match would carry no attribute knowledge to G.

    At test time G is queried with a dictionary vector d_{a, value} instead of phi_a(x^-)
    (Sec. 3.3): `manipulate` and `manipulate_indices`.

    Args:
        embedder: a trained `AttributeEmbedder`; it is frozen here (trainable=False).
        feature_dim: D.
        embedding_dim: k (must equal the embedder's).
        g_hidden: hidden widths of G.
        d_hidden: hidden widths of D.
        matching: "M" or "S" (Eq. 4).
        adversarial: use L_adv (Eq. 3).
        online_sampling: choose x^- closest in the remaining attributes (Sec. 4.1).
        adv_weight, match_weight, cycle_weight: loss weights. The default cycle weight 10 follows
            CycleGAN; L_cycle is a per-dimension L1 mean, small for unit-norm features.
        seed: seed of the target-type and uniform-partner draws.

    Call args:
        inputs: tuple (features float32 [B, D], embeddings float32 [B, k]) -> G(x, e); or features
            alone -> G(x, phi_shape(x)), x re-generated with its own shape embedding (a
            reconstruction; it lets Keras call the model with one input).

    Returns:
        float32 [B, D], G's output.
    """

    def __init__(
        self,
        embedder,
        feature_dim,
        embedding_dim=32,
        g_hidden=(512, 512),
        d_hidden=(512, 512),
        matching="M",
        adversarial=True,
        online_sampling=True,
        adv_weight=1.0,
        match_weight=1.0,
        cycle_weight=10.0,
        teacher_weight=0.0,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if matching not in losses.FEATURE_MATCHING_MODES:
            raise ValueError(
                f"Unknown matching. Received: matching={matching!r}; "
                f"expected one of {list(losses.FEATURE_MATCHING_MODES)}"
            )
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
        self.matching = matching
        self.adversarial = adversarial
        self.online_sampling = online_sampling
        self.adv_weight = adv_weight
        self.match_weight = match_weight
        self.cycle_weight = cycle_weight
        self.teacher_weight = teacher_weight
        self.seed = seed

        self.generator = Generator(feature_dim, embedding_dim, self.g_hidden, name="generator")
        self.discriminator = Discriminator(
            feature_dim, embedding_dim, NUM_TYPES, self.d_hidden, name="discriminator"
        )
        self.seed_generator = keras.random.SeedGenerator(seed, name="manipulator_seed")
        self.built = True

        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.adv_tracker = keras.metrics.Mean(name="adv_loss")
        self.match_tracker = keras.metrics.Mean(name="match_loss")
        self.cycle_tracker = keras.metrics.Mean(name="cycle_loss")
        self.cycle_cosine_tracker = keras.metrics.Mean(name="cycle_cosine")

    @property
    def metrics(self):
        return [
            self.d_loss_tracker,
            self.g_loss_tracker,
            self.adv_tracker,
            self.match_tracker,
            self.cycle_tracker,
            self.cycle_cosine_tracker,
        ]

    def compile(self, g_optimizer, d_optimizer, **kwargs):
        """Sets G's and D's optimizers; call inside `strategy.scope()`.

        `g_optimizer` becomes `self.optimizer` (passed explicitly, so Keras creates no stray default
        optimizer, STACK.md pitfall 4) and both are built here on their own network's variables
        (pitfall 2: an optimizer built lazily in the first replica step fails with 2 replicas).
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

    def call(self, inputs):
        """G on `(features, embeddings, attribute_index)`; bare features go through G(x, phi_0(x))."""
        if isinstance(inputs, (tuple, list)):
            features, embeddings, attribute_index = inputs
        else:
            features = inputs
            embeddings = self.embedder.embed(features)[ATTRIBUTE_TYPES[0]]
            attribute_index = tf.zeros(tf.shape(features)[:1], tf.int32)
        return self.generator((features, embeddings, attribute_index))

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
            seed = self._replica_seed()
            target_index = tf.random.stateless_uniform(
                [batch], seed=seed, minval=0, maxval=NUM_TYPES, dtype=tf.int32
            )
        target_index = tf.reshape(tf.cast(target_index, tf.int32), [-1])
        return features, target_index

    def _replica_seed(self):
        seed = tf.cast(self.seed_generator.next(), tf.int64)
        context = tf.distribute.get_replica_context()
        replica = 0 if context is None else context.replica_id_in_sync_group
        return seed + tf.cast(tf.stack([0, replica]), tf.int64) * 1000003

    def _pairs(self, features, target_index):
        """Steps (b)-(d): embeddings, pseudo-classes, partners and the Eq. 4 targets."""
        embedded = self.embedder.embed(features)
        embeddings = tf.stack([embedded[a] for a in ATTRIBUTE_TYPES], axis=1)  # [B, 3, k]
        classes = tf.stack(
            [
                tf.argmax(
                    tf.matmul(embedded[a], self.embedder.dictionary(a), transpose_b=True),
                    axis=-1, output_type=tf.int32,
                )
                for a in ATTRIBUTE_TYPES
            ],
            axis=1,
        )  # [B, 3] pseudo-labels (b)
        seed = None if self.online_sampling else self._replica_seed()
        partner, valid = select_partners(
            embeddings, classes, target_index, self.online_sampling, seed
        )  # (c)
        partner_embeddings = tf.gather(embeddings, partner)  # [B, 3, k]
        e_neg = tf.gather(partner_embeddings, target_index, batch_dims=1)  # phi_a(x^-), [B, k]
        e_own = tf.gather(embeddings, target_index, batch_dims=1)  # phi_a(x), [B, k]
        is_target = tf.one_hot(target_index, NUM_TYPES)[:, :, None] > 0.5
        batch = tf.shape(features)[0]
        real_target = tf.reshape(embeddings, [batch, NUM_TYPES * self.embedding_dim])
        fake_target = tf.reshape(
            tf.where(is_target, partner_embeddings, embeddings),
            [batch, NUM_TYPES * self.embedding_dim],
        )  # [phi_a(x^-)]_target (+) [phi_abar(x)]_remain, Eq. 4 fake term
        return e_neg, e_own, real_target, fake_target, valid

    def _step(self, data, training):
        features, target_index = self._unpack(data)
        e_neg, e_own, real_target, fake_target, valid = self._pairs(features, target_index)
        zero = tf.constant(0.0)

        # Discriminator: Eq. 3 (D side) + Eq. 4 real term.
        with tf.GradientTape() as d_tape:
            x_fake = tf.stop_gradient(self.generator((features, e_neg, target_index)))
            real_logits, f_real = self.discriminator(features)
            match_real = masked_mean(
                losses.feature_matching_loss(
                    f_real, real_target, target_index, self.matching, per_example=True
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
                self.adv_weight * adv_d + self.match_weight * match_real, "FeatureManipulator d_loss"
            )
            d_replica_loss = scaled_loss(d_loss)
        if training:
            d_variables = self.discriminator.trainable_variables
            if not self.adversarial:  # the real/fake branch is not part of any loss
                head = {id(v) for v in self.discriminator.logit_head.trainable_variables}
                d_variables = [v for v in d_variables if id(v) not in head]
            d_grads = d_tape.gradient(d_replica_loss, d_variables)
            self.d_optimizer.apply(d_grads, d_variables)

        # Generator: Eq. 3 (non-saturating) + Eq. 4 fake term + Eq. 5.
        with tf.GradientTape() as g_tape:
            x_fake = self.generator((features, e_neg, target_index))  # x~ = G(x, e^-)
            fake_logits, f_fake = self.discriminator(x_fake)
            if self.adversarial:
                adv_g = masked_mean(losses.generator_adversarial_loss_per_example(fake_logits), valid)
            else:
                adv_g = zero
            match_fake = masked_mean(
                losses.feature_matching_loss(
                    f_fake, fake_target, target_index, self.matching, per_example=True
                ),
                valid,
            )
            if self.teacher_weight:
                # The Eq. 4 fake term measured by the frozen embedders themselves (phi(x~)), not
                # only through D's learned copy f: G cannot satisfy a D that f mis-generalises on.
                teacher = masked_mean(
                    losses.feature_matching_loss(
                        self.embedder(x_fake), fake_target, target_index, self.matching,
                        per_example=True,
                    ),
                    valid,
                )
            else:
                teacher = zero
            x_rec = self.generator((x_fake, e_own, target_index))  # G(G(x, e^-), phi_a(x))
            cycle = masked_mean(losses.cycle_consistency_loss(features, x_rec, per_example=True),
                                valid)
            g_loss = check_finite(
                self.adv_weight * adv_g + self.match_weight * match_fake + self.cycle_weight * cycle
                + self.teacher_weight * teacher,
                "FeatureManipulator g_loss",
            )
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
        return self.generator((tf.convert_to_tensor(features, tf.float32), dictionary_vectors,
                               attribute_idx))

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
        for a, v in indices:
            x = self.manipulate_indices(x, tf.fill([batch], a), tf.fill([batch], v))
        return x

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
                "matching": self.matching,
                "adversarial": self.adversarial,
                "online_sampling": self.online_sampling,
                "adv_weight": self.adv_weight,
                "match_weight": self.match_weight,
                "cycle_weight": self.cycle_weight,
                "teacher_weight": self.teacher_weight,
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["embedder"] = keras.saving.deserialize_keras_object(config["embedder"])
        return cls(**config)
