"""The ``unitednet fit`` command on a tiny .h5mu file."""

import json

import mudata as md
import numpy as np
import pytest
import torch

from unitednet.__main__ import main
from unitednet.model import UnitedNetModel
from unitednet.nn import ResidualMLP, VariationalEncoder


@pytest.fixture
def tiny_h5mu(make_mudata, tmp_path):
    """A tiny MuData on disk with its labels in obs["ct"]."""
    mdata = make_mudata(n_cells=120)
    mdata.obs["ct"] = mdata.obs.pop("cell_type")
    for adata in mdata.mod.values():
        del adata.obs["cell_type"]
    path = tmp_path / "tiny.h5mu"
    mdata.write_h5mu(path)
    return path


def _fit(path, out, *extra):
    argv = ["fit", str(path), "--labels-key", "ct", "--max-epochs", "1", "--out", str(out), "--batch-size", "32"]
    return main([*argv, *extra])


def test_fit_supervised_writes_all_outputs(tiny_h5mu, tmp_path, capsys):
    out = tmp_path / "out"
    assert _fit(tiny_h5mu, out, "--n-latent", "8") == 0
    assert {p.name for p in out.iterdir()} == {"annotated.h5mu", "metrics.json", "umap.png", "model"}
    assert (out / "umap.png").stat().st_size > 0

    annotated = md.read_h5mu(out / "annotated.h5mu")
    assert annotated.n_obs == 120
    assert annotated.obsm["X_unitednet"].shape == (120, 8)
    assert annotated.obsm["X_unitednet_umap"].shape == (120, 2)
    assert annotated.obsm["unitednet_group_proba"].shape == (120, 3)
    for m in ("rna", "atac"):
        assert annotated.mod[m].obsm["X_unitednet"].shape == (120, 8)
    assert set(annotated.obs["unitednet_group"].cat.categories) == {"alpha", "beta", "gamma"}
    split = annotated.obs["unitednet_split"].astype(str)
    assert set(split) == {"train", "validation", "test"}
    assert annotated.mod["atac"].layers["unitednet_from_rna"].shape == (120, 32)
    assert annotated.mod["rna"].layers["unitednet_from_atac"].shape == (120, 24)

    metrics = json.loads((out / "metrics.json").read_text())
    assert {"groups", "r2_variance_weighted", "pearson_mean", "train_seconds", "peak_memory_mb"} <= set(metrics)
    assert metrics["dataset"] == "tiny" and metrics["task"] == "supervised" and metrics["n_cells"] == 120
    assert metrics["evaluated_on"] == "test"
    assert metrics["n_cells_evaluated"] == int((annotated.obs["unitednet_split"] == "test").sum()) < 120
    assert set(metrics["groups"]) == {"accuracy", "balanced_accuracy", "macro_f1", "ari", "nmi"}
    assert 0 <= metrics["groups"]["accuracy"] <= 1
    assert metrics["train_seconds"] > 0 and metrics["peak_memory_mb"] > 0
    # rows target, columns source, as in unitednet.tl.evaluate
    assert set(metrics["r2_variance_weighted"]) == {"rna", "atac"}
    assert metrics["r2_variance_weighted"]["rna"]["rna"] is None or np.isnan(
        metrics["r2_variance_weighted"]["rna"]["rna"]
    )
    assert annotated.uns["unitednet"]["metrics"]["n_cells"] == int((split == "test").sum())

    model = UnitedNetModel.load(out / "model", adata=annotated)
    assert model.is_trained_ and model.modalities == ["rna", "atac"] and model.labels_key == "ct"
    np.testing.assert_allclose(model.get_latent_representation(), annotated.obsm["X_unitednet"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.predict_labels(), annotated.obs["unitednet_group"].astype(str).to_numpy())

    printed = capsys.readouterr().out
    assert "unitednet" in printed and "tiny — 120 cells" in printed and "evaluated on test" in printed


def test_fit_unsupervised(tiny_h5mu, tmp_path):
    out = tmp_path / "unsup"
    _fit(tiny_h5mu, out, "--task", "unsupervised", "--n-groups", "3")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "unsupervised"
    assert set(metrics["groups"]) == {"accuracy", "ari", "nmi"}  # Hungarian-matched accuracy
    annotated = md.read_h5mu(out / "annotated.h5mu")
    assert list(annotated.obs["unitednet_group"].cat.categories) == ["0", "1", "2"]


def test_fit_passes_heads_and_loss_weights(tiny_h5mu, tmp_path):
    out = tmp_path / "out"
    _fit(
        tiny_h5mu,
        out,
        "--task",
        "unsupervised",
        "--n-heads",
        "3",
        "--loss-weight",
        "ddc=3",
        "--loss-weight",
        "contrastive=0.5",
    )
    annotated = md.read_h5mu(out / "annotated.h5mu")
    model = UnitedNetModel.load(str(out / "model"), annotated)
    assert model.module.heads.n_heads == 3
    assert model.module.loss_weights["ddc"] == 3.0
    assert model.module.loss_weights["contrastive"] == 0.5
    assert model.module.loss_weights["self_entropy"] == 0.1  # untouched terms keep their defaults
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in model.module.encoders.modules())


