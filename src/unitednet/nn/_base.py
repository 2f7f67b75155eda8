from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Norm = Literal["batch", "layer", "none"]
NORMS: tuple[str, ...] = ("batch", "layer", "none")
NormPart = Literal["encoders", "decoders", "heads"]
NORM_PARTS: tuple[str, ...] = ("encoders", "decoders", "heads")
"""Parts of the network whose hidden layers take a normalisation: encoders, decoders and group-head projectors."""
Encoder = Literal["mlp", "variational", "residual"]
ENCODERS: tuple[str, ...] = ("mlp", "variational", "residual")


def _resolve_one(norm: str | None, use_batch_norm: bool, name: str = "norm") -> str:
    """One normalisation: ``norm`` when given, else ``"batch"`` or ``"none"`` from ``use_batch_norm``."""
    if norm is None:
        return "batch" if use_batch_norm else "none"
    if not isinstance(norm, str) or norm not in NORMS:
        raise ValueError(f"{name} must be one of {list(NORMS)}, got {norm!r}.")
    if norm == "batch" and not use_batch_norm:
        raise ValueError(
            f"{name}='batch' contradicts use_batch_norm=False; pass only norm ('batch', 'layer' or 'none', or a "
            f"mapping over {list(NORM_PARTS)})."
        )
    return norm


def resolve_norm(norm: Norm | Mapping[NormPart, Norm] | None, use_batch_norm: bool = True) -> str | dict[str, str]:
    """Normalisation of hidden layers: ``norm`` when given, else ``"batch"`` or ``"none"`` from ``use_batch_norm``.

    ``use_batch_norm`` is the older switch, kept as an alias; a ``norm`` other than ``"batch"`` overrides it, and
    ``norm="batch"`` with ``use_batch_norm=False`` is a contradiction.

    Parameters
    ----------
    norm
        ``"batch"``, ``"layer"`` or ``"none"`` for every part, ``None`` (from ``use_batch_norm``), or a mapping from
        network parts (:data:`NORM_PARTS`: ``"encoders"``, ``"decoders"``, ``"heads"``) to one of those strings.
        Parts missing from a mapping take the value given by ``use_batch_norm``. A part set to ``"batch"`` while
        ``use_batch_norm=False`` is the same contradiction as ``norm="batch"``.
    use_batch_norm
        The older switch: ``"batch"`` if ``True``, else ``"none"``, where ``norm`` does not say.

    Returns
    -------
    The normalisation as a string when ``norm`` is a string or ``None``; for a mapping, a dict with every part of
    :data:`NORM_PARTS`.

    Raises
    ------
    ValueError
        On an unknown normalisation or part name, and on ``"batch"`` with ``use_batch_norm=False``.
    """
    if norm is None or isinstance(norm, str):
        return _resolve_one(norm, use_batch_norm)
    if not isinstance(norm, Mapping):
        raise ValueError(
            f"norm must be one of {list(NORMS)} or a mapping from parts {list(NORM_PARTS)} to one of them, got "
            f"{norm!r}."
        )
    unknown = [part for part in norm if part not in NORM_PARTS]
    if unknown:
        raise ValueError(f"Unknown norm part(s) {unknown}: the parts are {list(NORM_PARTS)}.")
    resolved = {}
    for part in NORM_PARTS:
        value = norm.get(part)
        if part in norm and not isinstance(value, str):
            # an explicit value must be a normalisation (only a missing part follows use_batch_norm)
            raise ValueError(f"norm[{part!r}] must be one of {list(NORMS)}, got {value!r}.")
        resolved[part] = _resolve_one(value, use_batch_norm, f"norm[{part!r}]")
    return resolved


def part_norms(norm: Norm | Mapping[NormPart, Norm] | None, use_batch_norm: bool = True) -> dict[str, str]:
    """The normalisation of each part of :data:`NORM_PARTS` (a string ``norm`` applies to all of them).

    See :func:`resolve_norm` for the arguments and errors.
    """
    resolved = resolve_norm(norm, use_batch_norm)
    return dict.fromkeys(NORM_PARTS, resolved) if isinstance(resolved, str) else resolved


def _block_norm(norm: Norm | None, use_batch_norm: bool) -> str:
    """The one normalisation of a building block (a per-part mapping is resolved by the module, not here)."""
    if norm is not None and not isinstance(norm, str):
        raise ValueError(
            f"A building block takes one norm ({list(NORMS)}), got {norm!r}; per-part mappings are for "
            "UnitedNetModule / UnitedNetModel."
        )
    return _resolve_one(norm, use_batch_norm)


