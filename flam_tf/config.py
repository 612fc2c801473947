"""Typed experiment settings and their named presets (smoke, default, paper).

One `ExperimentConfig` holds everything a run needs; `python -m flam_tf.train` picks a preset with
`--preset` and overrides any field with a flag named `<section>_<field>` (see `--helpfull`). The
resolved config is written to `<run_dir>/config.json`, and a rerun in the same run directory must
resolve to the same config (the stages it skips were computed with it).
"""

import dataclasses
import json
import os
from typing import Any, Dict, List, Tuple

STAGES = (
    "data",
    "extractor",
    "features",
    "embedders",
    "manipulator",
    "baselines",
    "evaluate",
    "export",
)

# The accepted values of every setting with a fixed set of choices: the models, the losses and the
# readers check their arguments against these same tuples (`check_option`).
EXTRACTOR_SOURCES = ("synthetic", "deepfashion_inshop", "deepfashion_c2s")
ATTRIBUTE_SOURCES = ("synthetic", "darn", "shopping100k")
BACKBONES = ("small_cnn", "resnet50", "densenet121", "inception_resnet_v2", "efficientnet_b0")
POOLING_MODES = ("spoc", "mac", "gem")
MINING_STRATEGIES = ("semi-hard", "hard")
DISTANCES = ("cosine", "l2", "squared_l2")
# Eq. 4's feature matching: M, the target and the remaining attributes; S, the target only.
FEATURE_MATCHING_MODES = ("M", "S")
GENERATORS = ("memory", "mlp")
TARGET_SAMPLING = ("uniform", "partner")
# Compute dtype policy of the manipulator's G and D (the frozen embedder and the losses stay float32).
PRECISIONS = ("float32", "mixed_bfloat16")
STRATEGIES = ("default", "mirrored", "multi_worker")


def check_option(name: str, value, accepted) -> None:
    """Raises ValueError naming `name`, the bad `value` and the `accepted` ones."""
    if value not in accepted:
        raise ValueError(
            f"Unknown {name}. Received: {name}={value!r}; expected one of {list(accepted)}"
        )


@dataclasses.dataclass
class DataConfig:
    """Where images come from. `synthetic` fills every role; real sources fill one role each."""

    image_size: int = 64  # square input side of the extractor
    extractor_source: str = "synthetic"  # synthetic | deepfashion_inshop | deepfashion_c2s
    extractor_data_dir: str = ""  # data directory of a real extractor_source
    attribute_source: str = "synthetic"  # synthetic | darn | shopping100k
    attribute_data_dir: str = ""  # data directory of a real attribute_source
    class_table: str = ""  # JSON naming the attribute source's class codes (see the readers)
    unlabelled_manifest: str = ""  # optional manifest of extra unlabelled images (NFD role)
    num_instances: int = 10000  # synthetic: garments in total
    entanglement: float = 1.0  # synthetic: attribute entanglement (0 = independent)
    label_missing_prob: float = 0.3  # synthetic: chance an attribute_train label is missing
    twins_per_item: int = 1  # synthetic: counterfactual twins per FAM evaluation item
    top_n_classes: int = 10  # real attribute sources: classes kept per attribute type
    fam_eval_size: int = 0  # real attribute sources: FAM evaluation images (0 = reader default)
    max_image_pixels: int = 4096 * 4096  # largest image (height x width) the input pipeline decodes
    decode_cache_mb: int = 2048  # training images decoded once into RAM up to this size (0 = off)


@dataclasses.dataclass
class ExtractorConfig:
    """Feature extractor: backbone + pooling + projection, CE + triplet on instance ids, and (ours)
    a cosine-softmax CE on attribute_train's labels (attribute_weight 0 = the paper's extractor)."""

    backbone: str = "small_cnn"  # one of BACKBONES; resnet50 is the paper's
    pooling: str = "spoc"  # spoc (the paper's) | mac | gem
    feature_dim: int = 256  # retrieval feature width D
    weights: str = ""  # local backbone weights file ("" = random init; nothing is downloaded)
    num_ce_classes: int = 1000  # cross-entropy over the most frequent instance ids
    margin: float = 0.2  # triplet margin
    instances_per_batch: int = 16  # P of a PK batch
    images_per_instance: int = 4  # K of a PK batch
    epochs: int = 12  # training epochs (each steps_per_epoch PK batches)
    steps_per_epoch: int = 100  # PK batches per epoch
    learning_rate: float = 3e-3  # Adam, cosine-decayed to 5% over the run
    attribute_weight: float = 1.0  # attribute CE on attribute_train images (ours; 0 = the paper's)
    attribute_batch_size: int = 32  # attribute-labelled images per step beside the PK batch


