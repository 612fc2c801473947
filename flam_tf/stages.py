"""The stages of `python -m flam_tf.train`, in order:

    data -> extractor -> features -> embedders -> manipulator -> baselines -> evaluate -> export

Each stage reads what earlier stages left in the run directory (never their in-memory state), so
any stage can be rerun alone with `--stages`, and a killed run resumes: finished stages are skipped,
and a training stage restarts from its last epoch backup (epoch_backup.EpochBackup). Each
stage seeds itself from the run seed and its name: a run split across processes equals one run.

Multi-worker (`--strategy=multi_worker`, see flam_tf.distribute): every task runs the stages that
train (TRAINING_STAGES), the chief alone the others, and only the chief writes the run directory:
a stage writes through `ctx.output_path` / `ctx.save_model`, which give a worker its scratch
folder, and reads decisions the chief took through `ctx.exists` / `ctx.resume_epoch`.
"""

import os
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf
import keras
from absl import logging

from flam_tf import config as config_lib
from flam_tf import distribute
from flam_tf import models  # noqa: F401  (registers the classes keras.saving.load_model needs)
from flam_tf import vocabulary
from flam_tf.data import manifest as manifest_lib
from flam_tf.data import pipeline
from flam_tf.data import synthetic
from flam_tf.epoch_backup import EpochBackup, merged_history, resume_epoch, seed_everything
from flam_tf.run_directory import RunDirectory, write_json

# Manipulator variants. FLAM: the default manipulator (the config's settings). FLAM (paper): the
# paper's G and losses (M/OS/Adv), and its Table 3 ablations (name -> (matching, online_sampling,
# adversarial)), trained with --ablations.
FLAM = "FLAM"
FLAM_PAPER = "FLAM (paper)"
ABLATIONS = {
    "FLAM (paper, M/-/Adv)": ("M", False, True),
    "FLAM (paper, M/-/-)": ("M", False, False),
    "FLAM (paper, S/-/Adv)": ("S", False, True),
}
PAPER_SWITCHES = {FLAM_PAPER: ("M", True, True), **ABLATIONS}


def variant_model_name(variant: str) -> str:
    """File stem of a manipulator variant: the default is `manipulator`."""
    if variant == FLAM:
        return "manipulator"
    matching, online, adversarial = PAPER_SWITCHES[variant]
    return (f"manipulator_paper_{matching}_{'OS' if online else 'noOS'}_"
            f"{'adv' if adversarial else 'noadv'}")


