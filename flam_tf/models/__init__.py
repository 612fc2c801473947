"""Models of FLAM, in the order a feature flows through them.

- `FeatureExtractor`: image -> retrieval feature x (backbone, pooling, CE + triplet loss).
- `AttributeEmbedder`: x -> e_a per attribute type, with dictionaries d_a (Eq. 2, embedding stage).
- `FeatureManipulator`: the GAN (`Generator`, `Discriminator`) that turns x into x~ with a
  desired attribute (Eq. 3-5, manipulating stage).
- `ClsConcat`, `EmbConcat`: the baselines of Tables 3-4.
"""

from flam_tf.models.attribute_embedder import AttributeEmbedder
from flam_tf.models.backbones import (
    BACKBONES,
    POOLING_MODES,
    GlobalPooling,
    ImagenetPreprocessing,
    build_backbone,
)
from flam_tf.models.baselines import ClsConcat, EmbConcat
from flam_tf.models.feature_extractor import CosineClassifier, FeatureExtractor
from flam_tf.models.manipulator import (
    Discriminator,
    FeatureManipulator,
    Generator,
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
    "GlobalPooling",
    "ImagenetPreprocessing",
    "POOLING_MODES",
    "build_backbone",
    "select_partners",
]
