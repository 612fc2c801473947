"""What garments exist and how they are drawn: classes, hidden traits, colours, the entangled joint
distribution of labels, instances with their jitter, counterfactual twins, and view parameters.

Every random draw of an instance comes from `instance_rng(seed, index, stream)`, one stream per
independent use (INSTANCE_STREAM, TWIN_STREAM, LABEL_DROP_STREAM, VIEW_STREAM_BASE + view), so no
draw depends on the batch it is made in.
"""

import dataclasses
from typing import Dict, List, Optional, Sequence

import numpy as np

from flam_tf import vocabulary
from flam_tf.data import manifest as manifest_lib
from flam_tf.data.synthetic.config import SyntheticConfig

SHAPES = vocabulary.CLASSES["shape"]
COLORS = vocabulary.CLASSES["color"]
PATTERNS = vocabulary.CLASSES["pattern"]
# Axes of the joint distribution: (shape, color, pattern).
JOINT_SHAPE = (len(SHAPES), len(COLORS), len(PATTERNS))

# Hidden (unlabelled) traits and their number of levels.
TRAITS = {
    "fit": 3,  # slim / regular / wide
    "length": 3,  # cropped / regular / long hem
    "neckline": 3,  # tops: round / v / square neck; bottoms: plain / belt / drawstring waistband
    "detail": 4,  # none / pockets / buttons / logo patch
    "sleeve": 3,  # tops: sleeve length short-ish / regular / long;
    # bottoms: hem plain / cuffed / slit
}

# Base RGB of each colour class, in [0, 1].
PALETTE = np.array(
    [
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
    ],
    dtype=np.float32,
)
# Pattern ink colours: light garments get dark ink, dark garments light ink.
LIGHT_INKS = np.array([[0.97, 0.96, 0.92], [0.85, 0.85, 0.82], [0.98, 0.90, 0.75]], np.float32)
DARK_INKS = np.array([[0.08, 0.08, 0.10], [0.12, 0.15, 0.35], [0.35, 0.35, 0.37]], np.float32)
LIGHT_COLORS = {"white", "yellow", "pink", "grey"}

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

# Streams of `instance_rng`: labels, traits and jitter; twins; dropped labels; view v uses
# VIEW_STREAM_BASE + v.
INSTANCE_STREAM = 0
TWIN_STREAM = 1
LABEL_DROP_STREAM = 2
VIEW_STREAM_BASE = 100
# Second SeedSequence word of the generator that shuffles split membership.
_SPLIT_SHUFFLE_KEY = 10**6
# Upper bound (exclusive) of the integer seed of an instance's camouflage waves.
_CAMO_SEED_RANGE = 1 << 20


def joint_distribution(entanglement: float = 1.0) -> np.ndarray:
    """Probability of every (shape, color, pattern) combination, float64 [10, 10, 10], sums to 1.

    p(s, c, p) ∝ w_s w_c w_p (A_sc A_sp A_cp)^entanglement with the class weights and pairwise
    affinities above. Every combination keeps a non-zero probability, but some are rare.
    """
    weights = (
        np.array([_SHAPE_WEIGHT[s] for s in SHAPES])[:, None, None]
        * np.array([_COLOR_WEIGHT[c] for c in COLORS])[None, :, None]
        * np.array([_PATTERN_WEIGHT[p] for p in PATTERNS])[None, None, :]
    )
    affinity = np.ones(JOINT_SHAPE)
    axes = {"shape": (0, SHAPES), "color": (1, COLORS), "pattern": (2, PATTERNS)}
    for (first, second), table in _AFFINITY.items():
        (ax1, names1), (ax2, names2) = axes[first], axes[second]
        for (v1, v2), factor in table.items():
            for a in (v1,) if isinstance(v1, str) else v1:
                for b in (v2,) if isinstance(v2, str) else v2:
                    index = [slice(None)] * 3
                    index[ax1], index[ax2] = names1.index(a), names2.index(b)
                    affinity[tuple(index)] *= factor
    p = weights * affinity**entanglement
    return p / p.sum()


# ----------------------------------------------------------------------------------------------
# Per-instance parameters.

# Jitter vector layout, and the index of each field in it.
JITTER_FIELDS = (
    "shade_r",
    "shade_g",
    "shade_b",
    "brightness",
    "pat_scale",
    "pat_angle",
    "pat_phase_u",
    "pat_phase_v",
    "ink",
    "width",
    "height",
    "fold_phase",
    "fold_freq",
    "camo_seed",
    "block_angle",
    "block_offset",
)
JITTER_INDEX = {name: i for i, name in enumerate(JITTER_FIELDS)}
# The RGB fields of the jitter: relative shade offsets of the base colour.
JITTER_SHADE_RGB = slice(JITTER_INDEX["shade_r"], JITTER_INDEX["shade_b"] + 1)


