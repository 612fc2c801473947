"""The embedded synthetic fashion benchmark: procedurally rendered garments with known ground truth.

No real fashion data set can be downloaded where this project is built and tested, so this module
renders one. Every instance is a garment with:

* three labelled attributes from `flam_tf.vocabulary` (shape, color, pattern), drawn from an
  entangled joint distribution (`joint_distribution`): coats are rarely pink, camouflage is mostly
  green/brown/grey trousers, jackets and hoodies, pinstripes live on shirts, trousers, jackets and
  coats, floral on dresses, skirts and shirts. `SyntheticConfig.entanglement` scales it (0 = uniform).
* five hidden traits that are NOT labelled (`TRAITS`): fit (width), length (hem), neckline (or
  waistband for bottoms), detail (pockets, buttons, logo patch), sleeve (or leg hem style).
* continuous jitter: the shade of its colour, pattern scale, angle and phase, secondary ink colour,
  proportions and fold shading.
  Traits and jitter are the item's "unique characteristics" that manipulation must preserve.
* views: view 0 is the clean "shop" view (plain background, centred, upright); further shop views
  (in-shop gallery) move, scale and mirror it slightly; "street" views add a textured, cluttered
  background, scale, shift, rotation, lighting and colour cast, partial occlusion or crop, and noise.
* counterfactual twins (FAM evaluation items only): the same instance rendered in the same pose with
  exactly one attribute changed, so a manipulated query can be checked against *this* item in red.

Splits are disjoint by instance (`flam_tf.data.manifest.SPLITS`): extractor_train (instance labels,
no attribute labels, like DeepFashion/NFD), fir_eval (in-shop and consumer-to-shop queries and
galleries), attribute_train (sparse labels like DARN/Shopping100k), unlabelled (no labels at all,
the paper's NFD role), fam_eval (dense labels, gallery holding the twins).

Rendering is vectorised numpy over a batch of images (one pass per shape and pattern class), and
deterministic: every random draw of an instance comes from `SeedSequence([seed, instance_index])`,
so the same seed gives byte-identical images and labels whatever the batch size.

CLI:
    python -m flam_tf.data.synthetic --out DIR [--num_instances N] [--seed S] [--image_size P]
writes DIR/images/<split>/*.png, DIR/manifest.csv and DIR/contact_sheet.png.
"""

import dataclasses
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from flam_tf import vocabulary
from flam_tf.data import manifest as manifest_lib

SHAPES = vocabulary.CLASSES["shape"]
COLORS = vocabulary.CLASSES["color"]
PATTERNS = vocabulary.CLASSES["pattern"]

# Hidden (unlabelled) traits and their number of levels.
TRAITS = {
    "fit": 3,        # slim / regular / wide
    "length": 3,     # cropped / regular / long hem
    "neckline": 3,   # tops: round / v / square neck; bottoms: plain / belt / drawstring waistband
    "detail": 4,     # none / pockets / buttons / logo patch
    "sleeve": 3,     # tops: sleeve length short-ish / regular / long; bottoms: hem plain / cuffed / slit
}

# Base RGB of each colour class, in [0, 1].
PALETTE = np.array([
    [0.08, 0.08, 0.09],  # black
    [0.95, 0.95, 0.93],  # white
    [0.55, 0.56, 0.58],  # grey
    [0.80, 0.10, 0.12],  # red
    [0.97, 0.58, 0.72],  # pink
    [0.96, 0.84, 0.16],  # yellow
    [0.15, 0.55, 0.22],  # green
    [0.22, 0.46, 0.88],  # blue
    [0.10, 0.14, 0.38],  # navy
    [0.46, 0.28, 0.13],  # brown
], dtype=np.float32)
# Pattern ink colours: light garments get dark ink, dark garments light ink.
_LIGHT_INKS = np.array([[0.97, 0.96, 0.92], [0.85, 0.85, 0.82], [0.98, 0.90, 0.75]], np.float32)
_DARK_INKS = np.array([[0.08, 0.08, 0.10], [0.12, 0.15, 0.35], [0.35, 0.35, 0.37]], np.float32)
_LIGHT_COLORS = {"white", "yellow", "pink", "grey"}

TOPS = ("t-shirt", "shirt", "sweater", "hoodie", "jacket", "coat")

# Marginal weights of each class: the catalogue is not balanced.
_SHAPE_WEIGHT = dict(zip(SHAPES, (1.3, 1.0, 0.9, 0.8, 1.0, 0.8, 1.1, 0.7, 0.8, 0.6)))
_COLOR_WEIGHT = dict(zip(COLORS, (1.5, 1.2, 1.0, 0.7, 0.5, 0.4, 0.5, 0.9, 1.0, 0.6)))
_PATTERN_WEIGHT = dict(zip(PATTERNS, (2.5, 1.2, 0.6, 0.8, 0.6, 0.5, 0.5, 0.8, 0.5, 0.6)))

