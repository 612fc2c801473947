"""`python -m export`: a thin entry point that parses flags and calls
`flam_tf.serving.export.export_run` (the export itself lives in flam_tf/serving/)."""
