"""The stages that build a run's models, each reading what earlier ones left in the run
directory (flam_tf.driver runs them in order, then the evaluation and the export):

    data (data.py)              D/data/manifest.csv: the synthetic benchmark or the real sources
    extractor (extractor.py)    image -> feature x; features: x of every image (feature store)
    embedders (embedders.py)    x -> e_shape, e_color, e_pattern and the dictionaries (Eq. 2)
    manipulator (manipulator.py)  G(x, e) and D, the GAN (Eq. 3-5), on every training feature
    baselines (baselines.py)    Cls-Concat / Emb-Concat, on x and from images

`context.Context` is what every stage gets; `fits.fit_on_features` is how the models trained on
stored features are fitted.
"""

from flam_tf.stages.baselines import stage_baselines
from flam_tf.stages.context import Context
from flam_tf.stages.data import stage_data
from flam_tf.stages.embedders import stage_embedders
from flam_tf.stages.extractor import stage_extractor, stage_features
from flam_tf.stages.manipulator import manipulator_settings, stage_manipulator

# The stages whose fits every task of a multi-worker cluster joins; the chief alone runs the rest.
TRAINING_STAGES = ("extractor", "embedders", "manipulator", "baselines")

__all__ = [
    "Context",
    "TRAINING_STAGES",
    "manipulator_settings",
    "stage_baselines",
    "stage_data",
    "stage_embedders",
    "stage_extractor",
    "stage_features",
    "stage_manipulator",
]