class Context:
    """What every stage gets: config, run directory, strategy, and this task's role in the
    cluster (`cluster`; one process: the chief of a cluster of one)."""

    def __init__(self, config: config_lib.ExperimentConfig, run: RunDirectory,
                 strategy: tf.distribute.Strategy, cluster: Optional[distribute.Cluster] = None):
        self.config = config
        self.run = run
        self.strategy = strategy
        self.cluster = cluster or distribute.Cluster(strategy)
        # A worker's private folder for what Keras makes it write (None on the chief).
        self.scratch = self.cluster.scratch_dir(run.root)
        distribute.remove_tree(self.scratch)  # what a killed worker left
        self._manifest: Optional[manifest_lib.Manifest] = None

    # -- multi-worker: where a task writes, what the chief decided --------------------------------
    def output_path(self, path: str) -> str:
        """Where this task writes the run-directory file `path`: `path` on the chief; on a worker
        the same relative path in its scratch folder (removed by `close`)."""
        if self.scratch is None:
            return path
        out = os.path.join(self.scratch, os.path.relpath(path, self.run.root))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        return out

    def save_model(self, model: keras.Model, path: str) -> None:
        """`model.save(path)` on the chief; a worker saves too (reading the metrics' variables is
        an all-reduce), into its scratch folder, and deletes the file."""
        out = self.output_path(path)
        _save_model(model, out)
        if out != path:
            os.remove(out)

    def exists(self, path: str) -> bool:
        """Whether `path` exists, as the chief sees it (the same answer on every task)."""
        return self.cluster.chief_value(f"exists {os.path.relpath(path, self.run.root)}",
                                        lambda: os.path.exists(path))

    def close(self) -> None:
        """Removes a worker's scratch folder."""
        distribute.remove_tree(self.scratch)

    @property
    def manifest(self) -> manifest_lib.Manifest:
        if self._manifest is None:
            self._manifest = manifest_lib.read_manifest(self.run.manifest_path)
        return self._manifest

    def callbacks(self, name: str) -> List[keras.callbacks.Callback]:
        """Epoch backups for resuming, TensorBoard summaries, and a NaN guard, for the model
        `name` (a stage, or one of the models a stage trains)."""
        backup_dir = self.run.checkpoint_dir(name)
        return [
            EpochBackup(backup_dir, None if self.scratch is None else self.output_path(backup_dir),
                        name=name),
            keras.callbacks.TensorBoard(self.output_path(self.run.log_dir(name)),
                                        write_graph=False),
            keras.callbacks.TerminateOnNaN(),
        ]

    def resume_epoch(self, name: str) -> int:
        """Epochs the model `name` already trained before an interruption (0: none); the
        chief's backups decide, for every task."""
        return self.cluster.chief_value(f"resume {name}",
                                        lambda: resume_epoch(self.run.checkpoint_dir(name)))

    def seed(self, name: str) -> int:
        """Seeds the global random state for the stage or model `name` (see epoch_backup)."""
        return seed_everything(self.config.runtime.seed, name)

    def save_history(self, name: str, history: keras.callbacks.History,
                     callbacks: List[keras.callbacks.Callback]) -> Dict[str, List[float]]:
        """Writes the epoch metrics of the whole fit, epochs before an interruption included."""
        backup = next((c for c in callbacks if isinstance(c, EpochBackup)), None)
        merged = merged_history(backup, history)
        write_json(self.output_path(self.run.path("logs", f"{name}_history.json")), merged)
        return merged


# ------------------------------------------------------------------------------------------------
# data

def stage_data(ctx: Context) -> Dict[str, int]:
    """Writes D/data/manifest.csv: the synthetic benchmark, or the real sources' manifests."""
    c = ctx.config.data
    synthetic_data = c.extractor_source == "synthetic" and c.attribute_source == "synthetic"
    if synthetic_data:
        syn = synthetic.SyntheticConfig(
            num_instances=c.num_instances, seed=ctx.config.runtime.seed, image_size=c.image_size,
            label_missing_prob=c.label_missing_prob, twins_per_item=c.twins_per_item,
            entanglement=c.entanglement)
        m = synthetic.write_benchmark(ctx.run.path("data"), syn)
    else:
        m = _combine_real_sources(ctx)
    # Every image exists, decodes and is within max_image_pixels, or the stage fails here (not
    # marked done) with one line naming manifest.csv:line, rather than in a later stage.
    # The synthetic benchmark's PNGs were just encoded here from arrays: their existence is
    # checked, decoding them again would only cost time (5-9 s for the default preset).
    manifest_lib.verify_images(m, max_image_pixels=c.max_image_pixels,
                               path=ctx.run.manifest_path, decode=not synthetic_data)
    counts = {s: int((m["split"] == s).sum()) for s in manifest_lib.SPLITS}
    logging.info("data: %d images %s", len(m), counts)
    return counts


