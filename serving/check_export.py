"""Checks a run's export through the dev server: `describe` after manipulation, and a load test.

    python -m serving.check_export --run_dir runs/default [--clients 8] [--requests 200]

Starts `flam_tf.serving.dev_server` on a free loopback port over `<run_dir>/export/models.config`,
then (1) manipulates every FAM evaluation item's feature to color=red, pattern=striped and
shape=dress and reports how often `describe` answers the requested class, and (2) runs a bounded
load test: N concurrent clients, each sending M (manipulate color=red + search k=10) round trips
of batch 1, and prints the error count and p50/p99 latency. Loopback only; it stops by itself.
The server and client are flam_tf.serving.dev_server and flam_tf.serving.client.
"""

import os
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from flam_tf.run_directory import EXPORT_DIR, FAM_GALLERY_NPZ, run_file  # noqa: E402  (no TF)

FLAGS = flags.FLAGS
flags.DEFINE_string("run_dir", None, "A finished run directory (with export/).", required=True)
flags.DEFINE_integer("clients", 8, "Concurrent clients of the load test.")
flags.DEFINE_integer("requests", 200, "Round trips per client.")
EDITS = (("color", "red"), ("pattern", "striped"), ("shape", "dress"))


def main(argv):
    del argv
    # After flag parsing: --help needs no TensorFlow.
    from flam_tf.serving import dev_server
    from flam_tf.serving.client import FlamClient
    from flam_tf.serving.versions import CONFIG_FILE

    config = os.path.join(run_file(FLAGS.run_dir, EXPORT_DIR), CONFIG_FILE)
    server, port, _ = dev_server.create_server(config, port=0, max_workers=FLAGS.clients)
    server.start()
    address = f"127.0.0.1:{port}"
    try:
        with np.load(run_file(FLAGS.run_dir, FAM_GALLERY_NPZ), allow_pickle=False) as z:
            items = z["twin_of"] == ""
            features = z["feature"][items]
            labels = {a: z[a][items] for a, _ in EDITS}
        with FlamClient(address, timeout_s=60.0) as client:
            before = client.describe(features)
            for attribute, value in EDITS:
                after = client.describe(client.manipulate(features, attribute, value))
                print(
                    f"{attribute}={value}: describe says {value} for "
                    f"{np.mean(after[attribute] == value):.3f} of {len(features)} items "
                    f"(before: {np.mean(before[attribute] == value):.3f}; "
                    f"true labels: {np.mean(labels[attribute] == value):.3f})"
                )
        latencies, errors = [], []

        def worker(seed):
            rng = np.random.default_rng(seed)
            with FlamClient(address, timeout_s=30.0) as client:
                for _ in range(FLAGS.requests):
                    query = features[rng.integers(len(features), size=1)]
                    start = time.perf_counter()
                    try:
                        client.search(client.manipulate(query, "color", "red"), k=10)
                    except Exception as e:  # counted, reported below
                        errors.append(e)
                    latencies.append((time.perf_counter() - start) * 1000.0)

        start = time.time()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(FLAGS.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.time() - start
        print(
            f"load test: {FLAGS.clients} clients x {FLAGS.requests} (manipulate + search, "
            f"batch 1): {len(latencies)} done, {len(errors)} errors, "
            f"{len(latencies) / elapsed:.0f} round trips/s, "
            f"p50 {np.percentile(latencies, 50):.1f} ms, p99 {np.percentile(latencies, 99):.1f} ms"
        )
        if errors:
            print(f"first error: {errors[0]}")
    finally:
        server.stop(0).wait()


if __name__ == "__main__":
    app.run(main)
