"""What every benchmark script shares: timing, collected results, machine info, markdown blocks.

Imports only the standard library and numpy at module level (TensorFlow and Keras are imported
inside `machine_info`), so the report writers and tests/test_docs.py can use it without loading
TensorFlow.

Method of the timings: the machine may be shared with other jobs, so every figure is the median
of several runs, and compared candidates run in interleaved rounds (A, B, C, A, B, C, ... with the
order rotated each round); a ratio is the median of the per-round ratios, always a speed ratio
(> 1: faster than what it is compared with).
"""

import os
import platform
import statistics
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Results:
    """Collects measurements as dicts (the objects of results.json's `measurements`)."""

    def __init__(self, items=None):
        self.items = list(items or [])

    def add(self, section, name, unit, values, ratio=None, ratio_to=None, note="", **extra):
        """Records median, min, max and count of `values` (and prints them); returns the dict."""
        values = [float(v) for v in values]
        item = {
            "section": section,
            "name": name,
            "unit": unit,
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "runs": len(values),
        }
        if ratio is not None:
            item["ratio"] = float(ratio)
            item["ratio_to"] = ratio_to
        item.update(extra)
        if note:
            item["note"] = note
        self.items.append(item)
        shown = (
            f"{item['median']:.4g} {unit} (min {item['min']:.4g}, max {item['max']:.4g}, "
            f"n={item['runs']})"
        )
        if ratio is not None:
            shown += f"  x{ratio:.3g} vs {ratio_to}"
        print(f"  {name:<48} {shown}", flush=True)
        return item

    def get(self, name):
        """The measurement called `name`, or None."""
        return next((i for i in self.items if i["name"] == name), None)

    def value(self, name, key="median"):
        """`key` of the measurement called `name`, or None when either is missing."""
        return (self.get(name) or {}).get(key)


def interleaved(fns, rounds, warmup=1, inner=1):
    """Times each callable of `fns` (name -> fn) in interleaved rounds, the order rotated each
    round.

    Returns:
        name -> list of seconds per call (one per round; each the mean over `inner` calls).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    times = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            for _ in range(inner):
                fns[n]()
            times[n].append((time.perf_counter() - start) / inner)
    return times


def paired_ratio(numerator_times, denominator_times):
    """Median over rounds of t_denominator / t_numerator: the speed of `numerator` relative to
    `denominator` (> 1: numerator is faster)."""
    return statistics.median(d / n for n, d in zip(numerator_times, denominator_times))


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


def machine_info():
    """Cores, CPU model, memory, library versions and the load average now."""
    import keras
    import tensorflow as tf

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import faiss

        faiss_version = faiss.__version__
    except ImportError:
        faiss_version = None
    try:
        with open("/proc/meminfo") as f:
            mem_gb = int(f.readline().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        mem_gb = None
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": mem_gb,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "faiss": faiss_version,
        "load_average_start": list(os.getloadavg()),
    }


# ------------------------------------------------------------------------------------------------
# Generated blocks in markdown files.


def marked(begin, end, content):
    """`content` between the marker lines `begin` and `end` (the block a document holds)."""
    return f"{begin}\n{content}\n{end}" if content else f"{begin}\n{end}"


def between(text, begin, end):
    """The text between the markers `begin` and `end` in `text`, stripped (ValueError when
    either is missing)."""
    start = text.index(begin) + len(begin)
    return text[start : text.index(end, start)].strip()


def replace_between_markers(path, begin, end, content, append_after=None):
    """Replaces what lies between the markers `begin` and `end` in the file `path` with `content`;
    the markers and everything outside them stay as they are.

    A file without the markers gets the marked block appended at its end, after `append_after`
    (a heading, or "" for none); with `append_after` None, or with `begin` but no `end` after it,
    it is an error (SystemExit). The file is replaced atomically (a temp file, then os.replace).
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    block = marked(begin, end, content)
    start = text.find(begin)
    stop = text.find(end, start + len(begin)) if start >= 0 else -1
    if start >= 0 and stop < 0:
        raise SystemExit(f"{path} has the marker {begin!r} but no {end!r} after it")
    if stop >= 0:
        text = text[:start] + block + text[stop + len(end) :]
    elif append_after is not None:
        text = text.rstrip("\n") + "\n\n" + append_after + block + "\n"
    else:
        raise SystemExit(f"{path} has no {begin!r} ... {end!r} markers")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
