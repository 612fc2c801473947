"""The embedded synthetic fashion benchmark: procedurally rendered garments with known ground truth.

No real fashion data set can be downloaded where this project is built and tested, so this package
renders one. Every instance is a garment with:

* three labelled attributes from `flam_tf.vocabulary` (shape, color, pattern), drawn from an
  entangled joint distribution (`joint_distribution`): coats are rarely pink, camouflage is mostly
  green/brown/grey trousers, jackets and hoodies, pinstripes live on shirts, trousers, jackets and
  coats, floral on dresses, skirts and shirts. `SyntheticConfig.entanglement` scales it
  (0 = uniform).
* five hidden traits that are NOT labelled (`TRAITS`): fit (width), length (hem), neckline (or
  waistband for bottoms), detail (pockets, buttons, logo patch), sleeve (or leg hem style).
* continuous jitter: the shade of its colour, pattern scale, angle and phase, secondary ink colour,
  proportions and fold shading.
  Traits and jitter are the item's "unique characteristics" that manipulation must preserve.
* views: view 0 is the clean "shop" view (plain background, centred, upright); further shop views
  (in-shop gallery) move, scale and mirror it slightly; "street" views add a textured, cluttered
  background, scale, shift, rotation, lighting and colour cast, partial occlusion or crop, and
  noise.
* counterfactual twins (FAM evaluation items only): the same instance rendered in the same pose
  with exactly one attribute changed, so a manipulated query can be checked against *this* item in
  red.

Splits are disjoint by instance (`flam_tf.data.manifest.SPLITS`): extractor_train (instance labels,
no attribute labels, like DeepFashion/NFD), fir_eval (in-shop and consumer-to-shop queries and
galleries), attribute_train (sparse labels like DARN/Shopping100k), unlabelled (no labels at all,
the paper's NFD role), fam_eval (dense labels, gallery holding the twins).

Rendering is vectorised numpy over a batch of images (one pass per shape and pattern class), and
deterministic: every random draw of an instance comes from `SeedSequence([seed, instance_index,
stream])`, so the same seed gives byte-identical images and labels whatever the batch size.

Modules, each importing only those above it:
    config      `SyntheticConfig`, the settings.
    catalogue   classes, traits, palette, the joint distribution, instances, twins, view params.
    rendering   `render`: pixels of instances under view parameters.
    benchmark   image specs, manifest rows, `write_benchmark` and the contact sheet.
    __main__    the CLI:

    python -m flam_tf.data.synthetic --out DIR [--num_instances N] [--seed S] [--image_size P]

writes DIR/images/<split>/*.png, DIR/manifest.csv and DIR/contact_sheet.png.
"""

from flam_tf.data.synthetic.benchmark import (
    EXTRA_COLUMNS,
    ImageSpec,
    image_specs,
    manifest_row,
    render_specs,
    write_benchmark,
    write_contact_sheet,
)
from flam_tf.data.synthetic.catalogue import (
    COLORS,
    PALETTE,
    PATTERNS,
    SHAPES,
    TOPS,
    TRAITS,
    Instance,
    joint_distribution,
    make_twins,
    sample_instances,
    view_params,
)
from flam_tf.data.synthetic.config import SyntheticConfig
from flam_tf.data.synthetic.rendering import render

__all__ = [
    "COLORS",
    "EXTRA_COLUMNS",
    "PALETTE",
    "PATTERNS",
    "SHAPES",
    "TOPS",
    "TRAITS",
    "ImageSpec",
    "Instance",
    "SyntheticConfig",
    "image_specs",
    "joint_distribution",
    "make_twins",
    "manifest_row",
    "render",
    "render_specs",
    "sample_instances",
    "view_params",
    "write_benchmark",
    "write_contact_sheet",
]
