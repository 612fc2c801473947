"""The command line behind `python -m serving.index`: build, change and query a catalogue index.

    build | add | remove | search | info

Results are printed to stdout; errors as one line on stderr, exit code 1. TensorFlow is imported
only by the commands that need it: build --run_dir (`export.gallery_from_npz`), and those that
extract images through the served models (build --gallery_manifest, add --image: `FlamClient`).
"""

import sys
from typing import Dict, Optional, Sequence

import numpy as np

from flam_tf.serving.catalog_index import (
    DEFAULT_COLLECTION,
    DEFAULT_URI,
    CatalogIndex,
    CatalogIndexError,
)
from flam_tf.serving.cli_io import load_features, print_search_results, read_files

COMMANDS = ("build", "add", "remove", "search", "info")


def run_cli(
    command: str,
    uri: str = DEFAULT_URI,
    collection: str = DEFAULT_COLLECTION,
    run_dir: Optional[str] = None,
    gallery_manifest: Optional[str] = None,
    server: str = "127.0.0.1:8500",
    ids: Sequence[str] = (),
    images: Sequence[str] = (),
    feature_npy: Optional[str] = None,
    k: int = 10,
    index_type: str = "FLAT",
    index_params: Optional[Dict] = None,
    search_params: Optional[Dict] = None,
    metric: str = "COSINE",
    overwrite: bool = False,
    replace: bool = False,
    token: str = "",
    timeout_s: float = 30.0,
    out=None,
) -> int:
    """Runs one index command; prints results to `out` (stdout), errors as one line on stderr.

    Commands:
        build   a collection from --run_dir's gallery or --gallery_manifest (through --server's
                extractor); --index_type, --index_params, --metric, --overwrite.
        add     --id items with features from --image (through --server) or --feature_npy.
        remove  --id items.
        search  --feature_npy queries (for images and edits: python -m serving.client search
                --index URI).
        info    the collection's size, width and index.

    Returns:
        The exit code: 0, or 1 after printing the error.
    """
    out = out or sys.stdout
    try:
        if command not in COMMANDS:
            raise CatalogIndexError(
                f"Unknown command. Received: {command!r}; expected one of {list(COMMANDS)}"
            )
        common = {"search_params": search_params, "token": token, "timeout_s": timeout_s}
        if command == "build":
            if bool(run_dir) == bool(gallery_manifest):
                raise CatalogIndexError("build needs --run_dir or --gallery_manifest (one)")
            build = dict(
                common,
                collection=collection,
                index_type=index_type,
                index_params=index_params,
                metric=metric,
                overwrite=overwrite,
            )
            if run_dir:
                index = CatalogIndex.from_run(run_dir, uri, **build)
            else:
                with _flam_client(server, timeout_s) as client:
                    index = CatalogIndex.from_manifest(gallery_manifest, client, uri, **build)
            with index:
                _print_info(index.info(), out)
            return 0
        with CatalogIndex(uri, collection, **common) as index:
            if command == "info":
                _print_info(index.info(), out)
            elif command == "remove":
                if not ids:
                    raise CatalogIndexError("remove needs at least one --id")
                print(
                    f"removed {index.remove(ids)} item(s); {len(index)} in {collection!r}", file=out
                )
            elif command == "add":
                features = _query_features(images, feature_npy, server, timeout_s)
                if len(ids) != len(features):
                    raise CatalogIndexError(
                        f"add needs one --id per feature row or --image. "
                        f"Received {len(ids)} ids for {len(features)} rows"
                    )
                print(
                    f"added {index.add(ids, features, replace=replace)} item(s); "
                    f"{len(index)} in {collection!r}",
                    file=out,
                )
            else:
                if images or not feature_npy:
                    raise CatalogIndexError(
                        "search takes --feature_npy; for query images and "
                        "edits use: python -m serving.client search --index "
                        f"{uri} --image F [--set attribute=value]"
                    )
                queries = _query_features((), feature_npy, server, timeout_s)
                found, scores = index.search(queries, k)
                print_search_results([f"row{i}" for i in range(len(queries))], found, scores, out)
        return 0
    except Exception as e:
        if not isinstance(e, _reported_errors()):
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1


def _reported_errors() -> tuple:
    """The errors `run_cli` prints as one line: bad input, files, the serving client's."""
    errors = (ValueError, OSError)  # CatalogIndexError and MissingExtraError are ValueErrors
    if "flam_tf.serving.client" in sys.modules:  # imported when a command used the server
        errors += (sys.modules["flam_tf.serving.client"].FlamServingError,)
    return errors


def _print_info(info: Dict[str, object], out) -> None:
    for key, value in info.items():
        print(f"{key:<14} {value}", file=out)


def _flam_client(server: str, timeout_s: float):
    from flam_tf.serving.client import FlamClient  # imports TensorFlow: only for the server

    return FlamClient(server, timeout_s=timeout_s)


def _query_features(
    images: Sequence[str], feature_npy: Optional[str], server: str, timeout_s: float
) -> np.ndarray:
    if bool(images) == bool(feature_npy):
        raise CatalogIndexError("Give images (--image) or features (--feature_npy), not both")
    if feature_npy:
        return load_features(feature_npy)
    data = read_files(images)
    with _flam_client(server, timeout_s) as client:
        return client.extract(data)
