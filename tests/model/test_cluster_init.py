"""k-means initialisation of the clustering heads (``cluster_init_epoch`` of the training plan)."""

from __future__ import annotations

import numpy as np
import pytest
import scvi
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from unitednet.nn import GroupHeads


def _head_weights(model) -> list[torch.Tensor]:
    return [w.detach().clone() for w in model.module.heads.weights]


def test_heads_point_at_kmeans_centres_of_training_cells(make_mudata, fit):
    # lr = 0 and no batch norm: nothing moves after the initialisation, so the heads still hold what it set
    mdata = make_mudata(n_cells=120)
    net = {"n_groups": 3, "n_heads": 2, "use_batch_norm": False}
    model = fit(mdata, "unsupervised", setup={}, model=net, train={"lr": 0.0, "plan_kwargs": {"cluster_init_epoch": 0}})
    for w in _head_weights(model):
        np.testing.assert_allclose(w.norm(dim=1).numpy(), 1.0, rtol=1e-5)
    # each cell goes to the group whose row is closest to its normalised projector output: the k-means partition
    module = model.module.eval()
    with torch.no_grad():
        z = torch.as_tensor(model.get_latent_representation())
        hidden = F.normalize(module.heads.projectors[int(module.best_head)](z), dim=1).numpy()
    kmeans = KMeans(n_clusters=3, n_init=10, random_state=0).fit_predict(hidden)
    assert adjusted_rand_score(kmeans, model.predict_labels()) > 0.9


def test_without_initialisation_the_random_rows_stay(make_mudata, fit):
    mdata = make_mudata(n_cells=120)
    model = fit(
        mdata,
        "unsupervised",
        setup={},
        model={"n_groups": 3},
        train={"lr": 0.0, "plan_kwargs": {"cluster_init_epoch": None}},
    )
    norms = model.module.heads.weights[0].detach().norm(dim=1).numpy()
    # random rows are drawn with scale 1/sqrt(n_hidden): not unit length
    assert not np.allclose(norms, 1.0, rtol=1e-3)


def test_initialisation_restarts_weight_selection(make_mudata, fit):
    mdata = make_mudata(n_cells=120)
    model = fit(
        mdata,
        "unsupervised",
        setup={},
        model={"n_groups": 3},
        train={"max_epochs": 3, "plan_kwargs": {"cluster_init_epoch": 2}},
    )
    assert model.best_epoch_ == 2


def test_initialisation_is_deterministic(make_mudata, fit):
    weights = []
    for _ in range(2):
        scvi.settings.seed = 0
        model = fit(
            make_mudata(n_cells=120),
            "unsupervised",
            setup={},
            model={"n_groups": 3, "n_heads": 2},
            train={"max_epochs": 1, "plan_kwargs": {"cluster_init_epoch": 0}},
        )
        weights.append(_head_weights(model))
    for a, b in zip(*weights, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_negative_epoch_is_refused(make_mudata, fit):
    with pytest.raises(ValueError, match="cluster_init_epoch must be >= 0"):
        fit(
            make_mudata(),
            "unsupervised",
            setup={},
            model={"n_groups": 3},
            train={"plan_kwargs": {"cluster_init_epoch": -1}},
        )


def test_group_directions_shape_is_checked():
    heads = GroupHeads(n_input=4, n_groups=3, n_heads=1, n_hidden=8)
    with pytest.raises(ValueError, match=r"centres must have shape \(3, 8\)"):
        heads.set_group_directions(0, torch.zeros(2, 8))
    heads.set_group_directions(0, torch.eye(3, 8) * 5)
    torch.testing.assert_close(heads.weights[0].detach(), torch.eye(3, 8))
