"""T@k on ADDE's published attribute manipulation queries (Shopping100k, DeepFashion), restricted
to manipulations of category, color and pattern, counted the way ADDE's `src/eval.py` counts.

The splits are read by `flam_tf.data.readers.adde_splits.read_adde_split`. A query is a hit at k
when one of the k gallery images nearest to the manipulated query feature has exactly the query's
target labels `gt_labels` (every attribute, a missing label matching only a missing label). The
gallery is the whole test set, the reference image included (as in eval.py, which searches all of
imgs_test with faiss IndexFlatL2 on L2-normalized features; cosine ranking is the same order).

    python -m flam_tf.evaluation.public_splits SPLIT_DIR [SPLIT_DIR ...]

prints the query counts per data set (all queries, and those of category / color / pattern).

    python -m flam_tf.evaluation.public_splits SPLIT_DIR --run_dir RUN --image_dir IMAGES \
        [--class_table codes.json] [--value_table values.json] [--attribute_index shape=0,...] \
        [--out scores.json]

scores a trained run on that split: the run's extractor embeds every image of imgs_test.txt
(paths relative to --image_dir), and each query's reference
feature is manipulated by FLAM (the run's manipulator), Mean-Shift (the run's attribute_train class
means) and Identity (no edit), asked for the project class of the target value. ADDE's target
values are indices, not names: Shopping100k's are named through the reader's code table
(`--class_table`, as `flam_tf.data.readers`) and category folders (see
`adde_splits.shopping100k_value_classes`); other splits need `--value_table`
({type: {"<value index>": "<class>"}}). A query whose target value has no class, or a class the
run never trained on (no attribute_train label), is not scored and is counted (`num_unmapped`);
in the JSON of `--out` the T@k of a type with no scored query are null. Bad input is one line on stderr,
exit code 2 (`--verbose`: the traceback).
"""

import json
import os
import sys
from typing import Callable, Dict, Mapping, Optional, Sequence

import numpy as np
from absl import app, flags, logging

from flam_tf import vocabulary
from flam_tf.evaluation.metrics import ALL, NUM_QUERIES, top_k_key
from flam_tf.models.searcher import cosine_top_k

ADDE_KS = (10, 20, 30, 50)  # ADDE reports top-30 by default (eval.py --top_k 30)
NUM_UNMAPPED = "num_unmapped"
EXIT_BAD_INPUT = 2


def adde_top_k_accuracy(
    split,
    gallery_features,
    manipulate: Callable,
    ks: Sequence[int] = ADDE_KS,
    batch_size: int = 1024,
    value_classes: Optional[Mapping[str, np.ndarray]] = None,
) -> Dict[str, Dict[str, float]]:
    """T@k per FLAM attribute type and over the category/color/pattern queries.

    Args:
        split: an `AddeSplit` whose `attribute_index` names the types to score.
        gallery_features: float array [N, D], one row per image of `split.images`.
        manipulate: (reference features [q, D], attribute type name, target int array [q]) ->
            manipulated query features [q, D]; called once per attribute type. The targets are
            ADDE value indices, or project class indices when `value_classes` is given.
        ks: cut-offs.
        batch_size: queries per similarity matmul.
        value_classes: {type: int array [values of that attribute]}: ADDE value -> project class,
            -1 = no class (the query is not scored; counted in `num_unmapped`). None: every
            query scored, targets passed as ADDE values.

    Returns:
        {type: {"T@k": float, "num_queries": int, "num_unmapped": int}, ..., "all": {...}};
        nan for no query.
    """
    gallery_features = np.asarray(gallery_features, dtype=np.float32)
    if len(gallery_features) != len(split.images):
        raise ValueError(
            f"gallery_features has {len(gallery_features)} rows; the split has "
            f"{len(split.images)} images"
        )
    k_max = max(ks)
    results, all_hits, all_unmapped = {}, [], 0
    for name, attribute in split.attribute_index.items():
        chosen = np.flatnonzero(split.target_attribute == attribute)
        targets = split.target_value[chosen]
        unmapped = 0
        if value_classes is not None:
            targets = np.asarray(value_classes[name])[targets]
            unmapped = int(np.sum(targets < 0))
            chosen, targets = chosen[targets >= 0], targets[targets >= 0]
        hits = np.zeros((len(chosen), k_max), dtype=bool)
        if len(chosen):
            queries = np.asarray(
                manipulate(gallery_features[split.ref[chosen]], name, targets), dtype=np.float32
            )
            ranked, _ = cosine_top_k(queries, gallery_features, k_max, batch_size=batch_size)
            hits[:, : ranked.shape[1]] = np.all(
                split.labels[ranked] == split.gt_labels[chosen][:, None, :], axis=-1
            )
        results[name] = {**_rates(hits, ks), NUM_UNMAPPED: unmapped}
        all_hits.append(hits)
        all_unmapped += unmapped
    results[ALL] = {
        **_rates(np.concatenate(all_hits) if all_hits else np.zeros((0, k_max), bool), ks),
        NUM_UNMAPPED: all_unmapped,
    }
    return results


