"""What a preset trains, counted: the synthetic benchmark's split sizes, and every model built and
profiled (TensorFlow's graph profiler on the traced train_step, test_step and inference call)."""

import math
import time


def dataset_counts(config):
    """Image counts per split, instances, labelled rows and evaluation query counts of the
    synthetic benchmark a preset writes (no image is rendered)."""
    import numpy as np

    from flam_tf import vocabulary
    from flam_tf.data import synthetic
    from flam_tf.evaluation import metrics

    d = config.data
    syn = synthetic.SyntheticConfig(
        num_instances=d.num_instances,
        seed=config.runtime.seed,
        image_size=d.image_size,
        label_missing_prob=d.label_missing_prob,
        twins_per_item=d.twins_per_item,
        entanglement=d.entanglement,
    )
    specs = synthetic.image_specs(syn)
    rows = [synthetic.manifest_row(s, syn) for s in specs]
    split = np.array([s.instance.split for s in specs])
    counts = {
        f"images_{s}": int((split == s).sum())
        for s in ("extractor_train", "fir_eval", "attribute_train", "unlabelled", "fam_eval")
    }
    counts["images_all"] = len(specs)
    counts["instances_extractor_train"] = len(
        {s.instance.index for s in specs if s.instance.split == "extractor_train"}
    )
    attr = [r for r in rows if r["split"] == "attribute_train"]
    counts["attribute_train_labelled"] = sum(
        any(r[a] for a in vocabulary.ATTRIBUTE_TYPES) for r in attr
    )
    counts["attribute_train_labels_per_type"] = {
        a: sum(bool(r[a]) for r in attr) for a in vocabulary.ATTRIBUTE_TYPES
    }
    fam = [(r, s) for r, s in zip(rows, specs) if r["split"] == "fam_eval"]
    labels = np.array(
        [[vocabulary.class_index(a, r[a]) for a in vocabulary.ATTRIBUTE_TYPES] for r, _ in fam],
        np.int64,
    )
    is_query = np.array(["fam_query" in s.role.split(";") for _, s in fam])
    counts["fam_queries"] = int(len(metrics.fam_queries(labels, is_query).query_index))
    counts["fam_items"] = int(is_query.sum())
    roles = [s.role.split(";") for s in specs if s.instance.split == "fir_eval"]
    for name in ("inshop_query", "inshop_gallery", "c2s_query", "c2s_gallery"):
        counts[f"fir_{name}"] = sum(name in r for r in roles)
    counts["manipulator_train"] = (
        counts["images_extractor_train"]
        + counts["images_attribute_train"]
        + counts["images_unlabelled"]
    )
    return counts


def _graph_flops(concrete_function):
    import tensorflow as tf

    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return int(
        tf.compat.v1.profiler.profile(
            graph=concrete_function.graph, options=options
        ).total_float_ops
    )


def _profile(fn, *specs):
    """(FLOPs of fn's traced graph, seconds the trace took)."""
    import tensorflow as tf

    start = time.time()
    concrete = tf.function(fn).get_concrete_function(*specs)
    traced = time.time() - start
    return _graph_flops(concrete), traced


def _params(model):
    return int(sum(math.prod(v.shape) for v in model.trainable_variables))


