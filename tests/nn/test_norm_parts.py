"""Normalisation per network part: ``norm`` as a mapping over encoders, decoders and heads."""

import pytest
import torch
from torch import nn

from unitednet.module import UnitedNetModule, UnitedNetPerturbationModule
from unitednet.nn import MLP, GroupHeads
from unitednet.nn._base import NORM_PARTS, part_norms, resolve_norm

N_FEATURES = {"rna": 12, "atac": 9}
LIKELIHOODS = {"rna": "gaussian", "atac": "bernoulli"}
SMALL = {"n_latent": 4, "n_hidden": 8, "n_layers": 1}
DECODERS_ONLY = {"encoders": "none", "decoders": "batch", "heads": "none"}


def _norm_types(module: nn.Module | None) -> set[type]:
    if module is None:
        return set()
    return {type(m) for m in module.modules() if isinstance(m, (nn.BatchNorm1d, nn.LayerNorm))}


def _module(**kwargs) -> UnitedNetModule:
    return UnitedNetModule(N_FEATURES, LIKELIHOODS, n_groups=3, **SMALL, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# resolution
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", [None, "batch", "layer", "none"])
@pytest.mark.parametrize("use_batch_norm", [True, False])
def test_string_norm_resolves_as_before(norm, use_batch_norm):
    if norm == "batch" and not use_batch_norm:
        with pytest.raises(ValueError, match="norm='batch' contradicts use_batch_norm=False"):
            resolve_norm(norm, use_batch_norm)
        return
    expected = norm or ("batch" if use_batch_norm else "none")
    assert resolve_norm(norm, use_batch_norm) == expected
    assert part_norms(norm, use_batch_norm) == dict.fromkeys(NORM_PARTS, expected)


def test_mapping_fills_missing_parts_from_use_batch_norm():
    assert NORM_PARTS == ("encoders", "decoders", "heads")
    assert resolve_norm({"decoders": "none"}) == {"encoders": "batch", "decoders": "none", "heads": "batch"}
    assert resolve_norm({"heads": "layer"}, use_batch_norm=False) == {
        "encoders": "none",
        "decoders": "none",
        "heads": "layer",
    }
    assert resolve_norm({}) == dict.fromkeys(NORM_PARTS, "batch")
    assert resolve_norm(DECODERS_ONLY) == DECODERS_ONLY


def test_mapping_errors_name_the_valid_parts_and_values():
    with pytest.raises(
        ValueError, match=r"Unknown norm part\(s\) \['decoder'\]: the parts are \['encoders', 'decoders', 'heads'\]"
    ):
        resolve_norm({"decoder": "batch"})
    with pytest.raises(ValueError, match=r"Unknown norm part\(s\) \['discriminators'\]"):
        resolve_norm({"encoders": "none", "discriminators": "none"})
    with pytest.raises(ValueError, match=r"norm\['heads'\] must be one of \['batch', 'layer', 'none'\], got 'group'"):
        resolve_norm({"heads": "group"})
    with pytest.raises(ValueError, match=r"norm\['encoders'\] must be one of .*got None"):
        resolve_norm({"encoders": None})
    # the contradiction rule of the string applies to each part set to "batch"
    with pytest.raises(ValueError, match=r"norm\['decoders'\]='batch' contradicts use_batch_norm=False"):
        resolve_norm(DECODERS_ONLY, use_batch_norm=False)
    with pytest.raises(ValueError, match=r"norm must be one of \['batch', 'layer', 'none'\] or a mapping from parts"):
        resolve_norm(["batch"])
    # building blocks take one normalisation
    with pytest.raises(ValueError, match="A building block takes one norm"):
        MLP(4, 2, norm=DECODERS_ONLY)
    with pytest.raises(ValueError, match="A building block takes one norm"):
        GroupHeads(4, 3, norm=DECODERS_ONLY)


# ---------------------------------------------------------------------------------------------------------------------
# the module's layers
# ---------------------------------------------------------------------------------------------------------------------
def test_module_string_norm_applies_to_encoders_decoders_and_heads_only():
    module = _module(norm="batch")
    assert module.norm == "batch" and module.part_norms == dict.fromkeys(NORM_PARTS, "batch")
    for part in (module.encoders, module.decoders, module.heads):
        assert _norm_types(part) == {nn.BatchNorm1d}
    # never normalised: discriminators, latent projector, fusion
    for part in (module.discriminators, module.latent_projector, module.fusion):
        assert _norm_types(part) == set()


@pytest.mark.parametrize(
    "norm",
    [
        DECODERS_ONLY,
        {"encoders": "batch", "decoders": "batch", "heads": "none"},
        {"encoders": "none", "decoders": "batch", "heads": "batch"},
        {"encoders": "layer", "decoders": "none", "heads": "batch"},
        {"decoders": "layer"},
    ],
)
def test_module_mapping_puts_each_part_norm_in_its_part(norm):
    module = _module(norm=norm)
    expected = {**dict.fromkeys(NORM_PARTS, "batch"), **norm}
    assert module.norm == expected and module.part_norms == expected
    kinds = {"batch": {nn.BatchNorm1d}, "layer": {nn.LayerNorm}, "none": set()}
    for name in NORM_PARTS:
        assert _norm_types(getattr(module, name)) == kinds[expected[name]], name
        # every modality's network of the part
        if name != "heads":
            for m in N_FEATURES:
                assert _norm_types(getattr(module, name)[m]) == kinds[expected[name]], (name, m)
    for part in (module.discriminators, module.latent_projector, module.fusion):
        assert _norm_types(part) == set()
    # the module runs in training and evaluation mode
    x = {"X_rna": torch.randn(6, 12), "X_atac": (torch.rand(6, 9) > 0.5).float()}
    for training in (True, False):
        module.train(training)
        inference, _ = module.forward_all(x)
        assert inference["z_fused"].shape == (6, 4) and torch.isfinite(inference["z_fused"]).all()


@pytest.mark.parametrize("encoder", ["mlp", "variational", "residual"])
def test_every_encoder_kind_takes_the_encoders_norm(encoder):
    module = _module(norm={"encoders": "layer", "decoders": "none", "heads": "none"}, encoder=encoder)
    assert all(_norm_types(module.encoders[m]) == {nn.LayerNorm} for m in N_FEATURES)
    assert _norm_types(module.decoders) == set() and _norm_types(module.heads) == set()


def test_perturbation_identification_head_takes_the_heads_norm():
    kwargs = {"n_perturbations": 3, **SMALL}
    module = UnitedNetPerturbationModule(N_FEATURES, LIKELIHOODS, norm=DECODERS_ONLY, **kwargs)
    assert _norm_types(module.identification_head) == set()
    assert _norm_types(module.decoders) == {nn.BatchNorm1d}
    module = UnitedNetPerturbationModule(N_FEATURES, LIKELIHOODS, norm={"heads": "layer"}, **kwargs)
    assert _norm_types(module.identification_head) == {nn.LayerNorm}
    assert _norm_types(module.encoders) == {nn.BatchNorm1d}
    module = UnitedNetPerturbationModule(N_FEATURES, LIKELIHOODS, use_batch_norm=False, **kwargs)
    assert _norm_types(module) == set()
