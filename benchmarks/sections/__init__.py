"""The sections of `benchmarks/run.py`, one module per group: `compute` (machine ceilings,
synthetic data generation), `training` (the models' training steps), `serving` (extraction,
manipulation and search through the exported models), `main_job` (`python -m flam_tf.train`
end to end). Each section is a function `bench_<name>(results, params)`.

This file holds only their names and titles, in report order; it imports nothing, so the report
can be rendered without TensorFlow.
"""

TITLES = {
    "ceiling": "0. Machine ceilings",
    "synthetic": "1. Synthetic benchmark generation",
    "extractor_training": "2. Extractor training (small CNN)",
    "extraction": "3. Feature extraction",
    "feature_training": "4. Manipulator (GAN) and embedder training",
    "manipulation": "5. Manipulation latency",
    "search": "6. Exact top-k search",
    "main_job": "7. Main job (`python -m flam_tf.train`)",
}
SECTIONS = tuple(TITLES)
