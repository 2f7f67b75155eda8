"""``UnitedNetModel(norm=...)`` as a mapping over encoders, decoders and heads: validation, layers, save / load."""

import types

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from unitednet.model import UnitedNetModel, UnitedNetPerturbationModel

DECODERS_ONLY = {"encoders": "none", "decoders": "batch", "heads": "none"}


def _norm_types(module: nn.Module | None) -> set[type]:
    if module is None:
        return set()
    return {type(m) for m in module.modules() if isinstance(m, (nn.BatchNorm1d, nn.LayerNorm))}


@pytest.fixture(scope="module")
def _decoders_only_once(train_shared):
    return train_shared("supervised", model={"norm": DECODERS_ONLY})


@pytest.fixture
def decoders_only(_decoders_only_once, reuse_model):
    return reuse_model(_decoders_only_once)


def test_model_validates_the_mapping(mdata, model_kwargs):
    UnitedNetModel.setup_mudata(mdata, labels_key="cell_type")
    with pytest.raises(ValueError, match=r"Unknown norm part\(s\) \['projector'\]: the parts are"):
        UnitedNetModel(mdata, norm={"projector": "none"}, **model_kwargs)
    with pytest.raises(ValueError, match=r"norm\['decoders'\] must be one of \['batch', 'layer', 'none'\]"):
        UnitedNetModel(mdata, norm={"decoders": "instance"}, **model_kwargs)
    with pytest.raises(ValueError, match=r"norm\['decoders'\]='batch' contradicts use_batch_norm=False"):
        UnitedNetModel(mdata, use_batch_norm=False, norm={"decoders": "batch"}, **model_kwargs)
    # missing parts follow use_batch_norm
    model = UnitedNetModel(mdata, use_batch_norm=False, norm={"heads": "layer"}, **model_kwargs)
    assert model.module.norm == {"encoders": "none", "decoders": "none", "heads": "layer"}
    assert _norm_types(model.module.heads) == {nn.LayerNorm}
    assert _norm_types(model.module.encoders) == _norm_types(model.module.decoders) == set()


def test_mapping_with_every_part_batch_builds_the_string_model(make_mudata, model_kwargs):
    states = []
    for norm in ("batch", dict.fromkeys(("encoders", "decoders", "heads"), "batch")):
        mdata = make_mudata()
        UnitedNetModel.setup_mudata(mdata, labels_key="cell_type")
        torch.manual_seed(0)
        states.append(UnitedNetModel(mdata, norm=norm, **model_kwargs).module.state_dict())
    assert states[0].keys() == states[1].keys()
    for key, value in states[0].items():
        torch.testing.assert_close(states[1][key], value, rtol=0, atol=0)


def test_trained_mapping_model_has_its_parts_norms(decoders_only):
    module = decoders_only.module
    assert module.norm == DECODERS_ONLY
    assert _norm_types(module.decoders) == {nn.BatchNorm1d}
    assert _norm_types(module.encoders) == _norm_types(module.heads) == set()
    # the decoders' batch statistics were updated in training
    stats = [m.running_mean for m in module.decoders.modules() if isinstance(m, nn.BatchNorm1d)]
    assert stats and all(bool(s.abs().sum() > 0) for s in stats)
    assert decoders_only.init_params_["non_kwargs"]["norm"] == DECODERS_ONLY


def test_save_load_round_trip_with_a_mapping(decoders_only, tmp_path):
    model = decoders_only
    model.save(tmp_path / "parts", overwrite=True)
    loaded = UnitedNetModel.load(tmp_path / "parts", adata=model.adata)
    assert loaded.init_params_ == model.init_params_
    assert type(loaded.init_params_["non_kwargs"]["norm"]) is dict
    assert loaded.module.norm == model.module.norm == DECODERS_ONLY
    for part in ("encoders", "decoders", "heads"):
        assert _norm_types(getattr(loaded.module, part)) == _norm_types(getattr(model.module, part))
    state = model.module.state_dict()
    assert loaded.module.state_dict().keys() == state.keys()
    for key, value in loaded.module.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    np.testing.assert_array_equal(loaded.get_latent_representation(), model.get_latent_representation())
    np.testing.assert_array_equal(
        loaded.predict_modality(source="rna", target="atac"), model.predict_modality(source="rna", target="atac")
    )
    np.testing.assert_array_equal(loaded.predict_labels(), model.predict_labels())


def test_a_read_only_mapping_is_saved_as_a_plain_dict(mdata, model_kwargs, tmp_path):
    UnitedNetModel.setup_mudata(mdata, labels_key="cell_type")
    model = UnitedNetModel(mdata, norm=types.MappingProxyType({"heads": "none"}), **model_kwargs)
    assert model.init_params_["non_kwargs"]["norm"] == {"heads": "none"}
    model.save(tmp_path / "proxy", overwrite=True)
    loaded = UnitedNetModel.load(tmp_path / "proxy", adata=mdata)
    assert loaded.module.norm == {"encoders": "batch", "decoders": "batch", "heads": "none"}
    assert _norm_types(loaded.module.heads) == set()


def test_perturbation_model_passes_the_mapping_on(make_mudata, model_kwargs, tmp_path):
    mdata = make_mudata()
    mdata.obs["condition"] = pd.Categorical(np.where(np.arange(mdata.n_obs) % 2 == 0, "CTRL", "STIM"))
    UnitedNetPerturbationModel.setup_mudata(
        mdata, perturbation_key="condition", control_category="CTRL", labels_key="cell_type"
    )
    model = UnitedNetPerturbationModel(mdata, norm=DECODERS_ONLY, **model_kwargs)
    module = model.module
    assert module.norm == DECODERS_ONLY
    assert _norm_types(module.decoders) == {nn.BatchNorm1d}
    assert _norm_types(module.encoders) == _norm_types(module.heads) == set()
    assert _norm_types(module.identification_head) == set()
    model.save(tmp_path / "pert", overwrite=True)
    loaded = UnitedNetPerturbationModel.load(tmp_path / "pert", adata=mdata)
    assert loaded.module.norm == DECODERS_ONLY
    assert _norm_types(loaded.module.identification_head) == set()
