"""The feature extractor: image -> L2-normalised retrieval feature x (the FIR model, Sec. 4.2)."""

import keras
import tensorflow as tf
from keras import ops

from flam_tf import losses
from flam_tf.config import DISTANCES, MINING_STRATEGIES, check_option
from flam_tf.distribute import check_finite, masked_mean
from flam_tf.models.backbones import GlobalPooling, build_backbone
from flam_tf.models.loss_tracking import LossTrackingModel
from flam_tf.vocabulary import ATTRIBUTE_TYPES, NUM_CLASSES


@keras.saving.register_keras_serializable(package="flam_tf")
class CosineClassifier(keras.layers.Layer):
    """Cosine-softmax head (NormFace): logits = scale * cos(feature, w_c) for every class c.

    The features are unit vectors, so a plain Dense head would see inputs of norm 1 and need large
    weights before the softmax can become confident. Normalising the class weights too and using a
    fixed scale (16: with 1000 classes a correct cosine of ~0.5 above the rest already gives a
    probability near 1) keeps the CE geometry the same as the triplet loss' cosine distance.

    Args:
        num_classes: number of classes C.
        scale: the fixed logit scale s.

    Call args:
        features: float32 [B, D].

    Returns:
        float32 logits [B, C].
    """

    def __init__(self, num_classes, scale=16.0, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.scale = scale

    def build(self, input_shape):
        self.kernel = self.add_weight(
            name="kernel",
            shape=(input_shape[-1], self.num_classes),
            initializer="glorot_uniform",
        )

    def call(self, features):
        features = ops.normalize(features, axis=-1)
        kernel = ops.normalize(self.kernel, axis=0)
        return self.scale * ops.matmul(features, kernel)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "scale": self.scale})
        return config


