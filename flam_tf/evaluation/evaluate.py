"""The evaluate stage: the paper's Tables 2-5 on a run directory, written to report.json/md.

Every method of flam_tf.methods that the run trained is measured: FLAM and the paper's rows as
G(x, d_{a,value}) (Sec. 3.3); the concat baselines with the target attribute's block replaced by
the class prototype; Mean-Shift as x + (class mean of the target) - (class mean of the embedder's
predicted source class), over attribute_train features. FIR uses the FLAM feature itself
(manipulation never touches the gallery) and the four concat representations of the same images
(Table 4).
"""

import os
import time
from typing import Dict, List, Tuple

import keras
import numpy as np
import tensorflow as tf

from flam_tf import feature_store, methods, vocabulary
from flam_tf.evaluation import figures, metrics
from flam_tf.evaluation import report as report_lib
from flam_tf.models.manipulator import class_means


def _batched(fn, *arrays, batch_size: int = 4096) -> np.ndarray:
    """Applies a model function to arrays in batches; returns the concatenated numpy result."""
    out = []
    for start in range(0, len(arrays[0]), batch_size):
        out.append(np.asarray(fn(*[tf.constant(a[start : start + batch_size]) for a in arrays])))
    return np.concatenate(out) if out else np.zeros((0,))


def fir_report(features, m, represent=None) -> Dict[str, Dict[str, float]]:
    """R@k for in-shop and consumer-to-shop retrieval in the given representation."""
    out = {}
    fir = m["split"] == "fir_eval"
    for protocol, (q_role, g_role) in {
        "in-shop": ("inshop_query", "inshop_gallery"),
        "consumer-to-shop": ("c2s_query", "c2s_gallery"),
    }.items():
        q, g = fir & m.has_role(q_role), fir & m.has_role(g_role)
        if not q.any() or not g.any():
            continue
        fq, fg = features[q], features[g]
        if represent is not None:
            fq, fg = represent(fq), represent(fg)
        k = min(max(metrics.FIR_KS), int(g.sum()))
        ranked, _ = metrics.cosine_top_k(fq, fg, k)
        out[protocol] = metrics.recall_at_k(m["instance_id"][q], m["instance_id"][g], ranked)
    return out


def linear_probe(x_train, y_train, num_classes: int, seed: int, epochs: int = 30) -> keras.Model:
    """The 'simple classifier' of Table 5: softmax regression on features (labelled rows only)."""
    keras.utils.set_random_seed(seed)
    known = y_train >= 0
    model = keras.Sequential([keras.Input((x_train.shape[1],)), keras.layers.Dense(num_classes)])
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x_train[known], y_train[known], epochs=epochs, batch_size=256, verbose=0)
    return model


def attribute_accuracy(
    train_features,
    train_labels,
    query_features,
    query_labels,
    queries,
    manipulated: Dict[str, np.ndarray],
    seed: int,
) -> dict:
    """Table 5, with an independent probe: one linear classifier per attribute type, trained on
    labelled attribute_train features only (no manipulator ever sees it).

    Returns:
        {"original": {type: accuracy on the query items' own features},
         "methods": {method: {"edited": {type: accuracy against the target, over the queries that
         edit that type}, "kept": {type: accuracy against the query's own label, over the queries
         that edit another type}}}}.
    """
    out = {"original": {}, "methods": {name: {"edited": {}, "kept": {}} for name in manipulated}}
    for a, attribute in enumerate(vocabulary.ATTRIBUTE_TYPES):
        probe = linear_probe(
            train_features, train_labels[:, a], vocabulary.NUM_CLASSES[attribute], seed
        )
        # One predict per probe over every row set (a predict per set would retrace each time).
        row_sets = [query_features] + list(manipulated.values())
        predicted = np.argmax(
            probe.predict(np.concatenate(row_sets), verbose=0, batch_size=4096), axis=1
        )
        predicted = np.split(predicted, np.cumsum([len(r) for r in row_sets])[:-1])
        out["original"][attribute] = float(np.mean(predicted[0] == query_labels[:, a]))
        edits = queries.attribute_index == a
        for name, pred in zip(manipulated, predicted[1:]):
            hit = pred == queries.target_labels[:, a]  # the target on a; the query's own otherwise
            out["methods"][name]["edited"][attribute] = float(np.mean(hit[edits]))
            out["methods"][name]["kept"][attribute] = float(np.mean(hit[~edits]))
    return out


