"""Command-line client of the served FLAM models (TF Serving or the dev server).

    python -m serving.client [--server 127.0.0.1:8500] COMMAND (--image F ... | --feature_npy F)
        [--set color=red ...] [--k 10] [--output out.npy]
        [--contact_sheet out.png --gallery_root DIR] [--index URI [--collection NAME]]

COMMAND: extract, manipulate, describe, search. Errors: one line on stderr, exit code 1.
search --index URI: image -> extractor -> manipulator (served) -> the catalogue index on Milvus
(a .db path or http://host:19530, see `python -m serving.index`) instead of the searcher model.
Flags only: the commands are flam_tf.serving.client_cli.run_cli.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("server", "127.0.0.1:8500", "gRPC address host:port.")
flags.DEFINE_float("timeout_s", 10.0, "Deadline of each call, seconds.")
flags.DEFINE_multi_string("image", [], "Query image file (JPEG/PNG); repeat for a batch.")
flags.DEFINE_string("feature_npy", None, "Query features [B, D] as .npy, instead of --image.")
flags.DEFINE_multi_string(
    "set",
    [],
    "Edit attribute=value (e.g. color=red or color=red,pattern=striped); repeat to chain edits.",
)
flags.DEFINE_integer("k", 10, "Results per query (search).")
flags.DEFINE_string("output", None, "Write the resulting features here as .npy.")
flags.DEFINE_string("contact_sheet", None, "Write a PNG of the search results here.")
flags.DEFINE_string("gallery_root", None, "Folder the gallery ids (image paths) are relative to.")
flags.DEFINE_string(
    "index",
    None,
    "search: a catalogue index on Milvus (.db path or "
    "http://host:19530) instead of the searcher model; pip install -e '.[index]'.",
)
flags.DEFINE_string("collection", None, "The --index collection (default flam_catalog).")
FLAGS = flags.FLAGS


def main(argv):
    from flam_tf.serving import client_cli  # after flag parsing: --help needs no TensorFlow

    if len(argv) != 2:
        print(
            f"error: expected one command, one of {list(client_cli.COMMANDS)}. Received: "
            f"{argv[1:]}",
            file=sys.stderr,
        )
        return 1
    return client_cli.run_cli(
        argv[1],
        FLAGS.server,
        FLAGS.image,
        FLAGS.feature_npy,
        FLAGS.set,
        FLAGS.k,
        FLAGS.output,
        FLAGS.contact_sheet,
        FLAGS.gallery_root,
        FLAGS.timeout_s,
        index=FLAGS.index,
        collection=FLAGS.collection,
    )


if __name__ == "__main__":
    app.run(main)
