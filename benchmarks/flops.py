"""Training FLOPs of every stage of the `paper` preset (and of `default`), and the time each stage
should take on 1 and on 8 NVIDIA A100 / H100 class GPUs: "GPU on paper" (issue 12, item 5).

    python benchmarks/flops.py                 # count, measure this host, predict; writes flops.json
    python benchmarks/flops.py --print         # the tables of the saved benchmarks/flops.json
    python benchmarks/flops.py --markdown      # the BUILD.md table (between TABLE_BEGIN/TABLE_END)
    python benchmarks/flops.py --predict --gpu=H100 --gpus=2 --vcpus=32 [--strategy=mirrored]
                                               # one JSON line: the extractor's expected images/s
                                               # (what benchmarks/gpu_check.sh compares against)

How FLOPs are counted (nothing here is trained; no GPU is needed):

* Every model is built from flam_tf.models with the preset's settings (random weights: FLOPs do
  not depend on them) and traced with `tf.function(...).get_concrete_function(spec)` at the
  stage's batch size; TensorFlow's graph profiler (`tf.compat.v1.profiler.profile(graph,
  options=ProfileOptionBuilder.float_operation())`) counts the FLOPs of the traced graph
  (a multiply-add is 2 FLOPs; ops without a registered FLOP count, e.g. gathers and sorts, add 0).
* "forward" of a trained model is its `test_step` graph: the loss computation its `train_step`
  differentiates (for the extractor: backbone + heads + CE + triplet + attribute term; for the
  GAN: G, D, the frozen embedder and the retrieval bank), per example.
* Training FLOPs (the headline) use the rule train = 3 x forward (backward ~ 2 x forward: one
  product for the input gradient, one for the weight gradient) x the examples the stage
  processes. The `train_step` graph itself (gradients and the Adam update included) is profiled
  too and shown beside it ("profiled"): 3.0x forward for ResNet50, less for the GAN, whose
  retrieval bank and frozen embedder get no weight gradient. Time predictions use the profiled
  train step.
* Example counts come from the stage code (flam_tf/stages.py) and the synthetic benchmark's
  split sizes (flam_tf.data.synthetic.image_specs of the preset's num_instances).
* evaluate's ranking (numpy on the CPU) and the data stage's rendering are counted/measured
  analytically (2*Q*G*D per cosine ranking), not with the profiler.

The GPU time model, its constants and where each comes from are in GPU_SPECS, CALIBRATION and
ASSUMPTIONS below, and are written into flops.json. It is checked on this machine by predicting
the default preset's CPU step and stage times from the same FLOP counts, this machine's matmul
ceiling (--reference_matmul_gflops) and its measured per-core decode rates, against measured runs
(benchmarks/.work/quality/default_seed*, written by benchmarks/quality.py); see check_table.
"""

import argparse
import glob
import json
import math
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

OUTPUT = os.path.join(REPO, "benchmarks", "flops.json")
CHECK_RUNS = os.path.join(REPO, "benchmarks", ".work", "quality", "default_seed*")
TABLE_BEGIN = "<!-- gpu table: written by benchmarks/flops.py -->"
TABLE_END = "<!-- gpu table: end -->"

# ------------------------------------------------------------------------------------------------
# The GPU model's constants.

# Vendor datasheets, dense (the datasheets' "with sparsity" Tensor Core figures are 2x these).
GPU_SPECS = {
    "A100": {"name": "NVIDIA A100 SXM4 80GB", "fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12,
             "hbm_bytes_s": 2.039e12,
             "source": "NVIDIA A100 datasheet: FP32 19.5, TF32 156 (312 sparse), BF16 312 "
                       "(624 sparse) TFLOPS; 2,039 GB/s HBM2e (80GB SXM)"},
    "H100": {"name": "NVIDIA H100 SXM5 80GB", "fp32": 66.9e12, "tf32": 494.7e12, "bf16": 989.4e12,
             "hbm_bytes_s": 3.35e12,
             "source": "NVIDIA H100 datasheet: FP32 67, TF32 989 sparse (494.7 dense), BF16 1,979 "
                       "sparse (989.4 dense) TFLOPS; 3.35 TB/s HBM3"},
}

# Measured ResNet50 training throughput that turns peak into an achieved fraction. NVIDIA
# DeepLearningExamples, TensorFlow/Classification/ConvNets/resnet50v1.5/README.md: DGX A100
# (A100 40GB), batch 256 per GPU, DALI input (GPU decode): 1 GPU 909 img/s TF32+XLA, 2375 img/s
# mixed precision+XLA; 8 GPUs 7.70x (TF32) and 7.32x (mixed) of one; 90 epochs take ~40 h vs ~47 h
# (TF32, with vs without XLA) and ~18 h vs ~19.5 h (mixed), which gives the no-XLA rates.
# Inference (TF32, no XLA, 1 GPU) by batch: the small-batch curve below.
CALIBRATION = {
    "source": "NVIDIA DeepLearningExamples TensorFlow ResNet-50 v1.5 README (DGX A100 40GB): "
              "https://github.com/NVIDIA/DeepLearningExamples/blob/master/TensorFlow/"
              "Classification/ConvNets/resnet50v1.5/README.md",
    "train_img_s": {"tf32": {"xla": 909.0, "no_xla": 909.0 * 40 / 47},
                    "bf16": {"xla": 2375.0, "no_xla": 2375.0 * 18 / 19.5}},
    "weak_scaling_8": {"tf32": 7.70 / 8, "bf16": 7.32 / 8},
    "infer_img_s_256": {"tf32": 1911.96, "bf16": 3229.32},
    # images/s by batch, inference, no XLA (TF32; mixed precision), normalised to batch 256 and
    # capped at 1: how much of its large-batch speed the GPU keeps at a small per-replica batch.
    "batch_curve": {
        "tf32": {1: 191.23, 2: 376.83, 4: 601.12, 8: 963.86, 16: 1361.58, 32: 1602.09,
                 64: 1793.81, 128: 1876.22, 256: 1911.96},
        "bf16": {1: 223.35, 2: 435.51, 4: 882.00, 8: 1503.24, 16: 1903.58, 32: 1974.01,
                 64: 3570.46, 128: 3474.94, 256: 3229.32},
    },
    # NVIDIA's model is ResNet-50 v1.5 (stride 2 in the 3x3 conv): ~4.1 GMACs per 224-px image
    # against ~3.9 for Keras' ResNet50 (v1) profiled here.
    "v15_over_v1_flops": 4.1 / 3.9,
}

ASSUMPTIONS = {
    "h100_over_a100_cnn": 2.0,  # per-GPU ResNet50 training speed, H100 SXM vs A100 (see notes)
    "h100_batch_shift": 2.0,  # an H100 needs ~2x the batch of an A100 for the same utilisation
    "multi_gpu_efficiency": 0.90,  # 8 GPUs, MirroredStrategy, on top of the small-batch factor
    "mlp_fraction_of_tf32_peak": 0.25,  # small dense layers (width 512-1024, batch 128-256)
    "step_overhead_s": {"1_xla": 0.004, "mirrored_base": 0.006, "mirrored_per_replica": 0.002},
    "input_threads_share": 0.8,  # of the host's vCPUs that tf.data's decode threads get
    "host_vcpus": {"A100": {"1": 12, "8": 96}, "H100": {"1": 24, "8": 192}},
    "checkpoint_write_bytes_s": 0.5e9,  # EpochBackup's save_weights each epoch (weights + Adam)
    "conv_fit_startup_s": 60.0,  # trace the ResNet50 train step, cuDNN autotune, first batches
    "mlp_fit_startup_s": 10.0,
    "model_save_s": 10.0,  # model.save of a ResNet50 .keras file; 2 s for the small models
    "cpu_host_speedup_single_thread": 1.0,  # a GPU host's core vs this machine's
    "export_s": 60.0,  # guess: 3 SavedModels traced and written (ResNet50 + gallery constant)
}

