#!/usr/bin/env python
"""Benchmarks of flam_tf: data generation, training, extraction, manipulation, search, main job.

    python benchmarks/run.py            # full run (about 15 min on 2 cores): the committed figures
    python benchmarks/run.py --quick    # under 3 min, smoke sizes: tests/test_benchmarks.py runs it
    python benchmarks/run.py --quick --output /tmp/b --only search,ceiling

Writes `<output>/results.json` (one object per measurement: name, unit, median, min, max, runs,
and `ratio`/`ratio_to` where there is a comparison) and `<output>/BENCHMARKS.md`; `--output`
defaults to the repository root for BENCHMARKS.md and `benchmarks/` for results.json.

Method. The machine may be shared with other jobs, so every figure is the median of several runs,
and every comparison is measured side by side: the candidates run in interleaved rounds (A, B, C,
A, B, C, ... with the order rotated each round) and a ratio is the median of the per-round ratios.
`ratio` is always a speed ratio: how many times as fast as `ratio_to` (> 1 faster, < 1 slower).
Training throughput is compared with a 4096x4096 float32 matmul run in the same rounds (the
machine's compute ceiling), and search latency with the time to stream the gallery once at the
measured copy bandwidth (the memory floor).

The serving measurements use models of the benchmarked preset's widths, untrained (timings do not
depend on the weights), saved as a run directory and exported with `export_run`, like a trained run.
"""

import argparse
import datetime
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

from flam_tf import config as config_lib  # noqa: E402
from flam_tf import vocabulary  # noqa: E402
from flam_tf.data import synthetic  # noqa: E402
from flam_tf.serving import signatures as sig  # noqa: E402
from quality import QUALITY_BEGIN, QUALITY_END  # noqa: E402  (its BENCHMARKS.md section)
from index_bench import INDEX_HEADING, TABLE_BEGIN as INDEX_BEGIN, TABLE_END as INDEX_END  # noqa: E402

SECTIONS = ("ceiling", "synthetic", "extractor_training", "extraction", "feature_training",
            "manipulation", "search", "main_job")
SECTION_TITLES = {
    "ceiling": "0. Machine ceilings",
    "synthetic": "1. Synthetic benchmark generation",
    "extractor_training": "2. Extractor training (small CNN)",
    "extraction": "3. Feature extraction",
    "feature_training": "4. Manipulator (GAN) and embedder training",
    "manipulation": "5. Manipulation latency",
    "search": "6. Exact top-k search",
    "main_job": "7. Main job (`python -m flam_tf.train`)",
}
MATMUL_N = 4096
TOP_K = sig.DEFAULT_TOP_K


# ------------------------------------------------------------------------------------------------
# Measurement helpers.

class Results:
    """Collects measurements as dicts (the objects of results.json)."""

    def __init__(self):
        self.items = []

    def add(self, section, name, unit, values, ratio=None, ratio_to=None, note="", **extra):
        values = [float(v) for v in values]
        item = {"section": section, "name": name, "unit": unit,
                "median": statistics.median(values), "min": min(values), "max": max(values),
                "runs": len(values)}
        if ratio is not None:
            item["ratio"] = float(ratio)
            item["ratio_to"] = ratio_to
        item.update(extra)
        if note:
            item["note"] = note
        self.items.append(item)
        shown = f"{item['median']:.4g} {unit} (min {item['min']:.4g}, max {item['max']:.4g}, " \
                f"n={item['runs']})"
        if ratio is not None:
            shown += f"  x{ratio:.3g} vs {ratio_to}"
        print(f"  {name:<48} {shown}", flush=True)
        return item

    def get(self, name):
        return next((i for i in self.items if i["name"] == name), None)


def interleaved(fns, rounds, warmup=1, inner=1):
    """Times each callable of `fns` (name -> fn) in interleaved rounds.

    Returns:
        name -> list of seconds per call (one per round; each the mean over `inner` calls).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    times = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
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


def matmul_fn():
    a = tf.random.normal([MATMUL_N, MATMUL_N], seed=1)
    b = tf.random.normal([MATMUL_N, MATMUL_N], seed=2)

    def run():
        c = tf.linalg.matmul(a, b)
        return c[0, 0].numpy()  # CPU eager ops are synchronous; this only forces the result

    return run


MATMUL_FLOPS = 2.0 * MATMUL_N ** 3


def profiled_flops(fn, *specs):
    """Float operations of one call of `fn(*specs)`, counted by tf.compat.v1.profiler on the traced
    graph (MatMul, Conv2D and their gradients, elementwise ops); None if the profiler fails."""
    try:
        concrete = tf.function(fn).get_concrete_function(*specs)
        opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        opts["output"] = "none"
        info = tf.compat.v1.profiler.profile(graph=concrete.graph, options=opts)
        return float(info.total_float_ops) or None
    except Exception as e:  # noqa: BLE001  (a missing count is reported, not fatal)
        print(f"  (profiler failed: {e})")
        return None


def analytic_cnn_flops(extractor):
    """Forward FLOPs per image of a FeatureExtractor, counted from its layers: Conv2D
    2*Ho*Wo*k*k*Cin*Cout, Dense 2*in*out, cosine head 2*D*classes (BN, ReLU, pooling ignored)."""
    total = 0.0
    for layer in extractor.backbone.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, ho, wo, cout = layer.output.shape
            kh, kw, cin, _ = layer.kernel.shape
            total += 2.0 * ho * wo * kh * kw * cin * cout
    if extractor.projection is not None:
        total += 2.0 * np.prod(extractor.projection.kernel.shape)
    for w in extractor.classifier.weights:
        total += 2.0 * np.prod(w.shape)
    return total


def machine_info():
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
            mem_gb = int(f.readline().split()[1]) / 2 ** 20
    except (OSError, ValueError, IndexError):
        mem_gb = None
    return {"cores": os.cpu_count(), "cpu_model": cpu, "memory_gb": mem_gb,
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__, "faiss": faiss_version,
            "load_average_start": list(os.getloadavg())}


# ------------------------------------------------------------------------------------------------
# Fake run directory of a preset's widths, for the SavedModel measurements.

def make_run_dir(root, config, num_gallery=1000):
    """Writes a run directory with untrained models of `config`'s sizes; returns its path."""
    from flam_tf.models import AttributeEmbedder, FeatureExtractor, FeatureManipulator

    keras.utils.set_random_seed(0)
    os.makedirs(os.path.join(root, "models"))
    os.makedirs(os.path.join(root, "features"))
    d, s = config.extractor.feature_dim, config.data.image_size
    config_dict = config.to_dict()
    config_dict["model"] = {"feature_dim": d}  # the key export_run reads (see BENCHMARKS.md)
    with open(os.path.join(root, "config.json"), "w") as f:
        json.dump(config_dict, f)
    extractor = FeatureExtractor(backbone=config.extractor.backbone, feature_dim=d, image_size=s,
                                 num_ce_classes=config.extractor.num_ce_classes)
    extractor(np.zeros((1, s, s, 3), np.float32))
    embedder = AttributeEmbedder(d, embedding_dim=config.embedder.embedding_dim,
                                 hidden_units=config.embedder.hidden_units)
    m = config.manipulator
    manipulator = FeatureManipulator(embedder, d, embedding_dim=config.embedder.embedding_dim,
                                     g_hidden=(m.g_hidden, m.g_hidden),
                                     d_hidden=(m.d_hidden, m.d_hidden))
    for name, model in (("extractor", extractor), ("embedder", embedder),
                        ("manipulator", manipulator)):
        model.save(os.path.join(root, "models", f"{name}.keras"))
    rng = np.random.default_rng(0)
    feature = rng.standard_normal((num_gallery, d)).astype(np.float32)
    feature /= np.linalg.norm(feature, axis=1, keepdims=True)
    np.savez(os.path.join(root, "features", "fam_gallery.npz"), feature=feature,
             path=np.array([f"images/g{i:06d}.png" for i in range(num_gallery)]),
             instance_id=np.array([f"g{i}" for i in range(num_gallery)]))
    return root


