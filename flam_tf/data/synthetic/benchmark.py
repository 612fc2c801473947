"""The benchmark's images: which exist (`image_specs`), their manifest rows, rendering them in
batches, and writing the PNGs, manifest.csv and a contact sheet to a directory."""

import concurrent.futures
import dataclasses
import multiprocessing
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from flam_tf import vocabulary
from flam_tf.data import manifest as manifest_lib
from flam_tf.data.synthetic.catalogue import (
    COLORS,
    LABEL_DROP_STREAM,
    PATTERNS,
    SHAPES,
    TRAITS,
    Instance,
    instance_rng,
    make_twins,
    sample_instances,
    view_params,
)
from flam_tf.data.synthetic.config import SyntheticConfig
from flam_tf.data.synthetic.rendering import render

# Second SeedSequence word of the generator that picks shop or street for single-photo splits.
_STREET_CHOICE_KEY = 2 * 10**6

# Manifest columns beyond manifest_lib's: the view, its evaluation roles, the twin's source
# instance and the hidden traits.
EXTRA_COLUMNS = ("view", "role", "twin_of") + tuple(TRAITS)


@dataclasses.dataclass
class ImageSpec:
    """One image to render: an instance, a view index and a domain."""

    instance: Instance
    view: int
    domain: str
    role: str


def image_specs(config: SyntheticConfig) -> List[ImageSpec]:
    """Every image of the benchmark, in a deterministic order."""
    instances = sample_instances(config)
    rng = np.random.default_rng([config.seed, _STREET_CHOICE_KEY])
    specs: List[ImageSpec] = []
    for inst in instances:
        if inst.split == "extractor_train":
            specs.append(ImageSpec(inst, 0, "shop", ""))
            specs += [
                ImageSpec(inst, 1 + k, "street", "") for k in range(config.extractor_street_views)
            ]
        elif inst.split == "fir_eval":
            specs.append(ImageSpec(inst, 0, "shop", "inshop_query;c2s_gallery"))
            specs += [
                ImageSpec(inst, k, "shop", "inshop_gallery")
                for k in range(1, config.fir_shop_views)
            ]
            specs += [
                ImageSpec(inst, config.fir_shop_views + k, "street", "c2s_query")
                for k in range(config.fir_street_views)
            ]
        elif inst.split == "fam_eval":
            specs.append(ImageSpec(inst, 0, "shop", "fam_query;fam_gallery"))
        else:  # attribute_train, unlabelled: one photo, shop or street
            street = rng.random() < config.unlabelled_street_prob
            specs.append(ImageSpec(inst, 1 if street else 0, "street" if street else "shop", ""))
    specs += [ImageSpec(t, 0, "shop", "fam_gallery") for t in make_twins(instances, config)]
    return specs


def manifest_row(spec: ImageSpec, config: SyntheticConfig) -> Dict[str, str]:
    """The manifest row of one image (labels blanked as the split dictates)."""
    inst = spec.instance
    labels = {a: vocabulary.CLASSES[a][getattr(inst, a)] for a in vocabulary.ATTRIBUTE_TYPES}
    if inst.split in ("extractor_train", "unlabelled"):
        labels = {a: "" for a in labels}  # instance-labelled / unlabelled sets carry no attributes
    elif inst.split == "attribute_train":
        rng = instance_rng(config.seed, inst.index, stream=LABEL_DROP_STREAM)
        drop = rng.random(len(labels)) < config.label_missing_prob
        labels = {a: ("" if d else v) for (a, v), d in zip(labels.items(), drop)}
    return {
        "path": f"images/{inst.split}/{inst.instance_id}_{spec.view}.png",
        "instance_id": inst.instance_id,
        "domain": spec.domain,
        "split": inst.split,
        "view": str(spec.view),
        "role": spec.role,
        "twin_of": "" if inst.twin_of is None else f"syn{inst.twin_of:06d}",
        **labels,
        **{t: str(inst.traits[t]) for t in TRAITS},
    }


def render_specs(
    specs: Sequence[ImageSpec], config: SyntheticConfig, batch_size: int = 256
) -> np.ndarray:
    """Renders `specs` in batches; uint8 [len(specs), P, P, 3]."""
    out = np.zeros((len(specs), config.image_size, config.image_size, 3), np.uint8)
    for start in range(0, len(specs), batch_size):
        chunk = specs[start : start + batch_size]
        views = np.stack(
            [view_params(config.seed, s.instance.index, s.view, s.domain) for s in chunk]
        )
        out[start : start + len(chunk)] = render(
            [s.instance for s in chunk], views, config.image_size
        )
    return out