@keras.saving.register_keras_serializable(package="flam_tf")
class FeatureExtractor(LossTrackingModel):
    """Backbone -> global pooling -> (projection) -> L2 norm, trained with CE + triplet loss.

    Sec. 4.2 of the paper: ResNet50, SPoC pooling, cross-entropy over the 1000 most frequent
    instance ids plus a triplet loss over all instances. A BatchNorm "neck" sits between the
    projection and the L2 norm: SPoC sums non-negative ReLU maps, so without centring every
    feature points the same way, cosine distances are all small, and neither loss learns (BUILD.md,
    tuning notes). The BN is synchronized, so N replicas normalise like the global batch.

    Args:
        backbone: a name from `backbones.BACKBONES`.
        pooling: "spoc", "mac" or "gem" (see `GlobalPooling`).
        feature_dim: size D of the feature after a linear projection; None keeps the backbone's
            channel count (no projection).
        image_size: side S of the square input images.
        num_ce_classes: classes of the cosine-softmax CE head (the most frequent instance ids).
        margin: triplet margin mu (Eq. 1).
        ce_weight: weight of the CE term.
        triplet_weight: weight of the triplet term.
        mining: "semi-hard" or "hard" in-batch mining.
        weights: None or a local backbone weights file (see `build_backbone`).
        distance: triplet distance, "cosine" (the paper's dist) or "l2"/"squared_l2".
        ce_scale: fixed scale of the cosine-softmax head.
        attribute_weight: weight of the attribute term (ours; 0 = the paper's extractor): a
            cosine-softmax CE per attribute type on a second batch of attribute-labelled images,
            missing labels (-1) left out. Its heads are used in training only.
        attribute_classes: classes per attribute type of those heads.

    Call args:
        images: float32 [B, S, S, 3] in [0, 255].
        training: bool.

    Returns:
        float32 [B, D], unit L2 norm per row.

    Training data: `(images, {"instance", "ce_class"})`; with attribute_weight > 0,
    `((images, {"instance", "ce_class"}), (attribute_images, labels int32 [B2, n_types]))`.
    """

    def __init__(
        self,
        backbone="small_cnn",
        pooling="spoc",
        feature_dim=256,
        image_size=64,
        num_ce_classes=1000,
        margin=0.2,
        ce_weight=1.0,
        triplet_weight=1.0,
        mining="semi-hard",
        weights=None,
        distance="cosine",
        ce_scale=16.0,
        attribute_weight=0.0,
        attribute_classes=tuple(NUM_CLASSES[a] for a in ATTRIBUTE_TYPES),
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not attribute_weight >= 0:
            raise ValueError(f"attribute_weight must be >= 0. Received: {attribute_weight}")
        check_option("mining", mining, MINING_STRATEGIES)
        check_option("distance", distance, DISTANCES)
        self.backbone_name = backbone
        self.pooling = pooling
        self.feature_dim = feature_dim
        self.image_size = image_size
        self.num_ce_classes = num_ce_classes
        self.margin = margin
        self.ce_weight = ce_weight
        self.triplet_weight = triplet_weight
        self.mining = mining
        # `weights` is a read-only property of keras.Model: keep the path under another name.
        self.backbone_weights = weights
        self.distance = distance
        self.ce_scale = ce_scale

        self.backbone = build_backbone(backbone, image_size, weights)
        self.pool = GlobalPooling(pooling, name="pool")
        channels = self.backbone.output_shape[-1]
        self.projection = None
        if feature_dim is not None:
            self.projection = keras.layers.Dense(feature_dim, use_bias=False, name="projection")
            self.projection.build((None, channels))
        self.output_dim = feature_dim if feature_dim is not None else channels
        self.neck = keras.layers.BatchNormalization(synchronized=True, name="neck")
        self.neck.build((None, self.output_dim))
        self.pool.build(self.backbone.output_shape)
        self.classifier = CosineClassifier(num_ce_classes, ce_scale, name="ce_head")
        self.classifier.build((None, self.output_dim))
        self.attribute_weight = float(attribute_weight)
        self.attribute_classes = tuple(int(c) for c in attribute_classes)
        self.attribute_heads = []
        if self.attribute_weight:
            for t, count in enumerate(self.attribute_classes):
                head = CosineClassifier(count, ce_scale, name=f"attribute_head{t}")
                head.build((None, self.output_dim))
                self.attribute_heads.append(head)
        self.built = True

        self.track_losses(
            ["loss", "ce_loss", "triplet_loss"]
            + (["attribute_loss"] if self.attribute_heads else [])
        )

    def call(self, images, training=False):
        x = self.pool(self.backbone(images, training=training))
        if self.projection is not None:
            x = self.projection(x)
        x = self.neck(x, training=training)
        return ops.normalize(x, axis=-1)

    def attribute_loss(self, images, labels, training=False):
        """Mean over attribute types of the masked cosine-softmax CE (missing labels -1 left out
        of their type's mean, over the global batch)."""
        features = self(images, training=training)
        labels = tf.cast(labels, tf.int32)
        total = tf.constant(0.0)
        for t, head in enumerate(self.attribute_heads):
            y = labels[:, t]
            known = y >= 0
            per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.where(known, y, 0), logits=head(features)
            )
            total += masked_mean(per_example, known)
        return total / len(self.attribute_heads)

    def _split(self, data):
        """(instance data, attribute data or None) from either form of training data."""
        if self.attribute_heads and isinstance(data[0], (tuple, list)):
            return data[0], data[1]
        if self.attribute_heads:
            raise ValueError(
                "attribute_weight > 0: training data must be ((images, targets), "
                "(attribute_images, labels))"
            )
        return data, None

    def compute_losses(self, data, training):
        """CE over the num_ce_classes ids + triplet on instance ids (Eq. 1), plus the attribute
        term with attribute_weight > 0, on `(images [B,S,S,3], {"instance": int [B], "ce_class":
        int [B] or -1})` (with attribute_weight > 0: that pair and `(attribute_images, labels)`)."""
        data, attribute_data = self._split(data)
        images, targets = data[0], data[1]
        instance = tf.reshape(tf.cast(targets["instance"], tf.int32), [-1])
        ce_class = tf.reshape(tf.cast(targets["ce_class"], tf.int32), [-1])
        features = self(images, training=training)
        logits = self.classifier(features)
        ce_mask = ce_class >= 0
        ce_per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.where(ce_mask, ce_class, 0), logits=logits
        )
        ce = masked_mean(ce_per_example, ce_mask)  # over rows among the num_ce_classes ids only
        triplet = losses.triplet_loss(
            instance, features, margin=self.margin, mining=self.mining, distance=self.distance
        )  # Eq. 1, mined within this replica's slice
        loss = self.ce_weight * ce + self.triplet_weight * triplet
        attribute = tf.constant(0.0)
        if attribute_data is not None:
            attribute = self.attribute_loss(attribute_data[0], attribute_data[1], training)
            loss += self.attribute_weight * attribute
        loss = check_finite(loss, "FeatureExtractor loss")
        return {"loss": loss, "ce_loss": ce, "triplet_loss": triplet, "attribute_loss": attribute}

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "backbone": self.backbone_name,
                "pooling": self.pooling,
                "feature_dim": self.feature_dim,
                "image_size": self.image_size,
                "num_ce_classes": self.num_ce_classes,
                "margin": self.margin,
                "ce_weight": self.ce_weight,
                "triplet_weight": self.triplet_weight,
                "mining": self.mining,
                "weights": self.backbone_weights,
                "distance": self.distance,
                "ce_scale": self.ce_scale,
                "attribute_weight": self.attribute_weight,
                "attribute_classes": list(self.attribute_classes),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        # The initial backbone weights file is a training-time input: a model rebuilt from its
        # config (by load_model, or to copy weights into) gets its weights from elsewhere, so the
        # file is not re-read (it need not exist on a serving machine). The path stays in the config.
        config = dict(config)
        weights = config.pop("weights", None)
        model = cls(weights=None, **config)
        model.backbone_weights = weights
        return model