@dataclasses.dataclass
class Instance:
    """Everything that identifies one garment (labels, hidden traits and continuous jitter)."""

    index: int
    split: str
    shape: int
    color: int
    pattern: int
    traits: Dict[str, int]
    jitter: np.ndarray  # float64 [len(JITTER_FIELDS)], laid out as JITTER_FIELDS
    twin_of: Optional[int] = None  # for a twin: index of its source instance
    changed_attribute: str = ""  # for a twin: the attribute type it changes
    changed_value: str = ""  # for a twin: the class name that attribute takes

    @property
    def instance_id(self) -> str:
        if self.twin_of is None:
            return f"syn{self.index:06d}"
        return f"syn{self.twin_of:06d}-{self.changed_attribute}-{self.changed_value}"


def instance_rng(seed: int, index: int, stream: int = INSTANCE_STREAM) -> np.random.Generator:
    """The generator of one use (`stream`) of instance `index` under `seed`."""
    return np.random.default_rng(np.random.SeedSequence([seed, index, stream]))


def sample_instances(config: SyntheticConfig) -> List[Instance]:
    """Draws every instance of the benchmark (labels, traits, jitter), split by instance."""
    config.validate()
    fractions = np.array([config.split_fractions.get(s, 0.0) for s in manifest_lib.SPLITS])
    counts = np.floor(fractions / fractions.sum() * config.num_instances).astype(int)
    counts[0] += config.num_instances - counts.sum()
    split_of = np.repeat(np.arange(len(manifest_lib.SPLITS)), counts)
    # Shuffle split membership deterministically so splits are not index ranges.
    split_of = np.random.default_rng([config.seed, _SPLIT_SHUFFLE_KEY]).permutation(split_of)
    cdf = np.cumsum(joint_distribution(config.entanglement).ravel())
    instances = []
    for index in range(config.num_instances):
        rng = instance_rng(config.seed, index)
        combo = min(int(np.searchsorted(cdf, rng.random(), side="right")), cdf.size - 1)
        shape, color, pattern = np.unravel_index(combo, JOINT_SHAPE)
        traits = {name: int(rng.integers(levels)) for name, levels in TRAITS.items()}
        jitter = np.array(
            [
                *rng.normal(0.0, 0.05, 3),
                rng.normal(0.0, 0.07),  # shade, brightness
                rng.uniform(0.8, 1.25),
                rng.normal(0.0, 0.1),  # pattern scale, angle (rad)
                rng.random(),
                rng.random(),  # pattern phases
                rng.integers(len(LIGHT_INKS)),  # ink
                rng.uniform(0.9, 1.1),
                rng.uniform(0.94, 1.06),  # proportions
                rng.random() * 6.28,
                rng.uniform(2.0, 4.0),  # folds
                rng.integers(_CAMO_SEED_RANGE),  # camouflage
                rng.uniform(-0.6, 0.6),
                rng.uniform(-0.25, 0.25),  # colorblock split
            ],
            dtype=np.float64,
        )
        instances.append(
            Instance(
                index,
                manifest_lib.SPLITS[split_of[index]],
                int(shape),
                int(color),
                int(pattern),
                traits,
                jitter,
            )
        )
    return instances


def make_twins(instances: Sequence[Instance], config: SyntheticConfig) -> List[Instance]:
    """Counterfactual twins of the fam_eval instances: one attribute changed, all else kept."""
    twins = []
    for inst in instances:
        if inst.split != "fam_eval" or config.twins_per_item == 0:
            continue
        rng = instance_rng(config.seed, inst.index, stream=TWIN_STREAM)
        for a in rng.permutation(len(vocabulary.ATTRIBUTE_TYPES))[: config.twins_per_item]:
            attribute = vocabulary.ATTRIBUTE_TYPES[a]
            labels = [inst.shape, inst.color, inst.pattern]
            classes = vocabulary.CLASSES[attribute]
            labels[a] = int(rng.choice([v for v in range(len(classes)) if v != labels[a]]))
            twin = dataclasses.replace(
                inst,
                shape=labels[0],
                color=labels[1],
                pattern=labels[2],
                twin_of=inst.index,
                changed_attribute=attribute,
                changed_value=classes[labels[a]],
            )
            twins.append(twin)
    return twins


# ----------------------------------------------------------------------------------------------
# Per-view parameters.