def test_fit_without_batch_norm(tiny_h5mu, tmp_path):
    out = tmp_path / "out"
    _fit(tiny_h5mu, out, "--no-batch-norm")
    model = UnitedNetModel.load(str(out / "model"), md.read_h5mu(out / "annotated.h5mu"))
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.module.modules())


def test_fit_with_batch_norm_in_the_decoders_only(tiny_h5mu, tmp_path):
    out = tmp_path / "out"
    _fit(tiny_h5mu, out, "--norm", "encoders=none", "--norm", "heads=none")
    model = UnitedNetModel.load(str(out / "model"), md.read_h5mu(out / "annotated.h5mu"))

    def has_batch_norm(part):
        return any(isinstance(m, torch.nn.BatchNorm1d) for m in part.modules())

    # the part not named follows --batch-norm (on by default)
    assert has_batch_norm(model.module.decoders)
    assert not has_batch_norm(model.module.encoders)
    assert not has_batch_norm(model.module.heads)


@pytest.mark.parametrize("kind", ["variational", "residual"])
def test_fit_with_another_encoder(tiny_h5mu, tmp_path, kind):
    out = tmp_path / "out"
    _fit(tiny_h5mu, out, "--encoder", kind)
    model = UnitedNetModel.load(str(out / "model"), md.read_h5mu(out / "annotated.h5mu"))
    assert model.module.encoder_kind == kind
    expected = {"variational": VariationalEncoder, "residual": ResidualMLP}[kind]
    assert all(isinstance(encoder, expected) for encoder in model.module.encoders.values())


def test_fit_rejects_an_unknown_encoder(tiny_h5mu, capsys):
    with pytest.raises(SystemExit):
        main(["fit", str(tiny_h5mu), "--encoder", "transformer"])
    assert "invalid choice: 'transformer'" in capsys.readouterr().err


def test_fit_with_one_norm_for_every_part(tiny_h5mu, tmp_path):
    out = tmp_path / "out"
    _fit(tiny_h5mu, out, "--norm", "layer")
    model = UnitedNetModel.load(str(out / "model"), md.read_h5mu(out / "annotated.h5mu"))
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.module.modules())
    for part in (model.module.encoders, model.module.decoders, model.module.heads):
        assert any(isinstance(m, torch.nn.LayerNorm) for m in part.modules())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["big"], "expected one of batch, layer, none"),
        (["encoder=none"], "unknown part 'encoder'"),
        (["decoders=huge"], "expected one of batch, layer, none"),
    ],
)
def test_fit_rejects_bad_norms(tiny_h5mu, capsys, values, message):
    args = [a for v in values for a in ("--norm", v)]
    with pytest.raises(SystemExit) as info:
        main(["fit", str(tiny_h5mu), *args])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "values", [["none", "decoders=batch"], ["none", "batch"], ["heads=none", "heads=batch"]], ids=str
)
def test_fit_rejects_conflicting_norms(tiny_h5mu, tmp_path, values):
    args = [a for v in values for a in ("--norm", v)]
    with pytest.raises(SystemExit, match="give --norm once for every part"):
        main(["fit", str(tiny_h5mu), "--out", str(tmp_path / "out"), *args])
    assert not (tmp_path / "out").exists()


def test_fit_in_bf16_mixed_precision(tiny_h5mu, tmp_path):
    out = tmp_path / "out"
    assert _fit(tiny_h5mu, out, "--precision", "bf16-mixed") == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["precision"] == "bf16-mixed"
    model = UnitedNetModel.load(str(out / "model"), md.read_h5mu(out / "annotated.h5mu"))
    assert all(p.dtype == torch.float32 for p in model.module.parameters())
    assert np.isfinite(model.history["validation_loss"].to_numpy()).all()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ddc", "expected NAME=VALUE"),
        ("typo=1", "unknown loss 'typo'"),
        ("ddc=big", "must be a number"),
        ("ddc=-1", "must be a finite number >= 0"),
        ("ddc=inf", "must be a finite number >= 0"),
    ],
)
def test_fit_rejects_bad_loss_weights(tiny_h5mu, capsys, value, message):
    with pytest.raises(SystemExit) as info:
        main(["fit", str(tiny_h5mu), "--loss-weight", value])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_fit_translation(tiny_h5mu, tmp_path):
    out = tmp_path / "translation"
    _fit(tiny_h5mu, out, "--task", "translation", "--modalities", "atac", "rna")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "translation" and "groups" not in metrics
    assert set(metrics["r2_variance_weighted"]) == {"rna", "atac"}
    annotated = md.read_h5mu(out / "annotated.h5mu")
    assert "unitednet_group" not in annotated.obs
    assert "unitednet_from_atac" in annotated.mod["rna"].layers and "unitednet_from_rna" in annotated.mod["atac"].layers
    model = UnitedNetModel.load(out / "model", adata=annotated)
    assert model.modalities == ["atac", "rna"] and model.task_ == "translation"


def test_fit_unsupervised_needs_the_number_of_groups(tiny_h5mu, tmp_path):
    with pytest.raises(SystemExit, match="needs --n-groups"):
        main(["fit", str(tiny_h5mu), "--task", "unsupervised", "--out", str(tmp_path / "x"), "--max-epochs", "1"])
