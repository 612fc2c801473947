"""Training FLOPs of the main job's stages and the time they should take on GPUs (the library
behind benchmarks/flops.py).

`counting` builds and profiles a preset's models and counts its data; `work` turns those counts
into each stage's components and FLOPs; `host` measures this machine's rates; `model` predicts
GPU time from all of it with the constants of `constants`; `cpu_check` tests the same model
against measured CPU runs; `tables` renders a saved flops.json.
"""
