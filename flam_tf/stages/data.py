"""The data stage: D/data/manifest.csv, from the synthetic benchmark or the real sources."""

from typing import Dict, List

import numpy as np
from absl import logging

from flam_tf.data import manifest as manifest_lib
from flam_tf.data import readers, synthetic, verify
from flam_tf.stages.context import Context


def stage_data(ctx: Context) -> Dict[str, int]:
    """Writes D/data/manifest.csv: the synthetic benchmark, or the real sources' manifests."""
    c = ctx.config.data
    synthetic_data = c.extractor_source == "synthetic" and c.attribute_source == "synthetic"
    if synthetic_data:
        syn = synthetic.SyntheticConfig(
            num_instances=c.num_instances,
            seed=ctx.config.runtime.seed,
            image_size=c.image_size,
            label_missing_prob=c.label_missing_prob,
            twins_per_item=c.twins_per_item,
            entanglement=c.entanglement,
        )
        m = synthetic.write_benchmark(ctx.run.path("data"), syn)
    else:
        m = _combine_real_sources(ctx)
    # Every image exists, decodes and is within max_image_pixels, or the stage fails here (not
    # marked done) with one line naming manifest.csv:line, rather than in a later stage.
    # The synthetic benchmark's PNGs were just encoded here from arrays: their existence is
    # checked, decoding them again would only cost time (5-9 s for the default preset).
    verify.verify_images(
        m,
        max_image_pixels=c.max_image_pixels,
        path=ctx.run.manifest_path,
        decode=not synthetic_data,
    )
    counts = {s: int((m["split"] == s).sum()) for s in manifest_lib.SPLITS}
    logging.info("data: %d images %s", len(m), counts)
    return counts


def _combine_real_sources(ctx: Context) -> manifest_lib.Manifest:
    """Each role from its own source: instance splits from one, attribute splits from another."""
    c = ctx.config.data
    rows: List[Dict[str, str]] = []
    roles = [
        (c.extractor_source, c.extractor_data_dir, ("extractor_train", "fir_eval"), {}),
        (
            c.attribute_source,
            c.attribute_data_dir,
            ("attribute_train", "fam_eval", "unlabelled"),
            {
                "top_n": c.top_n_classes,
                **({"fam_eval_size": c.fam_eval_size} if c.fam_eval_size else {}),
                **(
                    readers.class_table_options(c.attribute_source, c.class_table)
                    if c.class_table
                    else {}
                ),
            },
        ),
    ]
    for source, data_dir, splits, options in roles:
        if source == "synthetic":
            raise ValueError(
                "Mixing the synthetic benchmark with a real source is not supported; "
                "set both --data_extractor_source and --data_attribute_source"
            )
        path = ctx.run.path("data", f"{source}_manifest.csv")
        readers.build_manifest(source, data_dir, path, warn_outside=False, **options)
        m = manifest_lib.read_manifest(path, root=data_dir)
        keep = np.isin(m["split"], splits)
        absolute = m.absolute_paths()
        for i in np.nonzero(keep)[0]:
            row = {k: str(v[i]) for k, v in m.columns.items()}
            row["path"] = absolute[i]
            rows.append(row)
    if c.unlabelled_manifest:
        m = manifest_lib.read_manifest(c.unlabelled_manifest)
        # Name the user's own file:line for a missing image (stage_data decodes them all later).
        verify.verify_images(m, max_image_pixels=c.max_image_pixels, decode=False)
        for i, path in enumerate(m.absolute_paths()):
            rows.append(
                {
                    **{k: str(v[i]) for k, v in m.columns.items()},
                    "path": path,
                    "split": "unlabelled",
                    "shape": "",
                    "color": "",
                    "pattern": "",
                }
            )
    manifest_lib.write_manifest(ctx.run.manifest_path, rows, ("role", "twin_of", "view"))
    return manifest_lib.read_manifest(ctx.run.manifest_path)