def mean_shift(features, m, flam_model, q_feat, attribute_index, target_value) -> np.ndarray:
    """Mean-Shift (a reference, not in the paper): x + mu_target - mu_source over the run's
    attribute_train class means, the source class as the embedder predicts it (no evaluation
    labels used).

    Args:
        features: the run's features [N, D], manifest order; m: its manifest.
        flam_model: the run's FeatureManipulator (its embedder gives the source class).
        q_feat: query features [Q, D]; attribute_index, target_value: int [Q].

    Returns:
        float32 [Q, D], unit norm rows.
    """
    train = m["split"] == "attribute_train"
    source = flam_model.pseudo_labels(q_feat)  # [Q, 3]
    means = class_means(
        features[train],
        m.label_matrix()[train],
        [vocabulary.NUM_CLASSES[a] for a in vocabulary.ATTRIBUTE_TYPES],
    )
    a = np.asarray(attribute_index)
    shift = means[a, target_value] - means[a, source[np.arange(len(a)), a]]
    return metrics.l2_normalize(q_feat + shift)


def evaluate_run(ctx) -> dict:
    """Evaluates every trained method of the run; writes report.json, report.md and figures."""
    start = time.time()
    features, m = feature_store.load_features(ctx.run), ctx.manifest
    labels_all = m.label_matrix()
    fam = np.nonzero(m["split"] == "fam_eval")[0]
    gallery, gallery_labels = features[fam], labels_all[fam]
    is_query = m.has_role("fam_query")[fam]
    ids = m["instance_id"][fam]
    twin_of = m.get("twin_of")[fam]
    queries = metrics.fam_queries(gallery_labels, is_query)
    q_feat = gallery[queries.query_index]
    attribute_idx = queries.attribute_index.astype(np.int32)
    target_idx = queries.target_value.astype(np.int32)
    # The gallery index of the twin that carries exactly this query's target, if any.
    twin_index = metrics.twin_indices(queries, gallery_labels, ids, twin_of)
    if len(fam) < 2 or len(queries.query_index) == 0:
        raise ValueError(
            f"FAM evaluation has nothing to measure: fam_eval holds {len(fam)} "
            f"images and {len(queries.query_index)} queries (it needs images with "
            "all three attribute labels; see the reader's class table)"
        )
    k_max = min(max(metrics.FAM_KS), len(fam) - 1)

    def rank(query_vectors, gallery_vectors):
        ranked, _ = metrics.cosine_top_k(
            query_vectors, gallery_vectors, k_max, exclude=queries.query_index
        )
        return ranked

    report = {"fam": {}, "twin_recall": {}, "fir": {}}
    manipulated: Dict[str, np.ndarray] = {}
    rows: List[Tuple[str, np.ndarray, np.ndarray]] = [(methods.IDENTITY, q_feat, gallery)]
    variants = [methods.FLAM] + [
        v for v in methods.PAPER_SWITCHES if _exists(ctx, methods.variant_model_name(v))
    ]
    for variant in variants:
        model = ctx.load_model(methods.variant_model_name(variant))
        out = _batched(model.manipulate_indices, q_feat, attribute_idx, target_idx)
        manipulated[variant] = out
        rows.append((variant, out, gallery))
        if variant == methods.FLAM:
            flam_model = model
    train = m["split"] == "attribute_train"
    manipulated[methods.MEAN_SHIFT] = mean_shift(
        features, m, flam_model, q_feat, queries.attribute_index, queries.target_value
    )
    rows.append((methods.MEAN_SHIFT, manipulated[methods.MEAN_SHIFT], gallery))
    baselines = [
        (name, stem, features, lambda mm: mm) for name, stem in methods.FEATURE_BASELINES.items()
    ]
    for name, stem in methods.PIXEL_BASELINES.items():
        encoded = feature_store.load_pixel_features(ctx.run, stem)
        if encoded is not None:  # trained with evaluation.compare, unless pixel_epochs is 0
            baselines.append((name, stem, encoded, lambda mm: mm.head))
    for name, stem, inputs, head_of in baselines:
        head = head_of(ctx.load_model(stem))
        rep_gallery = _batched(head.represent, inputs[fam])
        out = _batched(head.manipulate, rep_gallery[queries.query_index], attribute_idx, target_idx)
        rows.append((name, out, rep_gallery))
        report["fir"][name] = fir_report(
            inputs, m, represent=lambda x, h=head: _batched(h.represent, x)
        )
    report["fir"] = {methods.FLAM: fir_report(features, m), **report["fir"]}
    ranked_by_method = {}
    for name, query_vectors, gallery_vectors in rows:
        ranked = rank(query_vectors, gallery_vectors)
        ranked_by_method[name] = ranked
        report["fam"][name] = metrics.fam_top_k_accuracy(
            ranked, gallery_labels, queries.target_labels, queries.attribute_index
        )
        tr = metrics.twin_recall(ranked, twin_index, (1, 10, 50))
        report["twin_recall"][name] = tr

    report["attribute_accuracy"] = attribute_accuracy(
        features[train],
        labels_all[train],
        gallery[is_query],
        gallery_labels[is_query],
        queries,
        manipulated,
        ctx.config.runtime.seed,
    )

    # What the served `describe` signature answers after a manipulation: the embedder's nearest
    # dictionary class of the target attribute, against the requested value.
    success = {}
    classified = flam_model.embedder.classify(tf.constant(manipulated[methods.FLAM]))
    for a, attribute in enumerate(vocabulary.ATTRIBUTE_TYPES):
        chosen = queries.attribute_index == a
        predicted = np.asarray(classified[attribute][0])[chosen]
        success[attribute] = float(np.mean(predicted == queries.target_value[chosen]))
    report["describe_success"] = success

    # Cycle cosine: cos(x, G(G(x, e^-), e)) with e^- = d of the target value, e = phi_a(x).
    embedded = flam_model.embedder.embed(tf.constant(q_feat))
    own = np.stack([np.asarray(embedded[a]) for a in vocabulary.ATTRIBUTE_TYPES], 1)
    e_back = own[np.arange(len(q_feat)), queries.attribute_index]
    recovered = _batched(
        flam_model.generate, manipulated[methods.FLAM], e_back.astype(np.float32), attribute_idx
    )
    cos = np.sum(metrics.l2_normalize(q_feat) * metrics.l2_normalize(recovered), axis=1)
    report["cycle_cosine"] = float(np.mean(cos))

    report["num_queries"] = {
        "fam": int(len(queries.query_index)),
        "fam_items": int(is_query.sum()),
        "fam_gallery": int(len(fam)),
        "fam_per_attribute": {
            a: int(np.sum(queries.attribute_index == i))
            for i, a in enumerate(vocabulary.ATTRIBUTE_TYPES)
        },
        "twin": int(np.sum(twin_index >= 0)),
        **{
            f"fir_{p}": int(v.get(metrics.NUM_QUERIES, 0))
            for p, v in report["fir"][methods.FLAM].items()
        },
    }
    report["dataset"] = (
        "synthetic"
        if ctx.config.data.extractor_source == "synthetic"
        else f"{ctx.config.data.extractor_source}+{ctx.config.data.attribute_source}"
    )
    report["preset"] = ctx.config.preset
    report["seed"] = ctx.config.runtime.seed
    timings = dict(ctx.run.timings())
    timings["evaluate"] = round(time.time() - start, 2)
    timings["total"] = round(sum(timings.values()), 2)
    report["timings_s"] = timings

    figure_paths = figures.write_all(
        ctx,
        features,
        queries=queries,
        fam_rows=fam,
        ranked_by_method={
            v: ranked_by_method[v]
            for v in (methods.FLAM, methods.FLAM_PAPER)
            if v in ranked_by_method
        },
        flam_model=flam_model,
    )
    report["figures"] = figure_paths
    report_lib.write_report(ctx.run.root, report)
    return report


def _exists(ctx, stem):
    return os.path.exists(ctx.run.model_path(stem))
