"""`python -m export`: SavedModel export of a training run for TF Serving (see flam_tf.serving.export)."""
