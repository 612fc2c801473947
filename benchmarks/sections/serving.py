"""The exported models' serving paths against plain alternatives.

`extraction`: images/s of the extractor as `keras.Model.predict`, an eager call, and the exported
`from_pixels` and `serving_default` (JPEG bytes) signatures. `manipulation`: latency of one edit
through the Keras model, the loaded SavedModel signature and a gRPC round trip to the dev server.
`search`: exact top-k of the `searcher` signature against numpy (matmul + argpartition) and
faiss-cpu `IndexFlatIP` when installed, beside the memory floor (the gallery read once at the
measured copy bandwidth).

The models are untrained models of the preset's widths (timings do not depend on the weights),
saved as a run directory and exported with `export_run`, like a trained run.
"""

import gc
import json
import os
import shutil
import statistics

import keras
import numpy as np
import tensorflow as tf
from harness import interleaved, paired_ratio, percentile

from flam_tf.serving import signatures as sig
from sections.compute import synthetic_images

TOP_K = sig.DEFAULT_TOP_K


def make_run_dir(root, config, num_gallery=1000):
    """Writes a run directory with untrained models of `config`'s sizes; returns its path."""
    from flam_tf.models import AttributeEmbedder, FeatureExtractor, FeatureManipulator

    keras.utils.set_random_seed(0)
    os.makedirs(os.path.join(root, "models"))
    os.makedirs(os.path.join(root, "features"))
    d, s = config.extractor.feature_dim, config.data.image_size
    with open(os.path.join(root, "config.json"), "w") as f:
        json.dump(config.to_dict(), f)
    extractor = FeatureExtractor(
        backbone=config.extractor.backbone,
        feature_dim=d,
        image_size=s,
        num_ce_classes=config.extractor.num_ce_classes,
    )
    extractor(np.zeros((1, s, s, 3), np.float32))
    embedder = AttributeEmbedder(
        d, embedding_dim=config.embedder.embedding_dim, hidden_units=config.embedder.hidden_units
    )
    m = config.manipulator
    manipulator = FeatureManipulator(
        embedder,
        d,
        embedding_dim=config.embedder.embedding_dim,
        g_hidden=(m.g_hidden, m.g_hidden),
        d_hidden=(m.d_hidden, m.d_hidden),
    )
    for name, model in (
        ("extractor", extractor),
        ("embedder", embedder),
        ("manipulator", manipulator),
    ):
        model.save(os.path.join(root, "models", f"{name}.keras"))
    rng = np.random.default_rng(0)
    feature = rng.standard_normal((num_gallery, d)).astype(np.float32)
    feature /= np.linalg.norm(feature, axis=1, keepdims=True)
    np.savez(
        os.path.join(root, "features", "fam_gallery.npz"),
        feature=feature,
        path=np.array([f"images/g{i:06d}.png" for i in range(num_gallery)]),
        instance_id=np.array([f"g{i}" for i in range(num_gallery)]),
    )
    return root


def _export(p):
    """The export of a run directory of the preset's widths (both built once, kept in `p`)."""
    if "export" not in p:
        from flam_tf.serving import export

        root = make_run_dir(os.path.join(p["work"], "serving_run"), p["config"])
        p["export"] = export.export_run(root, output=os.path.join(p["work"], "serving_export"))
        p["run_dir"] = root
    return p["export"]


def bench_extraction(res, p):
    """Images/s of one batch of p["extract_batch"] images through each extraction path."""
    print("[extraction]", flush=True)
    from flam_tf.serving import export

    written = _export(p)
    _, extractor, _ = export.load_run_models(p["run_dir"])
    loaded = tf.saved_model.load(written[sig.EXTRACTOR])
    from_bytes, from_pixels = (
        loaded.signatures[sig.SERVING_DEFAULT],
        loaded.signatures[sig.FROM_PIXELS],
    )
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
    res.add(
        "extraction",
        "extract_keras_predict",
        "images/s",
        [n / x for x in t["predict"]],
        note=f"keras.Model.predict on float32 pixels, {what}",
    )
    res.add(
        "extraction",
        "extract_keras_call",
        "images/s",
        [n / x for x in t["keras_call"]],
        ratio=paired_ratio(t["keras_call"], t["predict"]),
        ratio_to="extract_keras_predict",
        note=f"model(x, training=False) eagerly, {what}",
    )
    res.add(
        "extraction",
        "extract_savedmodel_from_pixels",
        "images/s",
        [n / x for x in t["from_pixels"]],
        ratio=paired_ratio(t["from_pixels"], t["predict"]),
        ratio_to="extract_keras_predict",
        note=f"`from_pixels` signature, uint8 in (cast + bilinear resize in the graph), {what}",
    )
    res.add(
        "extraction",
        "extract_savedmodel_jpeg",
        "images/s",
        [n / x for x in t["jpeg"]],
        ratio=paired_ratio(t["jpeg"], t["predict"]),
        ratio_to="extract_keras_predict",
        note=f"`serving_default` signature, JPEG bytes in (decode + resize per image via "
        f"tf.map_fn), {what}",
    )


