"""The pipeline of `python -m flam_tf.train`: its stages in order, what each needs, and running
them in a run directory.

    data -> extractor -> features -> embedders -> manipulator -> baselines -> evaluate -> export

Each stage reads what earlier stages left in the run directory (never their in-memory state), so
any stage can be rerun alone with `--stages`, and a killed run resumes: finished stages are skipped,
and a training stage restarts from its last epoch backup (epoch_backup.EpochBackup). Each stage
seeds itself from the run seed and its name: a run split across processes equals one run.

Multi-worker (`--strategy=multi_worker`, see flam_tf.distribute): every task runs the stages that
train (TRAINING_STAGES), the chief alone the others, and only the chief writes the run directory.
"""

import time
from typing import Callable, Dict, List

from absl import logging

from flam_tf import config as config_lib
from flam_tf import methods, stages
from flam_tf.evaluation import evaluate
from flam_tf.run_directory import EXPORT_DIR
from flam_tf.serving import export
from flam_tf.stages import Context


def stage_evaluate(ctx: Context) -> Dict[str, float]:
    report = evaluate.evaluate_run(ctx)
    fam = report["fam"][methods.FLAM]["all"]
    return {"FLAM all-T@10": fam.get("T@10"), "FLAM all-T@50": fam.get("T@50")}


def stage_export(ctx: Context) -> Dict[str, str]:
    written = export.export_run(ctx.run.root, output=ctx.run.path(EXPORT_DIR))
    return {k: str(v) for k, v in written.items()} if isinstance(written, dict) else {}


STAGE_FUNCTIONS: Dict[str, Callable[[Context], Dict]] = {
    "data": stages.stage_data,
    "extractor": stages.stage_extractor,
    "features": stages.stage_features,
    "embedders": stages.stage_embedders,
    "manipulator": stages.stage_manipulator,
    "baselines": stages.stage_baselines,
    "evaluate": stage_evaluate,
    "export": stage_export,
}
assert tuple(STAGE_FUNCTIONS) == config_lib.STAGES


# What each stage reads from earlier ones (the rest follows transitively).
REQUIRES = {
    "data": (),
    "extractor": ("data",),
    "features": ("extractor",),
    "embedders": ("features",),
    "manipulator": ("embedders",),
    "baselines": ("features",),
    "evaluate": ("manipulator", "baselines"),
    "export": ("manipulator",),
}
assert tuple(REQUIRES) == config_lib.STAGES


def check_requirements(ctx: Context, names) -> None:
    """Raises ValueError, before any work, if a stage needs one that has neither finished in the
    run directory nor been asked for."""
    for stage in names:
        for needed in REQUIRES[stage]:
            if needed not in names and not ctx.run.is_done(needed):
                raise ValueError(
                    f"stage {stage} needs the {needed} stage, which has not finished "
                    f"in {ctx.run.root}; add it to --stages"
                )


def _plan(ctx: Context, names, force: bool) -> List[str]:
    """The stages to run (in pipeline order), after checking their requirements."""
    check_requirements(ctx, names)
    return [s for s in config_lib.STAGES if s in names and (force or not ctx.run.is_done(s))]


def _run_stage(ctx: Context, stage: str) -> float:
    start = time.time()
    ctx.seed(stage)
    info = STAGE_FUNCTIONS[stage](ctx) or {}
    seconds = time.time() - start
    if ctx.cluster.is_chief:
        ctx.run.mark_done(stage, seconds, info=info)
    return seconds


def run_stages(ctx: Context, names=config_lib.STAGES, force: bool = False) -> Dict[str, float]:
    """Runs the stages `names` in pipeline order, skipping finished ones unless `force`.

    In a multi-worker cluster the chief makes the plan; a worker runs the TRAINING_STAGES with it
    and, after each stage, waits until the chief has written its outputs.

    Returns:
        {stage: seconds} of every finished stage of the run directory.

    Raises:
        ValueError: a stage needs another that has not run (see REQUIRES).
    """
    plan = ctx.cluster.chief_value("plan", lambda: _plan(ctx, names, force))
    for stage in config_lib.STAGES:
        if stage not in names:
            continue
        if stage not in plan:
            logging.info("stage %s: already finished, skipped", stage)
            print(f"== {stage}: finished earlier, skipped", flush=True)
            continue
        print(f"== {stage}", flush=True)
        if ctx.cluster.is_chief:
            seconds = ctx.cluster.chief_value(f"stage {stage}", lambda: _run_stage(ctx, stage))
        else:
            if stage in stages.TRAINING_STAGES:
                _run_stage(ctx, stage)
            seconds = ctx.cluster.chief_value(f"stage {stage}")  # the chief's outputs written
        print(f"== {stage}: done in {seconds:.1f} s", flush=True)
    return ctx.run.timings()