NOTES = [
    "Peaks are the datasheets' dense Tensor Core figures. The extractor and the pixel baselines "
    "train in float32, which TensorFlow runs as TF32 on Ampere/Hopper Tensor Cores by default, so "
    "TF32 is the prediction for the code as it is; BF16 is what a mixed-precision extractor would "
    "get (the code offers mixed_bfloat16 for the manipulator only).",
    "Achieved fraction: NVIDIA's own tuned TensorFlow ResNet-50 (XLA, DALI GPU decoding, batch "
    "256) reaches 909 img/s TF32 and 2375 img/s mixed on one A100 = 14% of the TF32 and 19% of "
    "the BF16 dense peak (at 3 x 1.05 x the profiled 7.76 GFLOPs forward per image). ResNet50 "
    "training is bound by memory traffic (BatchNorm, ReLU, residual adds, weight updates) as much "
    "as by convolutions, so the 35-50% one might expect from matmul-bound models would predict "
    "2.5-3.5x too little time. Without XLA (MirroredStrategy turns Keras' auto-XLA off) NVIDIA's "
    "own 90-epoch times give 774 and 2192 img/s.",
    "H100 (SXM): about 2x an A100 on ResNet-50 training (Lambda, 'NVIDIA H100 Tensor Core GPU - "
    "Deep Learning Performance Analysis': ~2x for vision models against ~4x for language "
    "models; its 3.2x peak is held back by 1.6x the memory bandwidth). Its achieved fraction is "
    "the A100's x 2.0 / 3.17 (9% TF32, 12% BF16). An H200 has the H100's compute and more "
    "bandwidth: read it as an H100 or a little faster; an H100 PCIe is ~20-25% slower.",
    "Small per-replica batches: the config's batches are global, so 8 GPUs each get 1/8 (the "
    "extractor 16 PK + 4 attribute images). The batch curve is NVIDIA's A100 inference "
    "throughput by batch, normalised to batch 256 (batch 16: 0.71, batch 4: 0.31 in TF32); an "
    "H100 is read at half the batch (it needs twice the work to fill).",
    "8-GPU efficiency 0.90 on top (NVIDIA measured 0.92-0.96 weak scaling with Horovod at 256 "
    "per GPU; MirroredStrategy at 20 images per replica keeps less, so 0.90 is optimistic).",
    "Input pipeline: tf.data decodes on the host's CPUs; per-vCPU rates measured on this machine "
    "(PNG as the synthetic benchmark writes it, JPEG for a real data set), 80% of the host's vCPUs "
    "for decoding; host vCPUs per GPU as cloud 8-GPU shapes give them (A100: 96/8, H100: 192/8). "
    "Images in the decode cache (data.decode_cache_mb) cost only the augmentation.",
    "Small-model steps (embedders, manipulator, baselines on x) are bound by per-step overhead, "
    "not FLOPs: 4 ms per step on 1 GPU (Keras auto-XLA), 6 + 2/replica ms with MirroredStrategy "
    "(no XLA, one launch stream per replica). These are assumptions; gpu_check.sh measures them.",
    "Stages that do not run under the strategy (data, features, evaluate, export, and the "
    "pixel baselines' final encoding pass) use one GPU (or the CPU) whatever the count.",
]


# ------------------------------------------------------------------------------------------------
# Work: split sizes, models, FLOP counts.

def dataset_counts(config):
    """Image counts per split, instances, labelled rows and evaluation query counts of the
    synthetic benchmark a preset writes (no image is rendered)."""
    import numpy as np
    from flam_tf import vocabulary
    from flam_tf.data import synthetic
    from flam_tf.evaluation import metrics

    d = config.data
    syn = synthetic.SyntheticConfig(num_instances=d.num_instances, seed=config.runtime.seed,
                                    image_size=d.image_size,
                                    label_missing_prob=d.label_missing_prob,
                                    twins_per_item=d.twins_per_item,
                                    entanglement=d.entanglement)
    specs = synthetic.image_specs(syn)
    rows = [synthetic.manifest_row(s, syn) for s in specs]
    split = np.array([s.instance.split for s in specs])
    counts = {f"images_{s}": int((split == s).sum()) for s in
              ("extractor_train", "fir_eval", "attribute_train", "unlabelled", "fam_eval")}
    counts["images_all"] = len(specs)
    counts["instances_extractor_train"] = len({s.instance.index for s in specs
                                               if s.instance.split == "extractor_train"})
    attr = [r for r in rows if r["split"] == "attribute_train"]
    counts["attribute_train_labelled"] = sum(any(r[a] for a in vocabulary.ATTRIBUTE_TYPES)
                                             for r in attr)
    counts["attribute_train_labels_per_type"] = {
        a: sum(bool(r[a]) for r in attr) for a in vocabulary.ATTRIBUTE_TYPES}
    fam = [(r, s) for r, s in zip(rows, specs) if r["split"] == "fam_eval"]
    labels = np.array([[vocabulary.class_index(a, r[a]) for a in vocabulary.ATTRIBUTE_TYPES]
                       for r, _ in fam], np.int64)
    is_query = np.array(["fam_query" in s.role.split(";") for _, s in fam])
    counts["fam_queries"] = int(len(metrics.fam_queries(labels, is_query).query_index))
    counts["fam_items"] = int(is_query.sum())
    roles = [s.role.split(";") for s in specs if s.instance.split == "fir_eval"]
    for name in ("inshop_query", "inshop_gallery", "c2s_query", "c2s_gallery"):
        counts[f"fir_{name}"] = sum(name in r for r in roles)
    counts["manipulator_train"] = (counts["images_extractor_train"]
                                   + counts["images_attribute_train"] + counts["images_unlabelled"])
    return counts


