"""The networks of the query feature manipulator (Sec. 3.2): the paper's generator G(x, e), the
memory generator (ours: x + M[target] - M[source] + delta), and the discriminator D(x) with its
real/fake and feature-matching heads. FeatureManipulator (manipulator.py) trains them."""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from flam_tf.vocabulary import NUM_TYPES


def class_means(features, labels, class_counts):
    """Per attribute type and class, the mean of the feature rows with that label.

    Args:
        features: float [N, D].
        labels: int [N, n_types], -1 where unknown (left out of every mean).
        class_counts: C_a per attribute type.

    Returns:
        float32 [n_types, max(class_counts), D]; a class without rows (or a padding row) is 0.
    """
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels)
    means = np.zeros((len(class_counts), max(class_counts), features.shape[1]), np.float32)
    for a, count in enumerate(class_counts):
        for c in range(count):
            rows = labels[:, a] == c
            if rows.any():
                means[a, c] = features[rows].mean(0)
    return means


def _mlp(hidden_units, name, dtype=None):
    return [
        keras.layers.Dense(units, activation="leaky_relu", name=f"{name}_dense{i}", dtype=dtype)
        for i, units in enumerate(hidden_units)
    ]


def _float32(x):
    """Outputs leave G and D in float32 whatever their compute dtype (mixed_bfloat16)."""
    return ops.cast(x, "float32")


def _slot(embeddings, attribute_index, num_attribute_types):
    """slot_a(e): e placed in block a of a zero vector [B, num_attribute_types * k]."""
    slots = tf.one_hot(tf.cast(attribute_index, tf.int32), num_attribute_types)
    width = num_attribute_types * embeddings.shape[-1]
    return tf.reshape(slots[:, :, None] * embeddings[:, None, :], [-1, width])


