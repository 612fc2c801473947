"""Local TF Serving-compatible gRPC server, for development and tests (flam_tf.serving.dev_server).

    python -m serving.dev_server --model_config_file E/models.config [--port 8500]
        [--host 127.0.0.1] [--max_workers 8] [--max_request_mb 64] [--grace_s 10]

The port is bound before the models load (a taken port fails at once). On SIGINT / SIGTERM the
server refuses new requests and lets in-flight ones finish within --grace_s seconds (a second
signal cancels them), then exits 0. Flags only: the server is flam_tf.serving.dev_server.serve.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

flags.DEFINE_string("model_config_file", None, "models.config (text-format ModelServerConfig).")
flags.DEFINE_string("host", "127.0.0.1", "Address to bind (loopback by default).")
flags.DEFINE_integer("port", 8500, "gRPC port (0: any free port).")
flags.DEFINE_integer("max_workers", 8, "Threads serving concurrent requests.")
flags.DEFINE_float(
    "max_request_mb",
    64,
    "Largest request accepted, MiB; also the largest tensor the inputs of one request may declare.",
)
flags.DEFINE_float(
    "grace_s",
    10.0,
    "On SIGINT / SIGTERM, seconds in-flight requests get to finish before they are cancelled.",
)
flags.mark_flag_as_required("model_config_file")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from flam_tf.serving import dev_server  # after flag parsing: --help needs no TensorFlow

    logging.set_verbosity(logging.INFO)
    try:
        dev_server.serve(
            FLAGS.model_config_file,
            FLAGS.host,
            FLAGS.port,
            FLAGS.max_workers,
            FLAGS.max_request_mb,
            grace_s=FLAGS.grace_s,
        )
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