def _combine_real_sources(ctx: Context) -> manifest_lib.Manifest:
    """Each role from its own source: instance splits from one, attribute splits from another."""
    from flam_tf.data import readers

    c = ctx.config.data
    rows: List[Dict[str, str]] = []
    roles = [(c.extractor_source, c.extractor_data_dir, ("extractor_train", "fir_eval"), {}),
             (c.attribute_source, c.attribute_data_dir,
              ("attribute_train", "fam_eval", "unlabelled"),
              {"top_n": c.top_n_classes, **({"fam_eval_size": c.fam_eval_size}
                                            if c.fam_eval_size else {}),
               **(readers.class_table_options(c.attribute_source, c.class_table)
                  if c.class_table else {})})]
    for source, data_dir, splits, options in roles:
        if source == "synthetic":
            raise ValueError("Mixing the synthetic benchmark with a real source is not supported; "
                             "set both --data_extractor_source and --data_attribute_source")
        path = ctx.run.path("data", f"{source}_manifest.csv")
        readers.build_manifest(source, data_dir, path, warn_outside=False, **options)
        m = manifest_lib.read_manifest(path, root=data_dir)
        keep = np.isin(m["split"], splits)
        absolute = m.absolute_paths()
        for i in np.nonzero(keep)[0]:
            row = {k: str(v[i]) for k, v in m.columns.items()}
            row["path"] = absolute[i]
            rows.append(row)
    if c.unlabelled_manifest:
        m = manifest_lib.read_manifest(c.unlabelled_manifest)
        # Name the user's own file:line for a missing image (stage_data decodes them all later).
        manifest_lib.verify_images(m, max_image_pixels=c.max_image_pixels, decode=False)
        for i, path in enumerate(m.absolute_paths()):
            rows.append({**{k: str(v[i]) for k, v in m.columns.items()}, "path": path,
                         "split": "unlabelled", "shape": "", "color": "", "pattern": ""})
    manifest_lib.write_manifest(ctx.run.manifest_path, rows, ("role", "twin_of", "view"))
    return manifest_lib.read_manifest(ctx.run.manifest_path)


# ------------------------------------------------------------------------------------------------
# extractor

def stage_extractor(ctx: Context) -> Dict[str, float]:
    """Trains the FeatureExtractor (CE over the top instance ids + triplet) on extractor_train."""
    from flam_tf.models import FeatureExtractor

    c = ctx.config.extractor
    train = ctx.manifest.split("extractor_train")
    d = ctx.config.data
    ds, info = pipeline.pk_dataset(train, d.image_size, c.instances_per_batch,
                                   c.images_per_instance, c.num_ce_classes,
                                   seed=ctx.config.runtime.seed,
                                   skip_batches=ctx.resume_epoch("extractor") * c.steps_per_epoch,
                                   max_pixels=d.max_image_pixels,
                                   decoded=pipeline.decode_cache(train, d.image_size,
                                                                 d.decode_cache_mb * 2**20,
                                                                 d.max_image_pixels))
    logging.info("extractor: %s", info)
    attribute_weight = c.attribute_weight
    if attribute_weight:
        # Ours: the attribute_train images and their labels as a second stream beside the PK
        # batches (the same labels the embedders train on; never an evaluation label).
        labelled = ctx.manifest.split("attribute_train")
        labels = label_matrix(labelled)
        known = (labels >= 0).any(axis=1)
        if not known.any():
            logging.warning("extractor: attribute_weight=%s but attribute_train has no labelled "
                            "image; training on instance ids only", attribute_weight)
            attribute_weight = 0.0
        else:
            labelled, labels = labelled.select(known), labels[known]
            attributes = pipeline.labelled_dataset(
                labelled, labels, d.image_size, c.attribute_batch_size,
                seed=ctx.config.runtime.seed + 3,
                skip_batches=ctx.resume_epoch("extractor") * c.steps_per_epoch,
                max_pixels=d.max_image_pixels,
                decoded=pipeline.decode_cache(labelled, d.image_size, d.decode_cache_mb * 2**20,
                                              d.max_image_pixels))
            ds = tf.data.Dataset.zip((ds, attributes))
            logging.info("extractor: attribute term on %d labelled attribute_train images",
                         len(labelled))
    with ctx.strategy.scope():
        model = FeatureExtractor(backbone=c.backbone, pooling=c.pooling, feature_dim=c.feature_dim,
                                 image_size=ctx.config.data.image_size,
                                 num_ce_classes=info["num_ce_classes"], margin=c.margin,
                                 weights=c.weights or None, attribute_weight=attribute_weight,
                                 attribute_classes=[vocabulary.NUM_CLASSES[a]
                                                    for a in vocabulary.ATTRIBUTE_TYPES])
        total = c.epochs * c.steps_per_epoch
        schedule = keras.optimizers.schedules.CosineDecay(c.learning_rate, total, alpha=0.05)
        model.compile(optimizer=keras.optimizers.Adam(schedule))
    callbacks = ctx.callbacks("extractor")
    history = distribute.fit(model, ds, epochs=c.epochs, steps_per_epoch=c.steps_per_epoch,
                             callbacks=callbacks, verbose=2)
    metrics = ctx.save_history("extractor", history, callbacks)
    ctx.save_model(model, ctx.run.model_path("extractor"))
    return {k: v[-1] for k, v in metrics.items() if v}


