"""The feature store of a run directory: the features stage writes it, every later stage,
the evaluation and the exporter read it (numpy files; no TensorFlow).

    features/features.npz       feature x of every image, in manifest order, with its path,
                                instance id and split
    features/fam_gallery.npz    the FAM gallery's rows: features, ids, labels, twins, query flags
                                (what the served searcher holds)
    features/<stem>_features.npz  a pixel-trained baseline's encoder features (zeros where unused)
"""

import os

import numpy as np

from flam_tf.data import manifest as manifest_lib
from flam_tf.run_directory import RunDirectory


def save_npz(npz_file: str, **arrays) -> None:
    """np.savez, atomic (written aside, then renamed); string arrays stored as unicode, so they
    load without pickle."""
    tmp = npz_file + ".tmp.npz"
    np.savez(
        tmp,
        **{
            k: (np.asarray(v).astype(str) if np.asarray(v).dtype.kind in "OU" else v)
            for k, v in arrays.items()
        },
    )
    os.replace(tmp, npz_file)


def write_features(run: RunDirectory, m: manifest_lib.Manifest, features: np.ndarray) -> int:
    """Writes features.npz (every row of `m`) and fam_gallery.npz; returns the gallery's size."""
    save_npz(
        run.features_path,
        feature=features,
        path=m["path"],
        instance_id=m["instance_id"],
        split=m["split"],
    )
    fam = m["split"] == "fam_eval"
    save_npz(
        run.fam_gallery_path,
        feature=features[fam],
        instance_id=m["instance_id"][fam],
        path=m["path"][fam],
        shape=m["shape"][fam],
        color=m["color"][fam],
        pattern=m["pattern"][fam],
        twin_of=m.get("twin_of")[fam],
        is_query=m.has_role("fam_query")[fam],
    )
    return int(fam.sum())


def load_features(run: RunDirectory) -> np.ndarray:
    """Every image's feature x: float32 [N, D] in manifest order."""
    with np.load(run.features_path, allow_pickle=False) as z:
        return z["feature"]


def load_pixel_features(run: RunDirectory, stem: str):
    """A pixel-trained baseline's encoder features [N, D], or None if it was not trained."""
    path = run.pixel_features_path(stem)
    if not os.path.exists(path):
        return None
    with np.load(path, allow_pickle=False) as z:
        return z["feature"]