def _graph_flops(concrete_function):
    import tensorflow as tf

    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return int(tf.compat.v1.profiler.profile(graph=concrete_function.graph,
                                             options=options).total_float_ops)


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
    from flam_tf import stages, vocabulary
    from flam_tf.models import (AttributeEmbedder, ClsConcat, EmbConcat, FeatureExtractor,
                                FeatureManipulator, PixelConcat)

    f32, i32 = tf.float32, tf.int32
    S, e = config.data.image_size, config.extractor
    D = e.feature_dim
    classes = [vocabulary.NUM_CLASSES[a] for a in vocabulary.ATTRIBUTE_TYPES]
    out = {}

    def adam():
        return keras.optimizers.Adam(1e-3)

    def record(key, model, train_spec, batch, test_spec, infer_fn, infer_specs, infer_batch,
               variables=None):
        t0 = time.time()
        model.compile(optimizer=adam())
        model.optimizer.build(variables if variables is not None else model.trainable_variables)
        train, traced = _profile(model.train_step, train_spec)
        test, _ = _profile(model.test_step, test_spec)
        infer, _ = _profile(infer_fn, *infer_specs)
        out[key] = {"train_step_flops": train, "batch": batch, "forward_flops": test / batch,
                    "inference_flops": infer / infer_batch, "params": _params(model),
                    "train_trace_s": round(traced, 1)}
        log(f"  {key:24s} forward {test / batch / 1e9:9.4f} GFLOP/example, train step "
            f"{train / 1e9:10.1f} GFLOP (batch {batch}, {train / test:.2f}x forward), "
            f"inference {infer / infer_batch / 1e9:.4f} GFLOP/example  [{time.time() - t0:.0f} s]")

    # extractor: PK batch (+ the attribute batch when attribute_weight > 0 and labels exist)
    attribute_weight = e.attribute_weight if counts["attribute_train_labelled"] else 0.0
    n_ce = min(e.num_ce_classes, counts["instances_extractor_train"])
    B, Ba = e.instances_per_batch * e.images_per_instance, e.attribute_batch_size
    model = FeatureExtractor(backbone=e.backbone, pooling=e.pooling, feature_dim=D, image_size=S,
                             num_ce_classes=n_ce, margin=e.margin, weights=None,
                             attribute_weight=attribute_weight, attribute_classes=classes)
    pk = (tf.TensorSpec([B, S, S, 3], f32),
          {"instance": tf.TensorSpec([B], i32), "ce_class": tf.TensorSpec([B], i32)})
    spec = (pk, (tf.TensorSpec([Ba, S, S, 3], f32), tf.TensorSpec([Ba, 3], i32))) \
        if attribute_weight else pk
    record("extractor", model, spec, B + (Ba if attribute_weight else 0), spec,
           lambda x: model(x, training=False), [tf.TensorSpec([8, S, S, 3], f32)], 8)
    out["extractor"]["attribute_batch"] = Ba if attribute_weight else 0
    out["extractor"]["pk_batch"] = B

    # embedders
    c = config.embedder
    b = min(c.batch_size, counts["images_attribute_train"])
    spec = (tf.TensorSpec([b, D], f32), tf.TensorSpec([b, 3], i32))
    embedder = AttributeEmbedder(D, embedding_dim=c.embedding_dim, hidden_units=c.hidden_units,
                                 margin=c.margin)
    record("embedder", embedder, spec, b, spec, lambda x: embedder(x),
           [tf.TensorSpec([64, D], f32)], 64)

    # manipulator variants
    m = config.manipulator
    variants = [stages.FLAM, stages.FLAM_PAPER] + (
        list(stages.ABLATIONS) if config.evaluation.ablations else [])
    n = counts["manipulator_train"]
    b = min(m.batch_size, n)
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(n, D)).astype(np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    bank_labels = np.stack([rng.integers(0, k, n) for k in classes], 1)
    for variant in variants:
        model = FeatureManipulator(embedder, D, embedding_dim=c.embedding_dim,
                                   g_hidden=(m.g_hidden, m.g_hidden),
                                   d_hidden=(m.d_hidden, m.d_hidden), seed=0,
                                   **stages.manipulator_settings(m, variant))
        model.compile(g_optimizer=adam(), d_optimizer=adam())
        if model.retrieval_weight:
            model.set_retrieval_bank(bank, bank_labels)
        t0 = time.time()
        spec = tf.TensorSpec([b, D], f32)
        train, traced = _profile(model.train_step, spec)
        test, _ = _profile(model.test_step, spec)
        infer, _ = _profile(model.manipulate_indices, tf.TensorSpec([64, D], f32),
                            tf.TensorSpec([64], i32), tf.TensorSpec([64], i32))
        key = stages.variant_model_name(variant)
        out[key] = {"train_step_flops": train, "batch": b, "forward_flops": test / b,
                    "inference_flops": infer / 64, "params": _params(model),
                    "train_trace_s": round(traced, 1), "variant": variant,
                    "retrieval_bank_rows": n if model.retrieval_weight else 0}
        log(f"  {key:24s} forward {test / b / 1e9:9.4f} GFLOP/example, train step "
            f"{train / 1e9:10.1f} GFLOP (batch {b}, {train / test:.2f}x forward)  "
            f"[{time.time() - t0:.0f} s]")

    # baselines on x
    bl = config.baselines
    b = min(bl.batch_size, counts["images_attribute_train"])
    spec = (tf.TensorSpec([b, D], f32), tf.TensorSpec([b, 3], i32))
    for name, stem in stages.FEATURE_BASELINES.items():
        head = (ClsConcat if name.startswith("Cls") else EmbConcat)(D, block_dim=bl.block_dim)
        record(stem, head, spec, b, spec, lambda x, h=head: h.represent(x),
               [tf.TensorSpec([64, D], f32)], 64)

    # pixel baselines: their own encoder (the extractor's backbone) + a concat head, from images
    if bl.pixel_epochs > 0:
        b = bl.pixel_batch_size
        spec = (tf.TensorSpec([b, S, S, 3], f32), tf.TensorSpec([b, 3], i32))
        for name, stem in stages.PIXEL_BASELINES.items():
            head = (ClsConcat if name.startswith("Cls") else EmbConcat)(D, block_dim=bl.block_dim)
            model = PixelConcat(head, backbone=e.backbone, pooling=e.pooling, feature_dim=D,
                                image_size=S, weights=None)
            record(stem, model, spec, b, spec, lambda x, mm=model: mm.encode(x),
                   [tf.TensorSpec([8, S, S, 3], f32)], 8, variables=model._variables())
    keras.backend.clear_session()
    return out


def stage_work(config, counts, models):
    """Per stage, the components it runs, with their example counts and FLOPs (stages.py)."""
    from flam_tf import stages

    e, c, m, bl = config.extractor, config.embedder, config.manipulator, config.baselines
    S = config.data.image_size
    cache_bytes = getattr(config.data, "decode_cache_mb", 0) * 2 ** 20
    per_image = S * S * 3

    def cached(n_images):
        return 0 < n_images * per_image <= cache_bytes

    def train(name, key, steps, epochs, kind, streams=()):
        rec = models[key]
        examples = steps * rec["batch"]
        return {"name": name, "model": key, "kind": kind, "steps": steps, "epochs": epochs,
                "batch": rec["batch"], "examples": examples,
                "flops_3x": 3 * rec["forward_flops"] * examples,
                "flops_profiled": rec["train_step_flops"] * steps,
                "streams": list(streams)}

    def infer(name, key, examples, kind, streams=(), flops_per_example=None):
        per = models[key]["inference_flops"] if flops_per_example is None else flops_per_example
        flops = per * examples
        return {"name": name, "model": key, "kind": kind, "examples": examples,
                "flops_3x": flops, "flops_profiled": flops, "streams": list(streams)}

    n = counts
    work = {"data": [{"name": "render + write + verify PNGs", "kind": "cpu_data",
                      "examples": n["images_all"], "flops_3x": 0, "flops_profiled": 0,
                      "streams": []}]}

    # extractor: epochs x steps PK batches (+ attribute batches), decode cache if it fits
    steps = e.epochs * e.steps_per_epoch
    x = models["extractor"]
    streams = [{"images_per_step": x["pk_batch"],
                "cached": cached(n["images_extractor_train"]),
                "cache_images": n["images_extractor_train"]}]
    if x["attribute_batch"]:
        streams.append({"images_per_step": x["attribute_batch"],
                        "cached": cached(n["attribute_train_labelled"]),
                        "cache_images": n["attribute_train_labelled"]})
    work["extractor"] = [train("ResNet50-SPoC extractor" if e.backbone == "resnet50"
                               else f"{e.backbone} extractor", "extractor", steps, e.epochs,
                               "conv_train", streams)]
    work["extractor"][0]["pass_batches"] = [x["pk_batch"]] + (
        [x["attribute_batch"]] if x["attribute_batch"] else [])

    # features: every image once, batch 256, decoded from the files, one device
    work["features"] = [infer("extractor forward, all images", "extractor", n["images_all"],
                              "conv_infer", [{"cached": False}])]

    def feature_steps(batch_size, rows, epochs):
        b = min(batch_size, rows)
        return (rows // b) * epochs

    work["embedders"] = [train("3 attribute embedders", "embedder",
                               feature_steps(c.batch_size, n["images_attribute_train"], c.epochs),
                               c.epochs, "mlp_train")]

    comps = []
    rows = n["manipulator_train"]
    for key, rec in models.items():
        if "variant" not in rec:
            continue
        epochs = m.epochs if rec["variant"] == stages.FLAM else m.paper_epochs
        comps.append(train(rec["variant"], key, feature_steps(m.batch_size, rows, epochs),
                           epochs, "mlp_train"))
        comps.append(infer(f"pseudo-labels ({rec['variant']})", "embedder", rows, "mlp_infer"))
    work["manipulator"] = comps

    comps = []
    for name, stem in stages.FEATURE_BASELINES.items():
        comps.append(train(f"{name} head", stem,
                           feature_steps(bl.batch_size, n["images_attribute_train"], bl.epochs),
                           bl.epochs, "mlp_train"))
    if bl.pixel_epochs > 0:
        needed = n["images_attribute_train"] + n["images_fam_eval"] + n["images_fir_eval"]
        for name, stem in stages.PIXEL_BASELINES.items():
            comp = train(f"{name} from pixels", stem, bl.pixel_epochs * bl.pixel_steps_per_epoch,
                         bl.pixel_epochs, "conv_train",
                         [{"images_per_step": bl.pixel_batch_size,
                           "cached": cached(n["images_attribute_train"]),
                           "cache_images": n["images_attribute_train"]}])
            comp["pass_batches"] = [bl.pixel_batch_size]
            comps.append(comp)
            comps.append(infer(f"{name} encoder, eval images", stem, needed, "conv_infer",
                               [{"cached": False}]))
    work["baselines"] = comps

    # evaluate (numpy cosine ranking on the CPU, 2*Q*G*D each) + the small model calls
    D, block = e.feature_dim, 3 * bl.block_dim
    Q, G = n["fam_queries"], n["images_fam_eval"]
    variants = [k for k, r in models.items() if "variant" in r]
    flam_space = 1 + len(variants) + 1  # Identity, the manipulators, Mean-Shift
    baselines = len(stages.FEATURE_BASELINES) + (len(stages.PIXEL_BASELINES)
                                                 if bl.pixel_epochs > 0 else 0)
    fir_pairs = n["fir_inshop_query"] * n["fir_inshop_gallery"] + \
        n["fir_c2s_query"] * n["fir_c2s_gallery"]
    rank = 2 * Q * G * (flam_space * D + baselines * block) + \
        2 * fir_pairs * (D + baselines * block)
    probe_rows = sum(n["attribute_train_labels_per_type"].values())
    probe = 2 * D * 10 * (3 * 30 * probe_rows + (1 + len(variants) + 1) * 3 * Q)
    manip = sum(models[k]["inference_flops"] for k in variants) * Q  # G on every query
    if "manipulator" in models:
        manip += models["manipulator"]["inference_flops"] * Q  # FLAM's cycle back
    work["evaluate"] = [
        {"name": "cosine top-k rankings (numpy)", "kind": "cpu_rank", "examples": Q,
         "flops_3x": rank, "flops_profiled": rank, "streams": [],
         "rank_pairs": Q * G * (flam_space + baselines) + fir_pairs * (1 + baselines)},
        {"name": "manipulations, probes", "kind": "mlp_infer", "examples": Q,
         "flops_3x": manip + probe, "flops_profiled": manip + probe, "streams": []},
    ]
    work["export"] = [{"name": "3 SavedModels", "kind": "export", "examples": 0, "flops_3x": 0,
                       "flops_profiled": 0, "streams": []}]
    for comps in work.values():
        for comp in comps:
            comp["flops_3x"] = float(comp["flops_3x"])
            comp["flops_profiled"] = float(comp["flops_profiled"])
    return work


# ------------------------------------------------------------------------------------------------
# This host: matmul ceiling, per-core decode / augmentation / rendering rates.

def measure_matmul(size=4096, reps=10):
    """Best float32 matmul rate (FLOP/s) over `reps` products of two size x size matrices."""
    import tensorflow as tf

    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    mm = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    mm(a, b).numpy()
    best = 0.0
    for _ in range(reps):
        start = time.perf_counter()
        mm(a, b).numpy()
        best = max(best, 2 * size ** 3 / (time.perf_counter() - start))
    return best


def _probe_main(sizes):
    """Per-core rates (run in a subprocess with one TensorFlow thread): printed as JSON."""
    import io

    import numpy as np
    import tensorflow as tf
    from PIL import Image

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from flam_tf.data import pipeline, synthetic

    out = {}
    for size in sizes:
        syn = synthetic.SyntheticConfig(num_instances=200, seed=0, image_size=size)
        specs = synthetic.image_specs(syn)[:48]
        render = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            images = synthetic.render_specs(specs, syn)
            render = min(render, (time.perf_counter() - start) / len(specs))

        def png(a):
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="PNG", compress_level=1)  # as write_benchmark
            return buf.getvalue()

        save = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            pngs = [png(a) for a in images]
            save = min(save, (time.perf_counter() - start) / len(images))
        # A real data set's JPEGs: DeepFashion-like 256 x 256 (or the image size if larger).
        side = max(256, size)
        jpgs = [tf.io.encode_jpeg(tf.cast(tf.image.resize(a, (side, side)), tf.uint8),
                                  quality=90).numpy() for a in images]
        seed = tf.constant([1, 2])
        decode = tf.function(lambda c: pipeline.decode_image(c, size))
        decode_aug = tf.function(lambda c: pipeline.augment(pipeline.decode_image(c, size),
                                                            seed, size))
        aug = tf.function(lambda u: pipeline.augment(tf.cast(u, tf.float32), seed, size))

        def rate(fn, items, reps=9):
            # Best pass of `reps`: the machine is shared, the best pass is the closest to a core
            # of its own.
            fn(items[0])
            best = float("inf")
            for _ in range(reps):
                start = time.perf_counter()
                for item in items:
                    fn(item)
                best = min(best, time.perf_counter() - start)
            return len(items) / best

        out[str(size)] = {
            "render_s": render, "png_write_s": save,
            "png_bytes": float(np.mean([len(p) for p in pngs])),
            "jpeg_bytes": float(np.mean([len(j) for j in jpgs])), "jpeg_side": side,
            "png_decode_img_s": rate(decode, [tf.constant(p) for p in pngs]),
            "png_decode_augment_img_s": rate(decode_aug, [tf.constant(p) for p in pngs]),
            "jpeg_decode_augment_img_s": rate(decode_aug, [tf.constant(j) for j in jpgs]),
            "augment_only_img_s": rate(aug, [tf.constant(a) for a in images]),
        }
    print(json.dumps(out))


def measure_host(sizes, log=print):
    env = dict(os.environ, TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1",
               CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, os.path.abspath(__file__), "--_probe",
                             ",".join(str(s) for s in sorted(set(sizes)))],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    if result.returncode:
        raise RuntimeError(f"host probe failed: {result.stderr[-2000:]}")
    rates = json.loads(result.stdout.strip().splitlines()[-1])
    matmul = measure_matmul()
    host = {"cpus": os.cpu_count(), "matmul_flop_s": matmul, "per_core": rates,
            "load_average": os.getloadavg()[0]}
    log(f"  matmul 4096^2 float32: {matmul / 1e9:.0f} GFLOP/s on {os.cpu_count()} cores "
        f"(load average {host['load_average']:.1f})")
    for size, r in rates.items():
        log(f"  {size}px per core: render {r['render_s'] * 1e3:.1f} ms, PNG write "
            f"{r['png_write_s'] * 1e3:.1f} ms; decode+augment PNG {r['png_decode_augment_img_s']:.0f}"
            f"/s, JPEG {r['jpeg_decode_augment_img_s']:.0f}/s; augment only "
            f"{r['augment_only_img_s']:.0f}/s")
    return host


# ------------------------------------------------------------------------------------------------
# The GPU time model.

def _batch_factor(precision, batch):
    curve = CALIBRATION["batch_curve"][precision]
    top = curve[256]
    points = sorted(curve)
    if batch >= points[-1]:
        return 1.0
    if batch <= points[0]:
        return min(1.0, curve[points[0]] / top * batch / points[0])
    for lo, hi in zip(points, points[1:]):
        if lo <= batch <= hi:
            t = (math.log(batch) - math.log(lo)) / (math.log(hi) - math.log(lo))
            value = math.exp((1 - t) * math.log(curve[lo]) + t * math.log(curve[hi]))
            return min(1.0, value / top)
    return 1.0


def conv_fraction(gpu, precision, xla, rn50_train_flops_per_image, inference=False,
                  rn50_forward_flops_per_image=None):
    """Achieved fraction of the dense peak for ResNet50 training (or inference) at large batch."""
    v15 = CALIBRATION["v15_over_v1_flops"]
    a100_peak = GPU_SPECS["A100"][precision]
    if inference:
        img_s = CALIBRATION["infer_img_s_256"][precision]
        frac = img_s * v15 * rn50_forward_flops_per_image / a100_peak
    else:
        img_s = CALIBRATION["train_img_s"][precision]["xla" if xla else "no_xla"]
        frac = img_s * v15 * rn50_train_flops_per_image / a100_peak
    if gpu == "H100":
        frac *= ASSUMPTIONS["h100_over_a100_cnn"] / (GPU_SPECS["H100"][precision] / a100_peak)
    return frac


def _input_rate(host, size, stream, jpeg=False):
    r = host["per_core"][str(size)]
    if stream.get("cached"):
        return r["augment_only_img_s"]
    return r["jpeg_decode_augment_img_s"] if jpeg else r["png_decode_augment_img_s"]


def conv_step_times(comp, models, host, size, gpu, n_gpus, precision, strategy, vcpus,
                    jpeg=False):
    """(compute seconds, input seconds) of one training step of a conv component."""
    rec = models[comp["model"]]
    xla = strategy == "default" and n_gpus == 1
    per_image = rec["train_step_flops"] / rec["batch"]
    frac = conv_fraction(gpu, precision, xla, models["extractor"]["train_step_flops"]
                         / models["extractor"]["batch"])
    shift = ASSUMPTIONS["h100_batch_shift"] if gpu == "H100" else 1.0
    peak = GPU_SPECS[gpu][precision]
    compute = 0.0
    for batch in comp["pass_batches"]:
        per_replica = batch / n_gpus
        factor = _batch_factor(precision, per_replica / shift)
        compute += batch * per_image / (n_gpus * peak * frac * factor)
    if n_gpus > 1:
        compute /= ASSUMPTIONS["multi_gpu_efficiency"]
    threads = ASSUMPTIONS["input_threads_share"] * vcpus
    cpu = sum(s["images_per_step"] / _input_rate(host, size, s, jpeg) for s in comp["streams"])
    return compute, cpu / threads


def _step_overhead(n_gpus, strategy):
    o = ASSUMPTIONS["step_overhead_s"]
    if strategy == "default" and n_gpus == 1:
        return o["1_xla"]
    return o["mirrored_base"] + o["mirrored_per_replica"] * n_gpus


def predict_component(comp, models, host, config, gpu, n_gpus, precision, vcpus, default_eval,
                      jpeg=False):
    """(seconds, what bounds it) of one component on `n_gpus` GPUs of class `gpu`."""
    size = config.data.image_size
    kind = comp["kind"]
    strategy = "default" if n_gpus == 1 else "mirrored"
    threads = ASSUMPTIONS["input_threads_share"] * vcpus
    r = host["per_core"][str(size)]
    if kind == "cpu_data":
        render = comp["examples"] * (r["render_s"] + r["png_write_s"]) / \
            ASSUMPTIONS["cpu_host_speedup_single_thread"]
        verify = comp["examples"] / (threads * r["png_decode_img_s"])
        return render + verify, "CPU (single-threaded rendering)"
    if kind == "export":
        return ASSUMPTIONS["export_s"], "CPU (tracing, writing)"
    if kind == "cpu_rank":
        # Split the default run's measured evaluate time into its BLAS part (at this host's
        # matmul ceiling) and the rest (argpartition/sort, ~ query x gallery pairs, one thread).
        per_core = default_eval["reference_flop_s"] / host["cpus"] * default_eval["cpu_fraction"]
        blas = comp["flops_profiled"] / (per_core * min(vcpus, 16))
        rest = default_eval["rest_s_per_pair"] * comp["rank_pairs"]
        return blas + rest, "CPU (numpy ranking)"
    if kind in ("mlp_train", "mlp_infer"):
        peak = GPU_SPECS[gpu]["tf32"] * ASSUMPTIONS["mlp_fraction_of_tf32_peak"]
        if kind == "mlp_infer":
            return comp["flops_profiled"] / peak + 1.0, "overhead"
        rec = models[comp["model"]]
        replicas = n_gpus if strategy == "mirrored" else 1
        step_flops = rec["train_step_flops"] / (peak * replicas)
        step = max(_step_overhead(n_gpus, strategy), step_flops)
        ckpt = comp["epochs"] * (rec["params"] * 3 * 4 / ASSUMPTIONS["checkpoint_write_bytes_s"]
                                 + 0.05)
        total = comp["steps"] * step + ckpt + ASSUMPTIONS["mlp_fit_startup_s"] + 2.0
        return total, "step overhead" if step > step_flops else "compute"
    if kind == "conv_infer":
        # One device (these passes do not run under the strategy), batch 256.
        frac = conv_fraction(gpu, precision, False, None, inference=True,
                             rn50_forward_flops_per_image=models["extractor"]["inference_flops"])
        compute = comp["flops_profiled"] / (GPU_SPECS[gpu][precision] * frac)
        decode = comp["examples"] / (threads * (r["jpeg_decode_augment_img_s"] if jpeg
                                                else r["png_decode_img_s"]))
        return max(compute, decode) + 5.0, "input (decode)" if decode > compute else "compute"
    if kind == "conv_train":
        rec = models[comp["model"]]
        compute, inp = conv_step_times(comp, models, host, size, gpu, n_gpus, precision,
                                       strategy, vcpus, jpeg)
        step = max(compute, inp)
        fill = sum(s["cache_images"] / (threads * r["png_decode_img_s"])
                   for s in comp["streams"] if s["cached"])
        ckpt = comp["epochs"] * rec["params"] * 3 * 4 / ASSUMPTIONS["checkpoint_write_bytes_s"]
        total = comp["steps"] * step + fill + ckpt + ASSUMPTIONS["conv_fit_startup_s"] + \
            ASSUMPTIONS["model_save_s"]
        return total, "input (decode)" if inp > compute else "compute"
    raise ValueError(kind)


def predict(work, models, host, config, default_eval):
    """{stage: {"<gpu> x<n>": {precision: seconds, "bound": ...}}} and totals."""
    out = {}
    for stage, comps in work.items():
        out[stage] = {}
        for gpu in GPU_SPECS:
            for n_gpus in (1, 8):
                vcpus = ASSUMPTIONS["host_vcpus"][gpu][str(n_gpus)]
                cell = {}
                for precision in ("tf32", "bf16"):
                    seconds, bounds = 0.0, []
                    for comp in comps:
                        s, bound = predict_component(comp, models, host, config, gpu, n_gpus,
                                                     precision, vcpus, default_eval)
                        seconds += s
                        bounds.append((s, bound))
                    cell[precision] = round(seconds, 1)
                    if precision == "tf32":
                        cell["bound"] = max(bounds)[1] if bounds else ""
                out[stage][f"{gpu} x{n_gpus}"] = cell
    totals = {}
    for key in next(iter(out.values())):
        totals[key] = {p: round(sum(out[s][key][p] for s in out), 1) for p in ("tf32", "bf16")}
    return out, totals


def predict_extractor_rate(saved, gpu, n_gpus, vcpus, strategy="mirrored", precision="tf32",
                           cached=True, jpeg=False):
    """The paper extractor's expected images/s (gpu_check.sh): compute-bound, input-bound and
    the smaller of the two, with every input stream read from the decode cache (`cached` True),
    from the files (False), or as the preset runs (None)."""
    paper = saved["presets"]["paper"]
    models, host = paper["models"], saved["host"]
    comp = json.loads(json.dumps(paper["work"]["extractor"][0]))
    for stream in comp["streams"]:
        if cached is not None:  # None: as the preset runs (the decode cache where images fit)
            stream["cached"] = cached
    size = paper["config"]["data"]["image_size"]
    compute, inp = conv_step_times(comp, models, host, size, gpu, n_gpus, precision, strategy,
                                   vcpus, jpeg)
    images = models["extractor"]["batch"]
    cpu_per_step = inp * ASSUMPTIONS["input_threads_share"] * vcpus  # CPU-seconds per step
    return {"vcpus_to_keep_up": round(cpu_per_step / compute
                                      / ASSUMPTIONS["input_threads_share"], 1),
            "cpu_ms_per_image": round(1e3 * cpu_per_step / images, 2),
            "gpu_class": gpu, "gpus": n_gpus, "vcpus": vcpus, "strategy": strategy,
            "precision": precision, "cached": [s["cached"] for s in comp["streams"]],
            "images_per_step": images,
            "compute_img_s": round(images / compute, 1), "input_img_s": round(images / inp, 1),
            "expected_img_s": round(images / max(compute, inp), 1),
            "expected_step_s": round(max(compute, inp), 4),
            "mirrored_small_step_s": _step_overhead(n_gpus, strategy)}


# ------------------------------------------------------------------------------------------------
# The check on this machine: the default preset's CPU times from the same counts.

def _fit_times(log_dir):
    """{model: (epochs, median steady epoch seconds, fit seconds, fit start, first epoch's extra
    seconds)} from a run's TensorBoard logs
    (the epoch summaries' wall times; the first epoch, which traces, is left out)."""
    import tensorflow as tf

    out = {}
    for folder in sorted(glob.glob(os.path.join(log_dir, "*", "train"))):
        files = sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*")))
        if not files:
            continue
        first, ends = None, {}
        created = float(os.path.basename(files[-1]).split(".")[3])
        for event in tf.compat.v1.train.summary_iterator(files[-1]):
            if first is None:
                first = event.wall_time
            for value in event.summary.value:
                if value.tag.startswith("epoch_"):
                    ends.setdefault(event.step, event.wall_time)
        times = [first] + [ends[s] for s in sorted(ends)]
        epochs = [b - a for a, b in zip(times, times[1:])]
        if len(epochs) < 2:
            continue
        steady = statistics.median(epochs[1:])
        out[os.path.basename(os.path.dirname(folder))] = (
            len(epochs), steady, times[-1] - times[0], created, max(epochs[0] - steady, 0.0))
    return out


def _measured_run(run_dir):
    """(config, stages.json, fit times, whether it had the decode cache) of a measured run."""
    from flam_tf import config as config_lib

    with open(os.path.join(run_dir, "config.json")) as f:
        raw = json.load(f)
    had_cache = "decode_cache_mb" in raw.get("data", {})
    config = config_lib.ExperimentConfig.from_dict(raw)
    if not had_cache and hasattr(config.data, "decode_cache_mb"):
        config.data.decode_cache_mb = 0  # the run predates the decode cache: files every step
    with open(os.path.join(run_dir, "stages.json")) as f:
        stages_measured = json.load(f)
    return config, stages_measured, _fit_times(os.path.join(run_dir, "logs")), had_cache


def cpu_check(run_dirs, host, reference_flop_s, log=print):
    """Predicts measured default-preset runs' per-step and per-stage CPU times from their FLOP
    counts, this machine's matmul ceiling and per-core decode rates.

    Like the GPU model (peak x achieved fraction), a step takes FLOPs / (ceiling x fraction) plus
    its images' decoding (per-core rate, on the same 2 cores). The fraction is the median of what
    the FLOP-heavy fits (>= 1 GFLOP per step: the extractor, the GANs, the pixel baselines)
    achieved over all the runs; the check is how well that one number predicts every fit and
    stage of every run, and how far off FLOPs at the bare ceiling are. Models are profiled once
    per configuration (the seed changes the GAN's retrieval bank by < 1% of its rows)."""
    rate, cores = reference_flop_s, host["cpus"]
    runs, profiled = [], {}
    for run_dir in run_dirs:
        config, stages_measured, fits, had_cache = _measured_run(run_dir)
        key = json.dumps({k: v for k, v in config.to_dict().items() if k != "runtime"},
                         sort_keys=True)
        counts = dataset_counts(config)
        if key not in profiled:
            log(f"CPU check: profiling the models of {os.path.relpath(run_dir, REPO)} "
                f"({config.preset}, seed {config.runtime.seed})")
            profiled[key] = profile_models(config, counts, log=log)
        models = profiled[key]
        runs.append({"run_dir": run_dir, "config": config, "stages": stages_measured,
                     "fits": fits, "decode_cache": had_cache, "counts": counts,
                     "models": models, "work": stage_work(config, counts, models)})
    size = runs[0]["config"].data.image_size
    per_core = host["per_core"][str(size)]
    # per fit: FLOP time at the ceiling, decode time, measured steady step time, per run
    fit_rows = {}
    for run in runs:
        models = run["models"]
        for comps in run["work"].values():
            for comp in comps:
                key = comp.get("model")
                if comp["kind"] not in ("conv_train", "mlp_train") or key not in run["fits"]:
                    continue
                epochs, epoch_s, fit_s, started, first_extra = run["fits"][key]
                measured = epoch_s / (comp["steps"] // comp["epochs"])
                flop_s = models[key]["train_step_flops"] / rate
                decode_s = sum(s["images_per_step"] / _input_rate(host, size, s)
                               for s in comp.get("streams", [])) / cores
                row = fit_rows.setdefault(key, {
                    "model": key, "train_step_gflop": models[key]["train_step_flops"] / 1e9,
                    "flop_s_at_ceiling": flop_s, "decode_s": decode_s, "measured": []})
                row["measured"].append({
                    "seed": run["config"].runtime.seed, "step_s": measured,
                    "first_epoch_extra_s": first_extra,
                    "started": time.strftime("%H:%M", time.localtime(started)),
                    "implied_fraction": flop_s / max(measured - decode_s, 1e-9)})
    heavy = [m["implied_fraction"] for r in fit_rows.values() if r["train_step_gflop"] >= 1.0
             for m in r["measured"]]
    fraction = statistics.median(heavy) if heavy else 1.0
    for r in fit_rows.values():
        r["predicted_step_s"] = r["flop_s_at_ceiling"] / fraction + r["decode_s"]
        ratios = [m["step_s"] / r["predicted_step_s"] for m in r["measured"]]
        ceil = [m["step_s"] / (r["flop_s_at_ceiling"] + r["decode_s"]) for m in r["measured"]]
        r["measured_over_predicted"] = [min(ratios), max(ratios)]
        r["measured_over_ceiling"] = [min(ceil), max(ceil)]
    # per stage: the fits at their steady step time (the first epoch's tracing is not modelled)
    # + forward passes + decoding + rendering, against stages.json. A stage rerun in part (the
    # ablations were added to these runs later) is compared on the fits of that rerun only.
    stage_rows = {}
    for run in runs:
        for stage, comps in run["work"].items():
            if stage not in run["stages"] or stage == "export":
                continue
            measured = run["stages"][stage]["seconds"]
            begun = time.mktime(time.strptime(run["stages"][stage]["finished"],
                                              "%Y-%m-%dT%H:%M:%S")) - measured - 5
            predicted, at_ceiling, left_out = 0.0, 0.0, []
            for comp in comps:
                key = comp.get("model")
                if comp["kind"] in ("conv_train", "mlp_train") and key in run["fits"] and \
                        run["fits"][key][3] < begun:
                    left_out.append(key)  # trained before this (partial) rerun
                    continue
                if comp["kind"] == "mlp_infer" and stage == "manipulator" and left_out:
                    continue
                decode, flops = 0.0, comp["flops_profiled"]
                if comp["kind"] in ("conv_train", "mlp_train"):
                    row = fit_rows.get(key)
                    if row:
                        decode = row["decode_s"] * comp["steps"]
                    decode += sum(  # the decode cache's one pass
                        s["cache_images"] / (cores * per_core["png_decode_img_s"])
                        for s in comp.get("streams", []) if s["cached"])
                elif comp["kind"] == "cpu_data":
                    decode = comp["examples"] * (per_core["render_s"] + per_core["png_write_s"]) \
                        + comp["examples"] / (cores * per_core["png_decode_img_s"])
                elif comp["kind"] == "conv_infer":
                    decode = comp["examples"] / (cores * per_core["png_decode_img_s"])
                predicted += flops / (rate * fraction) + decode
                at_ceiling += flops / rate + decode
            row = stage_rows.setdefault(stage, {"runs": []})
            row["runs"].append({"seed": run["config"].runtime.seed, "predicted_s": predicted,
                                "predicted_at_ceiling_s": at_ceiling, "measured_s": measured,
                                "measured_over_predicted": measured / max(predicted, 1e-9),
                                "not_in_this_measurement": left_out})
    for row in stage_rows.values():
        ratios = [r["measured_over_predicted"] for r in row["runs"]]
        row["measured_over_predicted"] = [min(ratios), max(ratios)]
        ratios = [r["measured_s"] / max(r["predicted_at_ceiling_s"], 1e-9) for r in row["runs"]]
        row["measured_over_ceiling"] = [min(ratios), max(ratios)]
    # evaluate on a GPU host: the BLAS part of the measured evaluate times (at the ceiling x
    # fraction) and the rest per ranked (query, gallery) pair (argpartition, sorting)
    rests = []
    for run in runs:
        rank = next(c for c in run["work"]["evaluate"] if c["kind"] == "cpu_rank")
        blas = rank["flops_profiled"] / (rate * fraction)
        measured_eval = run["stages"].get("evaluate", {}).get("seconds", blas)
        rests.append(max(measured_eval - blas, 0.0) / rank["rank_pairs"])
    default_eval = {"cpu_fraction": fraction, "reference_flop_s": rate,
                    "rest_s_per_pair": statistics.median(rests)}
    return {"run_dirs": [os.path.relpath(r["run_dir"], REPO) for r in runs],
            "preset": runs[0]["config"].preset,
            "seeds": [r["config"].runtime.seed for r in runs],
            "decode_cache": [r["decode_cache"] for r in runs],
            "reference_matmul_flop_s": reference_flop_s,
            "matmul_flop_s_measured_now": host.get("matmul_flop_s_measured", host["matmul_flop_s"]),
            "cpu_fraction_of_ceiling": fraction, "fits": list(fit_rows.values()),
            "stages": stage_rows, "default_eval": default_eval}


# ------------------------------------------------------------------------------------------------
# Reports.

def _fmt_flops(x):
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x / 1e6:.3g} MFLOP" if x else "0"


def _fmt_s(s):
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.0f} min"
    return f"{s:.0f} s"