# ------------------------------------------------------------------------------------------------
# features

def stage_features(ctx: Context) -> Dict[str, int]:
    """Extracts one feature per image into D/features/features.npz, plus fam_gallery.npz."""
    extractor = keras.saving.load_model(ctx.run.model_path("extractor"))
    m = ctx.manifest
    features = []
    ds = pipeline.image_dataset(m, ctx.config.data.image_size, batch_size=256,
                                max_pixels=ctx.config.data.max_image_pixels)
    progress = keras.utils.Progbar(len(m), unit_name="image", interval=10.0)
    for images in ds:
        features.append(extractor(images, training=False).numpy())
        progress.add(len(features[-1]))
    features = np.concatenate(features).astype(np.float32)
    _save_npz(ctx.run.path("features", "features.npz"), feature=features,
              path=m["path"], instance_id=m["instance_id"], split=m["split"])
    fam = m["split"] == "fam_eval"
    _save_npz(ctx.run.path("features", "fam_gallery.npz"), feature=features[fam],
              instance_id=m["instance_id"][fam], path=m["path"][fam],
              shape=m["shape"][fam], color=m["color"][fam], pattern=m["pattern"][fam],
              twin_of=m.get("twin_of")[fam], is_query=m.has_role("fam_query")[fam])
    return {"num_features": int(len(features)), "feature_dim": int(features.shape[1]),
            "fam_gallery": int(fam.sum())}


def _save_model(model, path: str) -> None:
    """model.save, atomic: a kill while it writes leaves no file at `path` (a partial .keras
    file there would pass for a finished model, e.g. a manipulator variant, on resume)."""
    folder, name = os.path.split(path)
    for stale in os.listdir(folder) if os.path.isdir(folder) else []:
        if stale.startswith(".tmp-") and stale.endswith(f"-{name}"):  # a killed save's
            os.remove(os.path.join(folder, stale))
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{name}")  # Keras wants the .keras suffix
    model.save(tmp)
    os.replace(tmp, path)


def _save_npz(npz_file: str, **arrays) -> None:
    tmp = npz_file + ".tmp.npz"
    np.savez(tmp, **{k: (np.asarray(v).astype(str) if np.asarray(v).dtype.kind in "OU" else v)
                     for k, v in arrays.items()})
    os.replace(tmp, npz_file)


def load_features(ctx: Context):
    """(features float32 [N, D] in manifest order, manifest)."""
    with np.load(ctx.run.path("features", "features.npz"), allow_pickle=False) as z:
        return z["feature"], ctx.manifest


def label_matrix(m: manifest_lib.Manifest) -> np.ndarray:
    """int32 [N, 3] labels in ATTRIBUTE_TYPES order, -1 where missing."""
    return np.stack([m.labels(a) for a in vocabulary.ATTRIBUTE_TYPES], axis=1)


def _passes_per_epoch(passes: int, steps_per_pass: int, min_steps: int) -> int:
    """How many passes over the data one Keras epoch holds: a divisor g of `passes`, the smallest
    with g * steps_per_pass >= min_steps, unless that makes epochs over 2 * min_steps long (a
    prime number of passes would make the whole fit one epoch, with no backup before its end);
    then the largest divisor whose epochs stay within 2 * min_steps (at least 1)."""
    passes = max(passes, 1)
    divisors = [g for g in range(1, passes + 1) if passes % g == 0]
    group = next((g for g in divisors if g * steps_per_pass >= min_steps), passes)
    if group > 1 and group * steps_per_pass > 2 * min_steps:
        group = max(g for g in divisors if g == 1 or g * steps_per_pass <= 2 * min_steps)
    return group