def _rates(hits, ks):
    found = np.cumsum(hits, axis=1) > 0
    out = {
        top_k_key(k): float(np.mean(found[:, min(k, found.shape[1]) - 1]))
        if len(found)
        else float("nan")
        for k in ks
    }
    out[NUM_QUERIES] = int(len(hits))
    return out


def image_paths(split, image_dir: str) -> list:
    """The absolute path of every image of `split` under `image_dir`.

    Raises:
        FileNotFoundError: naming how many are missing and the first (its imgs_test.txt line).
    """
    paths = [os.path.join(image_dir, p) for p in split.images]
    missing = [i for i, p in enumerate(paths) if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} images of {split.split_dir}/imgs_test.txt not found "
            f"under {image_dir}, the first {paths[missing[0]]} (line {missing[0] + 1}); "
            "--image_dir is the folder those paths are relative to"
            + (
                " (they start with Images/: the data set's root)"
                if split.images[missing[0]].replace("\\", "/").startswith("Images/")
                else " (Shopping100k: its Images/ folder)"
            )
        )
    return paths


def run_files(run_dir: str) -> Dict[str, str]:
    """The files of a trained run the scorer reads, checked to exist (nothing is written).

    Raises:
        FileNotFoundError: naming the first missing file.
    """
    from flam_tf import methods
    from flam_tf import run_directory as rd

    files = {
        "config": rd.run_file(run_dir, rd.CONFIG_JSON),
        "manifest": rd.run_file(run_dir, rd.MANIFEST_CSV),
        "features": rd.run_file(run_dir, rd.FEATURES_NPZ),
        **{
            n: rd.RunDirectory.model_file(run_dir, n)
            for n in ("extractor", methods.variant_model_name(methods.FLAM))
        },
    }
    for path in files.values():
        if not os.path.exists(path):
            raise FileNotFoundError(f"Not a trained run directory: missing {path}")
    return files


def trained_classes(run_dir: str) -> Dict[str, np.ndarray]:
    """{type: bool [classes]}: the classes with attribute_train labels in the run (the only ones
    its embedders, G and the class means have seen)."""
    from flam_tf.data import manifest as manifest_lib

    m = manifest_lib.read_manifest(run_files(run_dir)["manifest"])
    labels = m.label_matrix()[m["split"] == "attribute_train"]
    return {
        t: np.isin(np.arange(vocabulary.NUM_CLASSES[t]), labels[:, i])
        for i, t in enumerate(vocabulary.ATTRIBUTE_TYPES)
    }