@keras.saving.register_keras_serializable(package="flam_tf")
class Generator(keras.Model):
    """G(x, e) -> x~: a feature with the attribute described by e, the rest of x kept (Eq. 3).

    Residual formulation: x~ = l2_normalize(x + MLP([x ; slot_a(e)])). The MLP only has to learn
    the change, so G starts close to the identity (which is what the remaining attributes need) and
    the output is a unit vector like every real feature, so it can be searched with cosine
    similarity.

    slot_a(e) places the k-dim embedding e in block a of a (n_types * k) zero vector. The paper
    feeds [x ; e] (Sec. 3.2), but the three embedding spaces are all unit vectors in R^k, so a bare
    e does not say which attribute type it describes; the slot does: without it G(x, d) is
    ambiguous by construction.

    Args:
        feature_dim: D.
        embedding_dim: k.
        hidden_units: widths of the hidden layers (LeakyReLU).
        num_attribute_types: n_types, the number of slots.

    Call args:
        inputs: tuple (features float32 [B, D], embeddings float32 [B, k], attribute_index
            int32 [B]), optionally with a 4th element (source embeddings) that it ignores, so that
            it is called like `MemoryGenerator`.

    Returns:
        float32 [B, D], unit norm rows.
    """

    def __init__(
        self,
        feature_dim,
        embedding_dim=32,
        hidden_units=(512, 512),
        num_attribute_types=NUM_TYPES,
        **kwargs,
    ):
        # Inputs stay float32 (x is added back at full precision); the Dense layers cast for
        # themselves under a mixed policy.
        super().__init__(autocast=False, **kwargs)
        self.feature_dim = feature_dim
        self.embedding_dim = embedding_dim
        self.hidden_units = tuple(hidden_units)
        self.num_attribute_types = num_attribute_types
        self.hidden = _mlp(self.hidden_units, "g", self.dtype_policy)
        self.delta = keras.layers.Dense(feature_dim, name="g_delta", dtype=self.dtype_policy)
        width = feature_dim + num_attribute_types * embedding_dim
        for layer in self.hidden:
            layer.build((None, width))
            width = layer.units
        self.delta.build((None, width))
        self.built = True

    def call(self, inputs):
        features, embeddings, attribute_index = inputs[:3]  # a 4th (source) input is unused
        features, embeddings = _float32(features), _float32(embeddings)
        slotted = _slot(embeddings, attribute_index, self.num_attribute_types)
        h = ops.concatenate([features, slotted], axis=-1)  # [x ; slot_a(e)], Sec. 3.2
        for layer in self.hidden:
            h = layer(h)
        return ops.normalize(features + _float32(self.delta(h)), axis=-1)

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
class MemoryGenerator(keras.Model):
    """G(x, e) as a residual on a learned attribute memory (ours; the memory of ADDE-M, the gated
    residual idea of TIRG):

        x~ = l2_normalize(x + w(e)^T M_a - w(e_src)^T M_a + delta([x ; slot_a(e)]))

    M_a [C_a, D] holds one learned vector per class of attribute type a, initialised at the class
    means of real features (`initialize_memory`), so an untrained G is the class-mean shift.
    w(e) = softmax(cos(e, d_a) / memory_temperature) reads the class that e describes off the
    (frozen) dictionaries d_a: a dictionary vector d_{a,v} selects row v, an embedding phi_a(x^-)
    its nearest classes. e_src = phi_a(x), the query's own embedding, selects the row to take
    away. delta is an MLP whose last layer starts at zero, so it only learns a correction.

    Args:
        feature_dim: D.
        embedding_dim: k.
        class_counts: C_a per attribute type (padding rows beyond C_a are never selected).
        hidden_units: widths of delta's hidden layers (LeakyReLU).
        memory_temperature: softmax temperature of w(.).
        dictionaries: float32 [n_types, C_max, k], the embedder's normalised dictionaries,
            zero-padded (`AttributeEmbedder.stacked_dictionaries()`); None when loading.

    Call args:
        inputs: tuple (features float32 [B, D], embeddings float32 [B, k], attribute_index
            int32 [B], source_embeddings float32 [B, k]).

    Returns:
        float32 [B, D], unit norm rows.
    """

    def __init__(
        self,
        feature_dim,
        embedding_dim,
        class_counts,
        hidden_units=(512, 512),
        memory_temperature=0.05,
        dictionaries=None,
        **kwargs,
    ):
        super().__init__(autocast=False, **kwargs)  # as Generator: x stays float32
        self.feature_dim = feature_dim
        self.embedding_dim = embedding_dim
        self.class_counts = tuple(int(c) for c in class_counts)
        self.num_attribute_types = len(self.class_counts)
        self.max_classes = max(self.class_counts)
        self.hidden_units = tuple(hidden_units)
        self.memory_temperature = memory_temperature
        shape = (self.num_attribute_types, self.max_classes, embedding_dim)
        # A frozen copy of the embedder's dictionaries (restored with the weights on load).
        self.dictionaries = self.add_weight(
            shape=shape,
            trainable=False,
            name="dictionaries",
            autocast=False,
            initializer=(
                "zeros"
                if dictionaries is None
                else keras.initializers.Constant(np.asarray(dictionaries, np.float32))
            ),
        )
        self.memory = self.add_weight(
            shape=(self.num_attribute_types, self.max_classes, feature_dim),
            initializer="zeros",
            name="memory",
            autocast=False,
        )  # float32 under mixed precision
        self.hidden = _mlp(self.hidden_units, "g", self.dtype_policy)
        self.delta = keras.layers.Dense(
            feature_dim, kernel_initializer="zeros", name="g_delta", dtype=self.dtype_policy
        )
        width = feature_dim + self.num_attribute_types * self.embedding_dim
        for layer in self.hidden:
            layer.build((None, width))
            width = layer.units
        self.delta.build((None, width))
        self.built = True

    def initialize_memory(self, class_means):
        """Sets M to class means of real features: float32 [n_types, C_max, D] (unused rows 0)."""
        self.memory.assign(np.asarray(class_means, np.float32))

    def class_weights(self, embeddings, attribute_index):
        """w(e): float32 [B, C_max], a softmax over the classes of each row's attribute type."""
        dictionaries = tf.gather(self.dictionaries, attribute_index)  # [B, C_max, k]
        scores = tf.einsum("bk,bck->bc", ops.normalize(embeddings, axis=-1), dictionaries)
        counts = tf.gather(tf.constant(self.class_counts, tf.int32), attribute_index)
        present = tf.range(self.max_classes)[None, :] < counts[:, None]
        scores = tf.where(present, scores / self.memory_temperature, -1e9)
        return tf.nn.softmax(scores, axis=-1)

    def call(self, inputs):
        features, embeddings, attribute_index, source_embeddings = inputs
        features, embeddings = _float32(features), _float32(embeddings)
        source_embeddings = _float32(source_embeddings)
        attribute_index = tf.cast(tf.reshape(attribute_index, [-1]), tf.int32)
        memory = tf.gather(self.memory, attribute_index)  # [B, C_max, D]
        change = self.class_weights(embeddings, attribute_index) - self.class_weights(
            source_embeddings, attribute_index
        )
        shift = tf.einsum("bc,bcd->bd", change, memory)
        h = ops.concatenate(
            [features, _slot(embeddings, attribute_index, self.num_attribute_types)], axis=-1
        )
        for layer in self.hidden:
            h = layer(h)
        return ops.normalize(features + shift + _float32(self.delta(h)), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "feature_dim": self.feature_dim,
                "embedding_dim": self.embedding_dim,
                "class_counts": list(self.class_counts),
                "hidden_units": list(self.hidden_units),
                "memory_temperature": self.memory_temperature,
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

    def __init__(
        self,
        feature_dim,
        embedding_dim=32,
        num_attribute_types=NUM_TYPES,
        hidden_units=(512, 512),
        **kwargs,
    ):
        super().__init__(autocast=False, **kwargs)
        self.feature_dim = feature_dim
        self.embedding_dim = embedding_dim
        self.num_attribute_types = num_attribute_types
        self.hidden_units = tuple(hidden_units)
        self.hidden = _mlp(self.hidden_units, "d", self.dtype_policy)
        self.logit_head = keras.layers.Dense(1, name="d_logit", dtype=self.dtype_policy)
        self.matching_head = keras.layers.Dense(
            num_attribute_types * embedding_dim, name="d_matching", dtype=self.dtype_policy
        )
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
        return (_float32(ops.squeeze(self.logit_head(h), axis=-1)), _float32(self.matching_head(h)))

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
