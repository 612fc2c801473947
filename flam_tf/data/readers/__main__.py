"""Writes a data set's manifest.csv from its published layout.

    python -m flam_tf.data.readers --source darn --data_dir /data/darn \
        --out /data/darn/manifest.csv [--top_n 10] [--fam_eval_size 5000] [--seed 0]
"""

from absl import app, flags, logging

from flam_tf.data import readers

FLAGS = flags.FLAGS
flags.DEFINE_enum("source", None, sorted(readers.READERS), "Data set to read.")
flags.DEFINE_string("data_dir", None, "The data set's directory, in its published layout.")
flags.DEFINE_string("out", None, "manifest.csv to write (best inside --data_dir).")
flags.DEFINE_integer("top_n", 10, "Attribute sets: classes kept per attribute type.")
flags.DEFINE_integer("fam_eval_size", None, "Attribute sets: dense images in fam_eval "
                     "(default 5000 DARN, 2000 Shopping100k).")
flags.DEFINE_integer("seed", 0, "Attribute sets: seed of the fam_eval sample.")
flags.DEFINE_bool("check_images", True, "Skip (and count) entries whose image file is missing.")
flags.mark_flags_as_required(["source", "data_dir", "out"])

ATTRIBUTE_SOURCES = ("shopping100k", "darn")


def main(argv):
    del argv
    options = {"check_images": FLAGS.check_images}
    if FLAGS.source not in ATTRIBUTE_SOURCES:
        for name in ("top_n", "fam_eval_size", "seed"):
            if FLAGS[name].present:
                logging.warning("--%s applies to %s only; ignored for %s", name,
                                "/".join(ATTRIBUTE_SOURCES), FLAGS.source)
    else:
        options.update(top_n=FLAGS.top_n, seed=FLAGS.seed)
        if FLAGS.fam_eval_size is not None:
            options["fam_eval_size"] = FLAGS.fam_eval_size
    stats = readers.build_manifest(FLAGS.source, FLAGS.data_dir, FLAGS.out, **options)
    print(f"Wrote {sum(stats.rows_by_split.values())} rows to {FLAGS.out}: "
          f"{stats.rows_by_split}; skipped {stats.skipped or 'nothing'}")
    for attribute, mapping in stats.class_maps.items():
        print(f"{attribute} classes (source -> canonical): {mapping}")


if __name__ == "__main__":
    app.run(main)
