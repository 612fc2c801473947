"""Training throughput of the models on in-memory batches, against the matmul ceiling.

`extractor_training`: the extractor's train_on_batch on a PK batch of synthetic images, in float32
and under `mixed_bfloat16`, and its FLOP/s as a fraction of the matmul's (FLOPs counted from the
layers). `feature_training`: the manipulator GAN's and the attribute embedders' train_on_batch on
random unit features of the preset's widths (FLOPs counted by TensorFlow's graph profiler).
Every rate is measured in the same interleaved rounds as the matmul.
"""

import statistics

import keras
import numpy as np
import tensorflow as tf
from harness import interleaved, paired_ratio

from flam_tf import vocabulary
from sections.compute import MATMUL_FLOPS, matmul_fn, synthetic_images


def profiled_flops(fn, *specs):
    """Float operations of one call of `fn(*specs)`, counted by tf.compat.v1.profiler on the traced
    graph (MatMul, Conv2D and their gradients, elementwise ops); None if the profiler fails."""
    try:
        concrete = tf.function(fn).get_concrete_function(*specs)
        opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        opts["output"] = "none"
        info = tf.compat.v1.profiler.profile(graph=concrete.graph, options=opts)
        return float(info.total_float_ops) or None
    except Exception as e:  # noqa: BLE001  (a missing count is reported, not fatal)
        print(f"  (profiler failed: {e})")
        return None


def analytic_cnn_flops(extractor):
    """Forward FLOPs per image of a FeatureExtractor, counted from its layers: Conv2D
    2*Ho*Wo*k*k*Cin*Cout, Dense 2*in*out, cosine head 2*D*classes (BN, ReLU, pooling ignored)."""
    total = 0.0
    for layer in extractor.backbone.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, ho, wo, cout = layer.output.shape
            kh, kw, cin, _ = layer.kernel.shape
            total += 2.0 * ho * wo * kh * kw * cin * cout
    if extractor.projection is not None:
        total += 2.0 * np.prod(extractor.projection.kernel.shape)
    for w in extractor.classifier.weights:
        total += 2.0 * np.prod(w.shape)
    return total


def _training_rounds(step_fn, steps, examples_per_step, flops_per_example, rounds):
    """(examples/s per round, fraction of the matmul's FLOP/s per round) of `steps` calls of
    `step_fn`, interleaved with the matmul; no fractions without `flops_per_example`."""
    mm = matmul_fn()
    t = interleaved({"train": lambda: [step_fn() for _ in range(steps)], "matmul": mm}, rounds)
    rate = [steps * examples_per_step / x for x in t["train"]]
    fractions = []
    if flops_per_example:
        for tt, tm in zip(t["train"], t["matmul"]):
            fractions.append(
                (steps * examples_per_step * flops_per_example / tt) / (MATMUL_FLOPS / tm)
            )
    return rate, fractions