def _stage_work_text(stage, comps):
    """Short description of what a stage processes (identical components grouped)."""
    groups = []
    for c in comps:
        key = (c["kind"], c.get("steps"), c.get("batch"), c["examples"])
        for g in groups:
            if g["key"] == key:
                g["count"] += 1
                break
        else:
            groups.append({"key": key, "count": 1, "comp": c})
    parts = []
    for g in groups:
        c, n = g["comp"], g["count"]
        who = f"{n} x " if n > 1 else (f"{c['name']}: " if c["kind"] in ("mlp_train",)
                                        and stage != "embedders" else "")
        if c["kind"] == "conv_train":
            parts.append(f"{who}{c['steps']:,} steps x {c['batch']} images")
        elif c["kind"] == "mlp_train":
            parts.append(f"{who}{c['steps']:,} steps x {c['batch']} features")
        elif c["kind"] == "conv_infer":
            parts.append(f"{who}{c['examples']:,} images forward")
        elif c["kind"] == "cpu_data":
            parts.append(f"{c['examples']:,} images rendered, written, verified (CPU)")
        elif c["kind"] == "cpu_rank":
            parts.append(f"{c['examples']:,} FAM queries ranked (numpy)")
        elif c["kind"] == "export":
            parts.append("3 SavedModels")
    return "; ".join(parts)


