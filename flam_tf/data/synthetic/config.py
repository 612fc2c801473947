"""The settings of the synthetic benchmark."""

import dataclasses
from typing import Dict

from flam_tf.data import manifest as manifest_lib


@dataclasses.dataclass
class SyntheticConfig:
    """Settings of the synthetic benchmark.

    Attributes:
        num_instances: garments in total, divided among the splits by `split_fractions`.
        seed: the only source of randomness; same seed, same bytes.
        image_size: square image side in pixels.
        split_fractions: fraction of instances per split (keys: manifest.SPLITS); renormalised.
        extractor_street_views: street views per extractor_train instance (plus 1 shop view).
        fir_shop_views: shop views per fir_eval instance (view 0 is the in-shop query).
        fir_street_views: street views per fir_eval instance (consumer-to-shop queries).
        label_missing_prob: chance each attribute label is dropped in attribute_train.
        twins_per_item: counterfactual twins rendered per fam_eval item (each changes one
            attribute).
        entanglement: exponent on the pairwise affinities (0 = independent attributes, 1 = default).
        unlabelled_street_prob: chance an attribute_train/unlabelled image is a street view.
    """

    num_instances: int = 10000
    seed: int = 0
    image_size: int = 64
    split_fractions: Dict[str, float] = dataclasses.field(
        default_factory=lambda: {
            "extractor_train": 0.32,
            "fir_eval": 0.08,
            "attribute_train": 0.28,
            "unlabelled": 0.10,
            "fam_eval": 0.22,
        }
    )
    extractor_street_views: int = 3
    fir_shop_views: int = 3
    fir_street_views: int = 2
    label_missing_prob: float = 0.3
    twins_per_item: int = 1
    entanglement: float = 1.0
    unlabelled_street_prob: float = 0.3

    def validate(self) -> None:
        """Raises ValueError for settings that cannot produce a usable benchmark."""
        if self.num_instances < 10:
            raise ValueError(f"num_instances must be >= 10. Received: {self.num_instances}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16. Received: {self.image_size}")
        unknown = set(self.split_fractions) - set(manifest_lib.SPLITS)
        if unknown or any(v < 0 for v in self.split_fractions.values()):
            raise ValueError(
                f"Bad split_fractions {self.split_fractions}; keys must be in "
                f"{manifest_lib.SPLITS} with non-negative values"
            )
        if not 0.0 <= self.label_missing_prob <= 1.0:
            raise ValueError(
                f"label_missing_prob must be in [0, 1]. Received: {self.label_missing_prob}"
            )
        if self.fir_shop_views < 2:
            raise ValueError(
                f"fir_shop_views must be >= 2 (a query and a gallery view). "
                f"Received: {self.fir_shop_views}"
            )
        if not 0 <= self.twins_per_item <= 3:
            raise ValueError(f"twins_per_item must be in 0..3. Received: {self.twins_per_item}")