def bench_manipulation(res, p):
    """Latency of one edit (color=red) at batch 1 and 64 through each manipulation path."""
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
                "savedmodel": lambda: signature(
                    **{sig.FEATURE: xt, sig.ATTRIBUTE: attrs, sig.VALUE: values}
                )[sig.FEATURE].numpy(),
                "grpc": lambda: client.manipulate(x, "color", "red"),
            }
            t = interleaved(fns, p["latency_iters"], warmup=5)
            labels = {
                "keras": "Keras model in-process (eager `manipulate`)",
                "savedmodel": "loaded SavedModel `serving_default` signature",
                "grpc": "FlamClient gRPC round trip to the local dev server",
            }
            for key in ("keras", "savedmodel", "grpc"):
                ms = [v * 1e3 for v in t[key]]
                extra = {"p50": percentile(ms, 50), "p99": percentile(ms, 99)}
                kw = {}
                if key != "keras":
                    base = "savedmodel" if key == "grpc" else "keras"
                    kw = {
                        "ratio": statistics.median(t[base]) / statistics.median(t[key]),
                        "ratio_to": f"manipulate_{base}_batch{batch}",
                    }
                res.add(
                    "manipulation",
                    f"manipulate_{key}_batch{batch}",
                    "ms",
                    ms,
                    **kw,
                    **extra,
                    note=f"{labels[key]}, batch {batch}, one edit (color=red); p50 "
                    f"{extra['p50']:.3g} ms, p99 {extra['p99']:.3g} ms",
                )
    finally:
        client.close()
        server.stop(0)


def _numpy_top_k(gallery, q, k):
    """(indices, scores) [B, k] of the exact cosine top-k of `q` in the unit-row `gallery`."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    scores = q @ gallery.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-part, axis=1)
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(part, order, axis=1)


def _search_gallery(res, p, n, rng, faiss):
    """Measures every method on one gallery of `n` random unit vectors (built from `rng`), at
    batch 1 and 64, after checking that they return the same top-1 item; `faiss` is the module,
    or None when it is not installed."""
    from flam_tf.serving.archives import build_searcher_archive

    d, k, bandwidth = p["config"].extractor.feature_dim, TOP_K, p.get("copy_bandwidth")
    gallery = rng.standard_normal((n, d), dtype=np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    ids = np.char.add("g", np.arange(n).astype(str))
    path = os.path.join(p["work"], f"searcher_{n}")
    shutil.rmtree(path, ignore_errors=True)
    archive = build_searcher_archive(gallery, ids, k)
    archive.write_out(path, verbose=False)
    del archive
    gc.collect()
    signature = tf.saved_model.load(path).signatures[sig.SERVING_DEFAULT]
    index = None
    if faiss is not None:
        index = faiss.IndexFlatIP(d)
        index.add(gallery)
    for batch in (1, 64):
        q = rng.standard_normal((batch, d), dtype=np.float32)
        qt = tf.constant(q)
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        fns = {
            "searcher": lambda: signature(**{sig.FEATURE: qt})[sig.SCORES].numpy(),
            "numpy": lambda: _numpy_top_k(gallery, q, k),
        }
        if index is not None:
            # One OpenMP thread for single queries: with 2, faiss' threads spin-wait at each
            # barrier, and on a 2-core machine shared with another job that measured 12.7 ms
            # against 0.42 ms for 1 thread (10k gallery). Batches use every core.
            faiss.omp_set_num_threads(1 if batch == 1 else os.cpu_count())
            fns["faiss"] = lambda: index.search(qn, k)
        # Same answers: the top-1 of every method is the same gallery item.
        top1 = {"numpy": _numpy_top_k(gallery, q, k)[0][:, 0]}
        top1["searcher"] = np.char.lstrip(
            signature(**{sig.FEATURE: qt})[sig.IDS].numpy()[:, 0].astype(str), "g"
        ).astype(int)
        if index is not None:
            top1["faiss"] = index.search(qn, k)[1][:, 0]
        for name, value in top1.items():
            if not np.array_equal(value, top1["numpy"]):
                raise AssertionError(f"search {name} disagrees with numpy at N={n}")
        inner = max(1, int(p["search_inner_elements"] // (n * batch)))
        t = interleaved(fns, p["search_rounds"], warmup=1, inner=min(inner, 50))
        where = f"N={n:,} x {d} float32 ({gallery.nbytes / 2**20:.0f} MiB), k={k}, batch {batch}"
        unit = "ms" if batch == 1 else "queries/s"
        conv = (lambda x: x * 1e3) if batch == 1 else (lambda x: batch / x)
        label = {
            "searcher": "`searcher` SavedModel signature",
            "numpy": "numpy matmul + argpartition",
            "faiss": f"faiss-cpu {faiss.__version__ if faiss else ''} IndexFlatIP, "
            f"{faiss.omp_get_max_threads() if faiss else 0} OpenMP thread(s)",
        }
        for key in fns:
            kw = (
                {}
                if key == "numpy"
                else {
                    "ratio": paired_ratio(t[key], t["numpy"]),
                    "ratio_to": f"search_numpy_{n}_batch{batch}",
                }
            )
            res.add(
                "search",
                f"search_{key}_{n}_batch{batch}",
                unit,
                [conv(x) for x in t[key]],
                **kw,
                note=f"{label[key]}, {where}",
            )
        if bandwidth and batch == 1:
            floor_ms = gallery.nbytes / bandwidth * 1e3
            res.add(
                "search",
                f"search_floor_{n}",
                "ms",
                [floor_ms],
                note=f"memory floor: {gallery.nbytes / 2**20:.0f} MiB gallery / measured "
                "copy bandwidth (one pass over the gallery per query batch)",
            )


def bench_search(res, p):
    """Top-k latency (batch 1) and queries/s (batch 64) per gallery size of p["gallery_sizes"]."""
    print("[search]", flush=True)
    try:
        import faiss
    except ImportError:
        faiss = None
        print("  faiss-cpu is not installed: IndexFlatIP skipped (pip install -e '.[bench]')")
    rng = np.random.default_rng(1)
    for n in p["gallery_sizes"]:
        _search_gallery(res, p, n, rng, faiss)
        gc.collect()  # the gallery, the loaded signature and the faiss index of this size
        shutil.rmtree(os.path.join(p["work"], f"searcher_{n}"), ignore_errors=True)