def _feature_dataset(x, y, batch_size: int, seed: int, passes: int, resume_epoch: int = 0,
                     min_steps: int = 1):
    """Endless shuffled batches of features (and labels, unless y is None), reshuffled on every
    pass over the data, for `passes` passes; a resumed fit skips what its `resume_epoch` Keras
    epochs already trained.

    Several passes make one Keras epoch of at least `min_steps` steps when a pass is short
    (`_passes_per_epoch`; the stages pass runtime.min_steps_per_epoch: the per-epoch work of
    `fit`, an epoch backup, summaries and the history, costs as much as about 20 steps of these
    small models). The batches are the same either way (the shuffle is per pass of the repeated
    dataset, not per Keras epoch, and nothing in these models depends on the epoch), so only how
    often `fit` backs up, logs and reports changes.

    Returns:
        (dataset, epochs, steps per epoch): pass all three to `fit(dataset, epochs=epochs,
        steps_per_epoch=steps)`, so that a pass sees its own shuffle whether or not the fit was
        resumed.
    """
    steps = len(x) // batch_size
    group = _passes_per_epoch(passes, steps, min_steps)
    ds = tf.data.Dataset.from_tensor_slices(x if y is None else (x, y))
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).batch(
        batch_size, drop_remainder=True).repeat()
    return (ds.skip(resume_epoch * group * steps).prefetch(tf.data.AUTOTUNE), passes // group,
            group * steps)


def _fit_on_features(ctx: Context, name: str, model: keras.Model, x, y, batch_size: int,
                     passes: int) -> Dict[str, List[float]]:
    """Trains the compiled `model` for `passes` passes over features x (and labels y, unless
    None) in batches of `batch_size`, resuming from the backups of `name`; returns the metrics
    of the whole fit (`Context.save_history`)."""
    ds, epochs, steps = _feature_dataset(x, y, min(batch_size, len(x)), ctx.config.runtime.seed,
                                         passes, resume_epoch=ctx.resume_epoch(name),
                                         min_steps=ctx.config.runtime.min_steps_per_epoch)
    callbacks = ctx.callbacks(name)
    history = distribute.fit(model, ds, epochs=epochs, steps_per_epoch=steps,
                             callbacks=callbacks, verbose=2)
    return ctx.save_history(name, history, callbacks)


# ------------------------------------------------------------------------------------------------
# embedders

def stage_embedders(ctx: Context) -> Dict[str, float]:
    """Trains the attribute-specific embedders (Eq. 2) on attribute_train features (sparse labels)."""
    from flam_tf.models import AttributeEmbedder

    c = ctx.config.embedder
    features, m = load_features(ctx)
    train = m["split"] == "attribute_train"
    x, y = features[train], label_matrix(m)[train]
    with ctx.strategy.scope():
        model = AttributeEmbedder(features.shape[1], embedding_dim=c.embedding_dim,
                                  hidden_units=c.hidden_units, margin=c.margin)
        model.compile(optimizer=keras.optimizers.Adam(c.learning_rate))
    metrics = _fit_on_features(ctx, "embedders", model, x, y, c.batch_size, c.epochs)
    ctx.save_model(model, ctx.run.model_path("embedder"))
    return {k: v[-1] for k, v in metrics.items() if v}


# ------------------------------------------------------------------------------------------------
# manipulator

def manipulator_training_features(ctx: Context):
    """Features of every training image, labelled or not (the semi-supervised point), and their
    attribute_train labels (int32 [N, 3], -1 where unknown; evaluation labels are never read)."""
    features, m = load_features(ctx)
    rows = np.isin(m["split"], ("extractor_train", "attribute_train", "unlabelled"))
    labels = np.where((m["split"] == "attribute_train")[:, None], label_matrix(m), -1)
    return features[rows], labels[rows].astype(np.int32)


