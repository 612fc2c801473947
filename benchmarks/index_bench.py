"""Catalogue search engines side by side: Milvus (FLAT, HNSW), the `searcher` signature, numpy.

    python benchmarks/index_bench.py [--sizes 100000,1000000] [--dim 256] [--k 50]
        [--queries 200] [--batch 64] [--batch_rounds 10] [--max_build_s 1200]
        [--data structured|isotropic] [--uri DIR_OR_URL] [--output benchmarks/index.json]
    python benchmarks/index_bench.py --render_only    # BUILD.md / BENCHMARKS.md from index.json

For each gallery size N (unit vectors, `--dim` wide) it builds every engine on the same gallery,
then times them in one process, interleaved (each single query runs on every engine in turn,
rotating the order; so do the batch rounds), and reports medians:

    build       seconds and rows/s to a searchable index: Milvus `CatalogIndex.create` (insert,
                flush, index build, load); the searcher as `export` makes it (the archive with the
                gallery as a graph constant, written as a SavedModel and loaded); numpy: none.
    insert      rows/s of `CatalogIndex.add` into the built index, 1000 rows a call (searchable on
                return), and the median latency of adding and of removing one item. The searcher
                and numpy have no insert: a new item is a new export (its build time).
    single      p50 / p99 latency of one query (k results).
    batch       queries/s of `--batch` queries per call.
    recall@k    of each engine's top-k ids against numpy's exact cosine top-k; for HNSW also at
                other `ef` values (the `ef` sweep).

Milvus is Milvus Lite (a local .db under a temp folder, embedded in this process: its gRPC server
runs in threads beside the client) unless `--uri http://host:19530` names a server. An engine
whose build the smaller sizes project above `--max_build_s` is skipped at that size, and the
output says so with the projection. Writes `--output` (JSON) and prints a markdown table.
No timing is asserted anywhere; the figures depend on the machine and its load.

Data: `structured` (default) draws features with 32 latent dimensions plus isotropic noise, as
learned embeddings have (a query's nearest item at cosine about 0.7, its 50th at about 0.56);
`isotropic` draws uniformly on the sphere, the worst case for graph indexes (all neighbours at
nearly the same cosine, about 0.2 in 256-d).
"""

import argparse
import gc
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# OpenMP threads (faiss inside Milvus Lite) that spin-wait after each call starve the engines timed
# next on a small machine: on 2 cores numpy's single 2k query measured 8 ms beside them, 0.3 ms
# with passive waiting. Set before numpy and faiss load their runtimes.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
from index_report import ENGINES, LABELS, table, write_docs  # noqa: E402

EF_SWEEP = (64, 128, 256, 512, 1024)
LATENT_DIM, NOISE = 32, 0.5


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_data(n, dim, queries, kind, seed=0):
    """(gallery [n, dim], queries [queries, dim]) unit float32 vectors."""
    rng = np.random.default_rng(seed)
    mix = None if kind == "isotropic" else rng.standard_normal((LATENT_DIM, dim), dtype=np.float32)

    def draw(m):
        if mix is None:
            return rng.standard_normal((m, dim), dtype=np.float32)
        return rng.standard_normal((m, LATENT_DIM), dtype=np.float32) @ mix + NOISE * np.sqrt(
            LATENT_DIM
        ) * rng.standard_normal((m, dim), dtype=np.float32)

    gallery = np.concatenate([unit(draw(min(100_000, n - s))) for s in range(0, n, 100_000)])
    return gallery, unit(draw(queries))


def numpy_top_k(gallery, q, k):
    scores = unit(q) @ gallery.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-part, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(part, order, axis=1)


def recall(found_rows, exact_rows):
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found_rows, exact_rows)]))


def pct(values, q):
    return float(np.percentile(np.asarray(values), q))


class Engines:
    """The engines of one gallery size: name -> search(q [B, D]) -> ids as int rows [B, k]."""

    def __init__(self, args, n, gallery, work):
        self.args, self.n, self.gallery, self.work = args, n, gallery, work
        self.ids = np.char.add("g", np.arange(n).astype(str))
        self.search, self.builds, self.indexes = {}, {}, {}

    def build(self, name):
        start = time.perf_counter()
        getattr(self, f"_build_{name}")()
        seconds = time.perf_counter() - start
        self.builds[name] = {
            "seconds": seconds,
            "rows_per_s": self.n / seconds if seconds else None,
        }
        gc.collect()

    def _build_numpy(self):
        k = self.args.k
        self.search["numpy"] = lambda q: numpy_top_k(self.gallery, q, k)[0]

    def _build_searcher(self):
        import tensorflow as tf

        from flam_tf.serving import signatures as sig
        from flam_tf.serving.archives import build_searcher_archive

        path = os.path.join(self.work, f"searcher_{self.n}")
        archive = build_searcher_archive(self.gallery, self.ids, self.args.k)
        archive.write_out(path, verbose=False)
        del archive
        gc.collect()
        signature = tf.saved_model.load(path).signatures[sig.SERVING_DEFAULT]

        def search(q):
            ids = signature(**{sig.FEATURE: tf.constant(q)})[sig.IDS].numpy().astype(str)
            return np.char.lstrip(ids, "g").astype(np.int64)

        self.search["searcher"] = search

    def _milvus(self, name, index_type):
        from flam_tf.serving.catalog_index import CatalogIndex

        index = CatalogIndex.create(
            self.ids,
            self.gallery,
            self.args.milvus_uri,
            collection=f"{name}_{self.n}",
            index_type=index_type,
            overwrite=True,
        )
        self.indexes[name] = index
        k = self.args.k
        self.search[name] = lambda q: np.char.lstrip(index.search(q, k)[0], "g").astype(np.int64)

    def _build_milvus_flat(self):
        self._milvus("milvus_flat", "FLAT")

    def _build_milvus_hnsw(self):
        self._milvus("milvus_hnsw", "HNSW")

    def close(self):
        for index in self.indexes.values():
            index.drop()
            index.close()


