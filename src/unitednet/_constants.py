"""Registry keys, result keys and loss names: the one place where unitednet's string constants live."""

from __future__ import annotations

from typing import Literal, NamedTuple


class _RegistryKeys(NamedTuple):
    LABELS_KEY: str = "labels"
    BATCH_KEY: str = "batch"
    MODALITY_PREFIX: str = "X_"


class _ResultKeys(NamedTuple):
    LATENT: str = "X_unitednet"
    GROUP: str = "unitednet_group"
    GROUP_PROBA: str = "unitednet_group_proba"
    PREDICTION_PREFIX: str = "unitednet_from_"
    RELEVANCE: str = "unitednet_relevance"
    UNS: str = "unitednet"
    SPLIT: str = "unitednet_split"
    PREDICTED_ONLY: str = "predicted_only"


REGISTRY_KEYS = _RegistryKeys()
RESULT_KEYS = _ResultKeys()

LOSS_NAMES = (
    "classification",
    "ddc",
    "self_entropy",
    "reconstruction",
    "translation",
    "generator",
    "discriminator",
    "contrastive",
    "kl",
)
"""Every loss term; each has a weight in ``loss_weights``."""

DEFAULT_LOSS_WEIGHTS = {
    "classification": 1.0,
    "ddc": 0.1,
    "self_entropy": 0.1,
    "reconstruction": 1.0,
    "translation": 3.0,
    "generator": 0.1,
    "discriminator": 0.1,
    "contrastive": 1.0,
    "kl": 0.01,
}
"""The published weights (1 for every loss except the adversarial and clustering terms, 0.1), except ``translation``:
3 instead of 1, chosen on validation cells (BMMC CITE RNA -> ADT RMSE lower on 6 of 6 seeds in translation and 4 of 6
supervised, Patch-seq validation accuracy 0.928 against 0.925; ``benchmarks/README.md``); ``kl`` (variational encoders
only, not in the published model) 0.01."""

Likelihood = Literal["gaussian", "bernoulli", "nb"]
LIKELIHOODS: tuple[str, ...] = ("gaussian", "bernoulli", "nb")
"""Likelihoods a modality can have: gaussian (continuous), bernoulli (binary), nb (raw counts, negative binomial)."""
Task = Literal["supervised", "unsupervised", "translation"]
Objective = Literal["translation", "classification", "clustering"]

OBJECTIVE_LOSSES: dict[str, tuple[str, ...]] = {
    "translation": ("contrastive", "reconstruction", "translation", "generator", "discriminator", "kl"),
    "classification": ("classification",),
    "clustering": ("ddc", "self_entropy", "reconstruction"),
}
"""Loss terms optimised by each training objective."""

TASK_OBJECTIVES: dict[str, tuple[str, ...]] = {
    "supervised": ("translation", "classification"),
    "unsupervised": ("translation", "clustering"),
    "translation": ("translation",),
}
"""Default order of the alternating objectives of each task."""


def modality_key(modality: str) -> str:
    """Registry key under which a modality's data matrix is registered."""
    return f"{REGISTRY_KEYS.MODALITY_PREFIX}{modality}"


# ---------------------------------------------------------------------------------------------------------------------
# perturbation modelling (UnitedNetPerturbationModel)
# ---------------------------------------------------------------------------------------------------------------------
class _PerturbationKeys(NamedTuple):
    REGISTRY_KEY: str = "perturbation"
    IDENTIFIED: str = "unitednet_perturbation"
    IDENTIFIED_PROBA: str = "unitednet_perturbation_proba"
    PREDICTED_PREFIX: str = "unitednet_perturbed_"
    UNS: str = "perturbation"


PERTURBATION_KEYS = _PerturbationKeys()

PERTURBATION_LOSS_NAMES = ("perturbation_identification", "perturbation_alignment")
"""Loss terms added by the perturbation model (trained in the translation objective)."""

DEFAULT_PERTURBATION_LOSS_WEIGHTS = {"perturbation_identification": 1.0, "perturbation_alignment": 1.0}
"""Default weights of the perturbation loss terms."""
