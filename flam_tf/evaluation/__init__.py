"""Evaluation: FIR recall, FAM top-k accuracy and twin recall (the paper's Tables 2-5)."""

from flam_tf.evaluation.metrics import (
    FAM_KS,
    FIR_KS,
    FamQueries,
    cosine_top_k,
    fam_queries,
    fam_top_k_accuracy,
    recall_at_k,
    recall_key,
    top_k_accuracy,
    top_k_key,
    twin_recall,
)

__all__ = [
    "FAM_KS",
    "FIR_KS",
    "FamQueries",
    "cosine_top_k",
    "fam_queries",
    "fam_top_k_accuracy",
    "recall_at_k",
    "recall_key",
    "top_k_accuracy",
    "top_k_key",
    "twin_recall",
]