def restrict_to_trained(
    value_classes: Mapping[str, np.ndarray], run_dir: str
) -> Dict[str, np.ndarray]:
    """`value_classes` with every class the run never trained on (see `trained_classes`) set to
    -1: G's dictionary vector and the class mean of such a class were never learned."""
    trained = trained_classes(run_dir)
    out = {}
    for t, classes in value_classes.items():
        classes = np.asarray(classes)
        untrained = (classes >= 0) & ~trained[t][np.maximum(classes, 0)]
        if untrained.any():
            logging.warning(
                "%s: %d value(s) map onto classes the run never trained on (%s); their queries "
                "are not scored",
                t,
                int(untrained.sum()),
                sorted({vocabulary.CLASSES[t][c] for c in classes[untrained]}),
            )
        out[t] = np.where(untrained, vocabulary.MISSING, classes)
    return out


def _load_run(run_dir: str, names):
    """(data config, {name: model}) of a trained run; FileNotFoundError naming a missing file."""
    import keras

    from flam_tf.config import ExperimentConfig

    files = run_files(run_dir)
    paths = {n: files[n] for n in names}
    with open(files["config"], encoding="utf-8") as f:
        data = ExperimentConfig.from_dict(json.load(f)).data
    return data, {n: keras.saving.load_model(p, compile=False) for n, p in paths.items()}


def extract_split_features(
    run_dir: str, split, image_dir: str, batch_size: int = 256
) -> np.ndarray:
    """The run's extractor feature of every image of `split` (float32 [N, D], imgs_test order),
    decoded and resized as the run's own images were.

    Raises:
        FileNotFoundError: a missing image (checked first), or a missing file of the run.
    """
    import keras

    from flam_tf.data.pipeline import path_dataset

    paths = image_paths(split, image_dir)
    data, models = _load_run(run_dir, ["extractor"])
    features = []
    progress = keras.utils.Progbar(len(paths), unit_name="image", interval=10.0)
    for images in path_dataset(paths, data.image_size, batch_size, data.max_image_pixels):
        features.append(models["extractor"](images, training=False).numpy())
        progress.add(len(features[-1]))
    return np.concatenate(features).astype(np.float32)


def score_run(
    run_dir: str,
    split,
    gallery_features: np.ndarray,
    value_classes: Mapping[str, np.ndarray],
    ks: Sequence[int] = ADDE_KS,
) -> Dict[str, Dict[str, Dict[str, float]]]:
    """ADDE T@k of a trained run's FLAM, Mean-Shift and Identity on `split`.

    Args:
        run_dir: a run directory of `python -m flam_tf.train` (models, features, manifest).
        split: an `AddeSplit`; value_classes: as in `adde_top_k_accuracy`.
        gallery_features: `extract_split_features` of the split.
        ks: cut-offs.

    Returns:
        {method: adde_top_k_accuracy's result}, methods named as in the run's report.

    Raises:
        FileNotFoundError: a missing file of the run (named).
    """
    from flam_tf import methods
    from flam_tf.data import manifest as manifest_lib
    from flam_tf.evaluation.evaluate import mean_shift

    flam_name = methods.variant_model_name(methods.FLAM)
    _, models = _load_run(run_dir, [flam_name])
    flam = models[flam_name]
    files = run_files(run_dir)
    with np.load(files["features"], allow_pickle=False) as z:
        run_features = z["feature"]
    run_manifest = manifest_lib.read_manifest(files["manifest"])

    def edit(method):
        def manipulate(reference, attribute, classes):
            a = np.full(len(classes), vocabulary.ATTRIBUTE_TYPES.index(attribute), np.int32)
            classes = np.asarray(classes, np.int32)
            if method == methods.IDENTITY:
                return reference
            if method == methods.MEAN_SHIFT:
                return mean_shift(run_features, run_manifest, flam, reference, a, classes)
            step = 4096
            return np.concatenate(
                [
                    flam.manipulate_indices(
                        reference[i : i + step], a[i : i + step], classes[i : i + step]
                    ).numpy()
                    for i in range(0, len(reference), step)
                ]
            )

        return manipulate

    return {
        method: adde_top_k_accuracy(
            split, gallery_features, edit(method), ks, value_classes=value_classes
        )
        for method in (methods.FLAM, methods.MEAN_SHIFT, methods.IDENTITY)
    }