def _norm_layer(norm: str, n: int) -> nn.Module | None:
    if norm == "batch":
        return nn.BatchNorm1d(n)
    if norm == "layer":
        return nn.LayerNorm(n)
    return None


def csr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A torch sparse CSR tensor (without torch's warning that its sparse CSR support is in beta)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
        return torch.sparse_csr_tensor(crow, col, values, shape)


def is_sparse_batch(x: torch.Tensor) -> bool:
    """Whether ``x`` is a sparse CSR minibatch (cells x features), as the training and inference loaders give."""
    return x.layout == torch.sparse_csr


def _scipy_csr(x: torch.Tensor):
    """A CPU sparse CSR tensor as a scipy ``csr_matrix`` sharing its arrays."""
    from scipy import sparse

    crow, col, val = (t.numpy() for t in (x.crow_indices(), x.col_indices(), x.values()))
    return sparse.csr_matrix((val, col, crow), shape=tuple(x.shape))


def sparse_transpose(x: torch.Tensor) -> torch.Tensor:
    """``x.T`` of a sparse CSR matrix, again in CSR layout (its rows are then ``x``'s columns)."""
    if x.device.type == "cpu":
        # scipy's transposition (a counting sort) is several times faster than torch's conversion on CPU
        xt = _scipy_csr(x).T.tocsr()
        index = torch.from_numpy(xt.indptr).to(x.crow_indices().dtype), torch.from_numpy(xt.indices)
        return csr_tensor(*index, torch.from_numpy(xt.data), (x.shape[1], x.shape[0]))
    return x.t().to_sparse_csr()


def _columnwise_product(xt: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """``xt.T @ weight_t`` on CPU for a sparse CSR ``xt`` (the transposed input), read one input feature at a time.

    scipy's product of a CSC matrix (``xt.T``) with a dense one adds each stored entry's row of ``weight_t`` to its
    cell's output row: the weights are read once, in order, and the small output stays in cache. torch's CSR product
    gathers a weight row per stored entry instead, from all over the weights, several times slower at a few per cent
    density.
    """
    weight = weight_t.detach().contiguous().numpy()
    return torch.from_numpy(_scipy_csr(xt).T @ weight)


def _columnwise(x: torch.Tensor) -> bool:
    """Whether :class:`_SparseLinear` multiplies ``x`` with :func:`_columnwise_product` (CPU, float32 values)."""
    return x.device.type == "cpu" and x.values().dtype == torch.float32


class _SparseLinear(torch.autograd.Function):
    """``x @ weight_t + bias`` for a sparse CSR ``x``; the cost grows with the non-zeros of ``x``, not its width.

    ``weight_t`` is the weight transposed (input features x outputs). No gradient flows to ``x`` (it is data); the
    gradient of ``weight_t``, ``x.T @ grad``, is a sparse-dense product too, written straight into a new tensor.
    On CPU ``x.T`` is formed once, in the forward pass: the forward product reads it column by column
    (:func:`_columnwise_product`) and the backward pass reuses it.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.has_bias = bias is not None
        # torch's sparse products have no reduced-precision kernels: under autocast (bf16/fp16) this layer stays in
        # the parameters' precision and the next layers cast its output
        with torch.autocast(x.device.type, enabled=False):
            weight_t = weight_t.float()
            ctx.transposed = _columnwise(x)
            if ctx.transposed:
                saved = sparse_transpose(x)
                out = _columnwise_product(saved, weight_t)
            else:
                saved = x
                out = torch.sparse.mm(x, weight_t)
            ctx.save_for_backward(saved)
            return out if bias is None else out.add_(bias.float())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (saved,) = ctx.saved_tensors  # x.T on the column-wise path, else x
        grad_weight_t = grad_bias = None
        grad = grad.float()
        if ctx.needs_input_grad[1]:
            with torch.autocast(saved.device.type, enabled=False):
                xt = saved if ctx.transposed else sparse_transpose(saved)
                # beta=0: the uninitialised output is only written (torch.sparse.mm would zero it, then copy)
                out = grad.new_empty(xt.shape[0], grad.shape[1])
                grad_weight_t = torch.addmm(out, xt, grad, beta=0, out=out)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return None, grad_weight_t, grad_bias


class SparseInputLinear(nn.Module):
    """A linear layer for mostly sparse CSR input, with the weight stored transposed.

    The parameter is ``weight_t`` (``in_features x out_features``, contiguous): the weights of one input feature
    are contiguous, the layout that the sparse product reads and that its gradient has, so neither the product nor
    the optimizer copies it in each step. ``weight`` is its transposed view, with the shape and values of an
    ``nn.Linear`` built with the same arguments (the same random initialisation). Dense input goes through
    ``F.linear`` as in ``nn.Linear``. A state dict that stores ``weight`` (``out x in``) loads too.

    Parameters
    ----------
    in_features
        Number of input features.
    out_features
        Number of outputs.
    bias
        Whether the layer has a bias.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        reference = nn.Linear(in_features, out_features, bias=bias)
        self.in_features, self.out_features = in_features, out_features
        self.weight_t = nn.Parameter(reference.weight.detach().t().contiguous())
        self.bias = reference.bias

    @property
    def weight(self) -> torch.Tensor:
        """The weight as ``nn.Linear`` holds it (``out_features x in_features``): a view of ``weight_t``."""
        return self.weight_t.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ weight.T + bias`` for dense or sparse CSR ``x``."""
        if is_sparse_batch(x):
            return _SparseLinear.apply(x, self.weight_t, self.bias)
        return F.linear(x, self.weight, self.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        legacy = state_dict.pop(prefix + "weight", None)  # an nn.Linear's key and layout
        if legacy is not None and prefix + "weight_t" not in state_dict:
            state_dict[prefix + "weight_t"] = legacy.t().contiguous()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def linear(
    layer: nn.Linear | SparseInputLinear,
    x: torch.Tensor,
    loc: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply a linear layer to dense or sparse CSR input, optionally standardised first: ``layer((x - loc) / scale)``.

    For sparse ``x`` the standardisation is folded into the weights (``W / scale`` and ``b - W @ (loc / scale)``), so
    the input stays sparse and the cost grows with its non-zeros.
    """
    if not is_sparse_batch(x):
        if loc is not None:
            x = (x - loc) / scale
        return layer(x)
    weight_t = layer.weight_t if isinstance(layer, SparseInputLinear) else layer.weight.t()
    bias = layer.bias
    if loc is not None:
        # folded in float32 under autocast too (a bfloat16 product would round the shift of large means)
        with torch.autocast(x.device.type, enabled=False):
            weight_t = weight_t.float() / scale.float().unsqueeze(1)
            # a matrix-vector product: its backward (outer product) is not cast under autocast, unlike a matmul's
            shift = weight_t.t() @ loc.float()
            bias = -shift if bias is None else bias.float() - shift
    return _SparseLinear.apply(x, weight_t, bias)


class MLP(nn.Module):
    """Fully connected network: ``n_layers`` hidden blocks (Linear, norm, ReLU, Dropout) then a Linear output.

    Parameters
    ----------
    n_input
        Number of input features.
    n_output
        Number of output features.
    n_hidden
        Width of every hidden layer.
    n_layers
        Number of hidden layers (0 gives a single linear map).
    dropout_rate
        Dropout probability after each hidden layer.
    use_batch_norm
        Whether hidden layers use batch normalisation (when ``norm`` is not given).
    norm
        Normalisation of hidden layers: ``"batch"``, ``"layer"`` or ``"none"``; overrides ``use_batch_norm``.
    sparse_input
        The input is mostly sparse CSR minibatches: the first layer is a :class:`SparseInputLinear` (weight stored
        transposed, the layout of the sparse product and of its gradient), with the values of the ``nn.Linear`` it
        replaces.
    """

    def __init__(
        self,
        n_input: int,
        n_output: int,
        n_hidden: int = 256,
        n_layers: int = 2,
        dropout_rate: float = 0.1,
        use_batch_norm: bool = True,
        norm: Norm | None = None,
        sparse_input: bool = False,
    ):
        super().__init__()
        norm = _block_norm(norm, use_batch_norm)
        layers: list[nn.Module] = []
        n_in = n_input
        for i in range(n_layers):
            layers.append((SparseInputLinear if sparse_input and i == 0 else nn.Linear)(n_in, n_hidden))
            if (norm_layer := _norm_layer(norm, n_hidden)) is not None:
                layers.append(norm_layer)
            # not in-place: shap's DeepExplainer cannot trace in-place activations
            layers.append(nn.ReLU())
            if dropout_rate > 0:
                layers.append(nn.Dropout(dropout_rate))
            n_in = n_hidden
        layers.append((SparseInputLinear if sparse_input and n_layers == 0 else nn.Linear)(n_in, n_output))
        self.network = nn.Sequential(*layers)

    def forward(
        self, x: torch.Tensor, loc: torch.Tensor | None = None, scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Map ``x`` (cells x n_input, dense or sparse CSR) to cells x n_output.

        ``loc`` and ``scale`` (per input feature) standardise the input first; a sparse input stays sparse (see
        :func:`linear`).
        """
        if not is_sparse_batch(x) and loc is None:
            return self.network(x)
        return self.network[1:](linear(self.network[0], x, loc, scale))


class ResidualMLP(nn.Module):
    """MLP with residual hidden blocks: ``h = W_in x``, then ``n_layers`` times ``h = h + block(h)``, then ``W_out h``.

    Each block is an :class:`MLP` with one hidden layer (Linear, norm, ReLU, Dropout, Linear) of width ``n_hidden``;
    the input map is an :class:`MLP` without hidden layer (a linear map), so changes to :class:`MLP`'s input path
    apply here too. The output layer is registered last.

    Parameters
    ----------
    n_input, n_output, n_hidden, n_layers, dropout_rate, use_batch_norm, norm, sparse_input
        As for :class:`MLP`; ``n_layers`` counts the residual blocks (0 gives two stacked linear maps).
    """

    def __init__(
        self,
        n_input: int,
        n_output: int,
        n_hidden: int = 256,
        n_layers: int = 2,
        dropout_rate: float = 0.1,
        use_batch_norm: bool = True,
        norm: Norm | None = None,
        sparse_input: bool = False,
    ):
        super().__init__()
        norm = _block_norm(norm, use_batch_norm)
        self.input = MLP(n_input, n_hidden, n_layers=0, sparse_input=sparse_input)
        self.blocks = nn.ModuleList(
            [
                MLP(n_hidden, n_hidden, n_hidden, n_layers=1, dropout_rate=dropout_rate, norm=norm)
                for _ in range(n_layers)
            ]
        )
        self.output = nn.Linear(n_hidden, n_output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` (cells x n_input) to cells x n_output."""
        h = self.input(x)
        for block in self.blocks:
            h = h + block(h)
        return self.output(h)


class VariationalEncoder(nn.Module):
    """Gaussian posterior encoder: an :class:`MLP` gives the mean and log-variance of ``q(z | x)``.

    In training mode the forward pass returns a reparameterised sample ``mean + exp(logvar / 2) * eps``; in
    evaluation mode it returns the posterior mean, so predictions and explanations are deterministic.
    :meth:`encode` also gives the mean, the log-variance and the KL divergence to the standard normal prior.

    Parameters
    ----------
    n_input, n_output, n_hidden, n_layers, dropout_rate, use_batch_norm, norm, sparse_input
        As for :class:`MLP`; ``n_output`` is the latent dimension.
    """

    LOGVAR_BOUND = 10.0

    def __init__(
        self,
        n_input: int,
        n_output: int,
        n_hidden: int = 256,
        n_layers: int = 2,
        dropout_rate: float = 0.1,
        use_batch_norm: bool = True,
        norm: Norm | None = None,
        sparse_input: bool = False,
    ):
        super().__init__()
        self.n_output = n_output
        self.network = MLP(
            n_input, 2 * n_output, n_hidden, n_layers, dropout_rate, use_batch_norm, norm, sparse_input=sparse_input
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latent (sample in training, mean in evaluation), posterior mean, log-variance and KL per cell."""
        out = self.network(x)
        mean, logvar = out[:, : self.n_output], out[:, self.n_output :].clamp(-self.LOGVAR_BOUND, self.LOGVAR_BOUND)
        kl = 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar).sum(1)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if self.training else mean
        return z, mean, logvar, kl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The latent: a posterior sample in training mode, the posterior mean in evaluation mode."""
        if self.training:
            return self.encode(x)[0]
        return self.network(x)[:, : self.n_output]


def make_encoder(
    kind: Encoder,
    n_input: int,
    n_output: int,
    n_hidden: int = 256,
    n_layers: int = 2,
    dropout_rate: float = 0.1,
    use_batch_norm: bool = True,
    norm: Norm | None = None,
    sparse_input: bool = False,
) -> nn.Module:
    """An encoder of the given kind: :class:`MLP`, :class:`VariationalEncoder` or :class:`ResidualMLP`.

    ``sparse_input`` (mostly sparse CSR minibatches) makes the encoder's first layer a :class:`SparseInputLinear`
    (same initial values, weight stored transposed for the sparse product), whatever the kind.
    """
    classes = {"mlp": MLP, "variational": VariationalEncoder, "residual": ResidualMLP}
    if kind not in classes:
        raise ValueError(f"encoder must be one of {list(ENCODERS)}, got {kind!r}.")
    args = (n_input, n_output, n_hidden, n_layers, dropout_rate, use_batch_norm, norm)
    return classes[kind](*args, sparse_input=sparse_input)


class ModalityFusion(nn.Module):
    """Fuse per-modality latents with learnable softmax weights.

    Parameters
    ----------
    modalities
        Modality names, in the order their latents are given.
    n_latent
        Latent dimension.
    mode
        ``"modality"``: one weight per modality; ``"feature"``: one weight per modality and latent dimension.
    """

    def __init__(self, modalities: Sequence[str], n_latent: int, mode: Literal["modality", "feature"] = "modality"):
        super().__init__()
        if mode not in ("modality", "feature"):
            raise ValueError(f"fusion must be 'modality' or 'feature', got {mode!r}.")
        self.modalities = list(modalities)
        shape = (len(self.modalities), 1) if mode == "modality" else (len(self.modalities), n_latent)
        self.logits = nn.Parameter(torch.zeros(shape))

    def weights(self, present: Sequence[str] | None = None) -> torch.Tensor:
        """Softmax fusion weights over the ``present`` modalities (all by default), shape modalities x (1 or n_latent)."""
        idx = [self.modalities.index(m) for m in (present or self.modalities)]
        return torch.softmax(self.logits[idx], dim=0)

    def forward(self, latents: dict[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum of the latents given; missing modalities are left out and the weights renormalised."""
        present = [m for m in self.modalities if m in latents]
        w = self.weights(present)
        stacked = torch.stack([latents[m] for m in present], dim=0)
        return (w.unsqueeze(1) * stacked).sum(0)


class GroupHeads(nn.Module):
    """Parallel group heads: each is a projector MLP followed by a bias-free linear layer with L2-normalised rows.

    Parameters
    ----------
    n_input
        Latent dimension.
    n_groups
        Number of groups (cell types or clusters).
    n_heads
        Number of heads trained in parallel.
    n_hidden
        Width of the projector.
    dropout_rate
        Dropout in the projector.
    use_batch_norm
        Whether the projector uses batch normalisation (when ``norm`` is not given).
    norm
        Normalisation of the projector: ``"batch"``, ``"layer"`` or ``"none"``; overrides ``use_batch_norm``.
    """

    def __init__(
        self,
        n_input: int,
        n_groups: int,
        n_heads: int = 1,
        n_hidden: int = 256,
        dropout_rate: float = 0.1,
        use_batch_norm: bool = True,
        norm: Norm | None = None,
    ):
        super().__init__()
        norm = _block_norm(norm, use_batch_norm)
        self.projectors = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Linear(n_input, n_hidden),
                    nn.Identity() if norm == "none" else _norm_layer(norm, n_hidden),
                    nn.ReLU(),
                    nn.Dropout(dropout_rate) if dropout_rate > 0 else nn.Identity(),
                )
                for _ in range(n_heads)
            ]
        )
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.randn(n_groups, n_hidden) / n_hidden**0.5) for _ in range(n_heads)]
        )

    @property
    def n_heads(self) -> int:
        """Number of parallel heads."""
        return len(self.projectors)

    def forward_head(self, z: torch.Tensor, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Projector output and group logits of one head."""
        hidden = self.projectors[head](z)
        logits = hidden @ F.normalize(self.weights[head], dim=1).T
        return hidden, logits

    @torch.no_grad()
    def set_group_directions(self, head: int, centres: torch.Tensor) -> None:
        """Point one head's group rows at ``centres`` (groups x hidden), e.g. cluster centres of its projector output.

        Rows are L2-normalised in every forward pass, so only the directions of ``centres`` matter.
        """
        weight = self.weights[head]
        if tuple(centres.shape) != tuple(weight.shape):
            raise ValueError(f"centres must have shape {tuple(weight.shape)}, got {tuple(centres.shape)}.")
        weight.copy_(F.normalize(centres.to(weight), dim=1))

    def forward(self, z: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Projector outputs and group logits of every head."""
        outs = [self.forward_head(z, h) for h in range(self.n_heads)]
        return [o[0] for o in outs], [o[1] for o in outs]


class Discriminator(nn.Module):
    """Least-squares GAN discriminator: an MLP scoring each cell's profile as real (1) or generated (0)."""

    def __init__(self, n_input: int, n_hidden: int = 64, n_layers: int = 1, sparse_input: bool = False):
        super().__init__()
        self.mlp = MLP(
            n_input,
            1,
            n_hidden=n_hidden,
            n_layers=n_layers,
            dropout_rate=0.0,
            use_batch_norm=False,
            sparse_input=sparse_input,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Score in (0, 1) for each cell (``x`` dense or sparse CSR)."""
        return torch.sigmoid(self.mlp(x)).squeeze(-1)
