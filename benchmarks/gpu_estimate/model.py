"""The GPU time model: a component's seconds on N GPUs of a class, from its FLOPs, the datasheet
peak times the calibrated achieved fraction, the per-replica batch, the input pipeline's decode
rate and the fixed per-step and per-fit costs (constants.py)."""

import json
import math

from gpu_estimate.constants import ASSUMPTIONS, CALIBRATION, GPU_SPECS


def _batch_factor(precision, batch):
    curve = CALIBRATION["batch_curve"][precision]
    top = curve[256]
    points = sorted(curve)
    if batch >= points[-1]:
        return 1.0
    if batch <= points[0]:
        return min(1.0, curve[points[0]] / top * batch / points[0])
    for lo, hi in zip(points, points[1:]):
        if lo <= batch <= hi:
            t = (math.log(batch) - math.log(lo)) / (math.log(hi) - math.log(lo))
            value = math.exp((1 - t) * math.log(curve[lo]) + t * math.log(curve[hi]))
            return min(1.0, value / top)
    return 1.0


def conv_fraction(
    gpu,
    precision,
    xla,
    rn50_train_flops_per_image,
    inference=False,
    rn50_forward_flops_per_image=None,
):
    """Achieved fraction of the dense peak for ResNet50 training (or inference) at large batch."""
    v15 = CALIBRATION["v15_over_v1_flops"]
    a100_peak = GPU_SPECS["A100"][precision]
    if inference:
        img_s = CALIBRATION["infer_img_s_256"][precision]
        frac = img_s * v15 * rn50_forward_flops_per_image / a100_peak
    else:
        img_s = CALIBRATION["train_img_s"][precision]["xla" if xla else "no_xla"]
        frac = img_s * v15 * rn50_train_flops_per_image / a100_peak
    if gpu == "H100":
        frac *= ASSUMPTIONS["h100_over_a100_cnn"] / (GPU_SPECS["H100"][precision] / a100_peak)
    return frac


def input_rate(host, size, stream, jpeg=False):
    """Images/s one core feeds of `stream`: augmentation only from the decode cache, else
    decoding (PNG, or JPEG for a real data set) and augmentation."""
    r = host["per_core"][str(size)]
    if stream.get("cached"):
        return r["augment_only_img_s"]
    return r["jpeg_decode_augment_img_s"] if jpeg else r["png_decode_augment_img_s"]


def conv_step_times(comp, models, host, size, gpu, n_gpus, precision, strategy, vcpus, jpeg=False):
    """(compute seconds, input seconds) of one training step of a conv component."""
    rec = models[comp["model"]]
    xla = strategy == "default" and n_gpus == 1
    per_image = rec["train_step_flops"] / rec["batch"]
    frac = conv_fraction(
        gpu, precision, xla, models["extractor"]["train_step_flops"] / models["extractor"]["batch"]
    )
    shift = ASSUMPTIONS["h100_batch_shift"] if gpu == "H100" else 1.0
    peak = GPU_SPECS[gpu][precision]
    compute = 0.0
    for batch in comp["pass_batches"]:
        per_replica = batch / n_gpus
        factor = _batch_factor(precision, per_replica / shift)
        compute += batch * per_image / (n_gpus * peak * frac * factor)
    if n_gpus > 1:
        compute /= ASSUMPTIONS["multi_gpu_efficiency"]
    threads = ASSUMPTIONS["input_threads_share"] * vcpus
    cpu = sum(s["images_per_step"] / input_rate(host, size, s, jpeg) for s in comp["streams"])
    return compute, cpu / threads


def _step_overhead(n_gpus, strategy):
    o = ASSUMPTIONS["step_overhead_s"]
    if strategy == "default" and n_gpus == 1:
        return o["1_xla"]
    return o["mirrored_base"] + o["mirrored_per_replica"] * n_gpus


