"""Per stage of the main job, the components it runs, with their example counts and FLOPs."""


def stage_work(config, counts, models):
    """{stage: [component]}: what each stage of flam_tf.stages runs, with example counts and FLOPs
    (`flops_3x` by the 3 x forward rule, `flops_profiled` from the profiled train step)."""
    from flam_tf import methods

    e, c, m, bl = config.extractor, config.embedder, config.manipulator, config.baselines
    S = config.data.image_size
    cache_bytes = getattr(config.data, "decode_cache_mb", 0) * 2**20
    per_image = S * S * 3

    def cached(n_images):
        return 0 < n_images * per_image <= cache_bytes

    def train(name, key, steps, epochs, kind, streams=()):
        rec = models[key]
        examples = steps * rec["batch"]
        return {
            "name": name,
            "model": key,
            "kind": kind,
            "steps": steps,
            "epochs": epochs,
            "batch": rec["batch"],
            "examples": examples,
            "flops_3x": 3 * rec["forward_flops"] * examples,
            "flops_profiled": rec["train_step_flops"] * steps,
            "streams": list(streams),
        }

    def infer(name, key, examples, kind, streams=(), flops_per_example=None):
        per = models[key]["inference_flops"] if flops_per_example is None else flops_per_example
        flops = per * examples
        return {
            "name": name,
            "model": key,
            "kind": kind,
            "examples": examples,
            "flops_3x": flops,
            "flops_profiled": flops,
            "streams": list(streams),
        }

    n = counts
    work = {
        "data": [
            {
                "name": "render + write + verify PNGs",
                "kind": "cpu_data",
                "examples": n["images_all"],
                "flops_3x": 0,
                "flops_profiled": 0,
                "streams": [],
            }
        ]
    }

    # extractor: epochs x steps PK batches (+ attribute batches), decode cache if it fits
    steps = e.epochs * e.steps_per_epoch
    x = models["extractor"]
    streams = [
        {
            "images_per_step": x["pk_batch"],
            "cached": cached(n["images_extractor_train"]),
            "cache_images": n["images_extractor_train"],
        }
    ]
    if x["attribute_batch"]:
        streams.append(
            {
                "images_per_step": x["attribute_batch"],
                "cached": cached(n["attribute_train_labelled"]),
                "cache_images": n["attribute_train_labelled"],
            }
        )
    work["extractor"] = [
        train(
            "ResNet50-SPoC extractor" if e.backbone == "resnet50" else f"{e.backbone} extractor",
            "extractor",
            steps,
            e.epochs,
            "conv_train",
            streams,
        )
    ]
    work["extractor"][0]["pass_batches"] = [x["pk_batch"]] + (
        [x["attribute_batch"]] if x["attribute_batch"] else []
    )

    # features: every image once, batch 256, decoded from the files, one device
    work["features"] = [
        infer(
            "extractor forward, all images",
            "extractor",
            n["images_all"],
            "conv_infer",
            [{"cached": False}],
        )
    ]

    def feature_steps(batch_size, rows, epochs):
        b = min(batch_size, rows)
        return (rows // b) * epochs

    work["embedders"] = [
        train(
            "3 attribute embedders",
            "embedder",
            feature_steps(c.batch_size, n["images_attribute_train"], c.epochs),
            c.epochs,
            "mlp_train",
        )
    ]

    comps = []
    rows = n["manipulator_train"]
    for key, rec in models.items():
        if "variant" not in rec:
            continue
        epochs = m.epochs if rec["variant"] == methods.FLAM else m.paper_epochs
        comps.append(
            train(
                rec["variant"], key, feature_steps(m.batch_size, rows, epochs), epochs, "mlp_train"
            )
        )
        comps.append(infer(f"pseudo-labels ({rec['variant']})", "embedder", rows, "mlp_infer"))
    work["manipulator"] = comps

    comps = []
    for name, stem in methods.FEATURE_BASELINES.items():
        comps.append(
            train(
                f"{name} head",
                stem,
                feature_steps(bl.batch_size, n["images_attribute_train"], bl.epochs),
                bl.epochs,
                "mlp_train",
            )
        )
    if bl.pixel_epochs > 0:
        needed = n["images_attribute_train"] + n["images_fam_eval"] + n["images_fir_eval"]
        for name, stem in methods.PIXEL_BASELINES.items():
            comp = train(
                f"{name} from pixels",
                stem,
                bl.pixel_epochs * bl.pixel_steps_per_epoch,
                bl.pixel_epochs,
                "conv_train",
                [
                    {
                        "images_per_step": bl.pixel_batch_size,
                        "cached": cached(n["images_attribute_train"]),
                        "cache_images": n["images_attribute_train"],
                    }
                ],
            )
            comp["pass_batches"] = [bl.pixel_batch_size]
            comps.append(comp)
            comps.append(
                infer(
                    f"{name} encoder, eval images", stem, needed, "conv_infer", [{"cached": False}]
                )
            )
    work["baselines"] = comps

    # evaluate (numpy cosine ranking on the CPU, 2*Q*G*D each) + the small model calls
    D, block = e.feature_dim, 3 * bl.block_dim
    Q, G = n["fam_queries"], n["images_fam_eval"]
    variants = [k for k, r in models.items() if "variant" in r]
    flam_space = 1 + len(variants) + 1  # Identity, the manipulators, Mean-Shift
    baselines = len(methods.FEATURE_BASELINES) + (
        len(methods.PIXEL_BASELINES) if bl.pixel_epochs > 0 else 0
    )
    fir_pairs = (
        n["fir_inshop_query"] * n["fir_inshop_gallery"] + n["fir_c2s_query"] * n["fir_c2s_gallery"]
    )
    rank = 2 * Q * G * (flam_space * D + baselines * block) + 2 * fir_pairs * (
        D + baselines * block
    )
    probe_rows = sum(n["attribute_train_labels_per_type"].values())
    probe = 2 * D * 10 * (3 * 30 * probe_rows + (1 + len(variants) + 1) * 3 * Q)
    manip = sum(models[k]["inference_flops"] for k in variants) * Q  # G on every query
    if "manipulator" in models:
        manip += models["manipulator"]["inference_flops"] * Q  # FLAM's cycle back
    work["evaluate"] = [
        {
            "name": "cosine top-k rankings (numpy)",
            "kind": "cpu_rank",
            "examples": Q,
            "flops_3x": rank,
            "flops_profiled": rank,
            "streams": [],
            "rank_pairs": Q * G * (flam_space + baselines) + fir_pairs * (1 + baselines),
        },
        {
            "name": "manipulations, probes",
            "kind": "mlp_infer",
            "examples": Q,
            "flops_3x": manip + probe,
            "flops_profiled": manip + probe,
            "streams": [],
        },
    ]
    work["export"] = [
        {
            "name": "3 SavedModels",
            "kind": "export",
            "examples": 0,
            "flops_3x": 0,
            "flops_profiled": 0,
            "streams": [],
        }
    ]
    for comps in work.values():
        for comp in comps:
            comp["flops_3x"] = float(comp["flops_3x"])
            comp["flops_profiled"] = float(comp["flops_profiled"])
    return work
