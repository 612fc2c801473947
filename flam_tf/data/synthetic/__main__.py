"""Writes the synthetic fashion benchmark (`flam_tf.data.synthetic`) into a directory:

    python -m flam_tf.data.synthetic --out DIR [--num_instances N] [--seed S] [--image_size P]
        [--entanglement E] [--label_missing_prob Q]

writes DIR/images/<split>/*.png, DIR/manifest.csv and DIR/contact_sheet.png. The same flags give
byte-identical files.
"""

import os

from absl import app, flags

from flam_tf.data.synthetic.benchmark import write_benchmark
from flam_tf.data.synthetic.config import SyntheticConfig


def main(argv=None) -> None:
    """CLI entry point (absl flags)."""
    flags.DEFINE_string("out", None, "Output directory.", required=True)
    flags.DEFINE_integer("num_instances", 2000, "Number of garment instances.")
    flags.DEFINE_integer("seed", 0, "Random seed (same seed, identical files).")
    flags.DEFINE_integer("image_size", 64, "Image side in pixels.")
    flags.DEFINE_float("entanglement", 1.0, "Attribute entanglement (0 = independent).")
    flags.DEFINE_float("label_missing_prob", 0.3, "Missing label chance in attribute_train.")

    def run(_):
        fl = flags.FLAGS
        config = SyntheticConfig(
            num_instances=fl.num_instances,
            seed=fl.seed,
            image_size=fl.image_size,
            entanglement=fl.entanglement,
            label_missing_prob=fl.label_missing_prob,
        )
        try:
            m = write_benchmark(fl.out, config)
        except ValueError as e:
            raise app.UsageError(str(e))
        print(
            f"wrote {len(m)} images, {os.path.join(fl.out, 'manifest.csv')} and "
            f"{os.path.join(fl.out, 'contact_sheet.png')}"
        )

    app.run(run, argv=argv)


if __name__ == "__main__":
    main()
