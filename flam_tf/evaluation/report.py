"""report.json is the single source of truth of a run's figures; report.md is rendered from it."""

import json
import math
import os
from typing import Dict, List

from flam_tf import vocabulary
from flam_tf.evaluation import metrics
from flam_tf.run_directory import REPORT_JSON, REPORT_MD, write_json


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def _table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(report: Dict) -> str:
    """Markdown tables of a report dict (Tables 2-5 layout)."""
    out = [
        "# FLAM run report\n",
        f"dataset: {report.get('dataset')} · preset: {report.get('preset')} · "
        f"seed: {report.get('seed')}\n",
    ]
    fam_ks = [metrics.top_k_key(k) for k in metrics.FAM_KS]
    out.append("## FAM: top-k accuracy T@k, all queries (Table 3/4)\n")
    out.append(
        _table(
            ["method"] + fam_ks,
            [[m] + [_fmt(v["all"].get(k)) for k in fam_ks] for m, v in report["fam"].items()],
        )
    )
    out.append("\n\n## FAM: T@10 and T@50 per attribute type\n")
    header = ["method"] + [f"{a} T@{k}" for k in (10, 50) for a in vocabulary.ATTRIBUTE_TYPES]
    out.append(
        _table(
            header,
            [
                [m]
                + [_fmt(v[a].get(f"T@{k}")) for k in (10, 50) for a in vocabulary.ATTRIBUTE_TYPES]
                for m, v in report["fam"].items()
            ],
        )
    )
    fir_ks = [metrics.recall_key(k) for k in metrics.FIR_KS]
    for protocol in ("in-shop", "consumer-to-shop"):
        rows = [
            [m] + [_fmt(v[protocol].get(k)) for k in fir_ks]
            for m, v in report["fir"].items()
            if protocol in v
        ]
        if rows:
            out.append(f"\n\n## FIR {protocol}: recall R@k (Table 2/4)\n")
            out.append(_table(["method"] + fir_ks, rows))
    out.append("\n\n## Twin recall (ours): R@k of the query's counterfactual twin\n")
    out.append(
        _table(
            ["method", "R@1", "R@10", "R@50"],
            [
                [m] + [_fmt(v.get(k)) for k in ("R@1", "R@10", "R@50")]
                for m, v in report["twin_recall"].items()
            ],
        )
    )
    acc = report["attribute_accuracy"]
    types = list(vocabulary.ATTRIBUTE_TYPES)
    out.append("\n\n## Attribute accuracy of an independent linear probe (Table 5)\n")
    out.append(
        "A softmax regression per attribute type, trained on labelled attribute_train "
        "features only. *edited*: accuracy against the target on the queries that edit "
        "that type; *kept*: accuracy against the query's own label on the queries that "
        "edit another type.\n"
    )
    rows = [["original (query items)"] + [_fmt(acc["original"][a]) for a in types] + ["-"]]
    for method, v in acc["methods"].items():
        for part in ("edited", "kept"):
            diff = [v[part][a] - acc["original"][a] for a in types]
            rows.append(
                [f"{method}, {part}"]
                + [_fmt(v[part][a]) for a in types]
                + [f"{sum(diff) / len(diff):+.3f}"]
            )
    out.append(_table(["features"] + types + ["avg diff"], rows))
    if "describe_success" in report:
        out.append("\n\n## `describe` after manipulation: the embedder's class equals the target\n")
        out.append(
            _table(
                list(vocabulary.ATTRIBUTE_TYPES),
                [[_fmt(report["describe_success"][a]) for a in vocabulary.ATTRIBUTE_TYPES]],
            )
        )
    out.append(f"\n\ncycle cosine cos(x, G(G(x, d), e)): {_fmt(report['cycle_cosine'])}\n")
    out.append("\n## Counts\n")
    out.append("```\n" + json.dumps(report["num_queries"], indent=1) + "\n```\n")
    out.append("\n## Wall time (s)\n")
    t = report["timings_s"]
    out.append(_table(list(t), [[_fmt(float(v)) for v in t.values()]]))
    if report.get("figures"):
        out.append("\n\n## Figures\n")
        out += [f"![{os.path.basename(p)}]({p})\n" for p in report["figures"]]
    return "\n".join(out) + "\n"


def write_report(run_root: str, report: Dict) -> None:
    write_json(os.path.join(run_root, REPORT_JSON), report)
    tmp = os.path.join(run_root, REPORT_MD + ".tmp")
    with open(tmp, "w") as f:
        f.write(render_markdown(report))
    os.replace(tmp, os.path.join(run_root, REPORT_MD))