def bench_extractor_training(res, p):
    print("[extractor_training]", flush=True)
    from flam_tf.models import FeatureExtractor

    c = p["config"]
    s, pk = c.data.image_size, (c.extractor.instances_per_batch, c.extractor.images_per_instance)
    batch = pk[0] * pk[1]
    keras.utils.set_random_seed(0)
    model = FeatureExtractor(
        backbone=c.extractor.backbone,
        pooling=c.extractor.pooling,
        feature_dim=c.extractor.feature_dim,
        image_size=s,
        num_ce_classes=c.extractor.num_ce_classes,
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images = tf.constant(synthetic_images(batch, s).astype(np.float32))
    labels = np.repeat(np.arange(pk[0], dtype=np.int32), pk[1])
    targets = {"instance": tf.constant(labels), "ce_class": tf.constant(labels)}
    step = lambda: model.train_on_batch(images, targets)  # noqa: E731
    step()
    forward = analytic_cnn_flops(model)
    profiled = profiled_flops(
        lambda x, y: model.train_step((x, y)),
        tf.TensorSpec(images.shape, tf.float32),
        {k: tf.TensorSpec([batch], tf.int32) for k in targets},
    )
    # The same model under the mixed_bfloat16 policy (this CPU has AVX-512 BF16 / AMX, which
    # oneDNN uses for bf16 convolutions and matmuls): is lower precision what would speed it up?
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        bf16 = FeatureExtractor(
            backbone=c.extractor.backbone,
            pooling=c.extractor.pooling,
            feature_dim=c.extractor.feature_dim,
            image_size=s,
            num_ce_classes=c.extractor.num_ce_classes,
        )
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    bf16.compile(optimizer=keras.optimizers.Adam(1e-3))
    bf16_step = lambda: bf16.train_on_batch(images, targets)  # noqa: E731
    bf16_step()
    steps = p["train_steps"]
    t = interleaved(
        {
            "float32": lambda: [step() for _ in range(steps)],
            "bf16": lambda: [bf16_step() for _ in range(steps)],
            "matmul": matmul_fn(),
        },
        p["rounds"],
    )
    rate = [steps * batch / x for x in t["float32"]]
    fractions = [
        (steps * batch * 3 * forward / tt) / (MATMUL_FLOPS / tm)
        for tt, tm in zip(t["float32"], t["matmul"])
    ]
    res.add(
        "extractor_training",
        f"extractor_train_{s}px",
        "images/s",
        rate,
        note=f"{c.extractor.backbone}, feature_dim {c.extractor.feature_dim}, "
        f"PK batch {batch}, "
        "CE + triplet, Adam, train_on_batch on in-memory images",
    )
    res.add(
        "extractor_training",
        f"extractor_train_{s}px_mixed_bfloat16",
        "images/s",
        [steps * batch / x for x in t["bf16"]],
        ratio=paired_ratio(t["bf16"], t["float32"]),
        ratio_to=f"extractor_train_{s}px",
        note="the same training step under keras.mixed_precision `mixed_bfloat16`",
    )
    res.add(
        "extractor_training",
        "extractor_train_fraction_of_matmul",
        "fraction",
        fractions,
        ratio=statistics.median(fractions),
        ratio_to="matmul_4096_float32",
        flops_per_image=3 * forward,
        flops_per_image_profiler=(profiled / batch if profiled else None),
        note=f"FLOPs counted analytically from the layers: {forward / 1e6:.1f} MFLOP forward "
        f"per image, training = 3x forward; the tf.compat.v1.profiler count of the "
        f"traced train_step is "
        f"{(profiled / batch / 1e6) if profiled else float('nan'):.1f} MFLOP per image",
    )


def bench_feature_training(res, p):
    print("[feature_training]", flush=True)
    from flam_tf.models import AttributeEmbedder, FeatureManipulator

    c = p["config"]
    d, rng = c.extractor.feature_dim, np.random.default_rng(0)
    keras.utils.set_random_seed(0)

    def unit(n):
        x = rng.standard_normal((n, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    # Embedders (Eq. 2): sparse labels, -1 where missing.
    e = c.embedder
    embedder = AttributeEmbedder(
        d, embedding_dim=e.embedding_dim, hidden_units=e.hidden_units, margin=e.margin
    )
    embedder.compile(optimizer=keras.optimizers.Adam(e.learning_rate))
    xe = tf.constant(unit(e.batch_size))
    ye = np.stack(
        [
            rng.integers(0, vocabulary.NUM_CLASSES[a], e.batch_size)
            for a in vocabulary.ATTRIBUTE_TYPES
        ],
        axis=1,
    ).astype(np.int32)
    ye[rng.random(ye.shape) < 0.3] = -1
    ye = tf.constant(ye)
    embedder.train_on_batch(xe, ye)
    e_flops = profiled_flops(
        lambda x, y: embedder.train_step((x, y)),
        tf.TensorSpec(xe.shape, tf.float32),
        tf.TensorSpec(ye.shape, tf.int32),
    )

    # Manipulator GAN (Eq. 3-5).
    m = c.manipulator
    from flam_tf import methods, stages

    man = FeatureManipulator(
        embedder,
        d,
        embedding_dim=e.embedding_dim,
        g_hidden=(m.g_hidden, m.g_hidden),
        d_hidden=(m.d_hidden, m.d_hidden),
        **stages.manipulator_settings(m, methods.FLAM),
    )
    # The retrieval term ranks against the training pool: 64 batches' worth, about the default
    # preset's 16,600 training features.
    bank = unit(64 * m.batch_size)
    bank_labels = man.pseudo_labels(bank)
    man.initialize_memory(bank, bank_labels)
    man.set_retrieval_bank(bank, bank_labels)
    man.compile(
        g_optimizer=keras.optimizers.Adam(m.g_learning_rate, beta_1=0.5),
        d_optimizer=keras.optimizers.Adam(m.d_learning_rate, beta_1=0.5),
    )
    xm = tf.constant(unit(m.batch_size))
    man.train_on_batch(xm)
    m_flops = profiled_flops(lambda x: man.train_step((x,)), tf.TensorSpec(xm.shape, tf.float32))

    for name, step, batch, flops, what in (
        (
            "manipulator",
            lambda: man.train_on_batch(xm),
            m.batch_size,
            m_flops,
            f"memory G and D {m.g_hidden}x2 / {m.d_hidden}x2, batch {m.batch_size}, one D and "
            f"one G update per step, retrieval term over {64 * m.batch_size} bank features",
        ),
        (
            "embedder",
            lambda: embedder.train_on_batch(xe, ye),
            e.batch_size,
            e_flops,
            f"3 embedders of {e.hidden_units} hidden units, k={e.embedding_dim}, "
            f"batch {e.batch_size}",
        ),
    ):
        per_example = flops / batch if flops else None
        rate, fractions = _training_rounds(
            step, p["feature_steps"], batch, per_example, p["rounds"]
        )
        res.add(
            "feature_training",
            f"{name}_train",
            "examples/s",
            rate,
            note=f"feature_dim {d}; {what}; train_on_batch on in-memory features",
        )
        if fractions:
            res.add(
                "feature_training",
                f"{name}_train_fraction_of_matmul",
                "fraction",
                fractions,
                ratio=statistics.median(fractions),
                ratio_to="matmul_4096_float32",
                flops_per_example=per_example,
                note=f"{per_example / 1e6:.2f} MFLOP per example, counted by "
                "tf.compat.v1.profiler on the traced train_step graph",
            )