# View parameter layout (one row per rendered image), and the index of each field in it.
VIEW_FIELDS = (
    "scale",
    "shift_u",
    "shift_v",
    "rotation",
    "mirror",
    "street",
    "bg_r",
    "bg_g",
    "bg_b",
    "gain",
    "cast_r",
    "cast_g",
    "cast_b",
    "occlude",
    "occ_u",
    "occ_v",
    "occ_w",
    "occ_h",
    "occ_r",
    "occ_g",
    "occ_b",
    "noise_seed",
    "tex_angle",
    "tex_freq",
    "tex_phase",
)
VIEW_INDEX = {name: i for i, name in enumerate(VIEW_FIELDS)}
# The RGB fields of a view: background, colour cast, occluder.
VIEW_BACKGROUND_RGB = slice(VIEW_INDEX["bg_r"], VIEW_INDEX["bg_b"] + 1)
VIEW_CAST_RGB = slice(VIEW_INDEX["cast_r"], VIEW_INDEX["cast_b"] + 1)
VIEW_OCCLUDER_RGB = slice(VIEW_INDEX["occ_r"], VIEW_INDEX["occ_b"] + 1)

# Grey level of the clean catalogue view's background.
_SHOP_BACKGROUND = 0.90
# A view's noise seed mixes the instance index, the view index and the benchmark seed.
_NOISE_SEED_INDEX_STRIDE = 131
_NOISE_SEED_VIEW_STRIDE = 7919
_NOISE_SEED_MODULUS = 1 << 30


def view_params(seed: int, index: int, view: int, domain: str) -> np.ndarray:
    """Pose, background and photometric parameters of one view, float64 [len(VIEW_FIELDS)]."""
    p = np.zeros(len(VIEW_FIELDS))
    p[VIEW_INDEX["scale"]], p[VIEW_INDEX["gain"]] = 1.0, 1.0
    p[VIEW_BACKGROUND_RGB] = _SHOP_BACKGROUND
    p[VIEW_INDEX["noise_seed"]] = (
        index * _NOISE_SEED_INDEX_STRIDE + view * _NOISE_SEED_VIEW_STRIDE + seed
    ) % _NOISE_SEED_MODULUS
    if view == 0 and domain == "shop":
        return p  # the clean catalogue view: identical pose for an item and its twins
    rng = instance_rng(seed, index, stream=VIEW_STREAM_BASE + view)
    if domain == "shop":  # another catalogue shot: slight re-framing, sometimes mirrored
        p[VIEW_INDEX["scale"]] = rng.uniform(0.88, 1.04)
        p[VIEW_INDEX["shift_u"]], p[VIEW_INDEX["shift_v"]] = rng.uniform(-0.07, 0.07, 2)
        p[VIEW_INDEX["rotation"]] = rng.normal(0.0, 0.04)
        p[VIEW_INDEX["mirror"]] = float(view % 2 == 0)
        p[VIEW_BACKGROUND_RGB] = rng.uniform(0.84, 0.96) + rng.normal(0, 0.01, 3)
        p[VIEW_INDEX["gain"]] = rng.uniform(0.92, 1.06)
        return p
    p[VIEW_INDEX["street"]] = 1.0
    p[VIEW_INDEX["scale"]] = rng.uniform(0.62, 1.3)  # > 1 crops the garment at the frame
    p[VIEW_INDEX["shift_u"]], p[VIEW_INDEX["shift_v"]] = rng.uniform(-0.25, 0.25, 2)
    p[VIEW_INDEX["rotation"]] = rng.uniform(-0.3, 0.3)
    p[VIEW_INDEX["mirror"]] = float(rng.random() < 0.5)
    p[VIEW_BACKGROUND_RGB] = rng.uniform(0.15, 0.85, 3)
    p[VIEW_INDEX["gain"]] = rng.uniform(0.65, 1.25)
    p[VIEW_CAST_RGB] = rng.normal(0.0, 0.05, 3)
    p[VIEW_INDEX["occlude"]] = float(rng.random() < 0.45)
    p[VIEW_INDEX["occ_u"]], p[VIEW_INDEX["occ_v"]] = rng.uniform(-0.9, 0.9, 2)
    p[VIEW_INDEX["occ_w"]], p[VIEW_INDEX["occ_h"]] = rng.uniform(0.2, 0.5, 2)
    p[VIEW_OCCLUDER_RGB] = rng.uniform(0.05, 0.95, 3)
    p[VIEW_INDEX["tex_angle"]] = rng.uniform(0, np.pi)
    p[VIEW_INDEX["tex_freq"]] = rng.uniform(2.0, 9.0)
    p[VIEW_INDEX["tex_phase"]] = rng.uniform(0, 2 * np.pi)
    return p
