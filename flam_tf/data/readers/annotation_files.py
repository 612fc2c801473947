"""Reading the annotation files of published data sets: checked paths, lines with their
`file: line` place, fields and integers, and image paths kept inside the data directory.

Every reader reads text the same way: UTF-8 with or without a byte-order mark, LF, CRLF or CR line
ends; an error names the file and line.
"""

import glob
import os
import posixpath
import re
from typing import Iterator, List, Sequence, Tuple

from flam_tf.data.manifest import ManifestError


def require_file(path: str) -> str:
    """Returns `path`; raises FileNotFoundError naming it if it is not a file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Data set file not found: {path}")
    return path


def expand_files(data_dir: str, names: Sequence[str]) -> List[str]:
    """Resolves file names or glob patterns relative to `data_dir` into existing files.

    Raises:
        FileNotFoundError: a name that does not exist, or a pattern that matches nothing.
    """
    files = []
    for name in names:
        full = os.path.join(data_dir, name)
        if glob.has_magic(name):
            matches = sorted(glob.glob(full))
            if not matches:
                raise FileNotFoundError(f"No data set file matches {full}")
            files.extend(matches)
        else:
            files.append(require_file(full))
    return files


def iter_lines(path: str, first_line: int = 1) -> Iterator[Tuple[str, str]]:
    """Yields (`"<path>: line <n>"`, the line stripped) for the non-blank lines of `path`.

    UTF-8 with or without a byte-order mark; LF, CRLF or CR line ends.

    Args:
        path: a text file (FileNotFoundError naming it if missing).
        first_line: 1-based number of the first line to yield (to skip headers).

    Raises:
        ManifestError: a line that is not UTF-8, naming the file and line.
    """
    with open(require_file(path), "rb") as f:
        data = f.read()
    for number, raw in enumerate(data.splitlines(), start=1):
        where = f"{path}: line {number}"
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
        except UnicodeDecodeError as e:
            raise ManifestError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        if number >= first_line and line:
            yield where, line


def read_fields(path: str, first_line: int = 1) -> Iterator[Tuple[str, List[str]]]:
    """Yields (`"<path>: line <n>"`, whitespace-split fields) for the non-blank lines of `path`.

    Same decoding rules and errors as `iter_lines` (BOM and CRLF tolerated).

    Args:
        path: a text file (FileNotFoundError if missing).
        first_line: 1-based number of the first line to yield (to skip headers).
    """
    for where, line in iter_lines(path, first_line):
        yield where, line.split()


def expect_fields(fields: Sequence[str], count: int, where: str, layout: str) -> None:
    """Raises ManifestError at `where` unless there are exactly `count` fields."""
    if len(fields) != count:
        raise ManifestError(
            f"{where}: expected {count} fields ({layout}), got {len(fields)}: {' '.join(fields)!r}"
        )


def safe_relpath(path: str, where: str, base: str = "") -> str:
    """Normalizes an image path from a source file to a `/`-separated path inside the data dir.

    Args:
        path: the path as written in the source file.
        where: its file and line, for the error message.
        base: the directory (relative to the data dir) the source's paths are relative to, e.g.
            "Images"; the path is joined to it *before* normalizing, so `..` that stays inside
            the data dir is accepted (`Male/../../Images/Male/x.jpg` under "Images" is
            `Images/Male/x.jpg`).

    Raises:
        ManifestError: at `where`, for an absolute path or one whose `..` leaves the data dir.
    """
    unix = path.replace("\\", "/")
    if unix.startswith("/") or re.match(r"^[A-Za-z]:", unix):
        raise ManifestError(
            f"{where}: absolute image path {path!r}; expected a path relative to the data directory"
        )
    normalized = posixpath.normpath(posixpath.join(base, unix) if base else unix)
    if normalized == ".." or normalized.startswith("../"):
        raise ManifestError(f"{where}: image path {path!r} escapes the data directory")
    return normalized


def parse_ints(line: str, where: str, layout: str) -> List[int]:
    """The whitespace-separated integers of `line`; ManifestError at `where` otherwise."""
    try:
        return [int(x) for x in line.split()]
    except ValueError:
        raise ManifestError(f"{where}: expected integers ({layout}), got {line!r}") from None
