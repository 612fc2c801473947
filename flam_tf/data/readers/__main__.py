"""Writes a data set's manifest.csv from its published layout.

    python -m flam_tf.data.readers --source shopping100k --data_dir /data/shopping100k \
        --out /data/shopping100k/manifest.csv [--top_n 10] [--fam_eval_size 2000] [--seed 0] \
        [--class_table codes.json] [--verbose]

Bad input (a malformed line, a missing file, a bad option) is reported as one line naming the file
and line, exit code 2; `--verbose` shows the traceback instead. Each run ends with a summary of
what was read, merged, skipped and left missing.
"""

import sys

from absl import app, flags, logging

from flam_tf.data import readers

FLAGS = flags.FLAGS
flags.DEFINE_enum("source", None, sorted(readers.READERS), "Data set to read.")
flags.DEFINE_string("data_dir", None, "The data set's directory, in its published layout.")
flags.DEFINE_string("out", None, "manifest.csv to write (best inside --data_dir).")
flags.DEFINE_integer("top_n", 10, "Attribute sets: classes kept per attribute type.")
flags.DEFINE_integer(
    "fam_eval_size",
    None,
    "Attribute sets: dense images in fam_eval "
    "(default 5000 DARN, 2000 Shopping100k; 0: no fam_eval). Too few densely "
    "labelled images for a fam_eval is an error.",
)
flags.DEFINE_integer("seed", 0, "Attribute sets: seed of the fam_eval sample.")
flags.DEFINE_bool("check_images", True, "Skip (and count) entries whose image file is missing.")
flags.DEFINE_string(
    "class_table",
    None,
    "JSON naming a source's class codes: shopping100k a "
    "code table in the format of flam_tf/data/readers/shopping100k_codes.json "
    "(merged over it); darn {type: {class id: canonical class}}.",
)
flags.DEFINE_bool("verbose", False, "On bad input, show the full traceback.")
flags.mark_flags_as_required(["source", "data_dir", "out"])

ATTRIBUTE_SOURCES = ("shopping100k", "darn")
EXIT_BAD_INPUT = 2


def run() -> None:
    """Runs the reader the flags select and prints the summary."""
    options = {"check_images": FLAGS.check_images}
    if FLAGS.source not in ATTRIBUTE_SOURCES:
        for name in ("top_n", "fam_eval_size", "seed"):
            if FLAGS[name].present:
                logging.warning(
                    "--%s applies to %s only; ignored for %s",
                    name,
                    "/".join(ATTRIBUTE_SOURCES),
                    FLAGS.source,
                )
    else:
        options.update(top_n=FLAGS.top_n, seed=FLAGS.seed)
        if FLAGS.fam_eval_size is not None:
            options["fam_eval_size"] = FLAGS.fam_eval_size
    if FLAGS.class_table:
        options.update(readers.class_table_options(FLAGS.source, FLAGS.class_table))
    stats = readers.build_manifest(FLAGS.source, FLAGS.data_dir, FLAGS.out, **options)
    print(
        f"Wrote {sum(stats.rows_by_split.values())} rows to {FLAGS.out}: "
        f"{stats.rows_by_split}; skipped {stats.skipped or 'nothing'}"
    )
    for attribute, mapping in stats.class_maps.items():
        print(f"{attribute} classes (source -> canonical): {mapping}")
    print("Summary:")
    for line in stats.summary():
        print(f"  {line}")


def main(argv):
    del argv
    try:
        run()
    except (
        ValueError,
        OSError,
    ) as e:  # ManifestError is a ValueError; FileNotFoundError an OSError
        if FLAGS.verbose:
            raise
        message = " ".join(str(e).split("\n"))
        print(f"flam_tf.data.readers: error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    app.run(main)
