"""Tools: write model results into the MuData (scanpy style, ``key_added`` / ``copy``) and evaluate them."""

from ._embedding import umap
from ._explain import cross_modal_relevance, feature_relevance, relevance_stability
from ._metrics import classification_metrics, clustering_metrics, hungarian_accuracy, match_groups, regression_metrics
from ._perturbation import identify_perturbation, perturbation_metrics, predict_perturbation
from ._writers import evaluate, latent, predict_groups, predict_modality

__all__ = [
    "classification_metrics",
    "clustering_metrics",
    "cross_modal_relevance",
    "evaluate",
    "feature_relevance",
    "hungarian_accuracy",
    "identify_perturbation",
    "latent",
    "match_groups",
    "perturbation_metrics",
    "predict_groups",
    "predict_modality",
    "predict_perturbation",
    "regression_metrics",
    "relevance_stability",
    "umap",
]
