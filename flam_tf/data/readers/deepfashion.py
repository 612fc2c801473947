"""DeepFashion In-shop and Consumer-to-shop retrieval benchmarks -> manifest rows (FIR protocols).

Both read `list_eval_partition.txt` in `data_dir/Eval/` (the release layout: mmfashion
docs/dataset/IN_SHOP_DATASET.md and CONSUMER_TO_SHOP_DATASET.md; mmpretrain's InShop dataset,
`ann_file='Eval/list_eval_partition.txt'`, `data_prefix='Img'`) or in `data_dir`: a count line, a
header line, then one entry per line (UTF-8 with or without BOM, LF or CRLF). Image paths in it
start with `img/`; they are found under `data_dir/Img/` (the release: `Img/img.zip` unzipped in
place gives `Img/img/...`) or `data_dir/` (`data_dir/img/...`), whichever holds `img/`; manifest
paths are relative to `data_dir` either way (`Img/img/...` or `img/...`).

In-shop (`<image> <item_id> <train|query|gallery>`):
  train -> extractor_train; query -> fir_eval, role inshop_query; gallery -> fir_eval, role
  inshop_gallery. Domain shop. Attribute labels are left missing: the in-shop set serves instance
  retrieval, and its optional attribute files (list_attr_*.txt) are not read.
Consumer-to-shop (`<consumer image> <shop image> <item_id> <train|val|test>`):
  train pairs -> extractor_train (consumer image domain street, shop image domain shop); val and
  test pairs -> fir_eval, consumer images role c2s_query, shop images role c2s_gallery. An image
  in several pairs is one row.
"""

import os
from typing import Iterator, List, Tuple

from flam_tf.data.manifest import ManifestError
from flam_tf.data.readers import annotation_files, common

INSHOP_STATUS = {  # status word -> (split, role)
    "train": ("extractor_train", ""),
    "query": ("fir_eval", "inshop_query"),
    "gallery": ("fir_eval", "inshop_gallery"),
}
C2S_STATUS = {  # status word -> (split, consumer role, shop role)
    "train": ("extractor_train", "", ""),
    "val": ("fir_eval", "c2s_query", "c2s_gallery"),
    "test": ("fir_eval", "c2s_query", "c2s_gallery"),
}


PARTITION_CANDIDATES = (os.path.join("Eval", "list_eval_partition.txt"), "list_eval_partition.txt")
IMAGE_ROOTS = ("", "Img")  # where `img/...` paths are looked up, relative to data_dir


def partition_file(data_dir: str) -> str:
    """Returns the path of list_eval_partition.txt in `data_dir/Eval` or `data_dir`.

    Raises:
        FileNotFoundError: neither exists; the message names both paths.
    """
    candidates = [os.path.join(data_dir, c) for c in PARTITION_CANDIDATES]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"Data set file not found: looked for {' and '.join(candidates)}")


def image_root(data_dir: str) -> str:
    """The directory under `data_dir` ("" or "Img") that holds the `img/` folder; "" if none."""
    for root in IMAGE_ROOTS:
        if os.path.isdir(os.path.join(data_dir, root, "img")):
            return root
    return ""


def image_hint(data_dir: str) -> str:
    """The places an `img/...` path is looked up, for the "no images read" error."""
    return (
        "Looked for the listed img/... paths under "
        + " and ".join(
            os.path.join(data_dir, r, "img") + "/" if r else os.path.join(data_dir, "img") + "/"
            for r in IMAGE_ROOTS
        )
        + " (unzip Img/img.zip in place)."
    )


def read_partition(
    path: str, num_fields: int, layout: str, statuses
) -> Iterator[Tuple[str, List[str]]]:
    """Yields (where, fields) of the entries of a DeepFashion list file, checked.

    Raises:
        ManifestError: a bad count line, a wrong field count, an unknown status word, or an entry
            count that differs from the count line (a truncated file).
    """
    lines = annotation_files.iter_lines(path)
    where, first = next(lines, (f"{path}: line 1", ""))
    if not first.isdigit():
        raise ManifestError(f"{where}: expected the number of entries, got {first!r}")
    next(lines, None)  # the header line
    entries = 0
    for where, line in lines:
        fields = line.split()
        annotation_files.expect_fields(fields, num_fields, where, layout)
        if fields[-1] not in statuses:
            raise ManifestError(
                f"{where}: unknown evaluation status {fields[-1]!r}; expected one "
                f"of {list(statuses)}"
            )
        entries += 1
        yield where, fields
    if entries != int(first):
        raise ManifestError(f"{path}: line 1: declares {first} entries but the file has {entries}")


def image_path(root: str, image: str, where: str) -> str:
    """The manifest path (relative to data_dir) of `image` from the partition file."""
    return annotation_files.safe_relpath(image, where, base=root)


def read_deepfashion_inshop(data_dir: str, check_images: bool = True):
    """Reads the In-shop Clothes Retrieval benchmark.

    Args:
        data_dir: the benchmark's directory (holding Eval/list_eval_partition.txt and Img/img/,
            as released, or list_eval_partition.txt and img/).
        check_images: skip (and count) entries whose image file does not exist.

    Returns:
        (rows, stats): manifest row dicts, paths relative to `data_dir`, and a `ReadStats`.

    Raises:
        FileNotFoundError: list_eval_partition.txt is missing.
        ManifestError: a malformed line, unknown status or unsafe path, naming file and line.
    """
    stats = common.ReadStats("deepfashion_inshop")
    rows = common.RowSet(data_dir, stats, check_images)
    layout = "<image> <item_id> <train|query|gallery>"
    root = image_root(data_dir)
    for where, (image, item_id, status) in read_partition(
        partition_file(data_dir), 3, layout, INSHOP_STATUS
    ):
        split, role = INSHOP_STATUS[status]
        rows.add(
            common.make_row(image_path(root, image, where), item_id, "shop", split, role), where
        )
    stats.hint = image_hint(data_dir)
    out = list(rows.rows.values())
    common.check_instances_disjoint(out, stats.source)
    stats.finish(out)
    return out, stats


def read_deepfashion_c2s(data_dir: str, check_images: bool = True):
    """Reads the Consumer-to-shop Clothes Retrieval benchmark.

    Args:
        data_dir: the benchmark's directory (holding Eval/list_eval_partition.txt and Img/img/,
            as released, or list_eval_partition.txt and img/).
        check_images: skip (and count) images whose file does not exist.

    Returns:
        (rows, stats): manifest row dicts (one per distinct image), paths relative to `data_dir`,
        and a `ReadStats` whose `merged` counts images repeated across pairs.

    Raises:
        FileNotFoundError: list_eval_partition.txt is missing.
        ManifestError: a malformed line, unknown status, unsafe path, or an image listed with two
            different items, domains or splits, naming file and line.
    """
    stats = common.ReadStats("deepfashion_c2s")
    rows = common.RowSet(data_dir, stats, check_images)
    layout = "<consumer image> <shop image> <item_id> <train|val|test>"
    root = image_root(data_dir)
    for where, (consumer, shop, item_id, status) in read_partition(
        partition_file(data_dir), 4, layout, C2S_STATUS
    ):
        split, consumer_role, shop_role = C2S_STATUS[status]
        rows.add(
            common.make_row(
                image_path(root, consumer, where), item_id, "street", split, consumer_role
            ),
            where,
        )
        rows.add(
            common.make_row(image_path(root, shop, where), item_id, "shop", split, shop_role), where
        )
    stats.hint = image_hint(data_dir)
    out = list(rows.rows.values())
    common.check_instances_disjoint(out, stats.source)
    stats.finish(out)
    return out, stats