def flops_table(saved):
    """Plain-text table of both presets' training FLOPs per stage."""
    lines = []
    for preset, p in saved["presets"].items():
        lines.append(f"\n{preset} preset ({p['summary']})")
        lines.append(f"{'stage':12s} {'train FLOPs (3x fwd)':>20s} {'profiled step':>14s}  work")
        for stage, comps in p["work"].items():
            f3 = sum(c["flops_3x"] for c in comps)
            fp = sum(c["flops_profiled"] for c in comps)
            lines.append(f"{stage:12s} {_fmt_flops(f3):>20s} {_fmt_flops(fp):>14s}  "
                         f"{_stage_work_text(stage, comps)}")
        lines.append(f"{'total':12s} {_fmt_flops(p['total_flops_3x']):>20s} "
                     f"{_fmt_flops(p['total_flops_profiled']):>14s}")
    return "\n".join(lines)


def table(saved):
    """The BUILD.md table: paper preset, FLOPs and expected time per stage."""
    p = saved["presets"]["paper"]
    pred, totals = saved["gpu_prediction"]["stages"], saved["gpu_prediction"]["totals"]
    keys = ["A100 x1", "A100 x8", "H100 x1", "H100 x8"]
    head = ("| stage | work | train FLOPs (3x fwd) | " + " | ".join(
        f"{k.replace(' x', ' x ')} TF32" for k in keys) + " | bound by (1 GPU) |")
    lines = [head, "|" + "---|" * (5 + len(keys) - 1)]
    for stage, comps in p["work"].items():
        f3 = sum(c["flops_3x"] for c in comps)
        cells = " | ".join(_fmt_s(pred[stage][k]["tf32"]) for k in keys)
        lines.append(f"| {stage} | {_stage_work_text(stage, comps)} | {_fmt_flops(f3)} | "
                     f"{cells} | {pred[stage]['A100 x1']['bound']} |")
    lines.append(f"| **total** | | **{_fmt_flops(p['total_flops_3x'])}** | " + " | ".join(
        f"**{_fmt_s(totals[k]['tf32'])}**" for k in keys) + " | |")
    lines.append("| total if the extractor and pixel baselines trained in BF16 | | | " +
                 " | ".join(_fmt_s(totals[k]["bf16"]) for k in keys) + " | |")
    return "\n".join(lines)