def predict_component(
    comp, models, host, config, gpu, n_gpus, precision, vcpus, default_eval, jpeg=False
):
    """(seconds, what bounds it) of one component on `n_gpus` GPUs of class `gpu`."""
    size = config.data.image_size
    kind = comp["kind"]
    strategy = "default" if n_gpus == 1 else "mirrored"
    threads = ASSUMPTIONS["input_threads_share"] * vcpus
    r = host["per_core"][str(size)]
    if kind == "cpu_data":
        render = (
            comp["examples"]
            * (r["render_s"] + r["png_write_s"])
            / ASSUMPTIONS["cpu_host_speedup_single_thread"]
        )
        verify = comp["examples"] / (threads * r["png_decode_img_s"])
        return render + verify, "CPU (single-threaded rendering)"
    if kind == "export":
        return ASSUMPTIONS["export_s"], "CPU (tracing, writing)"
    if kind == "cpu_rank":
        # Split the default run's measured evaluate time into its BLAS part (at this host's
        # matmul ceiling) and the rest (argpartition/sort, ~ query x gallery pairs, one thread).
        per_core = default_eval["reference_flop_s"] / host["cpus"] * default_eval["cpu_fraction"]
        blas = comp["flops_profiled"] / (per_core * min(vcpus, 16))
        rest = default_eval["rest_s_per_pair"] * comp["rank_pairs"]
        return blas + rest, "CPU (numpy ranking)"
    if kind in ("mlp_train", "mlp_infer"):
        peak = GPU_SPECS[gpu]["tf32"] * ASSUMPTIONS["mlp_fraction_of_tf32_peak"]
        if kind == "mlp_infer":
            return comp["flops_profiled"] / peak + 1.0, "overhead"
        rec = models[comp["model"]]
        replicas = n_gpus if strategy == "mirrored" else 1
        step_flops = rec["train_step_flops"] / (peak * replicas)
        step = max(_step_overhead(n_gpus, strategy), step_flops)
        ckpt = comp["epochs"] * (
            rec["params"] * 3 * 4 / ASSUMPTIONS["checkpoint_write_bytes_s"] + 0.05
        )
        total = comp["steps"] * step + ckpt + ASSUMPTIONS["mlp_fit_startup_s"] + 2.0
        return total, "step overhead" if step > step_flops else "compute"
    if kind == "conv_infer":
        # One device (these passes do not run under the strategy), batch 256.
        frac = conv_fraction(
            gpu,
            precision,
            False,
            None,
            inference=True,
            rn50_forward_flops_per_image=models["extractor"]["inference_flops"],
        )
        compute = comp["flops_profiled"] / (GPU_SPECS[gpu][precision] * frac)
        decode = comp["examples"] / (
            threads * (r["jpeg_decode_augment_img_s"] if jpeg else r["png_decode_img_s"])
        )
        return max(compute, decode) + 5.0, "input (decode)" if decode > compute else "compute"
    if kind == "conv_train":
        rec = models[comp["model"]]
        compute, inp = conv_step_times(
            comp, models, host, size, gpu, n_gpus, precision, strategy, vcpus, jpeg
        )
        step = max(compute, inp)
        fill = sum(
            s["cache_images"] / (threads * r["png_decode_img_s"])
            for s in comp["streams"]
            if s["cached"]
        )
        ckpt = comp["epochs"] * rec["params"] * 3 * 4 / ASSUMPTIONS["checkpoint_write_bytes_s"]
        total = (
            comp["steps"] * step
            + fill
            + ckpt
            + ASSUMPTIONS["conv_fit_startup_s"]
            + ASSUMPTIONS["model_save_s"]
        )
        return total, "input (decode)" if inp > compute else "compute"
    raise ValueError(kind)


def predict(work, models, host, config, default_eval):
    """{stage: {"<gpu> x<n>": {precision: seconds, "bound": ...}}} and totals."""
    out = {}
    for stage, comps in work.items():
        out[stage] = {}
        for gpu in GPU_SPECS:
            for n_gpus in (1, 8):
                vcpus = ASSUMPTIONS["host_vcpus"][gpu][str(n_gpus)]
                cell = {}
                for precision in ("tf32", "bf16"):
                    seconds, bounds = 0.0, []
                    for comp in comps:
                        s, bound = predict_component(
                            comp, models, host, config, gpu, n_gpus, precision, vcpus, default_eval
                        )
                        seconds += s
                        bounds.append((s, bound))
                    cell[precision] = round(seconds, 1)
                    if precision == "tf32":
                        cell["bound"] = max(bounds)[1] if bounds else ""
                out[stage][f"{gpu} x{n_gpus}"] = cell
    totals = {}
    for key in next(iter(out.values())):
        totals[key] = {p: round(sum(out[s][key][p] for s in out), 1) for p in ("tf32", "bf16")}
    return out, totals


def predict_extractor_rate(
    saved, gpu, n_gpus, vcpus, strategy="mirrored", precision="tf32", cached=True, jpeg=False
):
    """The paper extractor's expected images/s (gpu_check.sh): compute-bound, input-bound and
    the smaller of the two, with every input stream read from the decode cache (`cached` True),
    from the files (False), or as the preset runs (None)."""
    paper = saved["presets"]["paper"]
    models, host = paper["models"], saved["host"]
    comp = json.loads(json.dumps(paper["work"]["extractor"][0]))
    for stream in comp["streams"]:
        if cached is not None:  # None: as the preset runs (the decode cache where images fit)
            stream["cached"] = cached
    size = paper["config"]["data"]["image_size"]
    compute, inp = conv_step_times(
        comp, models, host, size, gpu, n_gpus, precision, strategy, vcpus, jpeg
    )
    images = models["extractor"]["batch"]
    cpu_per_step = inp * ASSUMPTIONS["input_threads_share"] * vcpus  # CPU-seconds per step
    return {
        "vcpus_to_keep_up": round(cpu_per_step / compute / ASSUMPTIONS["input_threads_share"], 1),
        "cpu_ms_per_image": round(1e3 * cpu_per_step / images, 2),
        "gpu_class": gpu,
        "gpus": n_gpus,
        "vcpus": vcpus,
        "strategy": strategy,
        "precision": precision,
        "cached": [s["cached"] for s in comp["streams"]],
        "images_per_step": images,
        "compute_img_s": round(images / compute, 1),
        "input_img_s": round(images / inp, 1),
        "expected_img_s": round(images / max(compute, inp), 1),
        "expected_step_s": round(max(compute, inp), 4),
        "mirrored_small_step_s": _step_overhead(n_gpus, strategy),
    }
