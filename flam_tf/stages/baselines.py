"""The baselines stage: Cls-Concat and Emb-Concat on FLAM's x, and (with
--evaluation_compare) the paper's, trained from images with attribute labels only."""

from typing import Dict

import keras
import numpy as np

from flam_tf import config as config_lib
from flam_tf import feature_store, methods
from flam_tf.data import pipeline
from flam_tf.models import ClsConcat, EmbConcat, PixelConcat
from flam_tf.stages.context import Context
from flam_tf.stages.fits import fit_on_features


def _baseline_head(name: str, feature_dim: int, c: config_lib.BaselineConfig):
    return (ClsConcat if name.startswith("Cls") else EmbConcat)(feature_dim, block_dim=c.block_dim)


def stage_baselines(ctx: Context) -> Dict[str, float]:
    """Trains the four concat baselines and fits their class prototypes on attribute_train.

    The "(on x)" heads train on FLAM's features; the paper's baselines train their own encoder
    from attribute_train images (attribute labels only) for `pixel_epochs x pixel_steps_per_epoch`
    batches, and their encoder features of the evaluation images are stored beside FLAM's.
    """
    c = ctx.config.baselines
    features, m = feature_store.load_features(ctx.run), ctx.manifest
    train = m["split"] == "attribute_train"
    x, y = features[train], m.label_matrix()[train]
    out = {}
    for name, stem in methods.FEATURE_BASELINES.items():
        if ctx.exists(ctx.run.model_path(stem)):
            continue
        ctx.seed(stem)
        with ctx.strategy.scope():
            model = _baseline_head(name, features.shape[1], c)
            model.compile(optimizer=keras.optimizers.Adam(c.learning_rate))
        metrics = fit_on_features(ctx, stem, model, x, y, c.batch_size, c.epochs)
        model.fit_prototypes(x, y)
        ctx.save_model(model, ctx.run.model_path(stem))
        out[name] = metrics["loss"][-1] if metrics.get("loss") else float("nan")
    if c.pixel_epochs > 0 and ctx.config.evaluation.compare:
        for name, stem in methods.PIXEL_BASELINES.items():
            if not ctx.exists(ctx.run.pixel_features_path(stem)):
                ctx.seed(stem)
                out[name] = _train_pixel_baseline(ctx, name, stem)
    return out


def _train_pixel_baseline(ctx: Context, name: str, stem: str) -> float:
    c, e = ctx.config.baselines, ctx.config.extractor
    m = ctx.manifest
    train = m.select(m["split"] == "attribute_train")
    labels = train.label_matrix()
    size = ctx.config.data.image_size
    d = ctx.config.data
    ds = pipeline.labelled_dataset(
        train,
        labels,
        size,
        c.pixel_batch_size,
        seed=ctx.config.runtime.seed,
        skip_batches=ctx.resume_epoch(stem) * c.pixel_steps_per_epoch,
        max_pixels=d.max_image_pixels,
        decoded=pipeline.decode_cache(train, size, d.decode_cache_mb * 2**20, d.max_image_pixels),
    )
    with ctx.strategy.scope():
        model = PixelConcat(
            _baseline_head(name, e.feature_dim, c),
            backbone=e.backbone,
            pooling=e.pooling,
            feature_dim=e.feature_dim,
            image_size=size,
            weights=e.weights or None,
        )
        total = c.pixel_epochs * c.pixel_steps_per_epoch
        model.compile(
            optimizer=keras.optimizers.Adam(
                keras.optimizers.schedules.CosineDecay(e.learning_rate, total, alpha=0.05)
            )
        )
    metrics = ctx.fit(stem, model, ds, c.pixel_epochs, c.pixel_steps_per_epoch)
    # Encoder features of the images the evaluation needs (zeros elsewhere), then prototypes.
    needed = np.isin(m["split"], ("attribute_train", "fam_eval", "fir_eval"))
    encoded = np.zeros((len(m), e.feature_dim), np.float32)
    rows = np.nonzero(needed)[0]
    parts = [
        model.encode(images).numpy()
        for images in pipeline.image_dataset(
            m.select(needed), size, batch_size=256, max_pixels=ctx.config.data.max_image_pixels
        )
    ]
    encoded[rows] = np.concatenate(parts)
    model.head.fit_prototypes(encoded[m["split"] == "attribute_train"], labels)
    ctx.save_model(model, ctx.run.model_path(stem))
    feature_store.save_npz(ctx.output_path(ctx.run.pixel_features_path(stem)), feature=encoded)
    return metrics["loss"][-1] if metrics.get("loss") else float("nan")
