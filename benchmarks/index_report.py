"""The catalogue-engine tables of benchmarks/index_bench.py, rendered from its index.json: the
engines' names, the markdown table, and the block BUILD.md and BENCHMARKS.md hold between
TABLE_BEGIN and TABLE_END. Imports nothing heavy."""

import os

from harness import REPO, replace_between_markers

ENGINES = ("numpy", "searcher", "milvus_flat", "milvus_hnsw")
LABELS = {
    "numpy": "numpy exact (matmul + argpartition)",
    "searcher": "`searcher` SavedModel signature",
    "milvus_flat": "Milvus FLAT",
    "milvus_hnsw": "Milvus HNSW",
}
# The table in BUILD.md (section 4, "Which search engine") and BENCHMARKS.md, between these markers.
TABLE_BEGIN = "<!-- index table: written by benchmarks/index_bench.py -->"
TABLE_END = "<!-- index table: end -->"
INDEX_HEADING = "## Catalogue search engines (`python benchmarks/index_bench.py`)\n\n"


def fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}g}"
    return str(v)


def table(report):
    k = report["params"]["k"]
    lines = [
        f"| N | engine | build s | build rows/s | insert rows/s | add 1 ms | remove 1 ms "
        f"| single p50 ms | single p99 ms | batch-{report['params']['batch']} queries/s "
        f"| recall@{k} |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in report["sizes"]:
        n = f"{size['n']:,}"
        for name in ENGINES:
            e = size["engines"].get(name)
            if e is None:
                if name in size["skipped"]:
                    lines.append(
                        f"| {n} | {LABELS[name]} | {size['skipped'][name]} | | | | | | | | |"
                    )
                continue
            build = "-" if name == "numpy" else fmt(e["build_s"])
            rows = "-" if name == "numpy" else fmt(e["build_rows_per_s"])
            insert = (
                fmt(e.get("insert_rows_per_s"))
                if "insert_rows_per_s" in e
                else ("re-export" if name == "searcher" else "-")
            )
            label = LABELS[name] + (f" {e['search_params']}" if e.get("search_params") else "")
            lines.append(
                f"| {n} | {label} | {build} | {rows} | {insert} "
                f"| {fmt(e.get('add_one_ms'))} | {fmt(e.get('remove_one_ms'))} "
                f"| {fmt(e['single_p50_ms'])} | {fmt(e['single_p99_ms'])} "
                f"| {fmt(e['batch_queries_per_s'])} | {e[f'recall_at_{k}']:.4f} |"
            )
    sweeps = [
        (s["n"], s["engines"]["milvus_hnsw"]["ef_sweep"])
        for s in report["sizes"]
        if "ef_sweep" in s["engines"].get("milvus_hnsw", {})
    ]
    if sweeps:
        lines += [
            "",
            f"HNSW recall@{k} against exact, by search `ef` (mean ms per single query):",
            "",
            "| N | " + " | ".join(f"ef={p['ef']}" for p in sweeps[0][1]) + " |",
            "|---:|" + "---:|" * len(sweeps[0][1]),
        ]
        for n, sweep in sweeps:
            lines.append(
                f"| {n:,} | "
                + " | ".join(
                    f"{p[f'recall_at_{k}']:.4f} ({p['single_mean_ms']:.2g} ms)" for p in sweep
                )
                + " |"
            )
    return "\n".join(lines)


def section(report):
    """What BUILD.md and BENCHMARKS.md hold between TABLE_BEGIN and TABLE_END: how it was
    measured, then the table."""
    p, m = report["params"], report["machine"]
    head = (
        f"`python benchmarks/index_bench.py` ({p['milvus_engine']}; {p['data']} data, "
        f"{p['dim']}-d unit vectors; {p['queries']} single queries, {p['batch_rounds']} rounds "
        f"of batch {p['batch']}; {m['cpu_count']} cores, load average "
        f"{m['load_avg_start'][0]:.1f} -> {m['load_avg_end'][0]:.1f}; "
        f"{report['elapsed_s'] / 60:.0f} min). Raw figures: `benchmarks/index.json`."
    )
    return "\n".join([head, "", table(report)])


def write_docs(report):
    """Writes `section(report)` between the markers in BUILD.md and in BENCHMARKS.md (appended
    there under INDEX_HEADING when missing)."""
    block = section(report)
    replace_between_markers(os.path.join(REPO, "BUILD.md"), TABLE_BEGIN, TABLE_END, block)
    replace_between_markers(
        os.path.join(REPO, "BENCHMARKS.md"),
        TABLE_BEGIN,
        TABLE_END,
        block,
        append_after=INDEX_HEADING,
    )
    print("updated the index table in BUILD.md and BENCHMARKS.md")