def load_value_table(path: str, split) -> Dict[str, np.ndarray]:
    """{type: {"<ADDE value index>": "<project class>"}} (JSON) -> `value_classes` arrays.

    Raises:
        ValueError: not JSON, an unknown type, a type the split does not score, a value index
            out of range or a class not in the vocabulary, naming the file.
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            table = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {e.lineno}: not JSON ({e.msg})") from None
    if not isinstance(table, dict):
        raise ValueError(f'{path}: expected {{type: {{"<value index>": "<class>"}}}}')
    out = {
        t: np.full(int(split.attr_num[a]), vocabulary.MISSING, np.int64)
        for t, a in split.attribute_index.items()
    }
    for attribute, entries in table.items():
        if attribute not in out:
            raise ValueError(
                f"{path}: type {attribute!r} is not scored on this split "
                f"(scored: {sorted(out)}; see --attribute_index)"
            )
        if not isinstance(entries, dict):
            raise ValueError(
                f'{path}: {attribute}: expected {{"<value index>": "<class>"}}, got {entries!r}'
            )
        for value, name in entries.items():
            if not isinstance(name, str):
                raise ValueError(
                    f"{path}: {attribute} value {value!r}: class {name!r} is not a name"
                )
            if not str(value).isdigit() or int(value) >= len(out[attribute]):
                raise ValueError(
                    f"{path}: {attribute} value {value!r} is not an index in "
                    f"0..{len(out[attribute]) - 1}"
                )
            try:
                out[attribute][int(value)] = vocabulary.class_index(attribute, name)
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
    return out


FLAGS = flags.FLAGS


def _define_flags() -> None:
    """The CLI's flags, defined only when this module runs as a script: importing it (tests,
    other tools) must not claim flag names such as --run_dir in the process."""
    flags.DEFINE_string("run_dir", None, "Score this trained run on the split (one SPLIT_DIR).")
    flags.DEFINE_string(
        "image_dir", None, "With --run_dir: the folder imgs_test.txt is relative to."
    )
    flags.DEFINE_string(
        "class_table",
        None,
        "Shopping100k: a code table naming value codes (as flam_tf.data.readers).",
    )
    flags.DEFINE_string(
        "value_table", None, 'JSON {type: {"<ADDE value index>": "<class>"}}; replaces the naming.'
    )
    flags.DEFINE_string(
        "attribute_index", None, "type=ADDE attribute index, e.g. shape=0,color=2,pattern=8."
    )
    flags.DEFINE_string("out", None, "With --run_dir: write the scores as JSON here.")
    flags.DEFINE_bool("verbose", False, "On bad input, show the full traceback.")


def _attribute_index(text: Optional[str]):
    if not text:
        return None
    out = {}
    for item in text.split(","):
        name, _, index = item.partition("=")
        if name.strip() not in vocabulary.ATTRIBUTE_TYPES or not index.strip().isdigit():
            raise ValueError(
                f"--attribute_index: expected type=index with type in "
                f"{list(vocabulary.ATTRIBUTE_TYPES)}, got {item!r}"
            )
        out[name.strip()] = int(index)
    return out


def run(
    split_dirs,
    run_dir: Optional[str] = None,
    image_dir: Optional[str] = None,
    class_table: Optional[str] = None,
    value_table: Optional[str] = None,
    attribute_index: Optional[str] = None,
    out: Optional[str] = None,
) -> None:
    """What the CLI does, its flags as arguments (see the module docstring).

    Raises:
        ValueError, OSError: bad input, naming the file (and line) where there is one.
    """
    from flam_tf.data import readers
    from flam_tf.data.readers import adde_splits

    if not split_dirs:
        raise ValueError("give at least one SPLIT_DIR (a folder of ADDE's splits/)")
    if run_dir and len(split_dirs) != 1:
        raise ValueError(f"--run_dir scores one SPLIT_DIR; got {len(split_dirs)}")
    if run_dir and not image_dir:
        raise ValueError("--run_dir needs --image_dir (the folder imgs_test.txt is relative to)")
    index = _attribute_index(attribute_index)
    for split_dir in split_dirs:
        split = adde_splits.read_adde_split(split_dir, index)
        print(f"{split_dir}: {len(split.images)} test images, queries {split.query_counts()}")
    if not run_dir:
        return
    if not split.attribute_index:
        raise ValueError(f"{split_dir}: no attribute type to score; pass --attribute_index")
    if value_table:
        value_classes = load_value_table(value_table, split)
    elif os.path.basename(os.path.normpath(split_dir)) == "Shopping100k":
        options = {}
        if class_table:
            options = readers.class_table_options("shopping100k", class_table)
        value_classes = adde_splits.shopping100k_value_classes(
            split, code_table=options.get("code_table")
        )
    else:
        raise ValueError(
            f"{split_dir}: its value indices have no published names; pass --value_table"
        )
    _count_scored(split, value_classes, split_dir, "a project class")
    image_paths(split, image_dir)  # before any work: a missing image is named (run files next)
    value_classes = restrict_to_trained(value_classes, run_dir)
    scored = _count_scored(split, value_classes, split_dir, "a class the run trained on")
    print(f"queries with a target class (scored): {scored}")
    gallery = extract_split_features(run_dir, split, image_dir)
    scores = score_run(run_dir, split, gallery, value_classes)
    for method, by_type in scores.items():
        for attribute, rates in by_type.items():
            cells = " ".join(f"{k}={v:.4f}" for k, v in rates.items() if k.startswith("T@"))
            print(
                f"{method:<12} {attribute:<8} {cells} queries={rates[NUM_QUERIES]} "
                f"unmapped={rates[NUM_UNMAPPED]}"
            )
    if out:
        partial = out + ".partial"
        with open(partial, "w", encoding="utf-8") as f:
            json.dump(
                {"split_dir": os.path.abspath(split_dir), "scores": _nan_to_none(scores)},
                f,
                indent=2,
                allow_nan=False,
            )
        os.replace(partial, out)
        print(f"Wrote {out}")


def _count_scored(split, value_classes, split_dir, what: str) -> Dict[str, int]:
    """Queries per type whose target has a class; ValueError when there is none at all (`what`:
    which classes count, for the message: any project class, or those the run trained on)."""
    scored = {
        t: int(np.sum(value_classes[t][split.target_value[split.target_attribute == a]] >= 0))
        for t, a in split.attribute_index.items()
    }
    if not sum(scored.values()):
        raise ValueError(
            f"{split_dir}: no query's target value has {what}; name the values with "
            "--class_table (Shopping100k codes) or --value_table"
        )
    return scored


def _nan_to_none(value):
    """NaN (a type with no scored query) as JSON null: strict JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    return None if isinstance(value, float) and value != value else value


def main(argv):
    import zipfile

    try:
        run(
            argv[1:],
            run_dir=FLAGS.run_dir,
            image_dir=FLAGS.image_dir,
            class_table=FLAGS.class_table,
            value_table=FLAGS.value_table,
            attribute_index=FLAGS.attribute_index,
            out=FLAGS.out,
        )
    except Exception as e:  # noqa: BLE001 (bad input is one line; anything else re-raised)
        bad_input = (ValueError, OSError, zipfile.BadZipFile)  # ManifestError is a ValueError
        if "tensorflow" in sys.modules:  # an image TF cannot decode (corrupt, too large)
            bad_input += (sys.modules["tensorflow"].errors.OpError,)
        if FLAGS.verbose or not isinstance(e, bad_input):
            raise
        text = getattr(e, "message", None) or str(e)  # an OpError's own message, no op trace
        message = " ".join(text.split("\n"))
        print(f"flam_tf.evaluation.public_splits: error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    logging.flush()


if __name__ == "__main__":
    _define_flags()
    app.run(main)