def time_queries(search, queries, batch, batch_rounds):
    """Single-query latencies (each query on every engine in turn, rotating the order) and
    batch throughputs (rounds rotating likewise). Returns (single s, batch s, ids per engine)."""
    names = list(search)
    single = {n: [] for n in names}
    found = {n: [] for n in names}
    for name in names:  # warm-up
        search[name](queries[:1])
        search[name](queries[:batch])
    for i in range(len(queries)):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            start = time.perf_counter()
            ids = search[name](queries[i : i + 1])
            single[name].append(time.perf_counter() - start)
            found[name].append(ids[0])
    batched = {n: [] for n in names}
    for r in range(batch_rounds):
        q = queries[(r * batch) % len(queries) :][:batch]
        if len(q) < batch:
            q = queries[:batch]
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            search[name](q)
            batched[name].append(time.perf_counter() - start)
    return single, batched, found


def time_inserts(index, dim, rows, seed):
    """rows/s of add() in calls of 1000 rows, then one-item add and remove latencies (medians);
    everything added is removed again."""
    rng = np.random.default_rng(seed)
    vectors = unit(rng.standard_normal((rows, dim), dtype=np.float32))
    ids = [f"new{seed}_{i}" for i in range(rows)]
    start = time.perf_counter()
    for s in range(0, rows, 1000):
        index.add(ids[s : s + 1000], vectors[s : s + 1000])
    rows_per_s = rows / (time.perf_counter() - start)
    index.remove(ids)
    add_one, remove_one = [], []
    for i in range(20):
        start = time.perf_counter()
        index.add([f"one{seed}_{i}"], vectors[i : i + 1])
        add_one.append(time.perf_counter() - start)
        start = time.perf_counter()
        index.remove([f"one{seed}_{i}"])
        remove_one.append(time.perf_counter() - start)
    return {
        "insert_rows_per_s": rows_per_s,
        "insert_rows": rows,
        "insert_batch": 1000,
        "add_one_ms": statistics.median(add_one) * 1e3,
        "remove_one_ms": statistics.median(remove_one) * 1e3,
    }


def projected_build_s(measured, n):
    """Build seconds at n from the largest smaller size measured (n log n scaling), or None."""
    smaller = [(m, s) for m, s in measured.items() if m < n]
    if not smaller:
        return None
    m, seconds = max(smaller)
    return seconds * (n * math.log(n)) / (m * math.log(m))


