"""The manipulator stage: FLAM, and with --evaluation_compare / --evaluation_ablations the
paper's manipulator and its Table 3 variants, trained on every training feature (semi-supervised:
attribute_train labels where known, the frozen embedder's pseudo-labels elsewhere)."""

from typing import Dict

import keras
import numpy as np
from absl import logging

from flam_tf import config as config_lib
from flam_tf import feature_store, methods
from flam_tf.models import FeatureManipulator
from flam_tf.stages.context import Context
from flam_tf.stages.fits import fit_on_features


def manipulator_training_features(ctx: Context):
    """Features of every training image, labelled or not (the semi-supervised point), and their
    attribute_train labels (int32 [N, 3], -1 where unknown; evaluation labels are never read)."""
    features, m = feature_store.load_features(ctx.run), ctx.manifest
    rows = np.isin(m["split"], ("extractor_train", "attribute_train", "unlabelled"))
    labels = np.where((m["split"] == "attribute_train")[:, None], m.label_matrix(), -1)
    return features[rows], labels[rows].astype(np.int32)


def stage_manipulator(ctx: Context) -> Dict[str, float]:
    """Trains FLAM; with --evaluation_compare also FLAM (paper), and with --evaluation_ablations
    FLAM (paper) and the paper's Table 3 variants of it."""
    e = ctx.config.evaluation
    results = {}
    for variant in methods.manipulator_variants(e.compare, e.ablations):
        if ctx.exists(ctx.run.model_path(methods.variant_model_name(variant))):
            continue  # a variant finished before an interruption
        ctx.seed(methods.variant_model_name(variant))  # whether or not earlier variants ran here
        results[variant] = _train_manipulator(ctx, variant)
    return results


def manipulator_settings(config: config_lib.ManipulatorConfig, variant: str) -> Dict:
    """FeatureManipulator keyword arguments of a variant: FLAM takes the config as it is; the
    paper's rows keep its Eq. 3-5 weights, switch off every part of ours (memory G, uniform
    targets, teacher, retrieval and distance terms) and take their Table 3 switches from
    methods.PAPER_SWITCHES."""
    settings = dict(
        generator=config.generator,
        target_sampling=config.target_sampling,
        matching=config.matching,
        adversarial=config.adversarial,
        online_sampling=config.online_sampling,
        adv_weight=config.adv_weight,
        match_weight=config.match_weight,
        cycle_weight=config.cycle_weight,
        teacher_weight=config.teacher_weight,
        retrieval_weight=config.retrieval_weight,
        distance_weight=config.distance_weight,
        retrieval_temperature=config.retrieval_temperature,
        memory_temperature=config.memory_temperature,
        precision=config.precision,
    )
    if variant == methods.FLAM:
        return settings
    matching, online, adversarial = methods.PAPER_SWITCHES[variant]
    settings.update(
        generator="mlp",
        target_sampling="partner",
        matching=matching,
        online_sampling=online,
        adversarial=adversarial,
        teacher_weight=0.0,
        retrieval_weight=0.0,
        distance_weight=0.0,
    )
    return settings


def _train_manipulator(ctx: Context, variant: str) -> float:
    c = ctx.config.manipulator
    x, known = manipulator_training_features(ctx)
    name = methods.variant_model_name(variant)
    logging.info("manipulator %s: %d training features", variant, len(x))
    with ctx.strategy.scope():
        # Frozen inside the manipulator: its optimizer is neither needed nor saved with it.
        embedder = ctx.load_model("embedder", compile=False)
        model = FeatureManipulator(
            embedder,
            x.shape[1],
            embedding_dim=embedder.embedding_dim,
            g_hidden=(c.g_hidden, c.g_hidden),
            d_hidden=(c.d_hidden, c.d_hidden),
            seed=ctx.config.runtime.seed,
            **manipulator_settings(c, variant),
        )
        model.compile(
            g_optimizer=keras.optimizers.Adam(c.g_learning_rate, beta_1=0.5),
            d_optimizer=keras.optimizers.Adam(c.d_learning_rate, beta_1=0.5),
        )
    # Known attribute_train labels where there are any, the frozen embedder's pseudo-labels
    # elsewhere: the classes of the memory's initial means and of the retrieval bank.
    labels = np.where(known >= 0, known, model.pseudo_labels(x))
    model.initialize_memory(x, labels)
    if model.retrieval_weight:
        model.set_retrieval_bank(x, labels)
    metrics = fit_on_features(
        ctx,
        name,
        model,
        x,
        None,
        c.batch_size,
        c.epochs if variant == methods.FLAM else c.paper_epochs,
    )
    ctx.save_model(model, ctx.run.model_path(name))
    return float(metrics["cycle_cosine"][-1]) if metrics.get("cycle_cosine") else float("nan")