def stage_manipulator(ctx: Context) -> Dict[str, float]:
    """Trains FLAM; with --evaluation_compare also FLAM (paper), and with --evaluation_ablations
    FLAM (paper) and the paper's Table 3 variants of it."""
    e = ctx.config.evaluation
    variants = ([FLAM] + ([FLAM_PAPER] if e.compare or e.ablations else [])
                + (list(ABLATIONS) if e.ablations else []))
    results = {}
    for variant in variants:
        if ctx.exists(ctx.run.model_path(variant_model_name(variant))):
            continue  # a variant finished before an interruption
        ctx.seed(variant_model_name(variant))  # whether or not earlier variants ran here
        results[variant] = _train_manipulator(ctx, variant)
    return results


def manipulator_settings(config: config_lib.ManipulatorConfig, variant: str) -> Dict:
    """FeatureManipulator keyword arguments of a variant: FLAM takes the config as it is; the
    paper's rows keep its Eq. 3-5 weights, switch off every part of ours (memory G, uniform
    targets, teacher, retrieval and distance terms) and take their Table 3 switches from
    PAPER_SWITCHES."""
    settings = dict(generator=config.generator, target_sampling=config.target_sampling,
                    matching=config.matching, adversarial=config.adversarial,
                    online_sampling=config.online_sampling, adv_weight=config.adv_weight,
                    match_weight=config.match_weight, cycle_weight=config.cycle_weight,
                    teacher_weight=config.teacher_weight,
                    retrieval_weight=config.retrieval_weight,
                    distance_weight=config.distance_weight,
                    retrieval_temperature=config.retrieval_temperature,
                    memory_temperature=config.memory_temperature,
                    precision=config.precision)
    if variant == FLAM:
        return settings
    matching, online, adversarial = PAPER_SWITCHES[variant]
    settings.update(generator="mlp", target_sampling="partner", matching=matching,
                    online_sampling=online, adversarial=adversarial, teacher_weight=0.0,
                    retrieval_weight=0.0, distance_weight=0.0)
    return settings


def _train_manipulator(ctx: Context, variant: str) -> float:
    from flam_tf.models import FeatureManipulator

    c = ctx.config.manipulator
    x, known = manipulator_training_features(ctx)
    name = variant_model_name(variant)
    logging.info("manipulator %s: %d training features", variant, len(x))
    with ctx.strategy.scope():
        embedder = keras.saving.load_model(ctx.run.model_path("embedder"))
        model = FeatureManipulator(embedder, x.shape[1], embedding_dim=embedder.embedding_dim,
                                   g_hidden=(c.g_hidden, c.g_hidden),
                                   d_hidden=(c.d_hidden, c.d_hidden),
                                   seed=ctx.config.runtime.seed,
                                   **manipulator_settings(c, variant))
        model.compile(g_optimizer=keras.optimizers.Adam(c.g_learning_rate, beta_1=0.5),
                      d_optimizer=keras.optimizers.Adam(c.d_learning_rate, beta_1=0.5))
    # Known attribute_train labels where there are any, the frozen embedder's pseudo-labels
    # elsewhere: the classes of the memory's initial means and of the retrieval bank.
    labels = np.where(known >= 0, known, model.pseudo_labels(x))
    model.initialize_memory(x, labels)
    if model.retrieval_weight:
        model.set_retrieval_bank(x, labels)
    metrics = _fit_on_features(ctx, name, model, x, None, c.batch_size,
                               c.epochs if variant == FLAM else c.paper_epochs)
    ctx.save_model(model, ctx.run.model_path(name))
    return float(metrics["cycle_cosine"][-1]) if metrics.get("cycle_cosine") else float("nan")


# ------------------------------------------------------------------------------------------------
# baselines

# Baselines: report name -> model file stem. "(on x)": heads on FLAM's feature x (they inherit its
# instance information); the plain names: the paper's, trained from images (PixelConcat).
FEATURE_BASELINES = {"Cls-Concat (on x)": "cls_concat_on_x", "Emb-Concat (on x)": "emb_concat_on_x"}
PIXEL_BASELINES = {"Cls-Concat": "cls_concat", "Emb-Concat": "emb_concat"}


def pixel_baseline_features_path(ctx: Context, stem: str) -> str:
    return ctx.run.path("features", f"{stem}_features.npz")