# Pairwise affinities (multiplicative); anything unlisted is 1. These make attributes entangled like
# real catalogues and make some combinations rare (the online-sampling motivation of Sec. 4.1).
_AFFINITY = {
    ("shape", "color"): {
        ("coat", ("pink", "yellow", "green")): 0.15,
        ("coat", ("black", "grey", "navy", "brown")): 2.0,
        ("trousers", ("navy", "black", "grey", "brown", "blue")): 1.8,
        ("trousers", ("pink", "yellow")): 0.25,
        ("dress", ("pink", "red", "white")): 1.7,
        ("dress", ("brown", "grey")): 0.5,
        ("shirt", ("white", "blue")): 2.0,
        ("hoodie", ("grey", "black")): 1.6,
        ("jacket", ("pink", "yellow")): 0.4,
    },
    ("shape", "pattern"): {
        (("dress", "skirt", "shirt"), "floral"): 3.0,
        (("trousers", "coat", "jacket", "shorts", "hoodie"), "floral"): 0.2,
        (("shirt", "trousers", "jacket", "coat"), "pinstriped"): 3.0,
        (("dress", "hoodie", "shorts", "t-shirt"), "pinstriped"): 0.2,
        (("trousers", "shorts", "jacket", "hoodie", "t-shirt"), "camouflage"): 3.0,
        (("dress", "skirt", "shirt", "coat"), "camouflage"): 0.1,
        (("shirt", "skirt", "coat", "jacket"), "checked"): 2.5,
        (("hoodie", "jacket", "t-shirt", "sweater"), "colorblock"): 2.5,
        (("trousers", "skirt"), "colorblock"): 0.3,
        (("t-shirt", "sweater", "shirt"), "striped"): 2.0,
    },
    ("color", "pattern"): {
        (("green", "brown", "grey", "black"), "camouflage"): 2.5,
        (("pink", "yellow", "white"), "camouflage"): 0.1,
        (("pink", "white", "yellow", "red"), "floral"): 1.8,
        (("navy", "black", "grey"), "pinstriped"): 2.5,
        (("yellow", "pink"), "pinstriped"): 0.2,
    },
}


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
        twins_per_item: counterfactual twins rendered per fam_eval item (each changes one attribute).
        entanglement: exponent on the pairwise affinities (0 = independent attributes, 1 = default).
        unlabelled_street_prob: chance an attribute_train/unlabelled image is a street view.
    """

    num_instances: int = 10000
    seed: int = 0
    image_size: int = 64
    split_fractions: Dict[str, float] = dataclasses.field(default_factory=lambda: {
        "extractor_train": 0.32, "fir_eval": 0.08, "attribute_train": 0.28,
        "unlabelled": 0.10, "fam_eval": 0.22,
    })
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
            raise ValueError(f"Bad split_fractions {self.split_fractions}; keys must be in "
                             f"{manifest_lib.SPLITS} with non-negative values")
        if not 0.0 <= self.label_missing_prob <= 1.0:
            raise ValueError(f"label_missing_prob must be in [0, 1]. "
                             f"Received: {self.label_missing_prob}")
        if self.fir_shop_views < 2:
            raise ValueError(f"fir_shop_views must be >= 2 (a query and a gallery view). "
                             f"Received: {self.fir_shop_views}")
        if not 0 <= self.twins_per_item <= 3:
            raise ValueError(f"twins_per_item must be in 0..3. Received: {self.twins_per_item}")


def joint_distribution(entanglement: float = 1.0) -> np.ndarray:
    """Probability of every (shape, color, pattern) combination, float64 [10, 10, 10], sums to 1.

    p(s, c, p) ∝ w_s w_c w_p (A_sc A_sp A_cp)^entanglement with the class weights and pairwise
    affinities above. Every combination keeps a non-zero probability, but some are rare.
    """
    weights = (np.array([_SHAPE_WEIGHT[s] for s in SHAPES])[:, None, None]
               * np.array([_COLOR_WEIGHT[c] for c in COLORS])[None, :, None]
               * np.array([_PATTERN_WEIGHT[p] for p in PATTERNS])[None, None, :])
    affinity = np.ones((10, 10, 10))
    axes = {"shape": (0, SHAPES), "color": (1, COLORS), "pattern": (2, PATTERNS)}
    for (first, second), table in _AFFINITY.items():
        (ax1, names1), (ax2, names2) = axes[first], axes[second]
        for (v1, v2), factor in table.items():
            for a in (v1,) if isinstance(v1, str) else v1:
                for b in (v2,) if isinstance(v2, str) else v2:
                    index = [slice(None)] * 3
                    index[ax1], index[ax2] = names1.index(a), names2.index(b)
                    affinity[tuple(index)] *= factor
    p = weights * affinity ** entanglement
    return p / p.sum()


# ----------------------------------------------------------------------------------------------
# Per-instance and per-view parameters.

@dataclasses.dataclass
class Instance:
    """Everything that identifies one garment (labels, hidden traits and continuous jitter)."""

    index: int
    split: str
    shape: int
    color: int
    pattern: int
    traits: Dict[str, int]
    jitter: np.ndarray  # float32 [NUM_JITTER], see _JITTER
    twin_of: Optional[int] = None  # for a twin: index of its source instance

    @property
    def instance_id(self) -> str:
        if self.twin_of is None:
            return f"syn{self.index:06d}"
        return f"syn{self.twin_of:06d}-{self.changed_attribute}-{self.changed_value}"

    changed_attribute: str = ""
    changed_value: str = ""


# Jitter vector layout.
_JITTER = ("shade_r", "shade_g", "shade_b", "brightness", "pat_scale", "pat_angle", "pat_phase_u",
           "pat_phase_v", "ink", "width", "height", "fold_phase", "fold_freq", "camo_seed",
           "block_angle", "block_offset")
J = {name: i for i, name in enumerate(_JITTER)}


def _instance_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index, stream]))


def sample_instances(config: SyntheticConfig) -> List[Instance]:
    """Draws every instance of the benchmark (labels, traits, jitter), split by instance."""
    config.validate()
    fractions = np.array([config.split_fractions.get(s, 0.0) for s in manifest_lib.SPLITS])
    counts = np.floor(fractions / fractions.sum() * config.num_instances).astype(int)
    counts[0] += config.num_instances - counts.sum()
    split_of = np.repeat(np.arange(len(manifest_lib.SPLITS)), counts)
    # Shuffle split membership deterministically so splits are not index ranges.
    split_of = np.random.default_rng([config.seed, 10**6]).permutation(split_of)
    cdf = np.cumsum(joint_distribution(config.entanglement).ravel())
    instances = []
    for index in range(config.num_instances):
        rng = _instance_rng(config.seed, index)
        combo = min(int(np.searchsorted(cdf, rng.random(), side="right")), 999)
        shape, color, pattern = np.unravel_index(combo, (10, 10, 10))
        traits = {name: int(rng.integers(levels)) for name, levels in TRAITS.items()}
        jitter = np.array([
            *rng.normal(0.0, 0.05, 3), rng.normal(0.0, 0.07),     # shade, brightness
            rng.uniform(0.8, 1.25), rng.normal(0.0, 0.1),          # pattern scale, angle (rad)
            rng.random(), rng.random(),                            # pattern phases
            rng.integers(3), rng.uniform(0.9, 1.1), rng.uniform(0.94, 1.06),  # ink, proportions
            rng.random() * 6.28, rng.uniform(2.0, 4.0), rng.integers(1 << 20),  # folds, camo
            rng.uniform(-0.6, 0.6), rng.uniform(-0.25, 0.25),      # colorblock split
        ], dtype=np.float64)
        instances.append(Instance(index, manifest_lib.SPLITS[split_of[index]], int(shape),
                                  int(color), int(pattern), traits, jitter))
    return instances


def make_twins(instances: Sequence[Instance], config: SyntheticConfig) -> List[Instance]:
    """Counterfactual twins of the fam_eval instances: one attribute changed, all else kept."""
    twins = []
    for inst in instances:
        if inst.split != "fam_eval" or config.twins_per_item == 0:
            continue
        rng = _instance_rng(config.seed, inst.index, stream=1)
        for a in rng.permutation(3)[:config.twins_per_item]:
            attribute = vocabulary.ATTRIBUTE_TYPES[a]
            labels = [inst.shape, inst.color, inst.pattern]
            labels[a] = int(rng.choice([v for v in range(10) if v != labels[a]]))
            twin = dataclasses.replace(inst, shape=labels[0], color=labels[1], pattern=labels[2],
                                       twin_of=inst.index, changed_attribute=attribute,
                                       changed_value=vocabulary.CLASSES[attribute][labels[a]])
            twins.append(twin)
    return twins


# View parameter layout: one row per rendered image.
_VIEW = ("scale", "shift_u", "shift_v", "rotation", "mirror", "street", "bg_r", "bg_g", "bg_b",
         "gain", "cast_r", "cast_g", "cast_b", "occlude", "occ_u", "occ_v", "occ_w", "occ_h",
         "occ_r", "occ_g", "occ_b", "noise_seed", "tex_angle", "tex_freq", "tex_phase")
V = {name: i for i, name in enumerate(_VIEW)}


def view_params(seed: int, index: int, view: int, domain: str) -> np.ndarray:
    """Pose, background and photometric parameters of one view, float64 [len(_VIEW)]."""
    p = np.zeros(len(_VIEW))
    p[V["scale"]], p[V["gain"]] = 1.0, 1.0
    tint = 0.90
    p[V["bg_r"]:V["bg_b"] + 1] = tint
    p[V["noise_seed"]] = (index * 131 + view * 7919 + seed) % (1 << 30)
    if view == 0 and domain == "shop":
        return p  # the clean catalogue view: identical pose for an item and its twins
    rng = _instance_rng(seed, index, stream=100 + view)
    if domain == "shop":  # another catalogue shot: slight re-framing, sometimes mirrored
        p[V["scale"]] = rng.uniform(0.88, 1.04)
        p[V["shift_u"]], p[V["shift_v"]] = rng.uniform(-0.07, 0.07, 2)
        p[V["rotation"]] = rng.normal(0.0, 0.04)
        p[V["mirror"]] = float(view % 2 == 0)
        p[V["bg_r"]:V["bg_b"] + 1] = rng.uniform(0.84, 0.96) + rng.normal(0, 0.01, 3)
        p[V["gain"]] = rng.uniform(0.92, 1.06)
        return p
    p[V["street"]] = 1.0
    p[V["scale"]] = rng.uniform(0.62, 1.3)  # > 1 crops the garment at the frame
    p[V["shift_u"]], p[V["shift_v"]] = rng.uniform(-0.25, 0.25, 2)
    p[V["rotation"]] = rng.uniform(-0.3, 0.3)
    p[V["mirror"]] = float(rng.random() < 0.5)
    p[V["bg_r"]:V["bg_b"] + 1] = rng.uniform(0.15, 0.85, 3)
    p[V["gain"]] = rng.uniform(0.65, 1.25)
    p[V["cast_r"]:V["cast_b"] + 1] = rng.normal(0.0, 0.05, 3)
    p[V["occlude"]] = float(rng.random() < 0.45)
    p[V["occ_u"]], p[V["occ_v"]] = rng.uniform(-0.9, 0.9, 2)
    p[V["occ_w"]], p[V["occ_h"]] = rng.uniform(0.2, 0.5, 2)
    p[V["occ_r"]:V["occ_b"] + 1] = rng.uniform(0.05, 0.95, 3)
    p[V["tex_angle"]] = rng.uniform(0, np.pi)
    p[V["tex_freq"]] = rng.uniform(2.0, 9.0)
    p[V["tex_phase"]] = rng.uniform(0, 2 * np.pi)
    return p


# ----------------------------------------------------------------------------------------------
# Vectorised rendering. Coordinates: u right, v down, garment space roughly [-1, 1]^2.

def _inside(d, aa):
    """Soft inside-ness of a signed distance d (negative inside), anti-aliased over `aa`."""
    return np.clip(0.5 - d / aa, 0.0, 1.0)


def _box(u, v, u0, u1, v0, v1):
    return np.maximum(np.maximum(u0 - u, u - u1), np.maximum(v0 - v, v - v1))


def _capsule(u, v, su, sv, du, dv, length, half_width):
    """Distance to a rectangle from (su, sv) along unit direction (du, dv)."""
    t = (u - su) * du + (v - sv) * dv
    n = np.abs((u - su) * dv - (v - sv) * du)
    return np.maximum(np.maximum(-t, t - length), n - half_width)


def _garment(u, v, shape: str, tr: Dict[str, np.ndarray], jit: np.ndarray, aa):
    """Mask and shading of one shape class for a group of images.

    Args:
        u, v: garment coordinates, float [n, P, P].
        shape: the shape class name of the whole group.
        tr: trait name -> int array [n, 1, 1].
        jit: jitter, float [n, 1, 1, NUM_JITTER].
        aa: anti-aliasing width in garment units, [n, 1, 1].

    Returns:
        (mask [n,P,P] in [0,1], shade [n,P,P] multiplicative, ink_override [n,P,P] in [0,1]
        where a detail such as a logo patch covers the pattern with a contrast colour).
    """
    fit = np.choose(tr["fit"], [0.86, 1.0, 1.16]) * jit[..., J["width"]]
    length = np.choose(tr["length"], [-0.12, 0.0, 0.14]) * jit[..., J["height"]]
    shade = np.ones_like(u)
    logo = np.zeros_like(u)
    if shape in TOPS:
        top = -0.62
        long_sleeve = shape != "t-shirt"
        hem = {"t-shirt": 0.5, "shirt": 0.58, "sweater": 0.52, "hoodie": 0.55,
               "jacket": 0.45, "coat": 0.86}[shape] + length * (0.6 if shape == "coat" else 1.0)
        ws = 0.40 * fit * (1.08 if shape in ("jacket", "coat") else 1.0)
        wb = ws * (1.12 if shape == "coat" else 0.98)
        frac = np.clip((v - top) / (hem - top), 0.0, 1.0)
        d = np.maximum(np.maximum(top - v, v - hem), np.abs(u) - (ws + (wb - ws) * frac))
        base_len = 0.85 if long_sleeve else 0.32
        sl = base_len * np.choose(tr["sleeve"], [0.8, 1.0, 1.12])
        hw = 0.12 * fit
        for side in (-1.0, 1.0):
            du, dv = side * np.sin(0.5), np.cos(0.5)
            d = np.minimum(d, _capsule(u, v, side * (ws - 0.06), top + 0.06, du, dv, sl, hw))
            if shape == "sweater":  # ribbed cuffs
                t = (u - side * (ws - 0.06)) * du + (v - top - 0.06) * dv
                shade *= 1 - 0.25 * ((t > sl - 0.09) & (t < sl))
        if shape == "hoodie":  # hood behind the neck
            d = np.minimum(d, np.sqrt((u / 0.24) ** 2 + ((v - top + 0.02) / 0.2) ** 2) - 1)
            shade *= 1 - 0.3 * (np.sqrt((u / 0.16) ** 2 + ((v - top + 0.04) / 0.13) ** 2) < 1)
        mask = _inside(d, aa)
        # Neckline cut: round, v or square.
        neck = np.choose(tr["neckline"], [0, 1, 2])
        cut_round = np.sqrt(u ** 2 + (v - top) ** 2) - 0.13
        cut_v = np.maximum(np.abs(u) * 1.6 + (v - top) - 0.26, top - 0.1 - v)
        cut_square = _box(u, v, -0.12, 0.12, top - 0.2, top + 0.1)
        cut = np.where(neck == 0, cut_round, np.where(neck == 1, cut_v, cut_square))
        if shape != "hoodie":
            mask = mask * (1 - _inside(cut, aa))
        if shape == "sweater":
            shade *= 1 - 0.25 * ((v > hem - 0.09) & (np.abs(u) < ws + 0.1))
        if shape == "shirt":  # collar and button placket
            collar = (np.abs(np.abs(u) - 0.1) < 0.07) & (v > top - 0.04) & (v < top + 0.12)
            shade = np.where(collar, 1.25, shade) * (1 - 0.3 * (np.abs(u) < 0.018))
        if shape in ("jacket", "coat"):  # open front, lapels, zip or second button row
            shade *= 1 - 0.55 * (np.abs(u) < 0.03)
            lapel = (np.abs(np.abs(u) - 0.12 + (v - top) * 0.3) < 0.03) & (v < top + 0.35)
            shade *= 1 - 0.3 * lapel
        if shape == "hoodie":  # kangaroo pocket outline
            pocket = _box(u, v, -0.22, 0.22, hem - 0.3, hem - 0.08)
            shade *= 1 - 0.3 * (np.abs(pocket) < 0.025)
        chest_v = top + 0.3
        waist_v = hem - 0.2
    elif shape == "dress":
        top, waist = -0.6, -0.12
        hem = 0.62 + length * 1.3
        ws, wwaist, whem = 0.27 * fit, 0.22 * fit, 0.58 * fit
        frac_top = np.clip((v - top) / (waist - top), 0, 1)
        frac_skirt = np.clip((v - waist) / (hem - waist), 0, 1)
        half = np.where(v < waist, ws + (wwaist - ws) * frac_top, wwaist + (whem - wwaist) * frac_skirt)
        d = np.maximum(np.maximum(top - v, v - hem), np.abs(u) - half)
        for side in (-1.0, 1.0):  # straps, cap sleeves or short sleeves
            sl = np.choose(tr["sleeve"], [0.22, 0.16, 0.3])
            hw = np.choose(tr["sleeve"], [0.03, 0.09, 0.1])
            ang = np.choose(tr["sleeve"], [0.0, 0.7, 0.6])
            su = side * (ws - 0.05)
            d = np.minimum(d, _capsule(u, v, su, top + np.choose(tr["sleeve"], [-0.2, 0.02, 0.02]),
                                       side * np.sin(ang), np.cos(ang), sl, hw))
        mask = _inside(d, aa)
        neck = tr["neckline"]
        cut = np.where(neck == 0, np.sqrt(u ** 2 + (v - top) ** 2) - 0.12,
                       np.where(neck == 1, np.maximum(np.abs(u) * 1.4 + (v - top) - 0.25, top - 0.1 - v),
                                _box(u, v, -0.11, 0.11, top - 0.2, top + 0.08)))
        mask = mask * (1 - _inside(cut, aa))
        shade *= 1 - 0.2 * (np.abs(v - waist) < 0.025)  # waist seam
        chest_v, waist_v = top + 0.25, waist + 0.25
    else:  # bottoms: skirt, trousers, shorts
        waist = -0.72 if shape != "skirt" else -0.6
        wwaist = 0.36 * fit
        if shape == "skirt":
            hem = 0.1 + length * 2.2 + 0.15
            whem = 0.56 * fit
            frac = np.clip((v - waist) / (hem - waist), 0, 1)
            d = np.maximum(np.maximum(waist - v, v - hem), np.abs(u) - (wwaist + (whem - wwaist) * frac))
        else:
            hem = (0.9 + length * 0.4) if shape == "trousers" else (0.02 + length * 1.2)
            hip = -0.35
            d = _box(u, v, -wwaist, wwaist, waist, hip)
            leg_w = (0.17 if shape == "trousers" else 0.2) * fit
            for side in (-1.0, 1.0):
                spread = 0.08 if shape == "trousers" else 0.18
                du, dv = side * np.sin(spread), np.cos(spread)
                su = side * (wwaist - leg_w)
                d = np.minimum(d, _capsule(u, v, su, hip - 0.05, du, dv, hem - hip + 0.05, leg_w))
                if True:  # hem style: plain / cuffed / slit
                    t = (u - su) * du + (v - hip + 0.05) * dv
                    cuff = (tr["sleeve"] == 1) & (t > hem - hip - 0.04) & (np.abs((u - su) * dv - (v - hip + 0.05) * du) < leg_w)
                    shade *= 1 - 0.3 * cuff
        mask = _inside(d, aa)
        if shape == "skirt":
            slit = (tr["sleeve"] == 2) & (np.abs(u - 0.15) < 0.02) & (v > hem - 0.25)
            mask = mask * (1 - slit)
        # Waistband: plain / belt / drawstring.
        band = (v > waist) & (v < waist + 0.09)
        shade *= 1 - np.where(tr["neckline"] == 1, 0.55, 0.15) * band
        buckle = (tr["neckline"] == 1) & (np.abs(u) < 0.05) & band
        shade = np.where(buckle, 1.6, shade)
        strings = (tr["neckline"] == 2) & (np.abs(np.abs(u) - 0.05) < 0.015) & (v > waist) & (v < waist + 0.25)
        shade *= 1 - 0.45 * strings
        chest_v, waist_v = waist + 0.22, waist + 0.3
    # Hidden detail: none / pockets / buttons / logo patch.
    detail = tr["detail"]
    pockets = np.minimum(np.abs(_box(u, v, 0.08, 0.26, waist_v - 0.1, waist_v + 0.08)),
                         np.abs(_box(u, v, -0.26, -0.08, waist_v - 0.1, waist_v + 0.08)))
    shade *= 1 - 0.35 * ((detail == 1) & (pockets < 0.02))
    buttons = (np.abs(u - 0.05) < 0.035) & (np.abs(((v - chest_v) / 0.15) % 1.0 - 0.5) < 0.2) & (v > chest_v - 0.1) & (v < waist_v + 0.15)
    shade = np.where((detail == 2) & buttons, 1.5, shade)
    logo = ((detail == 3) & (_box(u, v, 0.1, 0.26, chest_v - 0.06, chest_v + 0.08) < 0)).astype(u.dtype)
    return mask, shade, logo


def _pattern(u, v, pattern: str, jit: np.ndarray, aa):
    """Ink coverage of one pattern class for a group of images, float [n, P, P] in [0, 1]."""
    scale = jit[..., J["pat_scale"]]
    angle = jit[..., J["pat_angle"]]
    pu, pv = jit[..., J["pat_phase_u"]], jit[..., J["pat_phase_v"]]

    def stripes(theta, period, width, phase):
        b = -u * np.sin(theta) + v * np.cos(theta)
        x = (b / period + phase) % 1.0
        # Distance to the stripe band, in garment units, then anti-aliased.
        dist = np.maximum(x - width, -x) * period
        dist = np.minimum(dist, (1.0 - x) * period)  # wrap-around neighbour
        return _inside(np.where(x < width, -np.minimum(x, width - x) * period, dist), aa)

    if pattern == "solid":
        return np.zeros_like(u)
    if pattern == "striped":
        return stripes(angle, 0.3 * scale, 0.42, pu)
    if pattern == "pinstriped":
        return stripes(np.pi / 2 + angle * 0.5, 0.2 * scale, 0.16, pu)
    if pattern == "checked":
        return np.clip(0.55 * stripes(angle, 0.32 * scale, 0.5, pu)
                       + 0.55 * stripes(np.pi / 2 + angle, 0.32 * scale, 0.5, pv), 0, 1)
    if pattern == "diagonal":
        return stripes(np.pi / 4 + angle, 0.3 * scale, 0.4, pu)
    if pattern == "dotted":
        period = 0.26 * scale
        a = (u / period + pu) % 1.0 - 0.5
        b = (v / period + pv + 0.5 * (np.floor(u / period + pu) % 2)) % 1.0 - 0.5
        return _inside(np.sqrt(a ** 2 + b ** 2) * period - 0.075 * scale, aa)
    if pattern == "zigzag":
        px = 0.3 * scale
        tri = np.abs((u / px + pu) % 1.0 - 0.5) * 2.0  # triangle wave in [0, 1]
        period = 0.3 * scale
        x = ((v + tri * 0.16 * scale) / period + pv) % 1.0
        return _inside((np.abs(x - 0.2) - 0.16) * period, aa)
    if pattern == "floral":
        period = 0.38 * scale
        cu, cv = u / period + pu, v / period + pv
        cu = cu + 0.5 * (np.floor(cv) % 2)
        a, b = (cu % 1.0 - 0.5) * period, (cv % 1.0 - 0.5) * period
        r = np.sqrt(a ** 2 + b ** 2)
        theta = np.arctan2(b, a) + angle * 3
        petals = 0.13 * scale * (0.55 + 0.45 * np.abs(np.cos(2.5 * theta)))
        flower = _inside(r - petals, aa)
        centre = _inside(r - 0.035 * scale, aa)
        return np.clip(flower - 0.7 * centre, 0, 1)
    if pattern == "camouflage":
        field = np.zeros_like(u)
        seed = jit[..., J["camo_seed"]]
        for k in range(6):  # plane waves in spread directions sum to irregular blotches
            ang = (seed * 0.618 * (k + 1)) % 0.5 + k * np.pi / 6
            freq = (11.0 + 1.6 * k) / scale  # blotches ~0.2 garment units across
            phase = (seed * 0.37 * (k + 3)) % (2 * np.pi)
            field = field + np.sin(freq * (u * np.cos(ang) + v * np.sin(ang)) + phase)
        # Three tones: base, ink, half ink.
        # About 30% ink and 20% half ink: the garment colour stays the dominant one.
        return np.clip((field - 0.8) * 3, 0, 1) + 0.5 * np.clip((-field - 1.4) * 3, 0, 1)
    if pattern == "colorblock":
        ang = jit[..., J["block_angle"]] + np.pi / 2
        off = jit[..., J["block_offset"]]
        return _inside(-(u * np.cos(ang) + v * np.sin(ang) - off - 0.25), aa)
    raise ValueError(f"Unknown pattern. Received: pattern={pattern!r}")


def render(instances: Sequence[Instance], views: np.ndarray, image_size: int) -> np.ndarray:
    """Renders one image per (instance, view parameters) pair.

    Args:
        instances: n instances.
        views: float [n, len(_VIEW)] from `view_params`.
        image_size: P.

    Returns:
        uint8 [n, P, P, 3].
    """
    n, size = len(instances), image_size
    if n == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    f = np.float32
    grid = (np.arange(size, dtype=f) + 0.5) / size * 2.0 - 1.0
    gy, gx = np.meshgrid(grid, grid, indexing="ij")
    vp = views[:, None, None, :].astype(f)
    jit = np.stack([i.jitter for i in instances]).astype(f)[:, None, None, :]
    scale, rot = vp[..., V["scale"]], vp[..., V["rotation"]]
    x, y = gx[None] - vp[..., V["shift_u"]], gy[None] - vp[..., V["shift_v"]]
    x = np.where(vp[..., V["mirror"]] > 0.5, -x, x)
    u = (np.cos(rot) * x + np.sin(rot) * y) / (0.92 * scale)
    v = (-np.sin(rot) * x + np.cos(rot) * y) / (0.92 * scale)
    aa = (2.0 / size) / (0.92 * scale)
    shapes = np.array([i.shape for i in instances])
    patterns = np.array([i.pattern for i in instances])
    traits = {t: np.array([i.traits[t] for i in instances])[:, None, None] for t in TRAITS}
    mask = np.zeros((n, size, size), f)
    shade = np.ones((n, size, size), f)
    logo = np.zeros((n, size, size), f)
    for s in np.unique(shapes):
        idx = np.nonzero(shapes == s)[0]
        m, sh, lg = _garment(u[idx], v[idx], SHAPES[s], {t: a[idx] for t, a in traits.items()},
                             jit[idx], aa[idx])
        mask[idx], shade[idx], logo[idx] = m, sh, lg
    ink = np.zeros((n, size, size), f)
    for p in np.unique(patterns):
        idx = np.nonzero(patterns == p)[0]
        ink[idx] = _pattern(u[idx], v[idx], PATTERNS[p], jit[idx], aa[idx])
    # Colours: base shade with jitter; the ink contrasts with the base.
    colors = np.array([i.color for i in instances])
    base = PALETTE[colors] * (1.0 + jit[:, 0, 0, J["shade_r"]:J["shade_b"] + 1])
    base = np.clip(base * (1.0 + jit[:, 0, 0, J["brightness"]:J["brightness"] + 1]), 0.0, 1.0)
    light = np.array([COLORS[c] in _LIGHT_COLORS for c in colors])
    ink_choice = jit[:, 0, 0, J["ink"]].astype(int)
    second = np.where(light[:, None], _DARK_INKS[ink_choice], _LIGHT_INKS[ink_choice])
    block = patterns == PATTERNS.index("colorblock")  # colour block: another palette colour
    second[block] = PALETTE[(colors[block] + 3 + ink_choice[block]) % 10]
    base4, second4 = base[:, None, None, :], second[:, None, None, :]
    garment = base4 + (second4 - base4) * ink[..., None]
    with_logo = np.nonzero(logo.reshape(n, -1).any(axis=1))[0]  # only those images pay for it
    if len(with_logo):
        patch = second4[with_logo] * 0.6 + 0.4 * (1 - second4[with_logo])
        garment[with_logo] = np.where(logo[with_logo, ..., None] > 0, patch, garment[with_logo])
    folds = 1.0 + 0.06 * np.sin(jit[..., J["fold_freq"]] * u + jit[..., J["fold_phase"]])
    edge = 1.0 - 0.5 * (4.0 * mask * (1.0 - mask))  # darker silhouette edge
    garment *= (shade * folds * edge)[..., None]
    # Background: flat for shop views, textured with clutter for street views.
    bg = np.broadcast_to(vp[..., V["bg_r"]:V["bg_b"] + 1], (n, size, size, 3)).copy()
    street = vp[:, 0, 0, V["street"]] > 0.5
    if street.any():
        sv = vp[street]
        ang, freq, ph = sv[..., V["tex_angle"]], sv[..., V["tex_freq"]], sv[..., V["tex_phase"]]
        wave = np.sin(freq * (gx * np.cos(ang) + gy * np.sin(ang)) * np.pi + ph)
        wave2 = np.sin(2.3 * freq * (gx * np.sin(ang) - gy * np.cos(ang)) + 2 * ph)
        tex = (1.0 + 0.18 * wave + 0.1 * np.sign(wave2)) * (0.85 + 0.15 * (gy[None] + 1))
        sbg = bg[street] * tex[..., None]
        # Clutter: two flat rectangles per view (shelves, people, signs), from a hash of its seed.
        seeds = sv[:, 0, 0, V["noise_seed"]].astype(np.int64)
        primes = np.array([2654435761, 40503, 2246822519, 3266489917, 668265263, 374761393])
        for k in range(2):
            r = ((seeds[:, None] * (k + 3) * primes) % 1000 / 1000.0).astype(f)[:, None, None, :]
            rect = ((np.abs(gx[None] - (r[..., 0] * 2 - 1)) < 0.15 + 0.3 * r[..., 2])
                    & (np.abs(gy[None] - (r[..., 1] * 2 - 1)) < 0.15 + 0.3 * r[..., 3]))
            col = np.concatenate([r[..., 4:6], 1 - r[..., 4:5]], -1)
            sbg = np.where(rect[..., None], col, sbg)
        bg[street] = sbg
    img = bg + (garment - bg) * mask[..., None]
    # Occlusion (street): a flat object in front of part of the garment.
    occ = np.nonzero(vp[:, 0, 0, V["occlude"]] > 0.5)[0]
    if len(occ):
        ov = vp[occ]
        orect = ((np.abs(gx[None] - ov[..., V["occ_u"]]) < ov[..., V["occ_w"]] / 2)
                 & (np.abs(gy[None] - ov[..., V["occ_v"]]) < ov[..., V["occ_h"]] / 2))
        img[occ] = np.where(orect[..., None], ov[..., V["occ_r"]:V["occ_b"] + 1], img[occ])
    # Lighting and colour cast, then sensor noise on street photos.
    img *= vp[..., V["gain"]:V["gain"] + 1]
    img += vp[..., V["cast_r"]:V["cast_b"] + 1]
    if street.any():
        bank = _noise_bank(size)
        img[street] += bank[vp[street][:, 0, 0, V["noise_seed"]].astype(np.int64) % len(bank)]
    np.clip(img, 0.0, 1.0, out=img)
    return (img * 255.0 + 0.5).astype(np.uint8)


_NOISE_BANKS: Dict[int, np.ndarray] = {}


def _noise_bank(size: int, tiles: int = 64) -> np.ndarray:
    """Sensor-noise tiles, float32 [tiles, size, size, 3], fixed for a size (deterministic).

    Drawing fresh noise per street image cost about 8% of rendering; a view picks a tile by its
    seed instead, which keeps images byte-identical for a seed and the noise i.i.d. per pixel.
    """
    if size not in _NOISE_BANKS:
        rng = np.random.default_rng([size, 20261127])
        _NOISE_BANKS[size] = rng.normal(0.0, 0.025, (tiles, size, size, 3)).astype(np.float32)
    return _NOISE_BANKS[size]


# ----------------------------------------------------------------------------------------------
# The benchmark: which images exist, their manifest rows, and writing them.

@dataclasses.dataclass
class ImageSpec:
    """One image to render: an instance, a view index and a domain."""

    instance: Instance
    view: int
    domain: str
    role: str


def image_specs(config: SyntheticConfig) -> List[ImageSpec]:
    """Every image of the benchmark, in a deterministic order."""
    instances = sample_instances(config)
    rng = np.random.default_rng([config.seed, 2 * 10**6])
    specs: List[ImageSpec] = []
    for inst in instances:
        if inst.split == "extractor_train":
            specs.append(ImageSpec(inst, 0, "shop", ""))
            specs += [ImageSpec(inst, 1 + k, "street", "")
                      for k in range(config.extractor_street_views)]
        elif inst.split == "fir_eval":
            specs.append(ImageSpec(inst, 0, "shop", "inshop_query;c2s_gallery"))
            specs += [ImageSpec(inst, k, "shop", "inshop_gallery")
                      for k in range(1, config.fir_shop_views)]
            specs += [ImageSpec(inst, config.fir_shop_views + k, "street", "c2s_query")
                      for k in range(config.fir_street_views)]
        elif inst.split == "fam_eval":
            specs.append(ImageSpec(inst, 0, "shop", "fam_query;fam_gallery"))
        else:  # attribute_train, unlabelled: one photo, shop or street
            street = rng.random() < config.unlabelled_street_prob
            specs.append(ImageSpec(inst, 1 if street else 0, "street" if street else "shop", ""))
    specs += [ImageSpec(t, 0, "shop", "fam_gallery") for t in make_twins(instances, config)]
    return specs


def manifest_row(spec: ImageSpec, config: SyntheticConfig) -> Dict[str, str]:
    """The manifest row of one image (labels blanked as the split dictates)."""
    inst = spec.instance
    labels = {a: vocabulary.CLASSES[a][getattr(inst, a)] for a in vocabulary.ATTRIBUTE_TYPES}
    if inst.split in ("extractor_train", "unlabelled"):
        labels = {a: "" for a in labels}  # instance-labelled / unlabelled sets carry no attributes
    elif inst.split == "attribute_train":
        rng = _instance_rng(config.seed, inst.index, stream=2)
        drop = rng.random(3) < config.label_missing_prob
        labels = {a: ("" if d else v) for (a, v), d in zip(labels.items(), drop)}
    row = {
        "path": f"images/{inst.split}/{inst.instance_id}_{spec.view}.png",
        "instance_id": inst.instance_id, "domain": spec.domain, "split": inst.split,
        "view": str(spec.view), "role": spec.role,
        "twin_of": "" if inst.twin_of is None else f"syn{inst.twin_of:06d}",
        **labels, **{t: str(inst.traits[t]) for t in TRAITS},
    }
    return row


EXTRA_COLUMNS = ("view", "role", "twin_of") + tuple(TRAITS)


def render_specs(specs: Sequence[ImageSpec], config: SyntheticConfig,
                 batch_size: int = 256) -> np.ndarray:
    """Renders `specs` in batches; uint8 [len(specs), P, P, 3]."""
    out = np.zeros((len(specs), config.image_size, config.image_size, 3), np.uint8)
    for start in range(0, len(specs), batch_size):
        chunk = specs[start:start + batch_size]
        views = np.stack([view_params(config.seed, s.instance.index, s.view, s.domain)
                          for s in chunk])
        out[start:start + len(chunk)] = render([s.instance for s in chunk], views,
                                               config.image_size)
    return out


def _write_images(specs: Sequence[ImageSpec], paths: Sequence[str],
                  config: SyntheticConfig) -> int:
    """Renders `specs` and writes each as the PNG at the matching path; returns the count."""
    from PIL import Image  # imported here: only writing needs Pillow

    for path, image in zip(paths, render_specs(specs, config, len(specs))):
        Image.fromarray(image).save(path, compress_level=1)
    return len(specs)


def write_benchmark(out_dir: str, config: SyntheticConfig, batch_size: int = 512,
                    progress: bool = True, processes: Optional[int] = None
                    ) -> manifest_lib.Manifest:
    """Renders the whole benchmark into `out_dir` (PNGs, manifest.csv, contact_sheet.png).

    Batches of `batch_size` images are rendered and written by `processes` worker processes
    (default: one per CPU this process may run on; 1 = in this process). Every image depends only on the seed, its
    instance and its view, so the files are byte-identical for any number of processes. The
    manifest is written last, so a directory with a manifest is complete: a crash midway leaves
    no manifest and the next call renders again.

    Returns:
        The manifest, read back from disk.
    """
    specs = image_specs(config)
    rows = [manifest_row(s, config) for s in specs]
    for split in manifest_lib.SPLITS:
        os.makedirs(os.path.join(out_dir, "images", split), exist_ok=True)
    batches = [(specs[b:b + batch_size],
                [os.path.join(out_dir, r["path"]) for r in rows[b:b + batch_size]])
               for b in range(0, len(specs), batch_size)]
    processes = min(processes or len(os.sched_getaffinity(0)), len(batches))
    start, done = time.time(), 0

    def report(count):
        nonlocal done
        done += count
        if progress:
            rate = done / max(time.time() - start, 1e-9)
            print(f"\rsynthetic: {done}/{len(specs)} images ({rate:.0f} images/s)", end="",
                  flush=True)

    if processes <= 1:
        for chunk, paths in batches:
            report(_write_images(chunk, paths, config))
    else:
        # spawn, not fork: the caller may hold TensorFlow's threads, which a fork would copy.
        import concurrent.futures
        import multiprocessing

        with concurrent.futures.ProcessPoolExecutor(
                processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_write_images, chunk, paths, config)
                       for chunk, paths in batches]
            for future in concurrent.futures.as_completed(futures):
                report(future.result())
    if progress:
        print()
    write_contact_sheet(os.path.join(out_dir, "contact_sheet.png"), specs, config)
    path = os.path.join(out_dir, "manifest.csv")
    manifest_lib.write_manifest(path, rows, EXTRA_COLUMNS)
    return manifest_lib.read_manifest(path)


def write_contact_sheet(path: str, specs: Sequence[ImageSpec], config: SyntheticConfig,
                        rows: int = 12, zoom: int = 2) -> None:
    """A PNG a person can look at: per row one FIR instance's views, then FAM items and twins."""
    from PIL import Image, ImageDraw

    by_instance: Dict[str, List[ImageSpec]] = {}
    for s in specs:
        by_instance.setdefault(s.instance.instance_id, []).append(s)
    fir = [v for v in by_instance.values() if v[0].instance.split == "fir_eval"][:rows // 2]
    twins = [s for s in specs if s.instance.twin_of is not None][:rows // 2 * 2]
    source = {s.instance.index: s for s in specs
              if s.instance.split == "fam_eval" and s.instance.twin_of is None}
    lines = [v for v in fir]
    lines += [[source[t.instance.twin_of], t] for t in twins if t.instance.twin_of in source]
    cell = config.image_size * zoom
    label_h = 12
    cols = max(len(line) for line in lines) if lines else 1
    sheet = Image.new("RGB", (cols * cell, len(lines) * (cell + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, line in enumerate(lines):
        images = render_specs(line, config)
        for c, (spec, image) in enumerate(zip(line, images)):
            tile = Image.fromarray(image).resize((cell, cell), Image.NEAREST)
            sheet.paste(tile, (c * cell, r * (cell + label_h) + label_h))
            inst = spec.instance
            text = f"{SHAPES[inst.shape][:5]} {COLORS[inst.color][:4]} {PATTERNS[inst.pattern][:5]}"
            draw.text((c * cell + 2, r * (cell + label_h)), text, fill=(0, 0, 0))
    sheet.save(path)


def main(argv=None) -> None:
    """CLI entry point (absl flags)."""
    from absl import app, flags

    flags.DEFINE_string("out", None, "Output directory.", required=True)
    flags.DEFINE_integer("num_instances", 2000, "Number of garment instances.")
    flags.DEFINE_integer("seed", 0, "Random seed (same seed, identical files).")
    flags.DEFINE_integer("image_size", 64, "Image side in pixels.")
    flags.DEFINE_float("entanglement", 1.0, "Attribute entanglement (0 = independent).")
    flags.DEFINE_float("label_missing_prob", 0.3, "Missing label chance in attribute_train.")

    def run(_):
        fl = flags.FLAGS
        config = SyntheticConfig(num_instances=fl.num_instances, seed=fl.seed,
                                 image_size=fl.image_size, entanglement=fl.entanglement,
                                 label_missing_prob=fl.label_missing_prob)
        try:
            m = write_benchmark(fl.out, config)
        except ValueError as e:
            raise app.UsageError(str(e))
        print(f"wrote {len(m)} images, {os.path.join(fl.out, 'manifest.csv')} and "
              f"{os.path.join(fl.out, 'contact_sheet.png')}")

    app.run(run, argv=argv)


if __name__ == "__main__":
    main()
