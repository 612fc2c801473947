"""This host's rates: the matmul ceiling, and per-core rendering, PNG writing, decoding and
augmentation (measured in a subprocess limited to one TensorFlow thread)."""

import json
import os
import subprocess
import sys
import time

from harness import REPO

BENCHMARKS = os.path.join(REPO, "benchmarks")
# The per-core probe, run as `python -c PROBE REPO BENCHMARKS SIZES`.
PROBE = (
    "import sys; sys.path[:0] = sys.argv[1:3]; "
    "from gpu_estimate import host; host.probe(int(s) for s in sys.argv[3].split(','))"
)


def measure_matmul(size=4096, reps=10):
    """Best float32 matmul rate (FLOP/s) over `reps` products of two size x size matrices."""
    import tensorflow as tf

    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    mm = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    mm(a, b).numpy()
    best = 0.0
    for _ in range(reps):
        start = time.perf_counter()
        mm(a, b).numpy()
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def probe(sizes):
    """Per-core rates at each image size of `sizes`, printed as one JSON line (run in a subprocess
    with one TensorFlow thread: see measure_host)."""
    import io

    import numpy as np
    import tensorflow as tf
    from PIL import Image

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from flam_tf.data import pipeline, synthetic

    out = {}
    for size in sizes:
        syn = synthetic.SyntheticConfig(num_instances=200, seed=0, image_size=size)
        specs = synthetic.image_specs(syn)[:48]
        render = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            images = synthetic.render_specs(specs, syn)
            render = min(render, (time.perf_counter() - start) / len(specs))

        def png(a):
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="PNG", compress_level=1)  # as write_benchmark
            return buf.getvalue()

        save = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            pngs = [png(a) for a in images]
            save = min(save, (time.perf_counter() - start) / len(images))
        # A real data set's JPEGs: DeepFashion-like 256 x 256 (or the image size if larger).
        side = max(256, size)
        jpgs = [
            tf.io.encode_jpeg(
                tf.cast(tf.image.resize(a, (side, side)), tf.uint8), quality=90
            ).numpy()
            for a in images
        ]
        seed = tf.constant([1, 2])
        decode = tf.function(lambda c: pipeline.decode_image(c, size))
        decode_aug = tf.function(
            lambda c: pipeline.augment(pipeline.decode_image(c, size), seed, size)
        )
        aug = tf.function(lambda u: pipeline.augment(tf.cast(u, tf.float32), seed, size))

        def rate(fn, items, reps=9):
            # Best pass of `reps`: the machine is shared, the best pass is the closest to a core
            # of its own.
            fn(items[0])
            best = float("inf")
            for _ in range(reps):
                start = time.perf_counter()
                for item in items:
                    fn(item)
                best = min(best, time.perf_counter() - start)
            return len(items) / best

        out[str(size)] = {
            "render_s": render,
            "png_write_s": save,
            "png_bytes": float(np.mean([len(p) for p in pngs])),
            "jpeg_bytes": float(np.mean([len(j) for j in jpgs])),
            "jpeg_side": side,
            "png_decode_img_s": rate(decode, [tf.constant(p) for p in pngs]),
            "png_decode_augment_img_s": rate(decode_aug, [tf.constant(p) for p in pngs]),
            "jpeg_decode_augment_img_s": rate(decode_aug, [tf.constant(j) for j in jpgs]),
            "augment_only_img_s": rate(aug, [tf.constant(a) for a in images]),
        }
    print(json.dumps(out))


def measure_host(sizes, log=print):
    """{"cpus", "matmul_flop_s", "per_core": {size: rates}, "load_average"} of this host."""
    env = dict(
        os.environ, TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1", CUDA_VISIBLE_DEVICES=""
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE,
            REPO,
            BENCHMARKS,
            ",".join(str(s) for s in sorted(set(sizes))),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=900,
    )
    if result.returncode:
        raise RuntimeError(f"host probe failed: {result.stderr[-2000:]}")
    rates = json.loads(result.stdout.strip().splitlines()[-1])
    matmul = measure_matmul()
    host = {
        "cpus": os.cpu_count(),
        "matmul_flop_s": matmul,
        "per_core": rates,
        "load_average": os.getloadavg()[0],
    }
    log(
        f"  matmul 4096^2 float32: {matmul / 1e9:.0f} GFLOP/s on {os.cpu_count()} cores "
        f"(load average {host['load_average']:.1f})"
    )
    for size, r in rates.items():
        log(
            f"  {size}px per core: render {r['render_s'] * 1e3:.1f} ms, PNG write "
            f"{r['png_write_s'] * 1e3:.1f} ms; decode+augment PNG {r['png_decode_augment_img_s']:.0f}"
            f"/s, JPEG {r['jpeg_decode_augment_img_s']:.0f}/s; augment only "
            f"{r['augment_only_img_s']:.0f}/s"
        )
    return host
