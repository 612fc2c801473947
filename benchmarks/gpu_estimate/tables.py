"""The FLOP and time tables of a saved flops.json: plain text for the terminal, and BUILD.md's
markdown table (between TABLE_BEGIN and TABLE_END). Imports nothing heavy."""

import statistics

TABLE_BEGIN = "<!-- gpu table: written by benchmarks/flops.py -->"
TABLE_END = "<!-- gpu table: end -->"


def _fmt_flops(x):
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x / 1e6:.3g} MFLOP" if x else "0"


def _fmt_s(s):
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.0f} min"
    return f"{s:.0f} s"


def _stage_work_text(stage, comps):
    """Short description of what a stage processes (identical components grouped)."""
    groups = []
    for c in comps:
        key = (c["kind"], c.get("steps"), c.get("batch"), c["examples"])
        for g in groups:
            if g["key"] == key:
                g["count"] += 1
                break
        else:
            groups.append({"key": key, "count": 1, "comp": c})
    parts = []
    for g in groups:
        c, n = g["comp"], g["count"]
        who = (
            f"{n} x "
            if n > 1
            else (f"{c['name']}: " if c["kind"] in ("mlp_train",) and stage != "embedders" else "")
        )
        if c["kind"] == "conv_train":
            parts.append(f"{who}{c['steps']:,} steps x {c['batch']} images")
        elif c["kind"] == "mlp_train":
            parts.append(f"{who}{c['steps']:,} steps x {c['batch']} features")
        elif c["kind"] == "conv_infer":
            parts.append(f"{who}{c['examples']:,} images forward")
        elif c["kind"] == "cpu_data":
            parts.append(f"{c['examples']:,} images rendered, written, verified (CPU)")
        elif c["kind"] == "cpu_rank":
            parts.append(f"{c['examples']:,} FAM queries ranked (numpy)")
        elif c["kind"] == "export":
            parts.append("3 SavedModels")
    return "; ".join(parts)


def flops_table(saved):
    """Plain-text table of both presets' training FLOPs per stage."""
    lines = []
    for preset, p in saved["presets"].items():
        lines.append(f"\n{preset} preset ({p['summary']})")
        lines.append(f"{'stage':12s} {'train FLOPs (3x fwd)':>20s} {'profiled step':>14s}  work")
        for stage, comps in p["work"].items():
            f3 = sum(c["flops_3x"] for c in comps)
            fp = sum(c["flops_profiled"] for c in comps)
            lines.append(
                f"{stage:12s} {_fmt_flops(f3):>20s} {_fmt_flops(fp):>14s}  "
                f"{_stage_work_text(stage, comps)}"
            )
        lines.append(
            f"{'total':12s} {_fmt_flops(p['total_flops_3x']):>20s} "
            f"{_fmt_flops(p['total_flops_profiled']):>14s}"
        )
    return "\n".join(lines)


def table(saved):
    """The BUILD.md table: paper preset, FLOPs and expected time per stage."""
    p = saved["presets"]["paper"]
    pred, totals = saved["gpu_prediction"]["stages"], saved["gpu_prediction"]["totals"]
    keys = ["A100 x1", "A100 x8", "H100 x1", "H100 x8"]
    head = (
        "| stage | work | train FLOPs (3x fwd) | "
        + " | ".join(f"{k.replace(' x', ' x ')} TF32" for k in keys)
        + " | bound by (1 GPU) |"
    )
    lines = [head, "|" + "---|" * (5 + len(keys) - 1)]
    for stage, comps in p["work"].items():
        f3 = sum(c["flops_3x"] for c in comps)
        cells = " | ".join(_fmt_s(pred[stage][k]["tf32"]) for k in keys)
        lines.append(
            f"| {stage} | {_stage_work_text(stage, comps)} | {_fmt_flops(f3)} | "
            f"{cells} | {pred[stage]['A100 x1']['bound']} |"
        )
    lines.append(
        f"| **total** | | **{_fmt_flops(p['total_flops_3x'])}** | "
        + " | ".join(f"**{_fmt_s(totals[k]['tf32'])}**" for k in keys)
        + " | |"
    )
    lines.append(
        "| total if the extractor and pixel baselines trained in BF16 | | | "
        + " | ".join(_fmt_s(totals[k]["bf16"]) for k in keys)
        + " | |"
    )
    return "\n".join(lines)


