"""The embedders stage: the attribute-specific embedders and dictionaries (Eq. 2) on x."""

from typing import Dict

import keras

from flam_tf import feature_store
from flam_tf.models import AttributeEmbedder
from flam_tf.stages.context import Context
from flam_tf.stages.fits import fit_on_features


def stage_embedders(ctx: Context) -> Dict[str, float]:
    """Trains the attribute-specific embedders (Eq. 2) on attribute_train features (sparse labels)."""
    c = ctx.config.embedder
    features, m = feature_store.load_features(ctx.run), ctx.manifest
    train = m["split"] == "attribute_train"
    x, y = features[train], m.label_matrix()[train]
    with ctx.strategy.scope():
        model = AttributeEmbedder(
            features.shape[1],
            embedding_dim=c.embedding_dim,
            hidden_units=c.hidden_units,
            margin=c.margin,
        )
        model.compile(optimizer=keras.optimizers.Adam(c.learning_rate))
    metrics = fit_on_features(ctx, "embedders", model, x, y, c.batch_size, c.epochs)
    ctx.save_model(model, ctx.run.model_path("embedder"))
    return {k: v[-1] for k, v in metrics.items() if v}