def _baseline_head(name: str, feature_dim: int, c: config_lib.BaselineConfig):
    from flam_tf.models import ClsConcat, EmbConcat

    return (ClsConcat if name.startswith("Cls") else EmbConcat)(feature_dim, block_dim=c.block_dim)


def stage_baselines(ctx: Context) -> Dict[str, float]:
    """Trains the four concat baselines and fits their class prototypes on attribute_train.

    The "(on x)" heads train on FLAM's features; the paper's baselines train their own encoder
    from attribute_train images (attribute labels only) for `pixel_epochs x pixel_steps_per_epoch`
    batches, and their encoder features of the evaluation images are stored beside FLAM's.
    """
    c = ctx.config.baselines
    features, m = load_features(ctx)
    train = m["split"] == "attribute_train"
    x, y = features[train], label_matrix(m)[train]
    out = {}
    for name, stem in FEATURE_BASELINES.items():
        if ctx.exists(ctx.run.model_path(stem)):
            continue
        ctx.seed(stem)
        with ctx.strategy.scope():
            model = _baseline_head(name, features.shape[1], c)
            model.compile(optimizer=keras.optimizers.Adam(c.learning_rate))
        metrics = _fit_on_features(ctx, stem, model, x, y, c.batch_size, c.epochs)
        model.fit_prototypes(x, y)
        ctx.save_model(model, ctx.run.model_path(stem))
        out[name] = metrics["loss"][-1] if metrics.get("loss") else float("nan")
    if c.pixel_epochs > 0 and ctx.config.evaluation.compare:
        for name, stem in PIXEL_BASELINES.items():
            if not ctx.exists(pixel_baseline_features_path(ctx, stem)):
                ctx.seed(stem)
                out[name] = _train_pixel_baseline(ctx, name, stem)
    return out


def _train_pixel_baseline(ctx: Context, name: str, stem: str) -> float:
    from flam_tf.models import PixelConcat

    c, e = ctx.config.baselines, ctx.config.extractor
    m = ctx.manifest
    train = m.select(m["split"] == "attribute_train")
    labels = label_matrix(train)
    size = ctx.config.data.image_size
    d = ctx.config.data
    ds = pipeline.labelled_dataset(
        train, labels, size, c.pixel_batch_size, seed=ctx.config.runtime.seed,
        skip_batches=ctx.resume_epoch(stem) * c.pixel_steps_per_epoch,
        max_pixels=d.max_image_pixels,
        decoded=pipeline.decode_cache(train, size, d.decode_cache_mb * 2**20, d.max_image_pixels))
    with ctx.strategy.scope():
        model = PixelConcat(_baseline_head(name, e.feature_dim, c), backbone=e.backbone,
                            pooling=e.pooling, feature_dim=e.feature_dim, image_size=size,
                            weights=e.weights or None)
        total = c.pixel_epochs * c.pixel_steps_per_epoch
        model.compile(optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(e.learning_rate, total, alpha=0.05)))
    callbacks = ctx.callbacks(stem)
    history = distribute.fit(model, ds, epochs=c.pixel_epochs,
                             steps_per_epoch=c.pixel_steps_per_epoch, callbacks=callbacks,
                             verbose=2)
    metrics = ctx.save_history(stem, history, callbacks)
    # Encoder features of the images the evaluation needs (zeros elsewhere), then prototypes.
    needed = np.isin(m["split"], ("attribute_train", "fam_eval", "fir_eval"))
    encoded = np.zeros((len(m), e.feature_dim), np.float32)
    rows = np.nonzero(needed)[0]
    parts = [model.encode(images).numpy()
             for images in pipeline.image_dataset(m.select(needed), size, batch_size=256,
                                                  max_pixels=ctx.config.data.max_image_pixels)]
    encoded[rows] = np.concatenate(parts)
    model.head.fit_prototypes(encoded[m["split"] == "attribute_train"], labels)
    ctx.save_model(model, ctx.run.model_path(stem))
    _save_npz(ctx.output_path(pixel_baseline_features_path(ctx, stem)), feature=encoded)
    return metrics["loss"][-1] if metrics.get("loss") else float("nan")