def check_table(check):
    ref = check["reference_matmul_flop_s"] / 1e9
    frac = check["cpu_fraction_of_ceiling"]
    seeds = check["seeds"]
    cache = "off (the runs predate it)" if not any(check["decode_cache"]) else "on"
    lines = [f"CPU check: {', '.join(check['run_dirs'])} ({check['preset']} preset, seeds "
             f"{seeds}, decode cache {cache}); matmul ceiling {ref:.0f} GFLOP/s (measured now, "
             f"under load: {check['matmul_flop_s_measured_now'] / 1e9:.0f}); one achieved "
             f"fraction {frac:.2f} (the median over the fits of >= 1 GFLOP/step)",
             f"{'model fit':30s} {'GFLOP/step':>10s} {'ceil s':>7s} {'decode s':>8s} "
             + " ".join(f"{'seed ' + str(x) + ' s (frac)':>19s}" for x in seeds)
             + f" {'pred s':>7s} {'meas/pred':>10s} {'meas/ceil':>10s} {'1st epoch +s':>12s}"]
    for r in check["fits"]:
        by_seed = {m["seed"]: m for m in r["measured"]}
        cells = " ".join(
            f"{by_seed[x]['step_s']:9.4f} ({by_seed[x]['implied_fraction']:.2f}) "
            f"{by_seed[x]['started']}" if x in by_seed else f"{'-':>19s}" for x in seeds)
        lo, hi = r["measured_over_predicted"]
        clo, chi = r["measured_over_ceiling"]
        lines.append(f"{r['model']:30s} {r['train_step_gflop']:10.2f} "
                     f"{r['flop_s_at_ceiling']:7.4f} {r['decode_s']:8.4f} {cells} "
                     f"{r['predicted_step_s']:7.4f} {lo:4.2f}-{hi:<5.2f} {clo:4.1f}-{chi:<5.1f} "
                     f"{statistics.median(m['first_epoch_extra_s'] for m in r['measured']):12.1f}")
    lines.append(f"{'stage':30s} " + " ".join(f"{'seed ' + str(x) + ' pred/meas s':>22s}"
                                              for x in seeds)
                 + f" {'meas/pred':>10s} {'ceiling s':>10s} {'meas/ceil':>10s}")
    for stage, row in check["stages"].items():
        by_seed = {r["seed"]: r for r in row["runs"]}
        cells = " ".join(f"{by_seed[x]['predicted_s']:10.1f} /{by_seed[x]['measured_s']:9.1f}"
                         + ("*" if by_seed[x]["not_in_this_measurement"] else " ")
                         if x in by_seed else f"{'-':>22s}" for x in seeds)
        lo, hi = row["measured_over_predicted"]
        clo, chi = row["measured_over_ceiling"]
        lines.append(f"{stage:30s} {cells} {lo:4.2f}-{hi:<5.2f} "
                     f"{row['runs'][0]['predicted_at_ceiling_s']:10.1f} {clo:4.1f}-{chi:<5.1f}")
    lines.append("pred: FLOPs / (ceiling x fraction) + decoding; ceiling: FLOPs at the bare ceiling "
                 "+ decoding; steady steps only (each fit's first epoch, which traces, is left out: "
                 "'1st epoch +s'); * a partial rerun: compared on the fits it ran")
    return "\n".join(lines)