def check_table(check):
    ref = check["reference_matmul_flop_s"] / 1e9
    frac = check["cpu_fraction_of_ceiling"]
    seeds = check["seeds"]
    cache = "off (not in their config)" if not any(check["decode_cache"]) else "on"
    lines = [
        f"CPU check: {', '.join(check['run_dirs'])} ({check['preset']} preset, seeds "
        f"{seeds}, decode cache {cache}); matmul ceiling {ref:.0f} GFLOP/s (measured now, "
        f"under load: {check['matmul_flop_s_measured_now'] / 1e9:.0f}); one achieved "
        f"fraction {frac:.2f} (the median over the fits of >= 1 GFLOP/step)",
        f"{'model fit':30s} {'GFLOP/step':>10s} {'ceil s':>7s} {'decode s':>8s} "
        + " ".join(f"{'seed ' + str(x) + ' s (frac)':>19s}" for x in seeds)
        + f" {'pred s':>7s} {'meas/pred':>10s} {'meas/ceil':>10s} {'1st epoch +s':>12s}",
    ]
    for r in check["fits"]:
        by_seed = {m["seed"]: m for m in r["measured"]}
        cells = " ".join(
            f"{by_seed[x]['step_s']:9.4f} ({by_seed[x]['implied_fraction']:.2f}) "
            f"{by_seed[x]['started']}"
            if x in by_seed
            else f"{'-':>19s}"
            for x in seeds
        )
        lo, hi = r["measured_over_predicted"]
        clo, chi = r["measured_over_ceiling"]
        lines.append(
            f"{r['model']:30s} {r['train_step_gflop']:10.2f} "
            f"{r['flop_s_at_ceiling']:7.4f} {r['decode_s']:8.4f} {cells} "
            f"{r['predicted_step_s']:7.4f} {lo:4.2f}-{hi:<5.2f} {clo:4.1f}-{chi:<5.1f} "
            f"{statistics.median(m['first_epoch_extra_s'] for m in r['measured']):12.1f}"
        )
    lines.append(
        f"{'stage':30s} "
        + " ".join(f"{'seed ' + str(x) + ' pred/meas s':>22s}" for x in seeds)
        + f" {'meas/pred':>10s} {'ceiling s':>10s} {'meas/ceil':>10s}"
    )
    for stage, row in check["stages"].items():
        by_seed = {r["seed"]: r for r in row["runs"]}
        cells = " ".join(
            f"{by_seed[x]['predicted_s']:10.1f} /{by_seed[x]['measured_s']:9.1f}"
            + ("*" if by_seed[x]["not_in_this_measurement"] else " ")
            if x in by_seed
            else f"{'-':>22s}"
            for x in seeds
        )
        lo, hi = row["measured_over_predicted"]
        clo, chi = row["measured_over_ceiling"]
        lines.append(
            f"{stage:30s} {cells} {lo:4.2f}-{hi:<5.2f} "
            f"{row['runs'][0]['predicted_at_ceiling_s']:10.1f} {clo:4.1f}-{chi:<5.1f}"
        )
    lines.append(
        "pred: FLOPs / (ceiling x fraction) + decoding; ceiling: FLOPs at the bare ceiling "
        "+ decoding; steady steps only (each fit's first epoch, which traces, is left out: "
        "'1st epoch +s'); * a partial rerun: compared on the fits it ran"
    )
    return "\n".join(lines)


def print_all(saved):
    print(flops_table(saved))
    print("\nExpected time, paper preset (TF32; BF16 totals below):\n")
    print(table(saved))
    if saved.get("cpu_check"):
        print()
        print(check_table(saved["cpu_check"]))