# ------------------------------------------------------------------------------------------------
# evaluate, export

def stage_evaluate(ctx: Context) -> Dict[str, float]:
    from flam_tf.evaluation import evaluate

    report = evaluate.evaluate_run(ctx)
    fam = report["fam"][FLAM]["all"]
    return {"FLAM all-T@10": fam.get("T@10"), "FLAM all-T@50": fam.get("T@50")}


def stage_export(ctx: Context) -> Dict[str, str]:
    from flam_tf.serving import export

    written = export.export_run(ctx.run.root, output=ctx.run.path("export"))
    return {k: str(v) for k, v in written.items()} if isinstance(written, dict) else {}


STAGE_FUNCTIONS: Dict[str, Callable[[Context], Dict]] = {
    "data": stage_data,
    "extractor": stage_extractor,
    "features": stage_features,
    "embedders": stage_embedders,
    "manipulator": stage_manipulator,
    "baselines": stage_baselines,
    "evaluate": stage_evaluate,
    "export": stage_export,
}
assert tuple(STAGE_FUNCTIONS) == config_lib.STAGES


# What each stage reads from earlier ones (the rest follows transitively).
REQUIRES = {"data": (), "extractor": ("data",), "features": ("extractor",),
            "embedders": ("features",), "manipulator": ("embedders",), "baselines": ("features",),
            "evaluate": ("manipulator", "baselines"), "export": ("manipulator",)}
assert tuple(REQUIRES) == config_lib.STAGES


def check_requirements(ctx: Context, stages) -> None:
    """Raises ValueError, before any work, if a stage needs one that has neither finished in the
    run directory nor been asked for."""
    for stage in stages:
        for needed in REQUIRES[stage]:
            if needed not in stages and not ctx.run.is_done(needed):
                raise ValueError(f"stage {stage} needs the {needed} stage, which has not finished "
                                 f"in {ctx.run.root}; add it to --stages")


# The stages whose fits every task of a multi-worker cluster joins; the chief alone runs the rest.
TRAINING_STAGES = ("extractor", "embedders", "manipulator", "baselines")


def _plan(ctx: Context, stages, force: bool) -> List[str]:
    """The stages to run (in pipeline order), after checking their requirements."""
    check_requirements(ctx, stages)
    return [s for s in config_lib.STAGES if s in stages and (force or not ctx.run.is_done(s))]


def _run_stage(ctx: Context, stage: str) -> float:
    start = time.time()
    ctx.seed(stage)
    info = STAGE_FUNCTIONS[stage](ctx) or {}
    seconds = time.time() - start
    if ctx.cluster.is_chief:
        ctx.run.mark_done(stage, seconds, info=info)
    return seconds


def run_stages(ctx: Context, stages=config_lib.STAGES, force: bool = False) -> Dict[str, float]:
    """Runs `stages` in pipeline order, skipping finished ones unless `force`.

    In a multi-worker cluster the chief makes the plan; a worker runs the TRAINING_STAGES with it
    and, after each stage, waits until the chief has written its outputs.

    Returns:
        {stage: seconds} of every finished stage of the run directory.

    Raises:
        ValueError: a stage needs another that has not run (see REQUIRES).
    """
    plan = ctx.cluster.chief_value("plan", lambda: _plan(ctx, stages, force))
    for stage in config_lib.STAGES:
        if stage not in stages:
            continue
        if stage not in plan:
            logging.info("stage %s: already finished, skipped", stage)
            print(f"== {stage}: finished earlier, skipped", flush=True)
            continue
        print(f"== {stage}", flush=True)
        if ctx.cluster.is_chief:
            seconds = ctx.cluster.chief_value(f"stage {stage}", lambda: _run_stage(ctx, stage))
        else:
            if stage in TRAINING_STAGES:
                _run_stage(ctx, stage)
            seconds = ctx.cluster.chief_value(f"stage {stage}")  # the chief's outputs written
        print(f"== {stage}: done in {seconds:.1f} s", flush=True)
    return ctx.run.timings()