def print_all(saved):
    print(flops_table(saved))
    print("\nExpected time, paper preset (TF32; BF16 totals below):\n")
    print(table(saved))
    if saved.get("cpu_check"):
        print()
        print(check_table(saved["cpu_check"]))


# ------------------------------------------------------------------------------------------------

def _summary(config, counts):
    e = config.extractor
    return (f"{e.backbone}-{e.pooling} {config.data.image_size}px, {e.feature_dim}-d, "
            f"{counts['images_all']:,} images, extractor {e.epochs}x{e.steps_per_epoch} steps of "
            f"{e.instances_per_batch}x{e.images_per_instance}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=OUTPUT)
    parser.add_argument("--presets", default="paper,default")
    parser.add_argument("--check_run_dirs", default=CHECK_RUNS,
                        help="measured default-preset run directories for the CPU check (a glob "
                             "or comma-separated list; '' skips the check)")
    parser.add_argument("--print", action="store_true", help="print the saved file's tables")
    parser.add_argument("--markdown", action="store_true", help="print the BUILD.md table")
    parser.add_argument("--recheck", action="store_true",
                        help="reuse the saved file's host measurements and FLOP counts; redo the "
                             "CPU check and the predictions")
    parser.add_argument("--predict", action="store_true",
                        help="print the extractor's expected images/s as one JSON line")
    parser.add_argument("--gpu", default="A100", choices=sorted(GPU_SPECS))
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--vcpus", type=int, default=os.cpu_count())
    parser.add_argument("--strategy", default="mirrored", choices=["default", "mirrored"])
    parser.add_argument("--precision", default="tf32", choices=["tf32", "bf16"])
    parser.add_argument("--from_files", action="store_true",
                        help="--predict: the extractor's images decoded from the files")
    parser.add_argument("--reference_matmul_gflops", type=float, default=280.0,
                        help="this machine's unloaded 4096^2 float32 matmul ceiling for the CPU "
                             "check (measured at 270-290 GFLOP/s when the 2 cores were free; the "
                             "value measured now is recorded beside it)")
    parser.add_argument("--_probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._probe:
        _probe_main([int(s) for s in args._probe.split(",")])
        return
    if args.print or args.markdown or args.predict:
        with open(args.output) as f:
            saved = json.load(f)
        if args.predict:
            print(json.dumps(predict_extractor_rate(saved, args.gpu, args.gpus, args.vcpus,
                                                    args.strategy, args.precision,
                                                    cached=not args.from_files)))
        elif args.markdown:
            print(TABLE_BEGIN)
            print(table(saved))
            print(TABLE_END)
        else:
            print_all(saved)
        return

    import tensorflow as tf
    from flam_tf import config as config_lib

    start = time.time()
    if args.recheck:
        with open(args.output) as f:
            saved = json.load(f)
        host = saved["host"]
        configs = {name: config_lib.ExperimentConfig.from_dict(p["config"])
                   for name, p in saved["presets"].items()}
    else:
        saved = None
        presets = [p for p in args.presets.split(",") if p]
        configs = {p: config_lib.get_preset(p) for p in presets}
        print("host: measuring the matmul ceiling and per-core decode rates")
        host = measure_host([c.data.image_size for c in configs.values()] + [64])
    saved = saved or {"generated_by": "benchmarks/flops.py", "tensorflow": tf.__version__,
             "date": time.strftime("%Y-%m-%d"), "host": host,
             "method": __doc__.split("How FLOPs are counted")[1].split("The GPU time model")[0]
             .strip(), "gpu_specs": GPU_SPECS, "calibration": CALIBRATION,
             "assumptions": ASSUMPTIONS, "notes": NOTES, "presets": {}}
    saved.update(assumptions=ASSUMPTIONS, notes=NOTES, gpu_specs=GPU_SPECS,
                 calibration=CALIBRATION)
    for name, config in configs.items():
        if args.recheck:
            continue
        print(f"{name}: counting")
        counts = dataset_counts(config)
        models = profile_models(config, counts)
        work = stage_work(config, counts, models)
        saved["presets"][name] = {
            "config": config.to_dict(), "counts": counts, "models": models, "work": work,
            "summary": _summary(config, counts),
            "total_flops_3x": sum(c["flops_3x"] for cs in work.values() for c in cs),
            "total_flops_profiled": sum(c["flops_profiled"] for cs in work.values() for c in cs)}
    run_dirs = sorted(d for pattern in args.check_run_dirs.split(",") if pattern
                      for d in glob.glob(pattern)
                      if os.path.exists(os.path.join(d, "stages.json")))
    if run_dirs:
        check = cpu_check(run_dirs, host, args.reference_matmul_gflops * 1e9)
        saved["cpu_check"] = check
        default_eval = check["default_eval"]
    else:
        print("no measured run for the CPU check; evaluate is predicted from FLOPs alone")
        default_eval = {"rest_s_per_pair": 0.0, "cpu_fraction": 0.35,
                        "reference_flop_s": args.reference_matmul_gflops * 1e9}
    if "paper" in configs:
        stages_pred, totals = predict(saved["presets"]["paper"]["work"],
                                      saved["presets"]["paper"]["models"], host,
                                      configs["paper"], default_eval)
        fractions = {}
        rn50 = saved["presets"]["paper"]["models"]["extractor"]
        for gpu in GPU_SPECS:
            for precision in ("tf32", "bf16"):
                for xla in (True, False):
                    fractions[f"{gpu} {precision} {'xla' if xla else 'no_xla'}"] = round(
                        conv_fraction(gpu, precision, xla, rn50["train_step_flops"]
                                      / rn50["batch"]), 4)
        saved["gpu_prediction"] = {"stages": stages_pred, "totals": totals,
                                   "conv_train_fraction_of_peak": fractions,
                                   "extractor_img_s": {
                                       f"{gpu} x{n} {precision}": predict_extractor_rate(
                                           saved, gpu, n,
                                           ASSUMPTIONS["host_vcpus"][gpu][str(n)],
                                           "default" if n == 1 else "mirrored", precision,
                                           cached=None)
                                       for gpu in GPU_SPECS for n in (1, 8)
                                       for precision in ("tf32", "bf16")}}
    saved["seconds"] = round(time.time() - start, 1)
    with open(args.output, "w") as f:
        json.dump(saved, f, indent=1, sort_keys=False)
        f.write("\n")
    print_all(saved)
    print(f"\nwrote {os.path.relpath(args.output, REPO)} in {saved['seconds']:.0f} s")


if __name__ == "__main__":
    main()
