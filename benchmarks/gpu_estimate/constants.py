"""The GPU time model's constants: datasheet peaks, NVIDIA's measured ResNet-50 throughput that
calibrates the achieved fraction, the model's assumptions, and the notes that explain them (all
written into flops.json)."""

# Vendor datasheets, dense (the datasheets' "with sparsity" Tensor Core figures are 2x these).
GPU_SPECS = {
    "A100": {
        "name": "NVIDIA A100 SXM4 80GB",
        "fp32": 19.5e12,
        "tf32": 156e12,
        "bf16": 312e12,
        "hbm_bytes_s": 2.039e12,
        "source": "NVIDIA A100 datasheet: FP32 19.5, TF32 156 (312 sparse), BF16 312 "
        "(624 sparse) TFLOPS; 2,039 GB/s HBM2e (80GB SXM)",
    },
    "H100": {
        "name": "NVIDIA H100 SXM5 80GB",
        "fp32": 66.9e12,
        "tf32": 494.7e12,
        "bf16": 989.4e12,
        "hbm_bytes_s": 3.35e12,
        "source": "NVIDIA H100 datasheet: FP32 67, TF32 989 sparse (494.7 dense), BF16 1,979 "
        "sparse (989.4 dense) TFLOPS; 3.35 TB/s HBM3",
    },
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
    "train_img_s": {
        "tf32": {"xla": 909.0, "no_xla": 909.0 * 40 / 47},
        "bf16": {"xla": 2375.0, "no_xla": 2375.0 * 18 / 19.5},
    },
    "weak_scaling_8": {"tf32": 7.70 / 8, "bf16": 7.32 / 8},
    "infer_img_s_256": {"tf32": 1911.96, "bf16": 3229.32},
    # images/s by batch, inference, no XLA (TF32; mixed precision), normalised to batch 256 and
    # capped at 1: how much of its large-batch speed the GPU keeps at a small per-replica batch.
    "batch_curve": {
        "tf32": {
            1: 191.23,
            2: 376.83,
            4: 601.12,
            8: 963.86,
            16: 1361.58,
            32: 1602.09,
            64: 1793.81,
            128: 1876.22,
            256: 1911.96,
        },
        "bf16": {
            1: 223.35,
            2: 435.51,
            4: 882.00,
            8: 1503.24,
            16: 1903.58,
            32: 1974.01,
            64: 3570.46,
            128: 3474.94,
            256: 3229.32,
        },
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