def profile_models(config, counts, log=print):
    """Builds every model a preset trains and profiles it. Returns {model key: record}; each
    record has forward FLOPs per example (test_step for trained models, the inference call for
    the rest), the profiled train_step FLOPs per step and its global batch."""
    import keras
    import numpy as np
    import tensorflow as tf

    from flam_tf import methods, stages, vocabulary
    from flam_tf.models import (
        AttributeEmbedder,
        ClsConcat,
        EmbConcat,
        FeatureExtractor,
        FeatureManipulator,
        PixelConcat,
    )

    f32, i32 = tf.float32, tf.int32
    S, e = config.data.image_size, config.extractor
    D = e.feature_dim
    classes = [vocabulary.NUM_CLASSES[a] for a in vocabulary.ATTRIBUTE_TYPES]
    out = {}

    def adam():
        return keras.optimizers.Adam(1e-3)

    def record(key, model, train_spec, batch, test_spec, infer_fn, infer_specs, infer_batch):
        t0 = time.time()
        model.compile(optimizer=adam())
        model.optimizer.build(model.trainable_variables)
        train, traced = _profile(model.train_step, train_spec)
        test, _ = _profile(model.test_step, test_spec)
        infer, _ = _profile(infer_fn, *infer_specs)
        out[key] = {
            "train_step_flops": train,
            "batch": batch,
            "forward_flops": test / batch,
            "inference_flops": infer / infer_batch,
            "params": _params(model),
            "train_trace_s": round(traced, 1),
        }
        log(
            f"  {key:24s} forward {test / batch / 1e9:9.4f} GFLOP/example, train step "
            f"{train / 1e9:10.1f} GFLOP (batch {batch}, {train / test:.2f}x forward), "
            f"inference {infer / infer_batch / 1e9:.4f} GFLOP/example  [{time.time() - t0:.0f} s]"
        )

    # extractor: PK batch (+ the attribute batch when attribute_weight > 0 and labels exist)
    attribute_weight = e.attribute_weight if counts["attribute_train_labelled"] else 0.0
    n_ce = min(e.num_ce_classes, counts["instances_extractor_train"])
    B, Ba = e.instances_per_batch * e.images_per_instance, e.attribute_batch_size
    model = FeatureExtractor(
        backbone=e.backbone,
        pooling=e.pooling,
        feature_dim=D,
        image_size=S,
        num_ce_classes=n_ce,
        margin=e.margin,
        weights=None,
        attribute_weight=attribute_weight,
        attribute_classes=classes,
    )
    pk = (
        tf.TensorSpec([B, S, S, 3], f32),
        {"instance": tf.TensorSpec([B], i32), "ce_class": tf.TensorSpec([B], i32)},
    )
    spec = (
        (pk, (tf.TensorSpec([Ba, S, S, 3], f32), tf.TensorSpec([Ba, 3], i32)))
        if attribute_weight
        else pk
    )
    record(
        "extractor",
        model,
        spec,
        B + (Ba if attribute_weight else 0),
        spec,
        lambda x: model(x, training=False),
        [tf.TensorSpec([8, S, S, 3], f32)],
        8,
    )
    out["extractor"]["attribute_batch"] = Ba if attribute_weight else 0
    out["extractor"]["pk_batch"] = B

    # embedders
    c = config.embedder
    b = min(c.batch_size, counts["images_attribute_train"])
    spec = (tf.TensorSpec([b, D], f32), tf.TensorSpec([b, 3], i32))
    embedder = AttributeEmbedder(
        D, embedding_dim=c.embedding_dim, hidden_units=c.hidden_units, margin=c.margin
    )
    record(
        "embedder",
        embedder,
        spec,
        b,
        spec,
        lambda x: embedder(x),
        [tf.TensorSpec([64, D], f32)],
        64,
    )

    # manipulator variants
    m = config.manipulator
    variants = [methods.FLAM, methods.FLAM_PAPER] + (
        list(methods.ABLATIONS) if config.evaluation.ablations else []
    )
    n = counts["manipulator_train"]
    b = min(m.batch_size, n)
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(n, D)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    bank_labels = np.stack([rng.integers(0, k, n) for k in classes], 1)
    for variant in variants:
        model = FeatureManipulator(
            embedder,
            D,
            embedding_dim=c.embedding_dim,
            g_hidden=(m.g_hidden, m.g_hidden),
            d_hidden=(m.d_hidden, m.d_hidden),
            seed=0,
            **stages.manipulator_settings(m, variant),
        )
        model.compile(g_optimizer=adam(), d_optimizer=adam())
        if model.retrieval_weight:
            model.set_retrieval_bank(bank, bank_labels)
        t0 = time.time()
        spec = tf.TensorSpec([b, D], f32)
        train, traced = _profile(model.train_step, spec)
        test, _ = _profile(model.test_step, spec)
        infer, _ = _profile(
            model.manipulate_indices,
            tf.TensorSpec([64, D], f32),
            tf.TensorSpec([64], i32),
            tf.TensorSpec([64], i32),
        )
        key = methods.variant_model_name(variant)
        out[key] = {
            "train_step_flops": train,
            "batch": b,
            "forward_flops": test / b,
            "inference_flops": infer / 64,
            "params": _params(model),
            "train_trace_s": round(traced, 1),
            "variant": variant,
            "retrieval_bank_rows": n if model.retrieval_weight else 0,
        }
        log(
            f"  {key:24s} forward {test / b / 1e9:9.4f} GFLOP/example, train step "
            f"{train / 1e9:10.1f} GFLOP (batch {b}, {train / test:.2f}x forward)  "
            f"[{time.time() - t0:.0f} s]"
        )

    # baselines on x
    bl = config.baselines
    b = min(bl.batch_size, counts["images_attribute_train"])
    spec = (tf.TensorSpec([b, D], f32), tf.TensorSpec([b, 3], i32))
    for name, stem in methods.FEATURE_BASELINES.items():
        head = (ClsConcat if name.startswith("Cls") else EmbConcat)(D, block_dim=bl.block_dim)
        record(
            stem,
            head,
            spec,
            b,
            spec,
            lambda x, h=head: h.represent(x),
            [tf.TensorSpec([64, D], f32)],
            64,
        )

    # pixel baselines: their own encoder (the extractor's backbone) + a concat head, from images
    if bl.pixel_epochs > 0:
        b = bl.pixel_batch_size
        spec = (tf.TensorSpec([b, S, S, 3], f32), tf.TensorSpec([b, 3], i32))
        for name, stem in methods.PIXEL_BASELINES.items():
            head = (ClsConcat if name.startswith("Cls") else EmbConcat)(D, block_dim=bl.block_dim)
            model = PixelConcat(
                head,
                backbone=e.backbone,
                pooling=e.pooling,
                feature_dim=D,
                image_size=S,
                weights=None,
            )
            record(
                stem,
                model,
                spec,
                b,
                spec,
                lambda x, mm=model: mm.encode(x),
                [tf.TensorSpec([8, S, S, 3], f32)],
                8,
            )
    keras.backend.clear_session()
    return out
