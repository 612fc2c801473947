"""Attribute-specific embedders phi_a and dictionaries d_a (Sec. 3.1, the embedding stage)."""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from flam_tf import losses
from flam_tf.config import EmbedderConfig
from flam_tf.distribute import check_finite, masked_mean
from flam_tf.models.loss_tracking import LossTrackingModel
from flam_tf.vocabulary import ATTRIBUTE_TYPES, MISSING, NUM_CLASSES, attribute_index

_DEFAULTS = EmbedderConfig()  # the constructor's defaults are the config's


@keras.saving.register_keras_serializable(package="flam_tf")
class AttributeEmbedder(LossTrackingModel):
    """One embedder phi_a: x -> e_a in R^k and one dictionary d_a per attribute type.

    Each phi_a is Dense(hidden_units, relu) -> Dropout -> Dense(k) -> L2 norm. The dictionary d_a
    holds one vector per class of `a` (NUM_CLASSES[a] rows); it is L2-normalised wherever it is used,
    so the embeddings e_a and the dictionary vectors share the unit sphere. Eq. 2 pulls e_a towards
    d_{a, class} and pushes it from the other classes' vectors, which is what lets the manipulator be
    trained with e^- = phi_a(x^-) and queried with d_{a,i} (Sec. 3.3).

    Args:
        feature_dim: size D of the input features x.
        embedding_dim: k, the embedding size (the paper uses 32, Sec. 4.1).
        hidden_units: width of the hidden layer of each phi_a.
        margin: the triplet margin mu of Eq. 1-2.
        mining: "semi-hard" or "hard".
        dropout: dropout rate after the hidden layer (training only).

    Call args:
        features: float32 [B, D].

    Returns:
        float32 [B, 3k]: [e_shape, e_color, e_pattern], each block unit norm (ATTRIBUTE_TYPES order);
        the feature-matching target of Eq. 4 for a real x.
    """

    def __init__(
        self,
        feature_dim,
        embedding_dim=_DEFAULTS.embedding_dim,
        hidden_units=_DEFAULTS.hidden_units,
        margin=_DEFAULTS.margin,
        mining="semi-hard",
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        losses.check_option("mining", mining, losses.MINING_STRATEGIES)
        self.feature_dim = feature_dim
        self.embedding_dim = embedding_dim
        self.hidden_units = hidden_units
        self.margin = margin
        self.mining = mining
        self.dropout = dropout

        self.hidden_layers = {}
        self.dropout_layers = {}
        self.output_layers = {}
        self.dictionaries = {}
        for attribute in ATTRIBUTE_TYPES:
            hidden = keras.layers.Dense(hidden_units, activation="relu", name=f"{attribute}_hidden")
            hidden.build((None, feature_dim))
            out = keras.layers.Dense(embedding_dim, name=f"{attribute}_embedding")
            out.build((None, hidden_units))
            self.hidden_layers[attribute] = hidden
            self.dropout_layers[attribute] = keras.layers.Dropout(
                dropout, name=f"{attribute}_dropout"
            )
            self.output_layers[attribute] = out
            self.dictionaries[attribute] = self.add_weight(
                name=f"{attribute}_dictionary",
                shape=(NUM_CLASSES[attribute], embedding_dim),
                initializer=keras.initializers.RandomNormal(stddev=1.0),
            )
        self.built = True

        self.track_losses(["loss"] + [f"{a}_loss" for a in ATTRIBUTE_TYPES])

    def _embed_one(self, attribute, features, training=False):
        h = self.hidden_layers[attribute](features)
        h = self.dropout_layers[attribute](h, training=training)
        return ops.normalize(self.output_layers[attribute](h), axis=-1)

    def embed(self, features, training=False):
        """e_a = phi_a(x) for every attribute type.

        Args:
            features: float32 [B, D].
            training: enables dropout.

        Returns:
            dict attribute -> float32 [B, k], unit norm rows.
        """
        return {a: self._embed_one(a, features, training) for a in ATTRIBUTE_TYPES}

    def call(self, features, training=False):
        embeddings = self.embed(features, training=training)
        return ops.concatenate([embeddings[a] for a in ATTRIBUTE_TYPES], axis=-1)

    def dictionary(self, attribute):
        """The dictionary d_a of `attribute`, L2-normalised: float32 [NUM_CLASSES[a], k]."""
        attribute_index(attribute)  # ValueError naming a bad attribute
        return ops.normalize(self.dictionaries[attribute], axis=-1)

    def stacked_dictionaries(self):
        """All dictionaries, normalised and zero-padded to the largest class count: [3, C_max, k]."""
        max_classes = max(NUM_CLASSES.values())
        blocks = []
        for attribute in ATTRIBUTE_TYPES:
            d = self.dictionary(attribute)
            padding = max_classes - NUM_CLASSES[attribute]
            if padding:
                d = ops.pad(d, [[0, padding], [0, 0]])
            blocks.append(d)
        return ops.stack(blocks, axis=0)

    def dictionary_vector(self, attribute_idx, value_idx):
        """d_{a_i, v_i} per row, with tensor indices only (usable in a SavedModel signature).

        Args:
            attribute_idx: int Tensor [B], index into ATTRIBUTE_TYPES.
            value_idx: int Tensor [B], class index within that attribute type.

        Returns:
            float32 [B, k], unit norm rows.
        """
        indices = tf.stack(
            [
                tf.cast(tf.reshape(attribute_idx, [-1]), tf.int32),
                tf.cast(tf.reshape(value_idx, [-1]), tf.int32),
            ],
            axis=1,
        )
        return tf.gather_nd(self.stacked_dictionaries(), indices)

    def classify(self, features):
        """Nearest dictionary vector per attribute type (the pseudo-labeler of Sec. 4).

        Args:
            features: float32 [B, D].

        Returns:
            dict attribute -> (class index int32 [B], cosine similarity to that class float32 [B]).
        """
        embeddings = self.embed(features)
        result = {}
        for attribute in ATTRIBUTE_TYPES:
            scores = ops.matmul(embeddings[attribute], ops.transpose(self.dictionary(attribute)))
            result[attribute] = (
                ops.cast(ops.argmax(scores, axis=-1), "int32"),
                ops.max(scores, axis=-1),
            )
        return result

    def nearest_classes(self, embeddings):
        """The nearest dictionary class per type of stacked embeddings (in a graph).

        Args:
            embeddings: float32 [B, n_types, k] (`embed`'s blocks stacked in ATTRIBUTE_TYPES order).

        Returns:
            int32 [B, n_types]; a zero-padded row of `stacked_dictionaries` is never chosen.
        """
        max_classes = max(NUM_CLASSES.values())
        padding = tf.constant(
            [
                [0.0 if c < NUM_CLASSES[a] else -1e9 for c in range(max_classes)]
                for a in ATTRIBUTE_TYPES
            ],
            tf.float32,
        )
        scores = tf.einsum("btk,tck->btc", embeddings, self.stacked_dictionaries())
        return tf.argmax(scores + padding, axis=-1, output_type=tf.int32)

    def pseudo_labels(self, features, batch_size=4096):
        """`classify`'s classes of numpy features, in batches: int32 numpy [N, n_types] (the
        labels the manipulator's training takes where attribute_train has none)."""
        out = []
        for start in range(0, len(features), batch_size):
            classified = self.classify(tf.constant(features[start : start + batch_size]))
            out.append(np.stack([np.asarray(classified[a][0]) for a in ATTRIBUTE_TYPES], 1))
        return (
            np.concatenate(out).astype(np.int32)
            if out
            else np.zeros((0, len(ATTRIBUTE_TYPES)), np.int32)
        )

    def compute_losses(self, data, training):
        """Eq. 2 per attribute type on `(features [B, D], labels int [B, 3])`, MISSING (-1) rows
        left out of their type's mean; "loss" is the sum over types."""
        features, labels = data[0], data[1]
        labels = tf.cast(labels, tf.int32)
        embeddings = self.embed(features, training=training)
        out = {}
        for i, attribute in enumerate(ATTRIBUTE_TYPES):
            column = labels[:, i]
            per_example = losses.embedder_triplet_loss_per_example(
                column,
                embeddings[attribute],
                self.dictionaries[attribute],
                margin=self.margin,
                mining=self.mining,
            )  # Eq. 2, L_emb, 0 where the label is MISSING
            out[f"{attribute}_loss"] = masked_mean(per_example, column != MISSING)
        out["loss"] = check_finite(
            sum(out[f"{a}_loss"] for a in ATTRIBUTE_TYPES), "AttributeEmbedder loss"
        )
        return out

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "feature_dim": self.feature_dim,
                "embedding_dim": self.embedding_dim,
                "hidden_units": self.hidden_units,
                "margin": self.margin,
                "mining": self.mining,
                "dropout": self.dropout,
            }
        )
        return config
