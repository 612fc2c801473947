"""The Cls-Concat and Emb-Concat baselines of the paper's Tables 3-4 (Sec. 4.2, "Baselines").

Both map an extractor feature x to three attribute blocks of `block_dim` (341 in the paper, 1023 in
all) and concatenate them. Attribute manipulation replaces the target attribute's block with the
prototype (mean block over the training items) of the desired class.

Representation layout: r = l2_normalize([b_shape ; b_color ; b_pattern]) with every block b_a
L2-normalised first, so each block of r has norm 1/sqrt(3) and all attribute types weigh the same in
a cosine search.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from flam_tf import losses
from flam_tf.config import MINING_STRATEGIES, check_option
from flam_tf.distribute import check_finite, masked_mean
from flam_tf.models.feature_extractor import FeatureExtractor
from flam_tf.models.loss_tracking import LossTrackingModel
from flam_tf.vocabulary import ATTRIBUTE_TYPES, MISSING, NUM_CLASSES, NUM_TYPES


class _ConcatBaseline(LossTrackingModel):
    """Shared parts: blocks, representation, prototypes, manipulation and the losses."""

    def __init__(self, feature_dim, block_dim=341, **kwargs):
        super().__init__(**kwargs)
        self.feature_dim = feature_dim
        self.block_dim = block_dim
        self.prototypes = {}
        for attribute in ATTRIBUTE_TYPES:
            # Non-trainable weights so `fit_prototypes`' result is saved with the model.
            self.prototypes[attribute] = self.add_weight(
                name=f"{attribute}_prototypes",
                shape=(NUM_CLASSES[attribute], block_dim),
                initializer="zeros",
                trainable=False,
            )
        self.track_losses(["loss"] + [f"{a}_loss" for a in ATTRIBUTE_TYPES])

    def blocks(self, features, training=False):
        """Attribute blocks, each L2-normalised: dict attribute -> float32 [B, block_dim]."""
        raise NotImplementedError

    def _attribute_loss(self, attribute, features, labels, training):
        """Per-attribute scalar loss (replica estimate of the global batch loss)."""
        raise NotImplementedError

    def represent(self, features, training=False):
        """The retrieval representation r: float32 [B, 3 * block_dim], unit norm rows."""
        blocks = self.blocks(features, training=training)
        return ops.normalize(
            ops.concatenate([blocks[a] for a in ATTRIBUTE_TYPES], axis=-1), axis=-1
        )

    def call(self, features, training=False):
        return self.represent(features, training=training)

    def fit_prototypes(self, features, labels, batch_size=1024):
        """Stores per class the mean (normalised) block over the training items of that class.

        Args:
            features: float32 array [N, D].
            labels: int array [N, 3], MISSING (-1) for a missing label.
            batch_size: rows embedded at a time.

        Returns:
            dict attribute -> int array [C_a], the number of items per class (0: prototype stays 0).
        """
        features = np.asarray(features, np.float32)
        labels = np.asarray(labels)
        sums = {a: np.zeros((NUM_CLASSES[a], self.block_dim), np.float64) for a in ATTRIBUTE_TYPES}
        counts = {a: np.zeros((NUM_CLASSES[a],), np.int64) for a in ATTRIBUTE_TYPES}
        for start in range(0, len(features), batch_size):
            blocks = self.blocks(features[start : start + batch_size])
            for i, attribute in enumerate(ATTRIBUTE_TYPES):
                block = np.asarray(blocks[attribute])
                column = labels[start : start + batch_size, i]
                known = column != MISSING
                np.add.at(sums[attribute], column[known], block[known])
                counts[attribute] += np.bincount(column[known], minlength=NUM_CLASSES[attribute])
        for attribute in ATTRIBUTE_TYPES:
            mean = sums[attribute] / np.maximum(counts[attribute], 1)[:, None]
            self.prototypes[attribute].assign(mean.astype(np.float32))
        return counts

    def manipulate(self, representations, attribute_idx, value_idx):
        """Replaces the target attribute's block by the desired class' prototype.

        Args:
            representations: float32 [B, 3 * block_dim] from `represent`.
            attribute_idx: int [B], index into ATTRIBUTE_TYPES.
            value_idx: int [B], class index within that attribute type.

        Returns:
            float32 [B, 3 * block_dim], unit norm rows.
        """
        r = tf.convert_to_tensor(representations, tf.float32)
        batch = tf.shape(r)[0]
        blocks = tf.math.l2_normalize(tf.reshape(r, [batch, NUM_TYPES, self.block_dim]), axis=-1)
        max_classes = max(NUM_CLASSES.values())
        table = tf.stack(
            [
                tf.pad(
                    tf.convert_to_tensor(self.prototypes[a]),
                    [[0, max_classes - NUM_CLASSES[a]], [0, 0]],
                )
                for a in ATTRIBUTE_TYPES
            ],
            axis=0,
        )  # [3, C_max, block_dim]
        attribute_idx = tf.cast(tf.reshape(attribute_idx, [-1]), tf.int32)
        value_idx = tf.cast(tf.reshape(value_idx, [-1]), tf.int32)
        prototype = tf.math.l2_normalize(
            tf.gather_nd(table, tf.stack([attribute_idx, value_idx], axis=1)), axis=-1
        )  # [B, block_dim]
        is_target = tf.one_hot(attribute_idx, NUM_TYPES)[:, :, None] > 0.5
        blocks = tf.where(is_target, prototype[:, None, :], blocks)
        return tf.math.l2_normalize(
            tf.reshape(blocks, [batch, NUM_TYPES * self.block_dim]), axis=-1
        )

    def compute_losses(self, data, training):
        """Each type's loss on `(features [B, D], labels int [B, 3])`, MISSING (-1) rows masked
        per type; "loss" is their sum."""
        features, labels = data[0], tf.cast(data[1], tf.int32)
        out = {
            f"{a}_loss": self._attribute_loss(a, features, labels[:, i], training)
            for i, a in enumerate(ATTRIBUTE_TYPES)
        }
        out["loss"] = check_finite(
            sum(out[f"{a}_loss"] for a in ATTRIBUTE_TYPES), f"{type(self).__name__} loss"
        )
        return out

    def get_config(self):
        config = super().get_config()
        config.update({"feature_dim": self.feature_dim, "block_dim": self.block_dim})
        return config


@keras.saving.register_keras_serializable(package="flam_tf")
class ClsConcat(_ConcatBaseline):
    """Cls-Concat: per attribute type Dense(block_dim, relu) -> Dropout -> Dense(C_a), with CE.

    The representation concatenates the three intermediate (block_dim) activations.

    Args:
        feature_dim: D of the input features.
        block_dim: width of the intermediate layer (341 in the paper).
        dropout: dropout rate between the two layers.

    Call args:
        features: float32 [B, D].

    Returns:
        float32 [B, 3 * block_dim], unit norm rows (`represent`).
    """

    def __init__(self, feature_dim, block_dim=341, dropout=0.3, **kwargs):
        super().__init__(feature_dim, block_dim, **kwargs)
        self.dropout = dropout
        self.hidden_layers, self.dropout_layers, self.classifiers = {}, {}, {}
        for attribute in ATTRIBUTE_TYPES:
            hidden = keras.layers.Dense(block_dim, activation="relu", name=f"{attribute}_hidden")
            hidden.build((None, feature_dim))
            classifier = keras.layers.Dense(NUM_CLASSES[attribute], name=f"{attribute}_classifier")
            classifier.build((None, block_dim))
            self.hidden_layers[attribute] = hidden
            self.dropout_layers[attribute] = keras.layers.Dropout(
                dropout, name=f"{attribute}_dropout"
            )
            self.classifiers[attribute] = classifier
        self.built = True

    def blocks(self, features, training=False):
        return {a: ops.normalize(self.hidden_layers[a](features), axis=-1) for a in ATTRIBUTE_TYPES}

    def logits(self, features, training=False):
        """Class logits per attribute type: dict attribute -> float32 [B, C_a]."""
        result = {}
        for a in ATTRIBUTE_TYPES:
            h = self.dropout_layers[a](self.hidden_layers[a](features), training=training)
            result[a] = self.classifiers[a](h)
        return result

    def _attribute_loss(self, attribute, features, labels, training):
        h = self.dropout_layers[attribute](
            self.hidden_layers[attribute](features), training=training
        )
        logits = self.classifiers[attribute](h)
        known = labels != MISSING
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.where(known, labels, 0), logits=logits
        )
        return masked_mean(ce, known)

    def get_config(self):
        config = super().get_config()
        config.update({"dropout": self.dropout})
        return config


@keras.saving.register_keras_serializable(package="flam_tf")
class EmbConcat(_ConcatBaseline):
    """Emb-Concat: per attribute type Dense(hidden_units, relu) -> Dense(block_dim), triplet loss.

    Each block is trained with the cosine triplet loss (Eq. 1) on the rows labelled for that type;
    the representation concatenates the three normalised embeddings.

    Args:
        feature_dim: D of the input features.
        block_dim: embedding size per attribute type (341 in the paper).
        margin: triplet margin mu.
        mining: "semi-hard" or "hard".
        hidden_units: width of the hidden layer (None: block_dim).

    Call args:
        features: float32 [B, D].

    Returns:
        float32 [B, 3 * block_dim], unit norm rows (`represent`).
    """

    def __init__(
        self,
        feature_dim,
        block_dim=341,
        margin=0.2,
        mining="semi-hard",
        hidden_units=None,
        **kwargs,
    ):
        super().__init__(feature_dim, block_dim, **kwargs)
        check_option("mining", mining, MINING_STRATEGIES)
        self.margin = margin
        self.mining = mining
        self.hidden_units = hidden_units
        width = hidden_units or block_dim
        self.hidden_layers, self.embedding_layers = {}, {}
        for attribute in ATTRIBUTE_TYPES:
            hidden = keras.layers.Dense(width, activation="relu", name=f"{attribute}_hidden")
            hidden.build((None, feature_dim))
            embedding = keras.layers.Dense(block_dim, name=f"{attribute}_embedding")
            embedding.build((None, width))
            self.hidden_layers[attribute] = hidden
            self.embedding_layers[attribute] = embedding
        self.built = True

    def blocks(self, features, training=False):
        return {
            a: ops.normalize(self.embedding_layers[a](self.hidden_layers[a](features)), axis=-1)
            for a in ATTRIBUTE_TYPES
        }

    def _attribute_loss(self, attribute, features, labels, training):
        block = ops.normalize(
            self.embedding_layers[attribute](self.hidden_layers[attribute](features)), axis=-1
        )
        # Eq. 1 on the labelled rows only (mined within this replica's slice).
        return losses.triplet_loss(
            labels,
            block,
            margin=self.margin,
            mining=self.mining,
            distance="cosine",
            sample_weight_mask=labels != MISSING,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {"margin": self.margin, "mining": self.mining, "hidden_units": self.hidden_units}
        )
        return config


@keras.saving.register_keras_serializable(package="flam_tf")
class PixelConcat(LossTrackingModel):
    """A concat baseline as the paper trains it: from images, with attribute labels only.

    Its own encoder (a `FeatureExtractor` of the same backbone family as FLAM's, its CE and triplet
    heads unused) feeds a `ClsConcat` or `EmbConcat` head; both are trained end to end with the
    head's attribute losses. Nothing of FLAM's extractor (or its instance labels) is used, so the
    representation carries attribute information only, as in the paper's Tables 3-4.

    Args:
        head: a `ClsConcat` or `EmbConcat` whose `feature_dim` equals the encoder's.
        backbone, pooling, feature_dim, image_size, weights: the encoder (`FeatureExtractor`).

    Call args:
        images: float32 [B, S, S, 3] in [0, 255].

    Returns:
        float32 [B, 3 * block_dim], the head's unit norm representation.
    """

    def __init__(
        self,
        head,
        backbone="small_cnn",
        pooling="spoc",
        feature_dim=256,
        image_size=64,
        weights=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(head, dict):
            head = keras.saving.deserialize_keras_object(head)
        if head.feature_dim != feature_dim:
            raise ValueError(
                f"head.feature_dim must equal feature_dim. Received: "
                f"{head.feature_dim} and {feature_dim}"
            )
        self.head = head
        self.encoder = FeatureExtractor(
            backbone,
            pooling,
            feature_dim,
            image_size,
            num_ce_classes=1,
            ce_weight=0.0,
            triplet_weight=0.0,
            weights=weights,
            name="encoder",
        )
        self.encoder.classifier.trainable = False  # its CE head is unused: never trained
        self.encoder_config = dict(
            backbone=backbone,
            pooling=pooling,
            feature_dim=feature_dim,
            image_size=image_size,
            weights=weights,
        )
        self.built = True

    @property
    def metrics(self):
        return self.head.metrics

    def encode(self, images, training=False):
        """The encoder's feature h: float32 [B, feature_dim], unit norm rows."""
        return self.encoder(images, training=training)

    def call(self, images, training=False):
        return self.head.represent(self.encode(images, training=training))

    def compute_losses(self, data, training):
        """The head's losses on the encoded `(images [B, S, S, 3], labels int [B, 3])`."""
        images, labels = data
        return self.head.compute_losses(
            (self.encode(images, training=training), labels), training=training
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {"head": keras.saving.serialize_keras_object(self.head), **self.encoder_config}
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["head"] = keras.saving.deserialize_keras_object(config["head"])
        config["weights"] = None  # a training-time input, as in FeatureExtractor.from_config
        return cls(**config)
