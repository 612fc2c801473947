"""Command lines for serving, thin entry points over flam_tf/serving/ (which holds the logic):

    python -m serving.client        -> flam_tf.serving.client_cli.run_cli
    python -m serving.dev_server    -> flam_tf.serving.dev_server.serve
    python -m serving.index         -> flam_tf.serving.index_cli.run_cli
    python -m serving.check_export  -> flam_tf.serving.dev_server + flam_tf.serving.client

These modules only parse flags (check_export also runs its checks).
"""