@dataclasses.dataclass
class EmbedderConfig:
    """Attribute-specific embedders phi_a and dictionaries d_a (Eq. 2)."""

    embedding_dim: int = 32  # k, the width of each e_a and d_a
    hidden_units: int = 256  # hidden width of each phi_a MLP
    margin: float = 0.2  # triplet margin of Eq. 2 (cosine distance)
    batch_size: int = 128  # features per batch
    epochs: int = 60  # passes over the attribute_train features
    learning_rate: float = 1e-3  # Adam


@dataclasses.dataclass
class ManipulatorConfig:
    """Query feature manipulator G, D (Eq. 3-5) and the Table 3 switches."""

    generator: str = "memory"  # memory: x + M[target] - M[source] + delta (ours) | mlp (paper)
    target_sampling: str = "uniform"  # uniform: any other class, G given d (ours) | partner
    matching: str = "M"  # M: target + remaining attributes, S: target only
    adversarial: bool = False  # Eq. 3 on/off (Table 3 'Adv'; off by default, BUILD.md section 8)
    online_sampling: bool = True  # Sec. 4.1 partner choice on/off (Table 3 'OS'; partner sampling)
    g_hidden: int = 512  # width of G's two hidden layers
    d_hidden: int = 512  # width of D's two hidden layers
    # Loss weights, shared by FLAM and the FLAM (paper) rows (BUILD.md section 8).
    adv_weight: float = 5.0  # weight of Eq. 3 (when adversarial)
    match_weight: float = 20.0  # weight of Eq. 4 (through D's matching head)
    cycle_weight: float = 3.0  # weight of Eq. 5
    teacher_weight: float = 10.0  # weight of Eq. 4 measured by the frozen embedders (ours; 0 = off)
    retrieval_weight: float = 10.0  # softmax toward real features of the target combination
    distance_weight: float = 0.0  # weight of ||x~ - x||^2 (ours; 0 = off)
    retrieval_temperature: float = 0.07  # softmax temperature of the retrieval term
    memory_temperature: float = 0.05  # temperature with which the memory G reads classes off e
    precision: str = "float32"  # float32 | mixed_bfloat16: G and D's Dense layers in bfloat16
    batch_size: int = 256  # features per batch (partners are chosen within it)
    epochs: int = 10  # passes over all training features (FLAM)
    paper_epochs: int = 40  # passes over all training features (the FLAM (paper) rows)
    g_learning_rate: float = 1e-3  # Adam (beta_1 0.5) for G
    d_learning_rate: float = 2e-3  # Adam (beta_1 0.5) for D


@dataclasses.dataclass
class BaselineConfig:
    """Cls-Concat and Emb-Concat baselines (Tables 3-4): on FLAM's x, and from images."""

    block_dim: int = 96  # per-attribute block width; the paper's 341 (3 x 341 = 1023)
    batch_size: int = 128  # features per batch (the "(on x)" baselines)
    epochs: int = 60  # passes over the attribute_train features (the "(on x)" baselines)
    learning_rate: float = 1e-3  # Adam (the "(on x)" baselines)
    pixel_epochs: int = 6  # epochs of the baselines trained from images (0 = not trained)
    pixel_steps_per_epoch: int = 100  # batches per epoch of the baselines trained from images
    pixel_batch_size: int = 64  # attribute_train images per batch (their encoder: the extractor's)


@dataclasses.dataclass
class EvaluationConfig:
    # The main job's product (extractor, embedders, FLAM) and the cheap rows (Identity,
    # Mean-Shift, the concat baselines on x) do not need the comparison rows, and FLAM's figures
    # are the same either way (every model is seeded by its own name).
    compare: bool = False  # also train and report FLAM (paper) and the pixel-trained baselines
    ablations: bool = False  # also train and report the paper's Table 3 ablations of FLAM (paper)
    figure_queries: int = 4  # queries shown in the Figure-2-style grid


@dataclasses.dataclass
class RuntimeConfig:
    seed: int = 0  # seeds data, initialisation and sampling
    strategy: str = "default"  # default | mirrored | multi_worker
    # Shorter passes over the data are grouped, with the same batches, so that the per-epoch
    # backup, summaries and history cost little. Results do not depend on it.
    min_steps_per_epoch: int = 200  # fewest steps per Keras epoch of the models trained on features


