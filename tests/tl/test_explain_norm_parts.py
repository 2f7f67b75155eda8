"""DeepExplainer refuses layer normalisation only in the parts on the explained path.

Group relevance explains encoders -> fusion -> group head; cross-modal relevance explains the source encoder -> the
target decoder.
"""

import numpy as np
import pytest

import unitednet as un

pytestmark = pytest.mark.filterwarnings("ignore:unrecognized nn.Module:UserWarning")

LAYER_IN = {
    "decoders": {"encoders": "none", "decoders": "layer", "heads": "none"},
    "heads": {"encoders": "batch", "decoders": "batch", "heads": "layer"},
    "encoders": {"encoders": "layer", "decoders": "none", "heads": "none"},
}
TARGETS = ["peak0", "peak1", "peak2"]


@pytest.fixture(scope="module")
def _models_once(train_shared):
    return {part: train_shared("supervised", model={"norm": norm}) for part, norm in LAYER_IN.items()}


@pytest.fixture
def models(_models_once, reuse_model):
    return {k: reuse_model(v) for k, v in _models_once.items()}


def _relevance(model) -> np.ndarray:
    return np.asarray(model.adata.mod["rna"].varm["unitednet_relevance"])


def test_layer_norm_in_the_decoders_does_not_block_group_relevance(models):
    model = models["decoders"]
    # DeepExplainer's additivity check runs (check_additivity=True by default): the path has no layer norm
    un.tl.feature_relevance(model, n_cells_per_group=5)
    assert np.isfinite(_relevance(model)).all() and _relevance(model).max() > 0
    with pytest.raises(ValueError, match=r"layer normalisation \(norm='layer'\) in its decoders.*method='gradient'"):
        un.tl.cross_modal_relevance(model, source="rna", target="atac", target_features=TARGETS)
    un.tl.cross_modal_relevance(
        model, source="rna", target="atac", target_features=TARGETS, n_cells_per_group=5, method="gradient"
    )


def test_layer_norm_in_the_heads_blocks_group_relevance_only(models):
    model = models["heads"]
    with pytest.raises(ValueError, match=r"layer normalisation \(norm='layer'\) in its heads.*method='gradient'"):
        un.tl.feature_relevance(model, n_cells_per_group=5)
    un.tl.cross_modal_relevance(model, source="rna", target="atac", target_features=TARGETS, n_cells_per_group=5)
    table = model.adata.uns["unitednet"]["cross_modal_relevance"]["rna->atac"]
    assert set(table["target_feature"]) == set(TARGETS)
    un.tl.feature_relevance(model, n_cells_per_group=5, method="gradient")
    assert np.isfinite(_relevance(model)).all()


def test_layer_norm_in_the_encoders_blocks_both(models):
    model = models["encoders"]
    with pytest.raises(ValueError, match=r"in its encoders, on the explained path \(encoders, heads\)"):
        un.tl.feature_relevance(model, n_cells_per_group=5)
    with pytest.raises(ValueError, match=r"in its encoders, on the explained path \(encoders, decoders\)"):
        un.tl.cross_modal_relevance(model, source="rna", target="atac", target_features=TARGETS)
