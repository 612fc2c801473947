"""The evaluate stage: the paper's Tables 2-5 on a run directory, written to report.json/md.

Methods:
  Identity          the query feature unchanged (the floor of FAM)
  FLAM(M/OS/Adv)    G(x, d_{a,value}) with the default manipulator (Sec. 3.3)
  FLAM(...)         the Table 3 ablations, when trained (--evaluation_ablations)
  Cls-Concat, Emb-Concat   replace the target attribute's block with the class prototype
  Mean-Shift        a reference of ours: x + (class mean of the target) - (class mean of the
                    embedder's predicted source class), over attribute_train features
FIR uses the FLAM feature itself (manipulation never touches the gallery) and the two concat
representations of the same images (Table 4).
"""

import os
import time
from typing import Dict, List, Tuple

import keras
import numpy as np
import tensorflow as tf

from flam_tf import vocabulary
from flam_tf.evaluation import metrics
from flam_tf.evaluation import report as report_lib

IDENTITY = "Identity"
CLS_CONCAT = "Cls-Concat"
EMB_CONCAT = "Emb-Concat"
MEAN_SHIFT = "Mean-Shift"
FLAM_FEATURE = "FLAM"


def _batched(fn, *arrays, batch_size: int = 4096) -> np.ndarray:
    """Applies a model function to arrays in batches; returns the concatenated numpy result."""
    out = []
    for start in range(0, len(arrays[0]), batch_size):
        out.append(np.asarray(fn(*[tf.constant(a[start:start + batch_size]) for a in arrays])))
    return np.concatenate(out) if out else np.zeros((0,))