def synthetic_images(n, image_size, seed=0):
    """uint8 [n, S, S, 3] images of the synthetic benchmark (shop and street views)."""
    cfg = synthetic.SyntheticConfig(num_instances=max(n, 50), seed=seed, image_size=image_size)
    specs = synthetic.image_specs(cfg)[:n]
    return synthetic.render_specs(specs, cfg)


# ------------------------------------------------------------------------------------------------
# Sections.

def bench_ceiling(res, p):
    print("[ceiling]", flush=True)
    mm = matmul_fn()
    src = np.ones(p["copy_bytes"] // 4, np.float32)
    dst = np.empty_like(src)
    t = interleaved({"matmul": mm, "copy": lambda: np.copyto(dst, src)}, p["rounds"])
    res.add("ceiling", "matmul_4096_float32", "GFLOP/s",
            [MATMUL_FLOPS / x / 1e9 for x in t["matmul"]],
            note="tf.linalg.matmul of two 4096x4096 float32 matrices: the compute ceiling")
    res.add("ceiling", "memory_copy_bandwidth", "GB/s",
            [src.nbytes / x / 1e9 for x in t["copy"]],
            note=f"np.copyto of {src.nbytes / 2**20:.0f} MiB, bytes copied per second "
                 "(each byte read once and written once)")
    p["copy_bandwidth"] = res.get("memory_copy_bandwidth")["median"] * 1e9


def bench_synthetic(res, p):
    print("[synthetic]", flush=True)
    jobs = {}
    for size, n in p["synthetic_images"].items():
        cfg = synthetic.SyntheticConfig(num_instances=max(n, 50), seed=0, image_size=size)
        specs = synthetic.image_specs(cfg)[:n]
        jobs[size] = (specs, cfg)
    t = interleaved({s: (lambda s=s: synthetic.render_specs(*jobs[s])) for s in jobs},
                    p["rounds"])
    for size, (specs, _) in jobs.items():
        res.add("synthetic", f"synthetic_render_{size}px", "images/s",
                [len(specs) / x for x in t[size]],
                note=f"render_specs of {len(specs)} images (shop and street views), numpy")


def _training_rounds(step_fn, steps, examples_per_step, flops_per_example, rounds):
    mm = matmul_fn()
    t = interleaved({"train": lambda: [step_fn() for _ in range(steps)], "matmul": mm}, rounds)
    rate = [steps * examples_per_step / x for x in t["train"]]
    fractions = []
    if flops_per_example:
        for tt, tm in zip(t["train"], t["matmul"]):
            fractions.append((steps * examples_per_step * flops_per_example / tt)
                             / (MATMUL_FLOPS / tm))
    return rate, fractions


def bench_extractor_training(res, p):
    print("[extractor_training]", flush=True)
    from flam_tf.models import FeatureExtractor

    c = p["config"]
    s, pk = c.data.image_size, (c.extractor.instances_per_batch, c.extractor.images_per_instance)
    batch = pk[0] * pk[1]
    keras.utils.set_random_seed(0)
    model = FeatureExtractor(backbone=c.extractor.backbone, pooling=c.extractor.pooling,
                             feature_dim=c.extractor.feature_dim, image_size=s,
                             num_ce_classes=c.extractor.num_ce_classes)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images = tf.constant(synthetic_images(batch, s).astype(np.float32))
    labels = np.repeat(np.arange(pk[0], dtype=np.int32), pk[1])
    targets = {"instance": tf.constant(labels), "ce_class": tf.constant(labels)}
    step = lambda: model.train_on_batch(images, targets)  # noqa: E731
    step()
    forward = analytic_cnn_flops(model)
    profiled = profiled_flops(lambda x, y: model.train_step((x, y)),
                              tf.TensorSpec(images.shape, tf.float32),
                              {k: tf.TensorSpec([batch], tf.int32) for k in targets})
    # The same model under the mixed_bfloat16 policy (this CPU has AVX-512 BF16 / AMX, which
    # oneDNN uses for bf16 convolutions and matmuls): is lower precision what would speed it up?
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        bf16 = FeatureExtractor(backbone=c.extractor.backbone, pooling=c.extractor.pooling,
                                feature_dim=c.extractor.feature_dim, image_size=s,
                                num_ce_classes=c.extractor.num_ce_classes)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    bf16.compile(optimizer=keras.optimizers.Adam(1e-3))
    bf16_step = lambda: bf16.train_on_batch(images, targets)  # noqa: E731
    bf16_step()
    steps = p["train_steps"]
    t = interleaved({"float32": lambda: [step() for _ in range(steps)],
                     "bf16": lambda: [bf16_step() for _ in range(steps)],
                     "matmul": matmul_fn()}, p["rounds"])
    rate = [steps * batch / x for x in t["float32"]]
    fractions = [(steps * batch * 3 * forward / tt) / (MATMUL_FLOPS / tm)
                 for tt, tm in zip(t["float32"], t["matmul"])]
    res.add("extractor_training", f"extractor_train_{s}px", "images/s", rate,
            note=f"{c.extractor.backbone}, feature_dim {c.extractor.feature_dim}, "
                 f"PK batch {batch}, "
                 "CE + triplet, Adam, train_on_batch on in-memory images")
    res.add("extractor_training", f"extractor_train_{s}px_mixed_bfloat16", "images/s",
            [steps * batch / x for x in t["bf16"]], ratio=paired_ratio(t["bf16"], t["float32"]),
            ratio_to=f"extractor_train_{s}px",
            note="the same training step under keras.mixed_precision `mixed_bfloat16`")
    res.add("extractor_training", "extractor_train_fraction_of_matmul", "fraction", fractions,
            ratio=statistics.median(fractions), ratio_to="matmul_4096_float32",
            flops_per_image=3 * forward, flops_per_image_profiler=(profiled / batch
                                                                   if profiled else None),
            note=f"FLOPs counted analytically from the layers: {forward / 1e6:.1f} MFLOP forward "
                 f"per image, training = 3x forward; the tf.compat.v1.profiler count of the "
                 f"traced train_step is "
                 f"{(profiled / batch / 1e6) if profiled else float('nan'):.1f} MFLOP per image")


def bench_feature_training(res, p):
    print("[feature_training]", flush=True)
    from flam_tf.models import AttributeEmbedder, FeatureManipulator

    c = p["config"]
    d, rng = c.extractor.feature_dim, np.random.default_rng(0)
    keras.utils.set_random_seed(0)

    def unit(n):
        x = rng.standard_normal((n, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    # Embedders (Eq. 2): sparse labels, -1 where missing.
    e = c.embedder
    embedder = AttributeEmbedder(d, embedding_dim=e.embedding_dim, hidden_units=e.hidden_units,
                                 margin=e.margin)
    embedder.compile(optimizer=keras.optimizers.Adam(e.learning_rate))
    xe = tf.constant(unit(e.batch_size))
    ye = np.stack([rng.integers(0, vocabulary.NUM_CLASSES[a], e.batch_size)
                   for a in vocabulary.ATTRIBUTE_TYPES], axis=1).astype(np.int32)
    ye[rng.random(ye.shape) < 0.3] = -1
    ye = tf.constant(ye)
    embedder.train_on_batch(xe, ye)
    e_flops = profiled_flops(lambda x, y: embedder.train_step((x, y)),
                             tf.TensorSpec(xe.shape, tf.float32), tf.TensorSpec(ye.shape, tf.int32))

    # Manipulator GAN (Eq. 3-5).
    m = c.manipulator
    from flam_tf import stages

    man = FeatureManipulator(embedder, d, embedding_dim=e.embedding_dim,
                             g_hidden=(m.g_hidden, m.g_hidden), d_hidden=(m.d_hidden, m.d_hidden),
                             **stages.manipulator_settings(m, stages.FLAM))
    # The retrieval term ranks against the training pool: 64 batches' worth, about the default
    # preset's 16,600 training features.
    bank = unit(64 * m.batch_size)
    bank_labels = man.pseudo_labels(bank)
    man.initialize_memory(bank, bank_labels)
    man.set_retrieval_bank(bank, bank_labels)
    man.compile(g_optimizer=keras.optimizers.Adam(m.g_learning_rate, beta_1=0.5),
                d_optimizer=keras.optimizers.Adam(m.d_learning_rate, beta_1=0.5))
    xm = tf.constant(unit(m.batch_size))
    man.train_on_batch(xm)
    m_flops = profiled_flops(lambda x: man.train_step((x,)), tf.TensorSpec(xm.shape, tf.float32))

    for name, step, batch, flops, what in (
            ("manipulator", lambda: man.train_on_batch(xm), m.batch_size, m_flops,
             f"memory G and D {m.g_hidden}x2 / {m.d_hidden}x2, batch {m.batch_size}, one D and "
             f"one G update per step, retrieval term over {64 * m.batch_size} bank features"),
            ("embedder", lambda: embedder.train_on_batch(xe, ye), e.batch_size, e_flops,
             f"3 embedders of {e.hidden_units} hidden units, k={e.embedding_dim}, "
             f"batch {e.batch_size}")):
        per_example = flops / batch if flops else None
        rate, fractions = _training_rounds(step, p["feature_steps"], batch, per_example,
                                           p["rounds"])
        res.add("feature_training", f"{name}_train", "examples/s", rate,
                note=f"feature_dim {d}; {what}; train_on_batch on in-memory features")
        if fractions:
            res.add("feature_training", f"{name}_train_fraction_of_matmul", "fraction", fractions,
                    ratio=statistics.median(fractions), ratio_to="matmul_4096_float32",
                    flops_per_example=per_example,
                    note=f"{per_example / 1e6:.2f} MFLOP per example, counted by "
                         "tf.compat.v1.profiler on the traced train_step graph")


def _export(p):
    """Fake run dir of the preset's widths and its export (built once)."""
    if "export" not in p:
        from flam_tf.serving import export
        root = make_run_dir(os.path.join(p["work"], "serving_run"), p["config"])
        p["export"] = export.export_run(root, output=os.path.join(p["work"], "serving_export"))
        p["run_dir"] = root
    return p["export"]


def bench_extraction(res, p):
    print("[extraction]", flush=True)
    from flam_tf.serving import export

    written = _export(p)
    _, extractor, _ = export.load_run_models(p["run_dir"])
    loaded = tf.saved_model.load(written[sig.EXTRACTOR])
    from_bytes, from_pixels = (loaded.signatures[sig.SERVING_DEFAULT],
                               loaded.signatures[sig.FROM_PIXELS])
    s, n = p["config"].data.image_size, p["extract_batch"]
    pixels = synthetic_images(n, s)
    jpegs = tf.constant([tf.io.encode_jpeg(img, quality=90).numpy() for img in pixels])
    pixels_u8, pixels_f = tf.constant(pixels), pixels.astype(np.float32)
    fns = {
        "predict": lambda: extractor.predict(pixels_f, batch_size=n, verbose=0),
        "from_pixels": lambda: from_pixels(**{sig.IMAGES: pixels_u8})[sig.FEATURE].numpy(),
        "jpeg": lambda: from_bytes(**{sig.IMAGE_BYTES: jpegs})[sig.FEATURE].numpy(),
        "keras_call": lambda: extractor(pixels_f, training=False).numpy(),
    }
    t = interleaved(fns, p["rounds"], warmup=2)
    what = f"{n} images of {s}x{s} per call"
    res.add("extraction", "extract_keras_predict", "images/s", [n / x for x in t["predict"]],
            note=f"keras.Model.predict on float32 pixels, {what}")
    res.add("extraction", "extract_keras_call", "images/s", [n / x for x in t["keras_call"]],
            ratio=paired_ratio(t["keras_call"], t["predict"]), ratio_to="extract_keras_predict",
            note=f"model(x, training=False) eagerly, {what}")
    res.add("extraction", "extract_savedmodel_from_pixels", "images/s",
            [n / x for x in t["from_pixels"]],
            ratio=paired_ratio(t["from_pixels"], t["predict"]), ratio_to="extract_keras_predict",
            note=f"`from_pixels` signature, uint8 in (cast + bilinear resize in the graph), {what}")
    res.add("extraction", "extract_savedmodel_jpeg", "images/s", [n / x for x in t["jpeg"]],
            ratio=paired_ratio(t["jpeg"], t["predict"]), ratio_to="extract_keras_predict",
            note=f"`serving_default` signature, JPEG bytes in (decode + resize per image via "
                 f"tf.map_fn), {what}")


def bench_manipulation(res, p):
    print("[manipulation]", flush=True)
    from flam_tf.serving import export
    from flam_tf.serving.client import FlamClient
    from flam_tf.serving.dev_server import create_server

    written = _export(p)
    _, _, manipulator = export.load_run_models(p["run_dir"])
    signature = tf.saved_model.load(written[sig.MANIPULATOR]).signatures[sig.SERVING_DEFAULT]
    server, port, _ = create_server(written["models.config"], port=0, max_workers=4)
    server.start()
    client = FlamClient(f"127.0.0.1:{port}", timeout_s=30.0)
    try:
        d = p["config"].extractor.feature_dim
        rng = np.random.default_rng(0)
        for batch in (1, 64):
            x = rng.standard_normal((batch, d)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            attrs = tf.constant(["color"] * batch)
            values = tf.constant(["red"] * batch)
            xt = tf.constant(x)
            fns = {
                "keras": lambda: np.asarray(manipulator.manipulate(x, "color", "red")),
                "savedmodel": lambda: signature(**{sig.FEATURE: xt, sig.ATTRIBUTE: attrs,
                                                   sig.VALUE: values})[sig.FEATURE].numpy(),
                "grpc": lambda: client.manipulate(x, "color", "red"),
            }
            t = interleaved(fns, p["latency_iters"], warmup=5)
            labels = {"keras": "Keras model in-process (eager `manipulate`)",
                      "savedmodel": "loaded SavedModel `serving_default` signature",
                      "grpc": "FlamClient gRPC round trip to the local dev server"}
            for key in ("keras", "savedmodel", "grpc"):
                ms = [v * 1e3 for v in t[key]]
                extra = {"p50": percentile(ms, 50), "p99": percentile(ms, 99)}
                kw = {}
                if key != "keras":
                    base = "savedmodel" if key == "grpc" else "keras"
                    kw = {"ratio": statistics.median(t[base]) / statistics.median(t[key]),
                          "ratio_to": f"manipulate_{base}_batch{batch}"}
                res.add("manipulation", f"manipulate_{key}_batch{batch}", "ms", ms, **kw, **extra,
                        note=f"{labels[key]}, batch {batch}, one edit (color=red); p50 "
                             f"{extra['p50']:.3g} ms, p99 {extra['p99']:.3g} ms")
    finally:
        client.close()
        server.stop(0)


def bench_search(res, p):
    print("[search]", flush=True)
    from flam_tf.serving import export

    try:
        import faiss
    except ImportError:
        faiss = None
        print("  faiss-cpu is not installed: IndexFlatIP skipped (pip install -e '.[bench]')")
    d, k, rng = p["config"].extractor.feature_dim, TOP_K, np.random.default_rng(1)
    bandwidth = p.get("copy_bandwidth")
    for n in p["gallery_sizes"]:
        gallery = rng.standard_normal((n, d), dtype=np.float32)
        gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
        ids = np.char.add("g", np.arange(n).astype(str))
        path = os.path.join(p["work"], f"searcher_{n}")
        shutil.rmtree(path, ignore_errors=True)
        archive = export.build_searcher_archive(gallery, ids, k)
        archive.write_out(path, verbose=False)
        del archive
        gc.collect()
        signature = tf.saved_model.load(path).signatures[sig.SERVING_DEFAULT]
        index = None
        if faiss is not None:
            index = faiss.IndexFlatIP(d)
            index.add(gallery)

        def numpy_search(q):
            q = q / np.linalg.norm(q, axis=1, keepdims=True)
            scores = q @ gallery.T
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            part = np.take_along_axis(scores, top, axis=1)
            order = np.argsort(-part, axis=1)
            return np.take_along_axis(top, order, axis=1), np.take_along_axis(part, order, axis=1)

        for batch in (1, 64):
            q = rng.standard_normal((batch, d), dtype=np.float32)
            qt = tf.constant(q)
            qn = q / np.linalg.norm(q, axis=1, keepdims=True)
            fns = {"searcher": lambda: signature(**{sig.FEATURE: qt})[sig.SCORES].numpy(),
                   "numpy": lambda: numpy_search(q)}
            if index is not None:
                # One OpenMP thread for single queries: with 2, faiss' threads spin-wait at each
                # barrier, and on a 2-core machine shared with another job that measured 12.7 ms
                # against 0.42 ms for 1 thread (10k gallery). Batches use every core.
                faiss.omp_set_num_threads(1 if batch == 1 else os.cpu_count())
                fns["faiss"] = lambda: index.search(qn, k)
            # Same answers: the top-1 of every method is the same gallery item.
            top1 = {"numpy": numpy_search(q)[0][:, 0]}
            top1["searcher"] = np.char.lstrip(signature(**{sig.FEATURE: qt})[sig.IDS].numpy()[:, 0]
                                              .astype(str), "g").astype(int)
            if index is not None:
                top1["faiss"] = index.search(qn, k)[1][:, 0]
            for name, value in top1.items():
                if not np.array_equal(value, top1["numpy"]):
                    raise AssertionError(f"search {name} disagrees with numpy at N={n}")
            inner = max(1, int(p["search_inner_elements"] // (n * batch)))
            t = interleaved(fns, p["search_rounds"], warmup=1, inner=min(inner, 50))
            where = f"N={n:,} x {d} float32 ({gallery.nbytes / 2**20:.0f} MiB), k={k}, " \
                    f"batch {batch}"
            unit, scale = ("ms", 1e3) if batch == 1 else ("queries/s", None)
            conv = (lambda x: x * 1e3) if batch == 1 else (lambda x: batch / x)
            for key in fns:
                kw = {} if key == "numpy" else {"ratio": paired_ratio(t[key], t["numpy"]),
                                                "ratio_to": f"search_numpy_{n}_batch{batch}"}
                label = {"searcher": "`searcher` SavedModel signature",
                         "numpy": "numpy matmul + argpartition",
                         "faiss": f"faiss-cpu {faiss.__version__ if faiss else ''} IndexFlatIP, "
                                  f"{faiss.omp_get_max_threads() if faiss else 0} OpenMP "
                                  "thread(s)"}
                res.add("search", f"search_{key}_{n}_batch{batch}", unit, [conv(x) for x in t[key]],
                        **kw, note=f"{label[key]}, {where}")
            if bandwidth and batch == 1:
                floor_ms = gallery.nbytes / bandwidth * 1e3
                res.add("search", f"search_floor_{n}", "ms", [floor_ms],
                        note=f"memory floor: {gallery.nbytes / 2**20:.0f} MiB gallery / measured "
                             "copy bandwidth (one pass over the gallery per query batch)")
        del signature, index, gallery
        gc.collect()
        shutil.rmtree(path, ignore_errors=True)


# Runs a command and writes its exit code, wall time and peak RSS as JSON. The job is started from
# this small process, not from the benchmark process: Linux carries a process' RSS high-water mark
# across fork + exec, so a child forked from a benchmark holding a 1 GB gallery would report that.
_LAUNCHER = (
    "import json, resource, subprocess, sys, time\n"
    "start = time.perf_counter()\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "with open(sys.argv[1], 'w') as f:\n"
    "    json.dump({'code': code, 'seconds': time.perf_counter() - start,\n"
    "               'maxrss_kib': usage.ru_maxrss}, f)\n")


def _run_train(preset, run_dir, log_path):
    """Runs `python -m flam_tf.train` as a child; returns (seconds, peak RSS MiB, exit code)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = run_dir + ".rusage.json"
    with open(log_path, "w") as log:
        subprocess.run([sys.executable, "-c", _LAUNCHER, result, sys.executable, "-m",
                        "flam_tf.train", f"--preset={preset}", "--run_dir", run_dir],
                       cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    with open(result) as f:
        r = json.load(f)
    return r["seconds"], r["maxrss_kib"] / 1024.0, r["code"]  # ru_maxrss is in KiB on Linux


def bench_main_job(res, p):
    print("[main_job]", flush=True)
    from flam_tf.run_directory import RunDirectory

    for preset, runs in p["main_job"]:
        walls, peaks, stage_times, codes = [], [], {}, []
        for i in range(runs):
            run_dir = os.path.join(p["work"], f"main_{preset}_{i}")
            shutil.rmtree(run_dir, ignore_errors=True)
            log = run_dir + ".log"
            wall, peak, code = _run_train(preset, run_dir, log)
            walls.append(wall)
            peaks.append(peak)
            codes.append(code)
            for stage, seconds in RunDirectory(run_dir).timings().items():
                stage_times.setdefault(stage, []).append(seconds)
            print(f"  {preset} run {i}: {wall:.1f} s, peak RSS {peak:.0f} MiB, exit {code}"
                  + (f" (log {log})" if code else ""), flush=True)
        failed = [s for s in config_lib.STAGES if s not in stage_times]
        status = "" if not any(codes) else \
            f"; exit code {codes[0]}: stages not finished: {', '.join(failed)}"
        res.add("main_job", f"main_{preset}_wall", "s", walls,
                note=f"`python -m flam_tf.train --preset={preset}` in a fresh run dir, including "
                     f"interpreter start{status}", exit_codes=codes, failed_stages=failed)
        res.add("main_job", f"main_{preset}_peak_rss", "MiB", peaks,
                note="peak resident set size of the training process (getrusage of a launcher's "
                     "only child)")
        for stage in config_lib.STAGES:
            if stage in stage_times:
                res.add("main_job", f"main_{preset}_stage_{stage}", "s", stage_times[stage],
                        note=f"stages.json seconds of stage `{stage}`")
        if preset == p["main_job"][-1][0] and "extractor" in stage_times:
            bench_input_pipeline(res, p, run_dir, preset)
        if preset == p["config"].preset and stage_times:
            _stage_throughput(res, p, run_dir, preset, stage_times)


def _stage_throughput(res, p, run_dir, preset, stage_times):
    """Examples per second of each training stage in the main job, against the in-memory step
    of the same widths measured above (ratio not paired: other rounds)."""
    with open(os.path.join(run_dir, "config.json")) as f:
        c = json.load(f)  # the run's own settings (the preset as resolved when it ran)
    from flam_tf.run_directory import RunDirectory

    counts = (RunDirectory(run_dir).stage_info("data") or {}).get("info", {})
    e, m, x = c["embedder"], c["manipulator"], c["extractor"]
    n_man = sum(counts.get(k, 0) for k in ("extractor_train", "attribute_train", "unlabelled"))
    n_emb = counts.get("attribute_train", 0)
    bs_man, bs_emb = min(m["batch_size"], n_man or 1), min(e["batch_size"], n_emb or 1)
    rows = {
        "extractor": ("images/s", x["epochs"] * x["steps_per_epoch"] * x["instances_per_batch"]
                      * x["images_per_instance"], f"extractor_train_{c['data']['image_size']}px",
                      "pk_dataset pipeline (PNG decode + augment on the same cores)"),
        "manipulator": ("examples/s", m["epochs"] * (n_man // bs_man) * bs_man,
                        "manipulator_train", "shuffled in-memory features"),
        "embedders": ("examples/s", e["epochs"] * (n_emb // bs_emb) * bs_emb, "embedder_train",
                      "shuffled in-memory features"),
    }
    for stage, (unit, examples, reference, data) in rows.items():
        ref = res.get(reference)
        if stage not in stage_times or not examples or not ref:
            continue
        rates = [examples / t for t in stage_times[stage]]
        res.add("main_job", f"main_{preset}_{stage}_{unit.split('/')[0]}_per_s", unit, rates,
                ratio=statistics.median(rates) / ref["median"], ratio_to=reference,
                note=f"{examples:,} training examples / `{stage}` stage seconds: {data}, "
                     "tracing, per-epoch checkpoints and summaries and the model save included; "
                     "ratio not paired (other rounds)")


def bench_input_pipeline(res, p, run_dir, preset):
    """The extractor's input pipeline alone: `pk_dataset` (read + PNG decode + augment) over the
    images the main job wrote, without training; to compare with the training step's rate."""
    from flam_tf.data import manifest as manifest_lib
    from flam_tf.data import pipeline

    c = config_lib.get_preset(preset)
    s, pk = c.data.image_size, (c.extractor.instances_per_batch, c.extractor.images_per_instance)
    batch = pk[0] * pk[1]
    train = manifest_lib.read_manifest(os.path.join(run_dir, "data", "manifest.csv")).split(
        "extractor_train")
    ds, _ = pipeline.pk_dataset(train, s, pk[0], pk[1], c.extractor.num_ce_classes, seed=0)
    it, n = iter(ds), p["pipeline_batches"]
    # Rounds of many batches, so the few batches prefetched between rounds hardly count.
    t = interleaved({"png": lambda: [next(it) for _ in range(n)]}, p["rounds"], warmup=1)
    train_rate = res.get(f"extractor_train_{s}px")
    rates = [n * batch / x for x in t["png"]]
    kw = {}
    if train_rate:
        kw = {"ratio": statistics.median(rates) / train_rate["median"],
              "ratio_to": train_rate["name"]}
    res.add("main_job", f"pipeline_pk_dataset_{s}px", "images/s", rates, **kw,
            note=f"`pk_dataset` alone (read + PNG decode + augment, batches of {batch}, tf.data "
                 f"AUTOTUNE) over the {preset} run's extractor_train images, no training; ratio "
                 "not paired (other rounds)")


BENCHES = {"ceiling": bench_ceiling, "synthetic": bench_synthetic,
           "extractor_training": bench_extractor_training, "extraction": bench_extraction,
           "feature_training": bench_feature_training, "manipulation": bench_manipulation,
           "search": bench_search, "main_job": bench_main_job}


def parameters(quick, work):
    if quick:
        return {"config": config_lib.get_preset("smoke"), "work": work, "rounds": 3,
                "copy_bytes": 64 * 2 ** 20, "synthetic_images": {64: 32, 224: 4},
                "train_steps": 2, "feature_steps": 3, "extract_batch": 64, "latency_iters": 20,
                "gallery_sizes": (10_000,), "search_rounds": 3, "search_inner_elements": 2e6,
                "main_job": (("smoke", 1),), "pipeline_batches": 50}
    return {"config": config_lib.get_preset("default"), "work": work, "rounds": 7,
            "copy_bytes": 512 * 2 ** 20, "synthetic_images": {64: 256, 224: 32},
            "train_steps": 10, "feature_steps": 10, "extract_batch": 256, "latency_iters": 200,
            "gallery_sizes": (10_000, 100_000, 1_000_000), "search_rounds": 7,
            "search_inner_elements": 2e7, "main_job": (("smoke", 3), ("default", 1)),
            "pipeline_batches": 100}


# ------------------------------------------------------------------------------------------------
# Report.

def _fmt(v):
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def write_markdown(path, results, machine, mode, elapsed, findings):
    lines = [
        "# flam_tf benchmarks",
        "",
        f"Generated by `python benchmarks/run.py{' --quick' if mode == 'quick' else ''}` "
        f"({mode} run, {elapsed / 60:.1f} min, {machine['date']}); do not edit by hand. "
        "Raw figures: `benchmarks/results.json`.",
        "",
        f"**Machine:** {machine['cores']} cores, {machine['cpu_model']}, "
        f"{_fmt(machine['memory_gb'])} GiB memory; Python {machine['python']}, TensorFlow "
        f"{machine['tensorflow']}, Keras {machine['keras']}, numpy {machine['numpy']}, faiss-cpu "
        f"{machine['faiss'] or 'not installed'}. Load average (1/5/15 min) at the start "
        f"{'/'.join(f'{x:.1f}' for x in machine['load_average_start'])}, at the end "
        f"{'/'.join(f'{x:.1f}' for x in machine['load_average_end'])}.",
        "",
        "**Method.** Median of several runs (min and max beside it). Compared variants run in "
        "interleaved rounds, so a neighbour's load hits them alike, and a ratio is the median of "
        "the per-round ratios. **ratio = speed relative to `ratio_to`** (x2 = twice as fast, "
        "x0.5 = half as fast); for the `fraction` rows it is the achieved FLOP/s over the "
        "4096x4096 matmul's FLOP/s measured in the same rounds. Serving rows use untrained "
        "models of the preset's widths (timings do not depend on weights), saved as a run "
        "directory and exported with `export_run`.",
        "",
        "| measurement | unit | median | min | max | runs | ratio | vs | what |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    section = None
    for r in results:
        if r["section"] != section:
            section = r["section"]
            lines.append(f"| **{SECTION_TITLES[section]}** | | | | | | | | |")
        ratio = f"x{r['ratio']:.3g}" if "ratio" in r else ""
        lines.append(f"| `{r['name']}` | {r['unit']} | {_fmt(r['median'])} | {_fmt(r['min'])} | "
                     f"{_fmt(r['max'])} | {r['runs']} | {ratio} | {r.get('ratio_to') or ''} | "
                     f"{r.get('note', '')} |")
    lines += ["", "## Findings", ""] + findings + [""]
    text = "\n".join(lines)
    # The quality and catalogue-index sections belong to benchmarks/quality.py and
    # benchmarks/index_bench.py: carried over unchanged.
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        for heading, begin, end in (("", QUALITY_BEGIN, QUALITY_END),
                                    (INDEX_HEADING, INDEX_BEGIN, INDEX_END)):
            if begin in old and end in old:
                kept = old[old.index(begin):old.index(end) + len(end)]
                text = text.rstrip("\n") + "\n\n" + heading + kept + "\n"
    with open(path, "w") as f:
        f.write(text)


def findings(res):
    """Plain-language conclusions computed from this run's figures."""
    out = []
    g = lambda name, key="median": (res.get(name) or {}).get(key)  # noqa: E731
    fr = [(n, g(n)) for n in ("extractor_train_fraction_of_matmul",
                              "manipulator_train_fraction_of_matmul",
                              "embedder_train_fraction_of_matmul") if g(n) is not None]
    if fr:
        out.append("- **Training against the compute ceiling:** " + "; ".join(
            f"`{n.replace('_fraction_of_matmul', '')}` reaches {v:.1%} of the matmul FLOP/s"
            for n, v in fr) + ".")
    stages = [r for r in res.items if r["name"].startswith("main_default_stage_")] or \
        [r for r in res.items if r["name"].startswith("main_smoke_stage_")]
    if stages:
        total = sum(r["median"] for r in stages)
        top = sorted(stages, key=lambda r: -r["median"])[:3]
        prefix = stages[0]["name"].split("_stage_")[0]
        wall = g(prefix + "_wall")
        out.append(f"- **Where the main job's time goes** (`{prefix}`: {_fmt(wall)} s wall, "
                   f"{total:.0f} s in stages, the rest interpreter and TensorFlow start-up): "
                   + ", ".join(f"`{r['name'].split('_stage_')[1]}` "
                                      f"{r['median']:.0f} s ({r['median'] / total:.0%})"
                                      for r in top) + ".")
    # The project's own paths measured against a plain alternative (numpy, predict).
    slower = [r for r in res.items if "ratio" in r and r["ratio"] < 0.95
              and r["name"].startswith(("search_searcher", "extract_savedmodel"))]
    if slower:
        out.append("- **Slower than the plain alternative in this run:** " + "; ".join(
            f"`{r['name']}` x{r['ratio']:.2f} vs `{r['ratio_to']}`" for r in slower)
                   + " (explained below).")
    for r in res.items:
        if r["name"].startswith("main_") and r["name"].endswith("_wall") and r.get("failed_stages"):
            out.append(f"- **`{r['name']}` did not finish:** exit code {r['exit_codes'][0]}, "
                       f"stages not run: {', '.join(r['failed_stages'])}.")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke sizes, under 3 minutes")
    parser.add_argument("--output", default=None,
                        help="folder for results.json and BENCHMARKS.md (default: the repository)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--report_only", action="store_true",
                        help="rewrite BENCHMARKS.md from the output's results.json; "
                             "measure nothing")
    args = parser.parse_args(argv)
    only = [s for s in args.only.split(",") if s] or list(SECTIONS)
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"Unknown sections {sorted(unknown)}; expected a subset of {SECTIONS}")
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        json_path = os.path.join(args.output, "results.json")
        md_path = os.path.join(args.output, "BENCHMARKS.md")
    else:
        json_path = os.path.join(REPO, "benchmarks", "results.json")
        md_path = os.path.join(REPO, "BENCHMARKS.md")

    if args.report_only:
        with open(json_path) as f:
            saved = json.load(f)
        res = Results()
        res.items = saved["measurements"]
        write_markdown(md_path, res.items, saved["machine"], saved["mode"], saved["seconds"],
                       findings(res) + explanations(res))
        print(f"rewrote {md_path} from {json_path}")
        return

    work = args.work or tempfile.mkdtemp(prefix="flam_bench_")
    os.makedirs(work, exist_ok=True)
    mode = "quick" if args.quick else "full"
    p = parameters(args.quick, work)
    machine = machine_info()
    machine["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"flam_tf benchmarks ({mode}): {machine['cores']} cores, {machine['cpu_model']}, "
          f"TF {machine['tensorflow']}; work dir {work}", flush=True)
    res = Results()
    start = time.perf_counter()
    try:
        for section in SECTIONS:
            if section in only or (section == "ceiling" and "search" in only):
                BENCHES[section](res, p)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - start
    machine["load_average_end"] = list(os.getloadavg())
    with open(json_path, "w") as f:
        json.dump({"mode": mode, "seconds": round(elapsed, 1), "machine": machine,
                   "measurements": res.items}, f, indent=1)
    write_markdown(md_path, res.items, machine, mode, elapsed, findings(res) + explanations(res))
    print(f"wrote {json_path} and {md_path} in {elapsed:.0f} s")


def explanations(res):
    """Why each layer or variant costs what it does; figures are read from this run's results."""
    g = lambda name, key="median": (res.get(name) or {}).get(key)  # noqa: E731
    out = ["", "### Slowest part against its ceiling, and what would speed it up most", ""]
    ex, ex_fr = g("extractor_train_64px") or g("extractor_train_32px"), \
        g("extractor_train_fraction_of_matmul")
    bf = g("extractor_train_64px_mixed_bfloat16", "ratio") or \
        g("extractor_train_32px_mixed_bfloat16", "ratio")
    job = res.get("main_default_extractor_images_per_s") or \
        res.get("main_smoke_extractor_images_per_s")
    if ex and ex_fr is not None:
        out.append(
            f"- The extractor's training step runs at {_fmt(ex)} images/s, {ex_fr:.0%} of the "
            "matmul ceiling. Lower precision is not the lever: the same step under "
            f"`mixed_bfloat16` (oneDNN bf16 on this CPU's AVX-512 BF16/AMX) ran at x{bf:.2f}. At "
            "64x64 the four stride-2 convolutions work on 32x32 down to 4x4 maps, so BatchNorm, "
            "ReLU, the triplet mining (a 64x64 distance matrix), Adam and per-op dispatch take a "
            "share the convolutions' FLOPs do not count.")
    stages = [r for r in res.items if r["name"].startswith("main_default_stage_")] or \
        [r for r in res.items if r["name"].startswith("main_smoke_stage_")]
    if stages:
        top = max(stages, key=lambda r: r["median"])
        prefix, stage = top["name"].split("_stage_")
        total = sum(r["median"] for r in stages)
        rate = res.get(f"{prefix}_{stage}_examples_per_s") or \
            res.get(f"{prefix}_{stage}_images_per_s")
        line = (f"- **Slowest part of the main job: the `{stage}` stage**, {top['median']:.0f} s "
                f"of {total:.0f} s in stages ({top['median'] / total:.0%}, `{prefix}`).")
        if rate and rate.get("ratio"):
            ref = res.get(rate["ratio_to"])
            examples = rate["median"] * top["median"]
            inside = examples / ref["median"]
            fr = g(rate["ratio_to"] + "_fraction_of_matmul")
            line += (f" It trains at {_fmt(rate['median'])} {rate['unit']}, x{rate['ratio']:.2f} "
                     f"of its in-memory step ({_fmt(ref['median'])} {ref['unit']}"
                     + (f", itself {fr:.0%} of the matmul ceiling" if fr is not None else "")
                     + f"): at the in-memory rate its {examples:,.0f} examples would take "
                     f"{inside:.0f} s, so about {top['median'] - inside:.0f} s go elsewhere "
                     "(slower steps while the input pipeline and the other job share the cores, "
                     "the per-epoch work of `fit`: BackupAndRestore checkpoints, TensorBoard "
                     "summaries, refilling the shuffle buffer; tracing; the model save).")
            flops = (res.get(rate["ratio_to"] + "_fraction_of_matmul") or {}).get(
                "flops_per_example")
            if top["median"] - inside < 0.25 * top["median"]:
                line += (" So the step itself is the lever, and it already runs at a good "
                         "fraction of the ceiling: what would speed the stage up most is less "
                         "work, i.e. fewer epochs if the FAM metrics allow, or fewer FLOPs per "
                         + (f"example ({_fmt(flops / 1e6)} MFLOP" if flops else "example (")
                         + ": G runs twice per example, for the edit and the cycle "
                         "reconstruction, D on real and edited features, plus the frozen "
                         "embedders, forward and backward). Lower precision is untested for "
                         "these 512-wide MLPs: the manipulator does not train under "
                         "`mixed_bfloat16` today (a float32/bfloat16 mismatch in its step, seen "
                         "while preparing this report).")
            else:
                line += (" The fixed per-epoch work is the bigger lever here: checkpoint every "
                         "few epochs, or use fewer, longer epochs.")
        out.append(line)
    pipe = [r for r in res.items if r["name"].startswith("pipeline_pk_dataset_")]
    if job and pipe and ex:
        x, y = pipe[-1]["median"], ex
        out.append(
            f"- **In the main job** (`{job['name']}`) the extractor stage trains at "
            f"{_fmt(job['median'])} images/s, x{job['ratio']:.2f} the in-memory step. Its input "
            f"pipeline alone (`{pipe[-1]['name']}`: read, PNG decode, augment) delivers "
            f"{_fmt(x)} images/s; pipeline and training share the same 2 cores, so together "
            f"they can reach about 1/(1/{_fmt(x)} + 1/{_fmt(y)}) = {_fmt(1 / (1 / x + 1 / y))} "
            "images/s" + ("; the stage runs at that combined rate, so its gap to the in-memory "
                          "step is the pipeline's share of the cores (holding decoded images in "
                          "memory would remove the decode part of it)."
                          if job["median"] >= 0.9 / (1 / x + 1 / y) else
                          "; the rest of the gap is the stage's fixed costs (tracing the first "
                          "step, per-epoch checkpoints and summaries, saving the model)."))
    emb = g("embedder_train_fraction_of_matmul")
    man = g("manipulator_train_fraction_of_matmul")
    if emb is not None and man is not None:
        out.append(
            f"- Against the ceiling, the embedders are the furthest from it ({emb:.0%}; the GAN "
            f"reaches {man:.0%}): three {256}-unit MLPs on a batch of 128 are too small for the "
            "matmuls to dominate; per-step fixed costs (three in-batch triplet minings, the "
            "optimizer update, dispatch) do. A larger batch per step would raise the fraction; "
            "it is also a small share of the main job's time (see its stage rows).")
    out += ["", "### Where the project is slower than a plain alternative", ""]
    batch1 = [(n, g(f"search_searcher_{n}_batch1", "ratio")) for n in (10_000, 100_000, 1_000_000)
              if g(f"search_searcher_{n}_batch1") is not None]
    if batch1:
        out.append(
            "- **`searcher` at batch 1** (" + ", ".join(f"x{r:.2f} at {n:,}" for n, r in batch1)
            + " vs numpy): a SavedModel signature called from Python has a fixed cost of roughly "
            "half a millisecond (restoring the call's structured inputs and outputs, the "
            "`check_features` width and finiteness checks, normalising the query, gathering "
            "string ids) that a bare numpy matmul does not pay; it decides the 10k case. From "
            "100k on the scan dominates, and what gap remains is TensorFlow's matrix-vector "
            "product against the transposed gallery variable plus `tf.math.top_k` over all N "
            "scores, against OpenBLAS sgemv plus `argpartition` (not investigated further; the "
            "layer is `GalleryIndex` in flam_tf/serving/export.py). The Python call cost is not "
            "one TF Serving's C++ server would pay, but that server cannot run here to measure "
            "(BUILD.md, section 6). numpy's batch-1 times swing most with the other job's load (its "
            "OpenBLAS threads spin on a shared machine: at 10k they ranged from "
            f"{_fmt(g('search_numpy_10000_batch1', 'min'))} to "
            f"{_fmt(g('search_numpy_10000_batch1', 'max'))} ms in this run), so the 10k ratio "
            "moves from run to run. At batch 64 the searcher is the fastest of the three ("
            + ", ".join(f"x{g(f'search_searcher_{n}_batch64', 'ratio'):.2f} at {n:,}"
                        for n, _ in batch1)
            + " vs numpy): `tf.math.top_k` on both cores beats numpy's single-threaded "
            "`argpartition` (and its copy of the negated score matrix).")
    floor, best = g("search_floor_1000000"), min(
        [g(f"search_{m}_1000000_batch1") or float("inf") for m in ("searcher", "numpy", "faiss")])
    out.append(
        "- **The memory floor** is the gallery read once at the measured copy bandwidth. A copy "
        "moves each byte twice (read and write) and a scan reads it once, so the true read floor "
        "is lower, down to about half"
        + (f"; at 1M vectors the best single query took {_fmt(best)} ms against a floor of "
           f"{_fmt(floor)} ms" if floor and best < float("inf") else "")
        + ". The 10k gallery (10 MiB) fits in cache, so no floor binds there; from 100k on the "
        "scan is memory-bound and cost grows linearly with the gallery (10x the vectors, about "
        "10x the time, at batch 1 and 64 alike).")
    if g("search_faiss_10000_batch64"):
        out.append(
            "- **faiss-cpu `IndexFlatIP`** (an alternative, not project code) is slower than numpy "
            f"at batch 64 (x{g('search_faiss_10000_batch64', 'ratio'):.2f} at 10k): with k=100 "
            "it keeps a 100-element heap per query, and its OpenMP threads spin-wait at barriers "
            "on a 2-core machine shared with another job (single queries measured 12.7 ms with 2 "
            "threads against 0.42 ms with 1, which is why batch-1 rows use 1 thread).")
    out.append(
        "- **Layers, not alternatives:** the loaded SavedModel signature is faster than the Keras "
        f"model called eagerly in-process (x{g('manipulate_savedmodel_batch1', 'ratio') or 0:.1f}"
        " at batch 1: eager `manipulate` dispatches each op from Python; the exported graph is "
        "one function call), and the gRPC round trip to the dev server adds about "
        f"{_fmt((g('manipulate_grpc_batch1') or 0) - (g('manipulate_savedmodel_batch1') or 0))} "
        "ms per call (tensor protos both ways, loopback HTTP/2, the server's thread hand-off), "
        "the same at batch 1 and 64. `keras.Model.predict` is the slowest way to extract "
        "features for one batch: each call builds a data adapter and iterator, so the exported "
        f"`from_pixels` signature is x{g('extract_savedmodel_from_pixels', 'ratio') or 0:.1f} "
        f"faster, and JPEG bytes in (decoding each image with `tf.map_fn`) x"
        f"{g('extract_savedmodel_jpeg', 'ratio') or 0:.1f}.")
    return out


if __name__ == "__main__":
    main()
