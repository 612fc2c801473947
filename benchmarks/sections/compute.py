"""Machine ceilings and synthetic data generation.

`ceiling`: a 4096x4096 float32 matmul (the compute ceiling the training sections compare with)
and a large np.copyto (the copy bandwidth the search section's memory floor is drawn from).
`synthetic`: rendering the synthetic benchmark's images. Also the matmul and the synthetic images
the other sections reuse.
"""

import numpy as np
import tensorflow as tf
from harness import interleaved

from flam_tf.data import synthetic

MATMUL_N = 4096
MATMUL_FLOPS = 2.0 * MATMUL_N**3


def matmul_fn():
    """A callable running one MATMUL_N x MATMUL_N float32 matmul (MATMUL_FLOPS per call)."""
    a = tf.random.normal([MATMUL_N, MATMUL_N], seed=1)
    b = tf.random.normal([MATMUL_N, MATMUL_N], seed=2)

    def run():
        c = tf.linalg.matmul(a, b)
        return c[0, 0].numpy()  # CPU eager ops are synchronous; this only forces the result

    return run


def synthetic_images(n, image_size, seed=0):
    """uint8 [n, S, S, 3] images of the synthetic benchmark (shop and street views)."""
    cfg = synthetic.SyntheticConfig(num_instances=max(n, 50), seed=seed, image_size=image_size)
    specs = synthetic.image_specs(cfg)[:n]
    return synthetic.render_specs(specs, cfg)


def bench_ceiling(res, p):
    """Matmul FLOP/s and copy bandwidth; leaves the bandwidth in p["copy_bandwidth"] (bytes/s)."""
    print("[ceiling]", flush=True)
    mm = matmul_fn()
    src = np.ones(p["copy_bytes"] // 4, np.float32)
    dst = np.empty_like(src)
    t = interleaved({"matmul": mm, "copy": lambda: np.copyto(dst, src)}, p["rounds"])
    res.add(
        "ceiling",
        "matmul_4096_float32",
        "GFLOP/s",
        [MATMUL_FLOPS / x / 1e9 for x in t["matmul"]],
        note="tf.linalg.matmul of two 4096x4096 float32 matrices: the compute ceiling",
    )
    res.add(
        "ceiling",
        "memory_copy_bandwidth",
        "GB/s",
        [src.nbytes / x / 1e9 for x in t["copy"]],
        note=f"np.copyto of {src.nbytes / 2**20:.0f} MiB, bytes copied per second "
        "(each byte read once and written once)",
    )
    p["copy_bandwidth"] = res.get("memory_copy_bandwidth")["median"] * 1e9


def bench_synthetic(res, p):
    """Images/s of `synthetic.render_specs` at each size of p["synthetic_images"]."""
    print("[synthetic]", flush=True)
    jobs = {}
    for size, n in p["synthetic_images"].items():
        cfg = synthetic.SyntheticConfig(num_instances=max(n, 50), seed=0, image_size=size)
        specs = synthetic.image_specs(cfg)[:n]
        jobs[size] = (specs, cfg)
    t = interleaved({s: (lambda s=s: synthetic.render_specs(*jobs[s])) for s in jobs}, p["rounds"])
    for size, (specs, _) in jobs.items():
        res.add(
            "synthetic",
            f"synthetic_render_{size}px",
            "images/s",
            [len(specs) / x for x in t[size]],
            note=f"render_specs of {len(specs)} images (shop and street views), numpy",
        )
