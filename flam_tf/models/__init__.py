"""Models of FLAM, in the order a feature flows through them.

- `FeatureExtractor`: image -> retrieval feature x (backbone, pooling, CE + triplet loss).
- `AttributeEmbedder`: x -> e_a per attribute type, with dictionaries d_a (Eq. 2, embedding stage).
- `FeatureManipulator`: the GAN (`Generator`, `Discriminator`) that turns x into x~ with a
  desired attribute (Eq. 3-5, manipulating stage).
- `ClsConcat`, `EmbConcat`: the baselines of Tables 3-4 on FLAM's feature x; `PixelConcat`: the
  same heads on an encoder of their own, trained from images with attribute labels only.
"""

from flam_tf.models.attribute_embedder import AttributeEmbedder
from flam_tf.models.backbones import (
    BACKBONES,
    POOLING_MODES,
    GlobalPooling,
    ImagenetPreprocessing,
    build_backbone,
)
from flam_tf.models.baselines import ClsConcat, EmbConcat, PixelConcat
from flam_tf.models.feature_extractor import CosineClassifier, FeatureExtractor
from flam_tf.models.manipulator import (
    Discriminator,
    FeatureManipulator,
    Generator,
    MemoryGenerator,
    select_partners,
)

__all__ = [
    "AttributeEmbedder",
    "BACKBONES",
    "ClsConcat",
    "CosineClassifier",
    "Discriminator",
    "EmbConcat",
    "FeatureExtractor",
    "FeatureManipulator",
    "Generator",
    "MemoryGenerator",
    "GlobalPooling",
    "ImagenetPreprocessing",
    "POOLING_MODES",
    "PixelConcat",
    "build_backbone",
    "select_partners",
]
