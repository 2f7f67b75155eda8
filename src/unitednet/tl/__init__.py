"""Tools: write model results into the MuData (scanpy style, ``key_added`` / ``copy``) and evaluate them."""

from ._embedding import umap
from ._metrics import classification_metrics, clustering_metrics, hungarian_accuracy, match_groups, regression_metrics
from ._writers import evaluate, latent, predict_groups, predict_modality

__all__ = [
    "classification_metrics",
    "clustering_metrics",
    "evaluate",
    "hungarian_accuracy",
    "latent",
    "match_groups",
    "predict_groups",
    "predict_modality",
    "regression_metrics",
    "umap",
]
