"""The command line behind `python -m serving.client`: one model call chain per command.

    extract | manipulate | describe | search   on query images or a .npy of features

Every model call of a command goes to one model version (`FlamClient.call_consistent`); `search`
with `index` asks a catalogue index on Milvus (`catalog_index.py`) instead of the searcher model.
Results are printed as tables; errors as one line on stderr, exit code 1.
"""

import os
import sys
from typing import List, Optional, Sequence

import numpy as np

from flam_tf import vocabulary
from flam_tf.serving import catalog_index
from flam_tf.serving import signatures as sig
from flam_tf.serving.cli_io import load_features, print_search_results, read_files
from flam_tf.serving.client import FlamClient, FlamServingError, parse_edits

COMMANDS = ("extract", "manipulate", "describe", "search")


def _contact_sheet(
    path: str,
    queries: List[str],
    ids: np.ndarray,
    scores: np.ndarray,
    gallery_root: str,
    thumb: int = 128,
) -> None:
    """One row per query: the query image, then its results captioned with rank and score."""
    from PIL import Image, ImageDraw  # only for --contact_sheet

    rows, cols = ids.shape[0], ids.shape[1] + 1
    sheet = Image.new("RGB", (cols * thumb, rows * (thumb + 14)), "white")
    draw = ImageDraw.Draw(sheet)

    def paste(image_path, row, col, caption):
        x, y = col * thumb, row * (thumb + 14)
        try:
            with Image.open(image_path) as image:
                sheet.paste(image.convert("RGB").resize((thumb, thumb)), (x, y))
        except OSError:
            draw.rectangle([x, y, x + thumb - 1, y + thumb - 1], outline="red")
        draw.text((x + 2, y + thumb), caption, fill="black")

    for r in range(rows):
        paste(queries[r] if r < len(queries) else "", r, 0, "query")
        for c in range(ids.shape[1]):
            paste(os.path.join(gallery_root, ids[r, c]), r, c + 1, f"#{c + 1} {scores[r, c]:.3f}")
    sheet.save(path)


def run_cli(
    command: str,
    server: str = "127.0.0.1:8500",
    images: Sequence[str] = (),
    feature_npy: Optional[str] = None,
    sets: Sequence[str] = (),
    k: int = 10,
    output: Optional[str] = None,
    contact_sheet: Optional[str] = None,
    gallery_root: Optional[str] = None,
    timeout_s: float = 10.0,
    out=None,
    index: Optional[str] = None,
    collection: Optional[str] = None,
) -> int:
    """Runs one client command; prints tables to `out` (stdout) and errors as one line on stderr.

    Args:
        command: one of COMMANDS.
        images: query image files (JPEG/PNG), extracted by the server; or
        feature_npy: a .npy of query features [B, D] instead of images.
        sets: edits "attribute=value" (comma-separated or repeated), applied in order.
        k: results per query (search).
        output: .npy file for the resulting features (extract, manipulate).
        contact_sheet: PNG file for a picture of the search results (needs gallery_root).
        gallery_root: folder the gallery ids (image paths) are relative to.
        index: search a catalogue index on Milvus (a .db path or http://host:19530; see
            flam_tf.serving.catalog_index) instead of the `searcher` model.
        collection: the index's collection (default catalog_index.DEFAULT_COLLECTION).

    Returns:
        The exit code: 0, or 1 after printing the error.
    """
    out = out or sys.stdout
    try:
        if command not in COMMANDS:
            raise ValueError(
                f"Unknown command. Received: {command!r}; expected one of {list(COMMANDS)}"
            )
        if bool(images) == bool(feature_npy):
            raise ValueError("Give query images (--image) or features (--feature_npy), not both")
        if command == "manipulate" and not sets:
            raise ValueError("manipulate needs at least one --set attribute=value")
        if contact_sheet and not (gallery_root and images):
            raise ValueError("--contact_sheet needs --gallery_root and query --image files")
        if index and command != "search":
            raise ValueError(f"--index is for search only. Received: command={command!r}")
        catalog = None
        if index:  # opened first: a missing extra or collection fails before any model call
            catalog = catalog_index.CatalogIndex(
                index, collection or catalog_index.DEFAULT_COLLECTION, timeout_s=timeout_s
            )
        edits = parse_edits(list(sets)) if sets else None
        data = read_files(images)
        given = load_features(feature_npy) if feature_npy else None
        with FlamClient(server, timeout_s=timeout_s) as client:

            def run(version):  # every model call of the command on one version
                features = client.extract(data, version=version) if data else given
                if edits:
                    features = client.manipulate(features, *edits, version=version)
                if command == "describe":
                    return features, client.describe(features, version=version)
                if command == "search" and catalog is not None:
                    return features, catalog.search(features, k)
                if command == "search":
                    return features, client.search(features, k, version=version)
                return features, None

            features, result = client.call_consistent(run)
            names = list(images) or [f"row{i}" for i in range(len(features))]
            if command in ("extract", "manipulate"):
                if output:
                    np.save(output, features)
                print(f"{'query':<30} {'dim':>4} {'norm':>7}  first values", file=out)
                for name, f in zip(names, features):
                    head = " ".join(f"{x:+.3f}" for x in f[:4])
                    print(f"{name:<30} {len(f):>4} {np.linalg.norm(f):7.4f}  {head}", file=out)
            elif command == "describe":
                described = result
                attrs = vocabulary.ATTRIBUTE_TYPES
                print(f"{'query':<30} " + " ".join(f"{a:<22}" for a in attrs), file=out)
                for i, name in enumerate(names):
                    cells = [
                        f"{described[a][i]} ({described[a + sig.SCORE_SUFFIX][i]:.3f})"
                        for a in attrs
                    ]
                    print(f"{name:<30} " + " ".join(f"{c:<22}" for c in cells), file=out)
            else:
                ids, scores = result
                print_search_results(names, ids, scores, out)
                if contact_sheet:
                    _contact_sheet(contact_sheet, list(images), ids, scores, gallery_root)
                    print(f"contact sheet: {contact_sheet}", file=out)
        return 0
    except (FlamServingError, ValueError, OSError) as e:
        message = " ".join(str(e).split())  # one line, even for multi-line TF messages
        print(f"error: {message}", file=sys.stderr)
        return 1