def fir_report(features, m, represent=None) -> Dict[str, Dict[str, float]]:
    """R@k for in-shop and consumer-to-shop retrieval in the given representation."""
    out = {}
    fir = m["split"] == "fir_eval"
    for protocol, (q_role, g_role) in {"in-shop": ("inshop_query", "inshop_gallery"),
                                       "consumer-to-shop": ("c2s_query", "c2s_gallery")}.items():
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
    model = keras.Sequential([keras.Input((x_train.shape[1],)),
                              keras.layers.Dense(num_classes)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train[known], y_train[known], epochs=epochs, batch_size=256, verbose=0)
    return model


def evaluate_run(ctx) -> dict:
    """Evaluates every trained method of the run; writes report.json, report.md and figures."""
    from flam_tf import stages

    start = time.time()
    features, m = stages.load_features(ctx)
    labels_all = stages.label_matrix(m)
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
    twin_lookup = {(src, tuple(gallery_labels[i])): i for i, src in enumerate(twin_of) if src}
    twin_index = np.array([twin_lookup.get((ids[q], tuple(t)), -1)
                           for q, t in zip(queries.query_index, queries.target_labels)])
    k_max = min(max(metrics.FAM_KS), len(fam) - 1)

    def rank(query_vectors, gallery_vectors):
        ranked, _ = metrics.cosine_top_k(query_vectors, gallery_vectors, k_max,
                                         exclude=queries.query_index)
        return ranked

    report = {"fam": {}, "twin_recall": {}, "fir": {}}
    manipulated: Dict[str, np.ndarray] = {}
    methods: List[Tuple[str, np.ndarray, np.ndarray]] = [(IDENTITY, q_feat, gallery)]
    variants = [stages.FLAM] + [v for v in stages.ABLATIONS
                                if _exists(ctx, stages.variant_model_name(v))]
    for variant in variants:
        model = keras.saving.load_model(ctx.run.model_path(stages.variant_model_name(variant)))
        out = _batched(model.manipulate_indices, q_feat, attribute_idx, target_idx)
        manipulated[variant] = out
        methods.append((variant, out, gallery))
        if variant == stages.FLAM:
            flam_model = model
    # Mean-Shift (a reference, not in the paper): x + mu_target - mu_source over attribute_train
    # class means, the source class as the embedder predicts it (no evaluation labels used).
    train = m["split"] == "attribute_train"
    predicted = flam_model.embedder.classify(tf.constant(q_feat))
    source = np.stack([np.asarray(predicted[a][0]) for a in vocabulary.ATTRIBUTE_TYPES], 1)
    shift = np.zeros_like(q_feat)
    for a, attribute in enumerate(vocabulary.ATTRIBUTE_TYPES):
        labelled = train & (labels_all[:, a] >= 0)
        means = np.stack([features[labelled & (labels_all[:, a] == c)].mean(0)
                          if np.any(labelled & (labels_all[:, a] == c)) else np.zeros(q_feat.shape[1])
                          for c in range(vocabulary.NUM_CLASSES[attribute])])
        rows = queries.attribute_index == a
        shift[rows] = means[queries.target_value[rows]] - means[source[rows, a]]
    methods.append((MEAN_SHIFT, metrics.l2_normalize(q_feat + shift), gallery))
    for name, stem in ((CLS_CONCAT, "cls_concat"), (EMB_CONCAT, "emb_concat")):
        model = keras.saving.load_model(ctx.run.model_path(stem))
        rep_gallery = _batched(model.represent, gallery)
        out = _batched(model.manipulate, rep_gallery[queries.query_index], attribute_idx,
                       target_idx)
        methods.append((name, out, rep_gallery))
        report["fir"][name] = fir_report(features, m,
                                         represent=lambda x, mm=model: _batched(mm.represent, x))
    report["fir"] = {FLAM_FEATURE: fir_report(features, m), **report["fir"]}
    ranked_by_method = {}
    for name, query_vectors, gallery_vectors in methods:
        ranked = rank(query_vectors, gallery_vectors)
        ranked_by_method[name] = ranked
        report["fam"][name] = metrics.fam_top_k_accuracy(ranked, gallery_labels,
                                                         queries.target_labels,
                                                         queries.attribute_index)
        tr = metrics.twin_recall(ranked, twin_index, (1, 10, 50))
        report["twin_recall"][name] = tr

    # Table 5: a simple classifier on original training features.
    accuracy = {"original": {}, "manipulated": {}}
    for a, attribute in enumerate(vocabulary.ATTRIBUTE_TYPES):
        probe = linear_probe(features[train], labels_all[train, a],
                             vocabulary.NUM_CLASSES[attribute], ctx.config.runtime.seed)
        pred = np.argmax(probe.predict(gallery[is_query], verbose=0), axis=1)
        accuracy["original"][attribute] = float(np.mean(pred == gallery_labels[is_query, a]))
        chosen = queries.attribute_index == a
        pred = np.argmax(probe.predict(manipulated[stages.FLAM][chosen], verbose=0), axis=1)
        accuracy["manipulated"][attribute] = float(np.mean(pred == queries.target_labels[chosen, a]))
    report["attribute_accuracy"] = accuracy

    # What the served `describe` signature answers after a manipulation: the embedder's nearest
    # dictionary class of the target attribute, against the requested value.
    success = {}
    classified = flam_model.embedder.classify(tf.constant(manipulated[stages.FLAM]))
    for a, attribute in enumerate(vocabulary.ATTRIBUTE_TYPES):
        chosen = queries.attribute_index == a
        predicted = np.asarray(classified[attribute][0])[chosen]
        success[attribute] = float(np.mean(predicted == queries.target_value[chosen]))
    report["describe_success"] = success

    # Cycle cosine: cos(x, G(G(x, e^-), e)) with e^- = d of the target value, e = phi_a(x).
    embedded = flam_model.embedder.embed(tf.constant(q_feat))
    own = np.stack([np.asarray(embedded[a]) for a in vocabulary.ATTRIBUTE_TYPES], 1)
    e_back = own[np.arange(len(q_feat)), queries.attribute_index]
    recovered = _batched(lambda x, e, a: flam_model.generator((x, e, a)),
                         manipulated[stages.FLAM], e_back.astype(np.float32), attribute_idx)
    cos = np.sum(metrics.l2_normalize(q_feat) * metrics.l2_normalize(recovered), axis=1)
    report["cycle_cosine"] = float(np.mean(cos))

    report["num_queries"] = {
        "fam": int(len(queries.query_index)),
        "fam_items": int(is_query.sum()),
        "fam_gallery": int(len(fam)),
        "fam_per_attribute": {a: int(np.sum(queries.attribute_index == i))
                              for i, a in enumerate(vocabulary.ATTRIBUTE_TYPES)},
        "twin": int(np.sum(twin_index >= 0)),
        **{f"fir_{p}": int(v.get(metrics.NUM_QUERIES, 0))
           for p, v in report["fir"][FLAM_FEATURE].items()},
    }
    report["dataset"] = ("synthetic" if ctx.config.data.extractor_source == "synthetic"
                         else f"{ctx.config.data.extractor_source}+{ctx.config.data.attribute_source}")
    report["preset"] = ctx.config.preset
    report["seed"] = ctx.config.runtime.seed
    timings = dict(ctx.run.timings())
    timings["evaluate"] = round(time.time() - start, 2)
    timings["total"] = round(sum(timings.values()), 2)
    report["timings_s"] = timings

    from flam_tf.evaluation import figures

    figure_paths = figures.write_all(ctx, features, queries=queries, fam_rows=fam,
                                     flam_ranked=ranked_by_method[stages.FLAM],
                                     flam_model=flam_model)
    report["figures"] = figure_paths
    report_lib.write_report(ctx.run.root, report)
    return report


def _exists(ctx, stem):
    return os.path.exists(ctx.run.model_path(stem))
