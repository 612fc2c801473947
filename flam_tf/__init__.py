"""flam_tf: feature-level attribute manipulation (FLAM) for fashion image retrieval.

Layout (where a feature flows, in order):
  data/        manifests, the embedded synthetic benchmark, real data set readers, tf.data input
  models/      FeatureExtractor (image -> feature), AttributeEmbedder (feature -> e_a),
               the query feature manipulator (GAN), Cls/Emb-Concat baselines
  losses.py    triplet loss (tensorflow-addons semantics) and Eq. 2-5
  train.py     `python -m flam_tf.train`: stages data -> ... -> export
  evaluation/  FIR recall, FAM top-k accuracy, twin recall, report and figures
  serving/     SavedModel export, signature names, gRPC client and dev PredictionService server
"""

__version__ = "0.1.0"
