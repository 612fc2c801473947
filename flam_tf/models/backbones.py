"""Convolutional backbones (image -> feature map) and the global pooling layer.

`build_backbone` returns a functional `keras.Model` that maps float32 images in [0, 255], shape
[B, S, S, 3], to a feature map [B, h, w, C]. Each backbone carries its own input preprocessing, so
callers always feed raw pixel values.

Pretrained weights are never downloaded: the machines this project runs on are offline, so
`weights` is either None (random initialisation) or the path of a local weights file.
"""

import os

import keras
from keras import ops

from flam_tf.config import BACKBONES, POOLING_MODES, check_option

# Channel widths of the four stride-2 stages of the default `small_cnn` backbone.
SMALL_CNN_WIDTHS = (24, 48, 96, 192)

# name -> (keras.applications constructor, preprocess_input, minimum input side).
_APPLICATIONS = {
    "resnet50": ("ResNet50", "resnet50", 32),
    "densenet121": ("DenseNet121", "densenet", 32),
    "inception_resnet_v2": ("InceptionResNetV2", "inception_resnet_v2", 75),
    "efficientnet_b0": ("EfficientNetB0", "efficientnet", 32),
}


@keras.saving.register_keras_serializable(package="flam_tf")
class ImagenetPreprocessing(keras.layers.Layer):
    """The `preprocess_input` of a keras.applications backbone, as a serializable layer.

    A `Lambda` would also work but cannot be loaded with `safe_mode=True`; this layer can.

    Args:
        backbone: one of the keras.applications names in `BACKBONES`.

    Call args:
        images: float32 [B, S, S, 3], RGB in [0, 255].

    Returns:
        float32 [B, S, S, 3] in the range and channel order the backbone was trained with.
    """

    def __init__(self, backbone, **kwargs):
        super().__init__(**kwargs)
        if backbone not in _APPLICATIONS:
            raise ValueError(
                f"Unknown backbone for ImagenetPreprocessing. Received: backbone={backbone!r}; "
                f"expected one of {list(_APPLICATIONS)}"
            )
        self.backbone = backbone

    def call(self, images):
        module = getattr(keras.applications, _APPLICATIONS[self.backbone][1])
        return module.preprocess_input(images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"backbone": self.backbone})
        return config


@keras.saving.register_keras_serializable(package="flam_tf")
class GlobalPooling(keras.layers.Layer):
    """Global pooling of a feature map [B, h, w, C] into a vector [B, C].

    Modes:
        "spoc": sum pooling (SPoC, Babenko & Lempitsky 2015; the paper's choice, Sec. 4.2):
            sum over the h*w spatial positions.
        "mac": maximum activation of convolutions (max over positions).
        "gem": generalized mean, (mean(max(x, eps)^p))^(1/p), with a learnable scalar p initialised
            to 3 (Radenovic et al. 2018). p = 1 is average pooling; p -> inf approaches MAC. The
            clamp at eps keeps the fractional power defined for non-positive activations
            (e.g. EfficientNet's swish output).

    Args:
        mode: "spoc", "mac" or "gem".
        p_init: initial GeM exponent (only used by "gem").
        eps: GeM clamp (only used by "gem").
    """

    def __init__(self, mode="spoc", p_init=3.0, eps=1e-6, **kwargs):
        super().__init__(**kwargs)
        check_option("pooling", mode, POOLING_MODES)
        self.mode = mode
        self.p_init = p_init
        self.eps = eps

    def build(self, input_shape):
        if self.mode == "gem":
            self.p = self.add_weight(
                name="p",
                shape=(),
                initializer=keras.initializers.Constant(self.p_init),
                trainable=True,
            )

    def call(self, feature_map):
        if self.mode == "spoc":
            return ops.sum(feature_map, axis=(1, 2))
        if self.mode == "mac":
            return ops.max(feature_map, axis=(1, 2))
        x = ops.maximum(feature_map, self.eps)
        return ops.power(ops.mean(ops.power(x, self.p), axis=(1, 2)), 1.0 / self.p)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode, "p_init": self.p_init, "eps": self.eps})
        return config


def _check_weights(weights):
    """Validates the `weights` argument before any model is built.

    Raises:
        ValueError: weights="imagenet" (no download possible) or a non-string value.
        FileNotFoundError: a path that does not exist.
    """
    if weights is None:
        return
    if weights == "imagenet":
        raise ValueError(
            "weights='imagenet' cannot be downloaded: this machine is offline. Pass the path of a "
            "local weights file instead (a Keras .h5 or .weights.h5 file, e.g. the "
            "keras.applications '..._notop' weights copied onto this machine), or weights=None."
        )
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            f"weights must be None or the path of a local weights file. Received: weights={weights!r}"
        )
    if not os.path.exists(weights):
        raise FileNotFoundError(f"Backbone weights file not found: {os.fspath(weights)!r}")


def _small_cnn(image_size):
    """Four stride-2 stages of Conv3x3-BN-ReLU (24/48/96/192 channels), inputs scaled to [0, 1].

    BatchNormalization is `synchronized=True`: under a tf.distribute strategy the batch statistics are
    all-reduced over replicas, so a step on N replicas matches a step on the global batch (without it,
    each replica would normalise with its own slice's statistics). On one device it is ordinary BN.
    """
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for stage, width in enumerate(SMALL_CNN_WIDTHS):
        x = keras.layers.Conv2D(
            width, 3, strides=2, padding="same", use_bias=False, name=f"stage{stage}_conv"
        )(x)
        x = keras.layers.BatchNormalization(synchronized=True, name=f"stage{stage}_bn")(x)
        x = keras.layers.ReLU(name=f"stage{stage}_relu")(x)
    return keras.Model(inputs, x, name="small_cnn")


def _application(name, image_size):
    constructor, _, min_size = _APPLICATIONS[name]
    if image_size < min_size:
        raise ValueError(
            f"{name} needs image_size >= {min_size}. Received: image_size={image_size}"
        )
    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = ImagenetPreprocessing(name, name="preprocess")(inputs)
    net = getattr(keras.applications, constructor)(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3)
    )
    return keras.Model(inputs, net(x), name=name)


def build_backbone(name="small_cnn", image_size=64, weights=None):
    """Builds a backbone mapping raw images to a feature map.

    Args:
        name: one of `BACKBONES`. "small_cnn" is the fast default; "resnet50" is the paper's.
        image_size: side S of the square input images.
        weights: None (random initialisation) or the path of a local weights file. A full-model
            `.weights.h5` (Keras 3) file of this backbone is loaded exactly; a legacy `.h5` file
            (e.g. keras.applications' `*_notop.h5`) is loaded into the keras.applications sub-model
            by layer name, skipping mismatched layers.

    Returns:
        A `keras.Model`: float32 [B, S, S, 3] in [0, 255] -> float32 [B, h, w, C].

    Raises:
        ValueError: an unknown name (the message lists the choices), weights="imagenet".
        FileNotFoundError: `weights` names a file that does not exist.
    """
    check_option("backbone", name, BACKBONES)
    _check_weights(weights)
    model = _small_cnn(image_size) if name == "small_cnn" else _application(name, image_size)
    if weights is not None:
        path = os.fspath(weights)
        if path.endswith(".weights.h5"):
            model.load_weights(path)
        else:
            # Legacy h5: load into the inner network (the layer holding the conv weights).
            target = model if name == "small_cnn" else model.layers[-1]
            target.load_weights(path, skip_mismatch=True, by_name=True)
    return model