def run_size(args, n, measured_builds, work):
    gallery, queries = make_data(n, args.dim, max(args.queries, args.batch), args.data)
    engines = Engines(args, n, gallery, work)
    result = {"n": n, "engines": {}, "skipped": {}}
    for name in ENGINES:
        guess = projected_build_s(measured_builds.setdefault(name, {}), n)
        if guess is not None and guess > args.max_build_s:
            result["skipped"][name] = (
                f"skipped: its build projects to {guess / 60:.0f} min on this machine (from "
                f"{max(m for m in measured_builds[name] if m < n):,} rows, n log n) > "
                f"--max_build_s {args.max_build_s / 60:.0f} min"
            )
            print(f"  {name}: {result['skipped'][name]}", flush=True)
            continue
        print(f"  building {name} at N={n:,} ...", flush=True)
        engines.build(name)
        measured_builds[name][n] = engines.builds[name]["seconds"]
        print(f"    {engines.builds[name]['seconds']:.1f} s", flush=True)
    single, batched, found = time_queries(
        engines.search, queries[: args.queries], args.batch, args.batch_rounds
    )
    exact = np.stack(found["numpy"])
    for name in engines.search:
        item = {
            "label": LABELS[name],
            "build_s": engines.builds[name]["seconds"],
            "build_rows_per_s": engines.builds[name]["rows_per_s"],
            "single_p50_ms": pct(single[name], 50) * 1e3,
            "single_p99_ms": pct(single[name], 99) * 1e3,
            "batch_queries_per_s": args.batch / statistics.median(batched[name]),
            f"recall_at_{args.k}": recall(found[name], exact),
            "queries": len(single[name]),
            "batch_rounds": len(batched[name]),
        }
        if name in engines.indexes:
            index = engines.indexes[name]
            item.update(index_type=index.index_type, search_params=index.search_params)
        result["engines"][name] = item
    if "milvus_hnsw" in engines.indexes:
        index, sweep = engines.indexes["milvus_hnsw"], []
        for ef in EF_SWEEP:
            if ef < args.k:
                continue
            q = queries[: min(100, args.queries)]
            start = time.perf_counter()
            ids = [
                np.char.lstrip(index.search(q[i : i + 1], args.k, {"ef": ef})[0][0], "g").astype(
                    np.int64
                )
                for i in range(len(q))
            ]
            ms = (time.perf_counter() - start) / len(q) * 1e3
            sweep.append(
                {
                    "ef": ef,
                    f"recall_at_{args.k}": recall(ids, exact[: len(q)]),
                    "single_mean_ms": ms,
                }
            )
            print(
                f"    HNSW ef={ef}: recall@{args.k} {sweep[-1][f'recall_at_{args.k}']:.4f}, "
                f"{ms:.2f} ms/query",
                flush=True,
            )
        result["engines"]["milvus_hnsw"]["ef_sweep"] = sweep
    for name, index in engines.indexes.items():
        print(f"  inserting into {name} ...", flush=True)
        result["engines"][name].update(time_inserts(index, args.dim, args.insert_rows, seed=n))
    engines.close()
    del engines, gallery
    gc.collect()
    return result


def machine():
    import faiss
    import milvus_lite
    import pymilvus
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_avg_start": list(os.getloadavg()),
        "numpy": np.__version__,
        "tensorflow": tf.__version__,
        "pymilvus": pymilvus.__version__,
        "milvus_lite": milvus_lite.__version__,
        "faiss": faiss.__version__,
        "platform": platform.platform(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--sizes",
        default="100000,1000000",
        help="Comma-separated gallery sizes, measured in this order.",
    )
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--queries", type=int, default=200, help="Single queries per engine.")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batch_rounds", type=int, default=10)
    p.add_argument("--insert_rows", type=int, default=10_000)
    p.add_argument(
        "--max_build_s",
        type=float,
        default=1200.0,
        help="Skip an engine at a size where its build projects above this.",
    )
    p.add_argument("--data", choices=("structured", "isotropic"), default="structured")
    p.add_argument(
        "--uri",
        default=None,
        help="Milvus: http://host:19530, or a folder for a Milvus Lite .db "
        "(default a temp folder).",
    )
    p.add_argument("--output", default=os.path.join(REPO, "benchmarks", "index.json"))
    p.add_argument(
        "--render_only",
        action="store_true",
        help="Only rewrite the tables in BUILD.md and BENCHMARKS.md from --output.",
    )
    args = p.parse_args(argv)
    if args.render_only:
        with open(args.output) as f:
            write_docs(json.load(f))
        return 0
    # Milvus Lite's embedded server logs a traceback for each RPC it lacks (AllocTimestamp).
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    work = tempfile.mkdtemp(prefix="index_bench_")
    if args.uri and "://" in args.uri:
        args.milvus_uri = args.uri
    else:
        args.milvus_uri = os.path.join(args.uri or work, "bench.db")
    report = {
        "params": {k: v for k, v in vars(args).items() if k != "output"},
        "machine": machine(),
        "sizes": [],
    }
    report["params"]["milvus_engine"] = (
        "Milvus Lite (embedded, in-process)" if args.milvus_uri.endswith(".db") else "Milvus server"
    )
    from flam_tf.serving.catalog_index import INDEX_TYPES

    report["params"]["index_defaults"] = {
        t: {"build": b, "search": s} for t, (b, s) in INDEX_TYPES.items()
    }
    measured = {}
    started = time.perf_counter()
    try:
        for n in sizes:
            print(f"[N={n:,} x {args.dim}, {args.data}]", flush=True)
            report["sizes"].append(run_size(args, n, measured, work))
            report["elapsed_s"] = time.perf_counter() - started
            report["machine"]["load_avg_end"] = list(os.getloadavg())
            with open(args.output, "w") as f:  # after every size: a long run keeps its results
                json.dump(report, f, indent=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(report))
    if os.path.abspath(args.output) == os.path.join(REPO, "benchmarks", "index.json"):
        write_docs(report)
    print(
        f"\n{report['params']['milvus_engine']}; {args.data} data; load average "
        f"{report['machine']['load_avg_start']} -> {report['machine']['load_avg_end']} on "
        f"{os.cpu_count()} CPUs; {report['elapsed_s'] / 60:.1f} min; written to {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
