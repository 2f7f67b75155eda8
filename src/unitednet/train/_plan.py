from __future__ import annotations

import copy
from collections.abc import Sequence

import lightning.pytorch as pl
import torch

from unitednet._constants import modality_key
from unitednet.module import UnitedNetModule
from unitednet.nn._base import is_sparse_batch

# terms that define the validation loss used to keep the best weights. Left out: the adversarial terms (they
# measure the discriminator of the moment, not the model) and the contrastive term (its negatives are the cells of
# other *predicted* groups, so its value moves with the model's own groupings and is not comparable across epochs).
_SELECTION_TERMS = ("classification", "ddc", "self_entropy", "reconstruction", "translation")


def _fused_adam(params: Sequence[torch.nn.Parameter]) -> bool | None:
    """``True`` when torch has a fused Adam for the parameters' device (CPU and CUDA), else ``None`` (its default)."""
    devices = {p.device.type for p in params}
    return True if devices and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params) else None


class UnitedNetTrainingPlan(pl.LightningModule):
    """Lightning plan for UnitedNet: alternating objectives, one optimizer each, manual optimisation.

    Each Lightning epoch runs one pass over the training cells per objective, in ``objectives`` order. The translation
    objective updates encoders, decoders and the latent projector with the contrastive, reconstruction, translation
    and generator losses, then the discriminators with the discriminator loss on detached reconstructions. The
    classification objective updates encoders, fusion and heads with class-balanced cross-entropy; the clustering
    objective updates fusion and heads with DDC + self-entropy, and encoders and decoders with reconstruction.

    With ``loss_weighting="uncertainty"`` the learned log-variances are trained with the translation objective; with
    ``"gradnorm"`` each translation step also updates the balancer's factors with their own Adam optimizer on the
    GradNorm loss (:meth:`~unitednet.module.LossBalancer.gradnorm_loss`). Unless the weighting is ``"fixed"``, the
    effective weight of each balanced term at the end of each epoch is logged as ``weight_<term>`` (in the model's
    ``history``).
    The validation loss always uses the fixed ``loss_weights``, so that epochs are compared on one scale.

    After every validation epoch the weights with the lowest validation loss (weighted sum of the classification, DDC,
    self-entropy, reconstruction and translation terms) are kept and restored at the end of training; the group head with the lowest mean loss over the last
    ``head_selection_window`` epochs becomes the predicting head.

    Parameters
    ----------
    module
        The :class:`~unitednet.module.UnitedNetModule`.
    objectives
        Objective names in training order.
    lr
        Learning rate of every Adam optimizer.
    weight_decay
        L2 weight decay of every optimizer.
    gradient_clip_norm
        Maximum gradient norm per objective step.
    head_selection_window
        Number of recent epochs averaged to select the best head.
    cluster_init_epoch
        For the clustering objective: at the start of this epoch (0-based) each head's group rows are pointed at the
        centres of a spherical k-means (one seed per head, drawn from torch's generator) of that head's projector
        output on the training cells, the usual initialisation of deep clustering, so that DDC refines a sensible
        partition of the latent space learnt so far instead of a random one. Selection of the best weights on the
        validation loss starts again at this epoch, and the clustering optimizer's state is reset. ``None``, or a
        run shorter than this, keeps the random initialisation.
    """

    def __init__(
        self,
        module: UnitedNetModule,
        objectives: Sequence[str],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        gradient_clip_norm: float = 25.0,
        head_selection_window: int = 5,
        cluster_init_epoch: int | None = 20,
    ):
        super().__init__()
        self.module = module
        self.objectives = list(objectives)
        self.lr = lr
        self.weight_decay = weight_decay
        self.gradient_clip_norm = gradient_clip_norm
        self.head_selection_window = head_selection_window
        if cluster_init_epoch is not None and cluster_init_epoch < 0:
            raise ValueError(f"cluster_init_epoch must be >= 0 or None, got {cluster_init_epoch}.")
        self.cluster_init_epoch = cluster_init_epoch
        self.automatic_optimization = False
        self._groups = module.parameter_groups()
        self._optimizer_names = self.objectives + (["discriminator"] if "translation" in self.objectives else [])
        if "translation" in self.objectives and "loss_balancer" in self._groups:
            self._optimizer_names.append("loss_balancer")
        self._head_history: list[torch.Tensor] = []
        self._epoch_head_losses: list[torch.Tensor] = []
        self._val_head_losses: list[torch.Tensor] = []
        self._validated = False
        self.best_validation_loss = float("inf")
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch: int | None = None

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """One Adam optimizer per objective (plus one for the discriminators), each over its own parameters.

        The fused implementation (one kernel over all parameters) is used where torch has it for the device.
        """
        return [
            torch.optim.Adam(
                self._groups[name], lr=self.lr, weight_decay=self.weight_decay, fused=_fused_adam(self._groups[name])
            )
            for name in self._optimizer_names
        ]

    def _optimizer_map(self) -> dict:
        optimizers = self.optimizers()
        if not isinstance(optimizers, list):  # Lightning unwraps a single optimizer
            optimizers = [optimizers]
        return dict(zip(self._optimizer_names, optimizers, strict=True))

    def _step(self, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], loss: torch.Tensor) -> None:
        optimizer.zero_grad()
        self.manual_backward(loss)
        torch.nn.utils.clip_grad_norm_(params, self.gradient_clip_norm)
        optimizer.step()

    def training_step(self, batch: tuple[int, dict[str, torch.Tensor]], batch_idx: int) -> None:
        """One optimizer step of the batch's objective (plus the discriminator step for translation)."""
        objective_idx, tensors = batch
        objective = self.objectives[objective_idx]
        optimizers = self._optimizer_map()
        # the classification loss reads the latents only: the decoders are not run for it
        inference_outputs, generative_outputs = self.module.forward_all(tensors, decode=objective != "classification")
        out = self.module.loss(tensors, inference_outputs, generative_outputs, objective=objective)
        if not out.loss.requires_grad:
            return  # nothing to learn from this batch (classification on a batch without labelled cells)
        balancing = objective == "translation" and "loss_balancer" in optimizers
        if balancing:
            # gradient norms of the balanced terms before the step, on the same graph (retained)
            balancer_loss = self.module.gradnorm_loss(out.extra_metrics)
        self._step(optimizers[objective], self._groups[objective], out.loss)
        if balancing and balancer_loss.requires_grad:
            optimizers["loss_balancer"].zero_grad()
            self.manual_backward(balancer_loss)
            optimizers["loss_balancer"].step()
            self.module.loss_balancer.renormalise()
        n = out.n_obs_minibatch
        metrics = dict(out.extra_metrics)
        head_losses = metrics.pop("head_losses", None)
        if head_losses is not None:
            self._epoch_head_losses.append(head_losses)
        if objective == "translation":
            d_loss = self.module.discriminator_loss(tensors, generative_outputs)
            self._step(
                optimizers["discriminator"],
                self._groups["discriminator"],
                self.module.loss_weights["discriminator"] * d_loss,
            )
            metrics["discriminator"] = d_loss.detach()
        for name, value in metrics.items():
            self.log(f"{name}_train", value, on_step=False, on_epoch=True, batch_size=n)
        self.log(f"{objective}_loss_train", out.loss.detach(), on_step=False, on_epoch=True, batch_size=n)

    def validation_step(self, tensors: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Every loss term of every objective on the validation cells."""
        self._validated = True
        inference_outputs, generative_outputs = self.module.forward_all(tensors)
        terms: dict[str, torch.Tensor] = {}
        for objective in self.objectives:
            out = self.module.loss(tensors, inference_outputs, generative_outputs, objective=objective)
            metrics = dict(out.extra_metrics)
            head_losses = metrics.pop("head_losses", None)
            if head_losses is not None:
                self._val_head_losses.append(head_losses)
            terms.update(metrics)
        if "translation" in self.objectives:
            terms["discriminator"] = self.module.discriminator_loss(tensors, generative_outputs)
        n = inference_outputs["z_fused"].shape[0]
        weights = self.module.loss_weights
        total = sum(weights[k] * v for k, v in terms.items() if k in _SELECTION_TERMS)
        for name, value in terms.items():
            self.log(f"{name}_validation", value, on_step=False, on_epoch=True, batch_size=n)
        self.log("validation_loss", total, on_step=False, on_epoch=True, batch_size=n, prog_bar=True)

    def _select_head(self, losses: list[torch.Tensor]) -> None:
        if losses and self.module.heads is not None:
            self._head_history.append(torch.stack(losses).mean(0))
            recent = torch.stack(self._head_history[-self.head_selection_window :]).mean(0)
            self.module.best_head.fill_(int(recent.argmin()))

    def on_validation_epoch_end(self) -> None:
        """Select the best head on validation losses, then keep the weights if the validation loss improved."""
        self._select_head(self._val_head_losses)
        self._val_head_losses = []
        value = self.trainer.callback_metrics.get("validation_loss")
        if value is not None and float(value) < self.best_validation_loss:
            self.best_validation_loss = float(value)
            self.best_epoch = self.current_epoch
            self.best_state = copy.deepcopy(self.module.state_dict())

    @torch.no_grad()
    def on_train_start(self) -> None:
        """Before a model's first training: start each nb decoder at the training cells' mean counts."""
        module = self.module
        if not module.count_modalities or bool(module.count_bias_set):
            return
        loader = self.trainer.datamodule.train_dataloader()
        loader = getattr(loader, "loader", loader)  # the objective cycle wraps one pass over the training cells
        keys = {m: modality_key(m) for m in module.count_modalities}
        sums = dict.fromkeys(keys, 0.0)
        n_obs = 0
        for tensors in loader:
            for m, key in keys.items():
                x = tensors[key]
                x = x.to_dense() if is_sparse_batch(x) else x  # one minibatch
                sums[m] = sums[m] + x.double().sum(0)
            n_obs += next(iter(tensors.values())).shape[0]
        if n_obs:
            module.set_count_bias({m: (total / n_obs).float() for m, total in sums.items()})

    def on_train_epoch_start(self) -> None:
        """Initialise the clustering heads from k-means at ``cluster_init_epoch``."""
        if (
            self.cluster_init_epoch is None
            or self.current_epoch != self.cluster_init_epoch
            or self.module.heads is None
            or "clustering" not in self.objectives
        ):
            return
        self._initialise_heads_by_kmeans()

    @torch.no_grad()
    def _initialise_heads_by_kmeans(self) -> None:
        from sklearn.cluster import KMeans

        heads = self.module.heads
        loader = self.trainer.datamodule.train_dataloader()
        loader = getattr(loader, "loader", loader)  # the objective cycle wraps one pass over the training cells
        if getattr(loader, "distributed", False):  # every process clusters all training cells, not its share
            loader = copy.copy(loader)
            loader.distributed = False
        was_training = self.module.training
        self.module.eval()
        try:
            z = torch.cat(
                [self.module.inference(**self.module._get_inference_input(tensors))["z_fused"] for tensors in loader]
            )
            hidden = [torch.nn.functional.normalize(heads.projectors[h](z), dim=1) for h in range(heads.n_heads)]
        finally:
            self.module.train(was_training)
        n_groups = heads.weights[0].shape[0]
        if z.shape[0] < n_groups:
            return  # fewer training cells than groups: keep the random initialisation
        for h, x in enumerate(hidden):
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
            kmeans = KMeans(n_clusters=n_groups, n_init=10, random_state=seed).fit(x.cpu().numpy())
            heads.set_group_directions(h, torch.as_tensor(kmeans.cluster_centers_))
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():  # the processes keep the same heads: those of process 0
            for weight in heads.weights:
                dist.broadcast(weight.data, src=0)
        self._optimizer_map()["clustering"].state.clear()
        self.best_validation_loss = float("inf")
        self.best_state = None
        self.best_epoch = None
        self._head_history = []

    def on_train_epoch_end(self) -> None:
        """Log the effective loss weights; without validation cells, select the best head on training losses."""
        if "translation" in self.objectives and self.module.loss_balancer.mode != "fixed":
            for name, value in self.module.effective_weights().items():
                self.log(f"weight_{name}", float(value), on_step=False, on_epoch=True)
        if not self._validated:
            self._select_head(self._epoch_head_losses)
        self._epoch_head_losses = []

    def on_train_end(self) -> None:
        """Restore the weights with the best validation loss."""
        if self.best_state is not None:
            self.module.load_state_dict(self.best_state)
