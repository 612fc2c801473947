"""Exports a run directory for TF Serving.

    python -m export --run_dir D [--output E] [--version V] [--top_k K]
        [--gallery_manifest M] [--base_path_prefix P]

Flags only: the export is flam_tf.serving.export.export_run. It writes
E/{extractor,manipulator,searcher}/V/ and E/models.config, atomic across the three models
(models.config, replaced last, pins all three to V); V defaults to 1 + the version models.config
names. An export removes what killed exports left, and holds E/.export.lock while it writes (a
second export into E fails). FLAM_EXPORT_KILL_AT=<step> is a test hook
(flam_tf.serving.export.EXPORT_STEPS).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from flam_tf.serving import signatures  # noqa: E402

flags.DEFINE_string("run_dir", None, "Run directory written by `python -m flam_tf.train`.")
flags.DEFINE_string("output", None, "Export folder; default <run_dir>/export.")
flags.DEFINE_integer(
    "version",
    None,
    "Version to write; default 1 + the committed one (the version E/models.config names).",
)
flags.DEFINE_integer("top_k", signatures.DEFAULT_TOP_K, "Results per query of the searcher.")
flags.DEFINE_string(
    "gallery_manifest",
    None,
    "manifest.csv whose images form the searcher's gallery; default the run's "
    "features/fam_gallery.npz.",
)
flags.DEFINE_string(
    "base_path_prefix",
    None,
    "base_path prefix in models.config, e.g. /models for a container; default the "
    "absolute export paths.",
)
flags.DEFINE_integer(
    "max_image_pixels",
    None,
    "Largest image (height x width) the served extractor decodes; default the "
    "run's data.max_image_pixels (4096 x 4096).",
)
flags.mark_flag_as_required("run_dir")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from flam_tf.serving import export  # after flag parsing: --help needs no TensorFlow

    try:
        written = export.export_run(
            FLAGS.run_dir,
            FLAGS.output,
            FLAGS.version,
            FLAGS.top_k,
            FLAGS.gallery_manifest,
            FLAGS.base_path_prefix,
            max_image_pixels=FLAGS.max_image_pixels,
        )
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    for name, path in written.items():
        print(f"{name:<14} {path}")
    return 0


if __name__ == "__main__":
    app.run(main)
