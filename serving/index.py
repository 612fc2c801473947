"""Command line of the catalogue index on Milvus (flam_tf/serving/catalog_index.py).

Flags only: the commands are flam_tf.serving.index_cli.run_cli.

    python -m serving.index build  [--uri catalog.db] [--collection flam_catalog]
        (--run_dir D | --gallery_manifest M.csv [--server 127.0.0.1:8500])
        [--index_type FLAT|HNSW|IVF_FLAT] [--index_params '{"M": 16}'] [--metric COSINE]
        [--overwrite]
    python -m serving.index add    --id ID ... (--image F ... [--server ...] | --feature_npy F)
        [--replace]
    python -m serving.index remove --id ID ...
    python -m serving.index search --feature_npy F [--k 10] [--search_params '{"ef": 512}']
    python -m serving.index info

--uri is a local path ending in .db (Milvus Lite, embedded in the command's process: one process
at a time per file) or http://host:19530 (a Milvus server). Query images with edits go through the
served models: python -m serving.client search --image F --set color=red --index URI.
Needs `pip install -e '.[index]'`. Errors: one line on stderr, exit code 1.
"""

import argparse
import json
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from flam_tf.serving import catalog_index as ci  # noqa: E402  (numpy only, no TensorFlow)
from flam_tf.serving import index_cli  # noqa: E402


def _json_object(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"M\": 32}'")
    return value


def parser():
    p = argparse.ArgumentParser(prog="python -m serving.index", description=__doc__.split("\n")[0])
    p.add_argument("command", choices=index_cli.COMMANDS)
    p.add_argument(
        "--uri",
        default=ci.DEFAULT_URI,
        help="Local .db path (Milvus Lite) or http://host:19530 (Milvus server).",
    )
    p.add_argument("--collection", default=ci.DEFAULT_COLLECTION)
    p.add_argument("--token", default="", help="A Milvus server's user:password or API token.")
    p.add_argument("--run_dir", help="build: the run whose features/fam_gallery.npz to index.")
    p.add_argument(
        "--gallery_manifest", help="build: manifest.csv of gallery images, extracted by --server."
    )
    p.add_argument(
        "--server",
        default="127.0.0.1:8500",
        help="gRPC address of TF Serving (or the dev server) for images.",
    )
    p.add_argument(
        "--id",
        dest="ids",
        action="append",
        default=[],
        help="add/remove: a gallery id (image path); repeat for several.",
    )
    p.add_argument(
        "--image",
        dest="images",
        action="append",
        default=[],
        help="add: an image file to extract; repeat, one per --id.",
    )
    p.add_argument("--feature_npy", help="add/search: features [N, D] as .npy.")
    p.add_argument("--k", type=int, default=10, help="search: results per query.")
    p.add_argument(
        "--index_type",
        default="FLAT",
        type=str.upper,
        choices=list(ci.INDEX_TYPES),
        help="build: FLAT (exact), HNSW or IVF_FLAT.",
    )
    p.add_argument(
        "--index_params",
        type=_json_object,
        help='build: index build params as JSON, e.g. \'{"M": 16, '
        '"efConstruction": 200}\' or \'{"nlist": 1024}\'.',
    )
    p.add_argument(
        "--search_params",
        type=_json_object,
        help="search params as JSON, e.g. '{\"ef\": 512}' or '{\"nprobe\": 64}'.",
    )
    p.add_argument("--metric", default="COSINE", type=str.upper, choices=list(ci.METRICS))
    p.add_argument("--overwrite", action="store_true", help="build: replace the collection.")
    p.add_argument(
        "--replace", action="store_true", help="add: give ids already present the new features."
    )
    p.add_argument("--timeout_s", type=float, default=30.0)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # errors come back as one line
    # Milvus Lite's embedded gRPC server (in this process) logs a traceback for each RPC it does
    # not implement (AllocTimestamp, which pymilvus tries while waiting for an index build).
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    return index_cli.run_cli(
        args.command,
        uri=args.uri,
        collection=args.collection,
        run_dir=args.run_dir,
        gallery_manifest=args.gallery_manifest,
        server=args.server,
        ids=args.ids,
        images=args.images,
        feature_npy=args.feature_npy,
        k=args.k,
        index_type=args.index_type,
        index_params=args.index_params,
        search_params=args.search_params,
        metric=args.metric,
        overwrite=args.overwrite,
        replace=args.replace,
        token=args.token,
        timeout_s=args.timeout_s,
    )


if __name__ == "__main__":
    sys.exit(main())
