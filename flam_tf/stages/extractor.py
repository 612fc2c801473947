"""The extractor stage (image -> feature x) and the features stage (x of every image)."""

from typing import Dict

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from flam_tf import feature_store, vocabulary
from flam_tf.data import pipeline
from flam_tf.models import FeatureExtractor
from flam_tf.stages.context import Context


def stage_extractor(ctx: Context) -> Dict[str, float]:
    """Trains the FeatureExtractor (CE over the top instance ids + triplet) on extractor_train."""
    c = ctx.config.extractor
    train = ctx.manifest.split("extractor_train")
    d = ctx.config.data
    ds, info = pipeline.pk_dataset(
        train,
        d.image_size,
        c.instances_per_batch,
        c.images_per_instance,
        c.num_ce_classes,
        seed=ctx.config.runtime.seed,
        skip_batches=ctx.resume_epoch("extractor") * c.steps_per_epoch,
        max_pixels=d.max_image_pixels,
        decoded=pipeline.decode_cache(
            train, d.image_size, d.decode_cache_mb * 2**20, d.max_image_pixels
        ),
    )
    logging.info("extractor: %s", info)
    attribute_weight = c.attribute_weight
    if attribute_weight:
        # Ours: the attribute_train images and their labels as a second stream beside the PK
        # batches (the same labels the embedders train on; never an evaluation label).
        labelled = ctx.manifest.split("attribute_train")
        labels = labelled.label_matrix()
        known = (labels >= 0).any(axis=1)
        if not known.any():
            logging.warning(
                "extractor: attribute_weight=%s but attribute_train has no labelled "
                "image; training on instance ids only",
                attribute_weight,
            )
            attribute_weight = 0.0
        else:
            labelled, labels = labelled.select(known), labels[known]
            attributes = pipeline.labelled_dataset(
                labelled,
                labels,
                d.image_size,
                c.attribute_batch_size,
                seed=ctx.config.runtime.seed + 3,
                skip_batches=ctx.resume_epoch("extractor") * c.steps_per_epoch,
                max_pixels=d.max_image_pixels,
                decoded=pipeline.decode_cache(
                    labelled, d.image_size, d.decode_cache_mb * 2**20, d.max_image_pixels
                ),
            )
            ds = tf.data.Dataset.zip((ds, attributes))
            logging.info(
                "extractor: attribute term on %d labelled attribute_train images", len(labelled)
            )
    with ctx.strategy.scope():
        model = FeatureExtractor(
            backbone=c.backbone,
            pooling=c.pooling,
            feature_dim=c.feature_dim,
            image_size=ctx.config.data.image_size,
            num_ce_classes=info["num_ce_classes"],
            margin=c.margin,
            weights=c.weights or None,
            attribute_weight=attribute_weight,
            attribute_classes=[vocabulary.NUM_CLASSES[a] for a in vocabulary.ATTRIBUTE_TYPES],
        )
        total = c.epochs * c.steps_per_epoch
        schedule = keras.optimizers.schedules.CosineDecay(c.learning_rate, total, alpha=0.05)
        model.compile(optimizer=keras.optimizers.Adam(schedule))
    metrics = ctx.fit("extractor", model, ds, c.epochs, c.steps_per_epoch)
    ctx.save_model(model, ctx.run.model_path("extractor"))
    return {k: v[-1] for k, v in metrics.items() if v}


def stage_features(ctx: Context) -> Dict[str, int]:
    """Extracts one feature per image into D/features/features.npz, plus fam_gallery.npz."""
    extractor = ctx.load_model("extractor")
    m = ctx.manifest
    features = []
    ds = pipeline.image_dataset(
        m, ctx.config.data.image_size, batch_size=256, max_pixels=ctx.config.data.max_image_pixels
    )
    progress = keras.utils.Progbar(len(m), unit_name="image", interval=10.0)
    for images in ds:
        features.append(extractor(images, training=False).numpy())
        progress.add(len(features[-1]))
    features = np.concatenate(features).astype(np.float32)
    fam_gallery = feature_store.write_features(ctx.run, m, features)
    return {
        "num_features": int(len(features)),
        "feature_dim": int(features.shape[1]),
        "fam_gallery": fam_gallery,
    }