@dataclasses.dataclass
class ExperimentConfig:
    preset: str = "default"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    extractor: ExtractorConfig = dataclasses.field(default_factory=ExtractorConfig)
    embedder: EmbedderConfig = dataclasses.field(default_factory=EmbedderConfig)
    manipulator: ManipulatorConfig = dataclasses.field(default_factory=ManipulatorConfig)
    baselines: BaselineConfig = dataclasses.field(default_factory=BaselineConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ExperimentConfig":
        sections = {f.name: f.type for f in dataclasses.fields(cls) if f.name != "preset"}
        kwargs = {"preset": d.get("preset", "default")}
        for name in sections:
            section_cls = type(getattr(cls(), name))
            known = {f.name for f in dataclasses.fields(section_cls)}
            values = d.get(name, {})
            unknown = set(values) - known
            if unknown:
                raise ValueError(
                    f"Unknown {name} settings {sorted(unknown)}; known: {sorted(known)}"
                )
            kwargs[name] = section_cls(**values)
        return cls(**kwargs)

    def validate(self) -> None:
        """Raises ValueError naming the first bad setting."""
        for name, accepted in (
            ("manipulator.matching", FEATURE_MATCHING_MODES),
            ("manipulator.generator", GENERATORS),
            ("manipulator.precision", PRECISIONS),
            ("manipulator.target_sampling", TARGET_SAMPLING),
            ("runtime.strategy", STRATEGIES),
            ("data.extractor_source", EXTRACTOR_SOURCES),
            ("data.attribute_source", ATTRIBUTE_SOURCES),
            ("extractor.backbone", BACKBONES),
            ("extractor.pooling", POOLING_MODES),
        ):
            section, field = name.split(".")
            check_option(name, getattr(getattr(self, section), field), accepted)
        if self.data.class_table:
            if self.data.attribute_source not in ("darn", "shopping100k"):
                raise ValueError(
                    f"data.class_table applies to a darn or shopping100k "
                    f"attribute_source. Received: {self.data.attribute_source!r}"
                )
            if not os.path.isfile(self.data.class_table):
                raise ValueError(f"data.class_table: no such file: {self.data.class_table}")
        for source, directory in (
            (self.data.extractor_source, self.data.extractor_data_dir),
            (self.data.attribute_source, self.data.attribute_data_dir),
        ):
            if source != "synthetic" and not directory:
                raise ValueError(f"data source {source!r} needs its data directory flag")
        if self.extractor.images_per_instance < 2:
            raise ValueError("extractor.images_per_instance must be >= 2 for triplet positives")
        for name, ok, requirement in _NUMERIC_CHECKS:
            section, field = name.split(".")
            value = getattr(getattr(self, section), field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
                raise ValueError(f"{name} must be {requirement}. Received: {value!r}")


def _at_least(low):
    return (lambda v: v >= low), f">= {low}"


def _positive():
    return (lambda v: 0 < v < float("inf")), "> 0"


def _non_negative():
    return (lambda v: 0 <= v < float("inf")), ">= 0"


# (section.field, check, requirement) for every numeric setting; a NaN fails every check.
_NUMERIC_CHECKS = [
    (name, *check)
    for name, check in (
        ("data.image_size", _at_least(16)),
        ("data.num_instances", _at_least(10)),
        ("data.entanglement", _non_negative()),
        ("data.label_missing_prob", ((lambda v: 0 <= v < 1), "in [0, 1) (1 leaves no labels)")),
        ("data.twins_per_item", ((lambda v: 0 <= v <= 3), "in 0..3 (one per attribute type)")),
        ("data.top_n_classes", ((lambda v: 1 <= v <= 10), "in 1..10 (the vocabulary's classes)")),
        ("data.fam_eval_size", _at_least(0)),
        ("data.max_image_pixels", _at_least(1)),
        ("data.decode_cache_mb", _at_least(0)),
        ("extractor.feature_dim", _at_least(1)),
        ("extractor.num_ce_classes", _at_least(1)),
        ("extractor.margin", _non_negative()),
        ("extractor.instances_per_batch", _at_least(2)),
        ("extractor.images_per_instance", _at_least(2)),
        ("extractor.epochs", _at_least(1)),
        ("extractor.steps_per_epoch", _at_least(1)),
        ("extractor.learning_rate", _positive()),
        ("extractor.attribute_weight", _non_negative()),
        ("extractor.attribute_batch_size", _at_least(1)),
        ("embedder.embedding_dim", _at_least(1)),
        ("embedder.hidden_units", _at_least(1)),
        ("embedder.margin", _non_negative()),
        ("embedder.batch_size", _at_least(2)),
        ("embedder.epochs", _at_least(1)),
        ("embedder.learning_rate", _positive()),
        ("manipulator.g_hidden", _at_least(1)),
        ("manipulator.d_hidden", _at_least(1)),
        ("manipulator.adv_weight", _non_negative()),
        ("manipulator.match_weight", _non_negative()),
        ("manipulator.cycle_weight", _non_negative()),
        ("manipulator.teacher_weight", _non_negative()),
        ("manipulator.retrieval_weight", _non_negative()),
        ("manipulator.distance_weight", _non_negative()),
        ("manipulator.retrieval_temperature", _positive()),
        ("manipulator.memory_temperature", _positive()),
        ("manipulator.batch_size", _at_least(2)),
        ("manipulator.epochs", _at_least(1)),
        ("manipulator.paper_epochs", _at_least(1)),
        ("manipulator.g_learning_rate", _positive()),
        ("manipulator.d_learning_rate", _positive()),
        ("baselines.block_dim", _at_least(1)),
        ("baselines.batch_size", _at_least(1)),
        ("baselines.epochs", _at_least(1)),
        ("baselines.learning_rate", _positive()),
        ("baselines.pixel_epochs", _at_least(0)),
        ("baselines.pixel_steps_per_epoch", _at_least(1)),
        ("baselines.pixel_batch_size", _at_least(1)),
        ("evaluation.figure_queries", _at_least(1)),
        ("runtime.seed", ((lambda v: 0 <= v < 2**32), "in [0, 2**32)")),
        ("runtime.min_steps_per_epoch", _at_least(1)),
    )
]


def _smoke() -> ExperimentConfig:
    c = ExperimentConfig(preset="smoke")
    c.data = DataConfig(image_size=32, num_instances=360)
    c.extractor = ExtractorConfig(
        feature_dim=64, epochs=2, steps_per_epoch=15, instances_per_batch=8, images_per_instance=4
    )
    c.embedder = EmbedderConfig(hidden_units=64, epochs=3, batch_size=64)
    c.manipulator = ManipulatorConfig(
        g_hidden=128, d_hidden=128, epochs=3, paper_epochs=3, batch_size=64
    )
    c.baselines = BaselineConfig(
        block_dim=16,
        epochs=3,
        batch_size=64,
        pixel_epochs=2,
        pixel_steps_per_epoch=10,
        pixel_batch_size=32,
    )
    c.evaluation = EvaluationConfig(compare=True, figure_queries=2)  # every path, quickly
    return c


def _paper() -> ExperimentConfig:
    """The paper's sizes (Sec. 4.1): ResNet50-SPoC, 1024-d, k=32, 341-d baseline blocks. GPU host."""
    c = ExperimentConfig(preset="paper")
    c.data = DataConfig(image_size=224, num_instances=20000)
    c.extractor = ExtractorConfig(
        backbone="resnet50",
        feature_dim=1024,
        epochs=30,
        steps_per_epoch=500,
        instances_per_batch=32,
        images_per_instance=4,
        learning_rate=1e-4,
    )
    c.embedder = EmbedderConfig(embedding_dim=32, hidden_units=512, epochs=30)
    c.manipulator = ManipulatorConfig(g_hidden=1024, d_hidden=1024, epochs=20, paper_epochs=50)
    c.baselines = BaselineConfig(
        block_dim=341, epochs=30, pixel_epochs=30, pixel_steps_per_epoch=500
    )
    c.evaluation = EvaluationConfig(compare=True)  # the paper's Tables 3-4 rows
    return c


PRESETS = {"smoke": _smoke, "default": lambda: ExperimentConfig(preset="default"), "paper": _paper}


def get_preset(name: str) -> ExperimentConfig:
    """Returns a fresh config of preset `name` (ValueError listing the presets if unknown)."""
    if name not in PRESETS:
        raise ValueError(
            f"Unknown preset. Received: preset={name!r}; expected one of {list(PRESETS)}"
        )
    return PRESETS[name]()


def overridable_fields() -> List[Tuple[str, str, dataclasses.Field]]:
    """(section, field name, dataclass field) for every setting a flag can override."""
    out = []
    for section in dataclasses.fields(ExperimentConfig):
        if section.name == "preset":
            continue
        for f in dataclasses.fields(type(getattr(ExperimentConfig(), section.name))):
            out.append((section.name, f.name, f))
    return out


def field_help() -> Dict[str, str]:
    """'section.field' -> the comment written beside the field above (the flags' help text)."""
    import inspect
    import re

    out = {}
    for section in dataclasses.fields(ExperimentConfig):
        if section.name == "preset":
            continue
        source = inspect.getsource(type(getattr(ExperimentConfig(), section.name)))
        for match in re.finditer(r"^    (\w+): [^=\n]+=[^#\n]*#\s*(.+)$", source, re.M):
            out[f"{section.name}.{match.group(1)}"] = match.group(2).strip()
    return out


def apply_override(config: ExperimentConfig, section: str, name: str, value: Any) -> None:
    """Sets config.<section>.<name> = value, converting to the field's type."""
    target = getattr(config, section)
    current = getattr(target, name)
    if isinstance(current, bool):
        value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    elif isinstance(current, (int, float, str)):
        value = type(current)(value)
    setattr(target, name, value)


def diff(a: Dict[str, Any], b: Dict[str, Any], prefix: str = "") -> List[str]:
    """Dotted names of the settings that differ between two config dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} -> {vb!r}")
    return out
