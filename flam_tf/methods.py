"""The methods a report compares, by name, and the model file each one is trained into.

One source for the report's row names: the training stages train these models, the evaluation
reports them under these names, the CLI's summary and the benchmarks read them back.

    Identity            the query feature unchanged (the floor of FAM)
    FLAM                the default manipulator (the config's settings)
    FLAM (paper)        the paper's G and losses (M/OS/Adv), with --evaluation_compare
    FLAM (paper, ...)   its Table 3 ablations (--evaluation_ablations)
    Mean-Shift          x + (class mean of the target) - (class mean of the predicted source)
    Cls-Concat, Emb-Concat                  the paper's baselines, trained from images
    Cls-Concat (on x), Emb-Concat (on x)    the same heads on FLAM's feature x
"""

from typing import Dict, Tuple

IDENTITY = "Identity"
MEAN_SHIFT = "Mean-Shift"
FLAM = "FLAM"
FLAM_PAPER = "FLAM (paper)"

# The paper's manipulator rows: name -> (matching, online_sampling, adversarial), Table 3.
ABLATIONS: Dict[str, Tuple[str, bool, bool]] = {
    "FLAM (paper, M/-/Adv)": ("M", False, True),
    "FLAM (paper, M/-/-)": ("M", False, False),
    "FLAM (paper, S/-/Adv)": ("S", False, True),
}
PAPER_SWITCHES: Dict[str, Tuple[str, bool, bool]] = {FLAM_PAPER: ("M", True, True), **ABLATIONS}

# Baselines: report name -> model file stem. "(on x)": heads on FLAM's feature x (they inherit
# its instance information); the plain names: the paper's, trained from images.
FEATURE_BASELINES = {"Cls-Concat (on x)": "cls_concat_on_x", "Emb-Concat (on x)": "emb_concat_on_x"}
PIXEL_BASELINES = {"Cls-Concat": "cls_concat", "Emb-Concat": "emb_concat"}


def variant_model_name(variant: str) -> str:
    """File stem of a manipulator variant (FLAM or a key of PAPER_SWITCHES): `manipulator` for
    FLAM, e.g. `manipulator_paper_M_OS_adv` for FLAM (paper)."""
    if variant == FLAM:
        return "manipulator"
    matching, online, adversarial = PAPER_SWITCHES[variant]
    return (
        f"manipulator_paper_{matching}_{'OS' if online else 'noOS'}_"
        f"{'adv' if adversarial else 'noadv'}"
    )


def manipulator_variants(compare: bool, ablations: bool) -> Tuple[str, ...]:
    """The manipulator rows a run trains: FLAM; FLAM (paper) with the comparison rows or the
    ablations; the Table 3 ablations with `ablations`."""
    return (
        (FLAM,)
        + ((FLAM_PAPER,) if compare or ablations else ())
        + (tuple(ABLATIONS) if ablations else ())
    )