def _write_images(specs: Sequence[ImageSpec], paths: Sequence[str], config: SyntheticConfig) -> int:
    """Renders `specs` and writes each as the PNG at the matching path; returns the count.

    A module-level function: spawned worker processes import it by its qualified name.
    """
    for path, image in zip(paths, render_specs(specs, config, len(specs))):
        Image.fromarray(image).save(path, compress_level=1)
    return len(specs)


def write_benchmark(
    out_dir: str,
    config: SyntheticConfig,
    batch_size: int = 512,
    progress: bool = True,
    processes: Optional[int] = None,
) -> manifest_lib.Manifest:
    """Renders the whole benchmark into `out_dir` (PNGs, manifest.csv, contact_sheet.png).

    Batches of `batch_size` images are rendered and written by `processes` worker processes
    (default: one per CPU this process may run on; 1 = in this process). Every image depends only
    on the seed, its instance and its view, so the files are byte-identical for any number of
    processes. The manifest is written last, so a directory with a manifest is complete: a crash
    midway leaves no manifest and the next call renders again.

    Returns:
        The manifest, read back from disk.
    """
    specs = image_specs(config)
    rows = [manifest_row(s, config) for s in specs]
    for split in manifest_lib.SPLITS:
        os.makedirs(os.path.join(out_dir, "images", split), exist_ok=True)
    batches = [
        (
            specs[b : b + batch_size],
            [os.path.join(out_dir, r["path"]) for r in rows[b : b + batch_size]],
        )
        for b in range(0, len(specs), batch_size)
    ]
    processes = min(processes or len(os.sched_getaffinity(0)), len(batches))
    start, done = time.time(), 0

    def report(count):
        nonlocal done
        done += count
        if progress:
            rate = done / max(time.time() - start, 1e-9)
            print(
                f"\rsynthetic: {done}/{len(specs)} images ({rate:.0f} images/s)", end="", flush=True
            )

    if processes <= 1:
        for chunk, paths in batches:
            report(_write_images(chunk, paths, config))
    else:
        # spawn, not fork: the caller may hold TensorFlow's threads, which a fork would copy.
        with concurrent.futures.ProcessPoolExecutor(
            processes, mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            futures = [pool.submit(_write_images, chunk, paths, config) for chunk, paths in batches]
            for future in concurrent.futures.as_completed(futures):
                report(future.result())
    if progress:
        print()
    write_contact_sheet(os.path.join(out_dir, "contact_sheet.png"), specs, config)
    path = os.path.join(out_dir, "manifest.csv")
    manifest_lib.write_manifest(path, rows, EXTRA_COLUMNS)
    return manifest_lib.read_manifest(path)


def write_contact_sheet(
    path: str, specs: Sequence[ImageSpec], config: SyntheticConfig, rows: int = 12, zoom: int = 2
) -> None:
    """A PNG a person can look at: per row one FIR instance's views, then FAM items and twins."""
    by_instance: Dict[str, List[ImageSpec]] = {}
    for s in specs:
        by_instance.setdefault(s.instance.instance_id, []).append(s)
    fir = [v for v in by_instance.values() if v[0].instance.split == "fir_eval"][: rows // 2]
    twins = [s for s in specs if s.instance.twin_of is not None][: rows // 2 * 2]
    source = {
        s.instance.index: s
        for s in specs
        if s.instance.split == "fam_eval" and s.instance.twin_of is None
    }
    lines = list(fir)
    lines += [[source[t.instance.twin_of], t] for t in twins if t.instance.twin_of in source]
    cell = config.image_size * zoom
    label_h = 12  # pixels of the text line above each row
    cols = max(len(line) for line in lines) if lines else 1
    sheet = Image.new("RGB", (cols * cell, len(lines) * (cell + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, line in enumerate(lines):
        images = render_specs(line, config)
        for c, (spec, image) in enumerate(zip(line, images)):
            tile = Image.fromarray(image).resize((cell, cell), Image.NEAREST)
            sheet.paste(tile, (c * cell, r * (cell + label_h) + label_h))
            inst = spec.instance
            text = f"{SHAPES[inst.shape][:5]} {COLORS[inst.color][:4]} {PATTERNS[inst.pattern][:5]}"
            draw.text((c * cell + 2, r * (cell + label_h)), text, fill=(0, 0, 0))
    sheet.save(path)
