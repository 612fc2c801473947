"""Command lines for serving: `python -m serving.client`, `python -m serving.dev_server`.

The logic lives in flam_tf/serving/; these modules only parse flags.
"""
