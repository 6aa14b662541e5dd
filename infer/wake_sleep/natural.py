"""Exact per-unit Fisher blocks of Bernoulli-logit layers, and the natural-gradient
preconditioner of natural reweighted wake-sleep (Várady, Volpi, Malagò & Ay, Neural
Networks 2022).

For a layer of Bernoulli units ``y_u ~ Bernoulli(σ(a_u))`` with ``a = W h + b``, the
Fisher information of the layer's parameters is block-diagonal across units, and the
block of unit ``u`` is exactly (their eq. 12)

    F_u = E[σ(a_u) (1 - σ(a_u)) h̃ h̃ᵀ],   h̃ = [h; 1],

an expectation over the layer's inputs ``h`` only. The preconditioned gradient of unit
``u`` is ``(1 + α) (F_u + α I)⁻¹ g_u`` with damping ``α`` (the ``1 + α`` keeps the step
length comparable across ``α``). With ``M`` samples of ``h`` and ``M < n_in + 1``,
``F_u = S_uᵀ S_u`` with ``S_u = diag(√(ω σ(1-σ))) H̃`` has rank ``M``, and the Woodbury
identity

    (α I + Sᵀ S)⁻¹ g = (g - Sᵀ (α I_M + S Sᵀ)⁻¹ S g) / α

solves ``M × M`` systems instead (the Gram matrix ``H̃ H̃ᵀ`` is shared by every unit),
batched over units. The inverses of the ``M × M`` (or ``n × n``) matrices are computed
in one batched Cholesky factorization and triangular solve per layer, cached, and
recomputed every ``refresh_every`` updates; between refreshes a preconditioned
gradient costs two small matrix products and one batched matrix-vector product per
layer. (A per-unit matrix ``α I + D_u G D_u`` has no exact factorization shared across
units: the per-unit diagonal ``D_u`` does not commute with ``G``, so one batched
factorization over units is the exact route.)

:class:`LayerRecorder` captures the inputs and logits of every ``nn.Linear`` with
forward hooks, so the preconditioner works for any Pyro program whose Bernoulli logits
come straight out of ``nn.Linear`` modules.

In a process group (:mod:`posterity.infer.distributed`), where every rank holds its
share of the global minibatch, :meth:`BernoulliNaturalGradient.refresh` reduces the
statistics over the ranks in one flattened all-reduce, so that every rank holds the
factors of the global batch (see :func:`reduce_over_ranks`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import distributed

#: A layer's recorded statistics: inputs ``[M, n_in]``, logits ``[M, units]`` and
#: optional per-row weights ``[M]`` (on a scale shared by all ranks; normalized later).
Record = tuple[Tensor, Tensor, Tensor | None]


def _with_ones(inputs: Tensor, bias: bool) -> Tensor:
    return torch.cat([inputs, inputs.new_ones(inputs.shape[0], 1)], -1) if bias else inputs


def _row_weights(weights: Tensor | None, num_samples: int, like: Tensor) -> Tensor:
    """The raw per-row weights (ones by default), checked."""
    if weights is None:
        return like.new_ones(num_samples)
    weights = weights.reshape(-1).to(like)
    if weights.shape[0] != num_samples or (weights < 0).any():
        raise ValueError(f"weights must be {num_samples} non-negative numbers, got shape "
                         f"{tuple(weights.shape)}")
    return weights


def _normalized(weights: Tensor | None, num_samples: int, like: Tensor) -> Tensor:
    weights = _row_weights(weights, num_samples, like)
    return weights / weights.sum()


def _flattened(inputs: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
    logits = logits.reshape(-1, logits.shape[-1])
    inputs = inputs.reshape(-1, inputs.shape[-1]) if inputs.shape[-1] else \
        inputs.new_zeros(logits.shape[0], 0)
    if inputs.shape[0] != logits.shape[0]:
        raise ValueError(f"inputs and logits disagree on the number of samples: "
                         f"{inputs.shape[0]} and {logits.shape[0]}")
    return inputs, logits


def _block_sums(inputs: Tensor, logits: Tensor, weights: Tensor, bias: bool) -> Tensor:
    """``Σ_m w_m σ(a_mu)(1 - σ(a_mu)) h̃_m h̃_mᵀ`` for every unit, ``[U, n, n]``."""
    extended = _with_ones(inputs, bias)
    probs = torch.sigmoid(logits)
    curvature = probs * (1 - probs) * weights[:, None]
    # [U, n, M] x [M, n]: one broadcast product (a three-operand einsum is ~3x slower)
    return (extended.T * curvature.T.unsqueeze(-2)) @ extended


def bernoulli_fisher_blocks(inputs: Tensor, logits: Tensor, weights: Tensor | None = None,
                            bias: bool = True) -> Tensor:
    """The Fisher block of every unit of a Bernoulli-logit linear layer.

    Args:
        inputs: the layer's inputs ``h``, ``[M, n_in]`` (leading dims are flattened).
        logits: its outputs ``a = W h + b``, ``[M, units]``.
        weights: ``[M]`` sample weights (normalized here; default uniform).
        bias: whether the layer has a bias (then ``h̃ = [h; 1]``).

    Returns:
        ``[units, n_in + 1, n_in + 1]`` (``n_in`` without a bias):
        ``Σ_m ω_m σ(a_mu)(1 - σ(a_mu)) h̃_m h̃_mᵀ``.

    Example:
        >>> h = torch.bernoulli(torch.full((100, 3), 0.5))
        >>> layer = nn.Linear(3, 2)
        >>> bernoulli_fisher_blocks(h, layer(h)).shape
        torch.Size([2, 4, 4])
    """
    inputs, logits = _flattened(inputs, logits)
    return _block_sums(inputs, logits, _normalized(weights, inputs.shape[0], logits), bias)


_NOT_DEFINITE = ("a damped Fisher block is not positive definite: use damping > 0 or more "
                 "samples")


def spd_inverse(matrices: Tensor, scales: Tensor | None = None) -> Tensor:
    """The inverses of symmetric positive-definite ``[..., k, k]`` matrices, or with
    ``scales`` ``[..., k]`` (``D = diag(scales)``) the products ``D A⁻¹ D``.

    One batched Cholesky factorization ``A = L Lᵀ`` and one batched triangular solve
    ``R = L⁻¹``, then ``A⁻¹ = Rᵀ R`` (``D A⁻¹ D = (R D)ᵀ (R D)``: the scales cost one
    pass over ``R``). Applying a cached inverse is one batched matrix-vector product,
    several times cheaper on a CPU than a batched ``cholesky_solve`` of many small
    systems, whose per-matrix overhead dominates.

    Example:
        >>> a = torch.tensor([[[4.0, 2.0], [2.0, 3.0]]])
        >>> torch.allclose(spd_inverse(a) @ a, torch.eye(2), atol=1e-6)
        True
    """
    if matrices.shape[-1] == 1:  # 1 x 1 blocks (a learned bias alone)
        if not (matrices > 0).all():
            raise ValueError(_NOT_DEFINITE)
        inverse = matrices.reciprocal()
        return inverse if scales is None else inverse * scales.unsqueeze(-1).square()
    cholesky, info = torch.linalg.cholesky_ex(matrices)
    if (info > 0).any():
        raise ValueError(_NOT_DEFINITE)
    eye = torch.eye(matrices.shape[-1], dtype=matrices.dtype, device=matrices.device)
    root = torch.linalg.solve_triangular(cholesky, eye.expand_as(matrices), upper=False)
    if scales is not None:
        root.mul_(scales.unsqueeze(-2))  # R D
    # batch-major memory: the batched solver leaves the batch as the fastest dimension,
    # which makes every later batched product many times slower
    return (root.transpose(-1, -2) @ root).contiguous()


@dataclass
class LayerFactor:
    """The cached inverse of one layer's damped Fisher blocks.

    ``kind == "direct"``: ``inverse`` ``[U, n, n]`` is ``(F_u + α I)⁻¹``.
    ``kind == "woodbury"``: ``inverse`` ``[U, M, M]`` is
    ``C_u = D_u (α I + D_u G D_u)⁻¹ D_u`` with ``D_u = diag(scales_u)``,
    ``scales = √(ω σ(1-σ))`` ``[U, M]``, ``G = H̃ H̃ᵀ`` and ``extended`` ``H̃`` ``[M, n]``
    (``S_u = D_u H̃``), so that ``(F_u + α I)⁻¹ g = (g - H̃ᵀ C_u H̃ g) / α``: the
    scales are folded into the cached matrix, and a solve is two ``[U, n] x [n, M]``
    products and one batched ``[M, M]`` matrix-vector product.
    """

    kind: str
    inverse: Tensor
    damping: float
    extended: Tensor | None = None
    scales: Tensor | None = None

    def solve(self, gradient: Tensor) -> Tensor:
        """``(F_u + α I)⁻¹ g_u`` for ``gradient`` ``[U, n]``."""
        if self.kind == "direct":
            return (self.inverse @ gradient.unsqueeze(-1)).squeeze(-1)
        inner = (self.inverse @ (gradient @ self.extended.T).unsqueeze(-1)).squeeze(-1)
        return (gradient - inner @ self.extended) / self.damping

    def precondition_(self, weight_grad: Tensor, bias_grad: Tensor | None, scale: float
                      ) -> None:
        """Overwrite ``[g_W, g_b]`` (``[U, n_in]``, ``[U]``) by ``scale (F_u + α I)⁻¹ g_u``.

        The Woodbury route works on the weight and bias parts in place (``H̃ = [H, 1]``:
        ``g H̃ᵀ = g_W Hᵀ + g_b 1ᵀ``), with no concatenated copy of the gradient.
        """
        n_in = weight_grad.shape[-1]
        if self.kind == "direct":
            if n_in == 0 and bias_grad is not None:  # a learned bias alone: 1 x 1 blocks
                bias_grad.mul_(self.inverse[:, 0, 0]).mul_(scale)
                return
            parts = [weight_grad] if bias_grad is None else [weight_grad, bias_grad[:, None]]
            # g_uᵀ (F_u + α I)⁻¹ as a row vector (the inverse is symmetric)
            natural = torch.bmm(torch.cat(parts, -1).unsqueeze(-2), self.inverse).squeeze(-2)
            weight_grad.copy_(natural[:, :n_in]).mul_(scale)
            if bias_grad is not None:
                bias_grad.copy_(natural[:, -1]).mul_(scale)
            return
        inputs = self.extended[:, :n_in]  # H, [M, n_in]
        # H̃ g_u, [U, M]
        projected = weight_grad @ inputs.T if bias_grad is None else \
            torch.addmm(bias_grad[:, None], weight_grad, inputs.T)
        # C_u H̃ g_u, as the row vector (H̃ g_u)ᵀ C_u (C_u is symmetric): a batched
        # [1, M] x [M, M] product is about twice as fast as [M, M] x [M, 1] on a CPU
        inner = torch.bmm(projected.unsqueeze(-2), self.inverse).squeeze(-2)
        factor = scale / self.damping
        weight_grad.addmm_(inner, inputs, beta=factor, alpha=-factor)  # one pass
        if bias_grad is not None:
            bias_grad.mul_(factor).sub_(inner.sum(-1), alpha=factor)

    def fisher(self) -> Tensor:
        """The undamped blocks ``F_u`` this factor stands for, ``[U, n, n]``: ``S_uᵀ S_u``
        (Woodbury), or recovered from the cached inverse (direct)."""
        if self.kind == "woodbury":
            root = self.scales.unsqueeze(-1) * self.extended  # S_u, [U, M, n]
            return root.transpose(-1, -2) @ root
        eye = torch.eye(self.inverse.shape[-1], dtype=self.inverse.dtype,
                        device=self.inverse.device)
        return torch.linalg.inv(self.inverse) - self.damping * eye

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers (loadable with ``torch.load(weights_only=True)``)."""
        return {"kind": self.kind, "inverse": self.inverse, "damping": self.damping,
                "extended": self.extended, "scales": self.scales}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> LayerFactor:
        return cls(**state)


def factorize(inputs: Tensor, logits: Tensor, damping: float, weights: Tensor | None = None,
              bias: bool = True, method: str = "auto") -> LayerFactor:
    """Invert ``F_u + α I`` for every unit: directly (``[U, n, n]``), or by Woodbury
    (``[U, M, M]``) when the number of samples ``M`` is below ``n = n_in + 1``
    (``method="auto"``).

    The ``U`` Woodbury matrices ``α I + D_u G D_u`` share the Gram matrix
    ``G = H̃ H̃ᵀ`` (one ``[M, n] x [n, M]`` product) and differ only by the diagonal
    ``D_u = diag(√(ω σ(a_u)(1 - σ(a_u))))``, so they are built by broadcasting and
    inverted in one batched call (:func:`spd_inverse`).

    Example:
        >>> h = torch.bernoulli(torch.full((8, 20), 0.5))
        >>> factorize(h, torch.randn(8, 5), damping=0.1).inverse.shape
        torch.Size([5, 8, 8])
    """
    inputs, logits = _flattened(inputs, logits)
    num_samples, width = inputs.shape[0], inputs.shape[1] + int(bias)
    if method not in ("auto", "direct", "woodbury"):
        raise ValueError(f"method must be 'auto', 'direct' or 'woodbury', got {method!r}")
    if method == "auto":
        method = "woodbury" if _uses_woodbury(num_samples, width, damping) else "direct"
    if method == "woodbury":
        if damping <= 0:
            raise ValueError("the Woodbury solve needs damping > 0")
        # the factor keeps H̃: without a bias, a copy of the rows (a view would keep, and a
        # checkpoint would save, the whole recorded or reduced tensor it slices)
        extended = _with_ones(inputs, bias) if bias else inputs.clone()
        probs = torch.sigmoid(logits)
        omega = _normalized(weights, num_samples, probs)
        scales = (probs * (1 - probs) * omega[:, None]).sqrt().T.contiguous()  # [U, M]
        gram = extended @ extended.T  # shared by every unit
        rows, columns = scales.unsqueeze(-1), scales.unsqueeze(-2)
        inner = (rows * gram).mul_(columns)  # D_u G D_u, [U, M, M]
        inner.diagonal(dim1=-2, dim2=-1).add_(damping)
        return LayerFactor("woodbury", spd_inverse(inner, scales), damping, extended, scales)
    return _direct_factor(bernoulli_fisher_blocks(inputs, logits, weights, bias), damping)


def _direct_factor(blocks: Tensor, damping: float) -> LayerFactor:
    blocks.diagonal(dim1=-2, dim2=-1).add_(damping)
    return LayerFactor("direct", spd_inverse(blocks), damping)


def _uses_woodbury(num_samples: int, width: int, damping: float) -> bool:
    return num_samples < width and damping > 0


def reduce_over_ranks(records: list[tuple[Tensor, Tensor, Tensor | None, bool]],
                      damping: float, counts: list[list[int]] | None = None,
                      skip: Callable[[list[int]], bool] | None = None
                      ) -> tuple[list[LayerFactor] | None, list[list[int]]]:
    """The factors of the global batch from every rank's share of it, in one flattened
    all-reduce (:func:`posterity.infer.distributed.all_reduce_sum`).

    Each record is ``(inputs [M_r, n_in], logits [M_r, U], weights [M_r] or None, bias)``
    of one layer on this rank; every rank passes the same layers in the same order. Per
    layer, with ``M = Σ_r M_r`` rows over the ranks:

    * ``M < n`` (the Woodbury route): the rows themselves are gathered (each rank writes
      its rows at its offset of a zero buffer; the sum over ranks is the concatenation
      in rank order, exactly), and every rank factorizes the global rows: for contiguous
      shares (:func:`~posterity.infer.distributed.share`) the very matrices that one
      process builds from the global batch. ``M (n_in + U + 1)`` numbers.
    * otherwise: the sums ``Σ_m w_m σ(1 - σ) h̃ h̃ᵀ`` ``[U, n, n]`` and ``Σ_m w_m`` are
      summed over ranks, and the blocks are their ratio: the weights are normalized over
      the global batch, so an uneven split is exact. ``U n² + 1`` numbers.

    The weights (ones when ``None``) must be on one scale across ranks (e.g. per-data-
    point self-normalized importance weights), since they are normalized globally.

    The buffer's layout needs every rank's row counts, which travel in a header of the
    same buffer; ``counts`` (``[world][layers]``, what the last call returned) is the
    layout to try. When the header shows other counts (the first call, the last batch of
    an epoch), the all-reduce is repeated with them: one all-reduce per call while the
    batch sizes stay the same.

    Returns:
        the factors, in the order of ``records`` (``None`` when ``skip``, called with the
        global rows of every layer, says so), and the row counts ``[world][layers]``.
    """
    size, me = distributed.world_size(), distributed.rank()
    records = [(*_flattened(inputs, logits), weights, bias)
               for inputs, logits, weights, bias in records]
    local = [logits.shape[0] for _, logits, _, _ in records]
    like = records[0][1]
    dtype = like.dtype
    for inputs, logits, _, _ in records:
        dtype = torch.promote_types(dtype, torch.promote_types(inputs.dtype, logits.dtype))
    header = like.new_zeros(size, len(records), dtype=dtype)
    header[me] = torch.tensor(local, dtype=dtype)
    if counts is None or len(counts) != size or any(len(c) != len(records) for c in counts):
        counts = _counts(distributed.all_reduce_sum(header.reshape(-1)), size, len(records))
    while True:
        totals = [sum(c[i] for c in counts) for i in range(len(records))]
        pieces, routes = [header.reshape(-1)], []
        for i, (inputs, logits, weights, bias) in enumerate(records):
            inputs, logits = inputs.to(dtype), logits.to(dtype)
            row_weights = _row_weights(weights, local[i], logits)
            woodbury = _uses_woodbury(totals[i], inputs.shape[1] + int(bias), damping)
            if woodbury:
                body = logits.new_zeros(totals[i], inputs.shape[1] + logits.shape[1] + 1)
                if counts[me][i] == local[i]:  # else the header calls for another round
                    start = sum(c[i] for c in counts[:me])
                    body[start: start + local[i]] = torch.cat(
                        [inputs, logits, row_weights[:, None]], -1)
            else:
                body = torch.cat([_block_sums(inputs, logits, row_weights, bias).reshape(-1),
                                  row_weights.sum().reshape(1)])
            pieces.append(body.reshape(-1))
            routes.append(woodbury)
        flat = distributed.all_reduce_sum(torch.cat(pieces))
        seen = _counts(flat[: header.numel()], size, len(records))
        if seen == counts:
            break
        counts = seen
    if skip is not None and skip(totals):
        return None, counts
    factors, offset = [], header.numel()
    for i, (inputs, logits, weights, bias) in enumerate(records):
        n_in, units = inputs.shape[1], logits.shape[1]
        if routes[i]:
            rows = flat[offset: offset + totals[i] * (n_in + units + 1)].view(totals[i], -1)
            offset += rows.numel()
            factors.append(factorize(rows[:, :n_in], rows[:, n_in: n_in + units], damping,
                                     None if weights is None else rows[:, -1], bias,
                                     method="woodbury"))
        else:
            width = n_in + int(bias)
            sums = flat[offset: offset + units * width * width + 1]
            offset += sums.numel()
            blocks = sums[:-1].view(units, width, width) / sums[-1]
            factors.append(_direct_factor(blocks, damping))
    return factors, counts


def _counts(header: Tensor, size: int, num_layers: int) -> list[list[int]]:
    return header.view(size, num_layers).round().long().tolist()


class LayerRecorder:
    """Records ``(input, output)`` of ``nn.Linear`` modules while ``recording`` is on.

    The forward hooks exist only while recording: updates that do not refresh the
    preconditioner run the modules without hooks, at no cost.

    Args:
        modules: the ``nn.Linear`` layers to watch.

    Example:
        >>> layer = nn.Linear(3, 2)
        >>> recorder = LayerRecorder([layer])
        >>> recorder.recording = True
        >>> _ = layer(torch.ones(5, 3))
        >>> recorder.recording = False
        >>> [t.shape for t in recorder.take(layer)]
        [torch.Size([5, 3]), torch.Size([5, 2])]
    """

    def __init__(self, modules: Iterable[nn.Linear]) -> None:
        self.modules = list(modules)
        self.records: dict[nn.Linear, list[tuple[Tensor, Tensor]]] = {}
        self._handles: list = []

    @property
    def recording(self) -> bool:
        return bool(self._handles)

    @recording.setter
    def recording(self, on: bool) -> None:
        if on and not self._handles:
            self._handles = [m.register_forward_hook(self._hook) for m in self.modules]
        elif not on:
            self.remove()

    def _hook(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        self.records.setdefault(module, []).append((args[0].detach(), output.detach()))

    def take(self, module: nn.Linear) -> tuple[Tensor, Tensor] | None:
        """Everything recorded for ``module``, flattened to ``[M, n_in]``, ``[M, units]``."""
        records = self.records.pop(module, [])
        if not records:
            return None
        # rows come from the outputs: a layer with no inputs (a learned bias) has 0 columns
        outputs = [o.reshape(-1, o.shape[-1]) for _, o in records]
        inputs = [i.reshape(o.shape[:-1].numel(), i.shape[-1]) for i, o in records]
        if len(records) == 1:  # one call: views, no copy
            return inputs[0], outputs[0]
        return torch.cat(inputs), torch.cat(outputs)

    def clear(self) -> None:
        self.records.clear()

    def remove(self) -> None:
        """Stop recording (remove the hooks)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def linear_layers(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


class BernoulliNaturalGradient:
    """Precondition the gradients of ``nn.Linear`` Bernoulli-logit layers in place.

    Call :meth:`refresh` (all layers at once: in a process group, one all-reduce) or
    :meth:`update` (one layer) with recorded inputs and logits (from
    :class:`LayerRecorder`) whenever the factorization is due (:attr:`due`), and
    :meth:`precondition` after
    ``backward()`` and before ``optimizer.step()``; any torch optimizer then sees
    ``(1 + α)(F_u + α I)⁻¹ g_u`` for every unit ``u`` of every layer that has a factor.
    Parameters outside such layers keep their plain gradients.

    Args:
        layers: the layers to precondition.
        damping: ``α >= 0``.
        refresh_every: recompute the factorizations every this many updates.

    Example:
        >>> layer = nn.Linear(3, 2)
        >>> h = torch.bernoulli(torch.full((50, 3), 0.5))
        >>> natural = BernoulliNaturalGradient([layer], damping=0.1)
        >>> natural.update(layer, h, layer(h).detach())
        >>> layer(h).sum().backward()
        >>> natural.precondition()
    """

    def __init__(self, layers: Iterable[nn.Linear], damping: float = 0.1,
                 refresh_every: int = 1) -> None:
        if damping < 0:
            raise ValueError(f"damping must be >= 0, got {damping}")
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {refresh_every}")
        self.layers = list(layers)
        self.damping, self.refresh_every = float(damping), int(refresh_every)
        self.factors: dict[nn.Linear, LayerFactor] = {}
        self.num_updates = 0
        self.last_refresh = 0  # the value of num_updates at the last refresh
        self.rows: dict[nn.Linear, int] = {}  # each layer's (global) rows at its last refresh
        self.postponed = False
        # the row counts of the last reduction over ranks: the next one's buffer layout
        self._counts: list[list[int]] | None = None
        self._counted_layers: list[nn.Linear] = []

    @property
    def due(self) -> bool:
        """Whether the next update should refresh the factorizations."""
        return not self.factors or self.num_updates - self.last_refresh >= self.refresh_every

    def _short(self, rows: list[int], layers: list[nn.Linear]) -> bool:
        """Whether a refresh from ``rows`` should be postponed: fewer rows than the last
        refresh of some layer had (the short last batch of an epoch), and not already
        postponed once."""
        if self.postponed:
            return False
        return any(n < self.rows.get(layer, 0) for n, layer in zip(rows, layers))

    def update(self, layer: nn.Linear, inputs: Tensor, logits: Tensor,
               weights: Tensor | None = None) -> None:
        """Refresh one layer's factor (:meth:`refresh` of one record)."""
        self.refresh({layer: (inputs, logits, weights)})

    def refresh(self, records: Mapping[nn.Linear, Record], postpone_short: bool = False
                ) -> bool:
        """Refresh the factors of the given layers from their recorded inputs
        ``[M, n_in]``, logits ``[M, units]`` and optional per-row weights ``[M]``;
        returns whether it did.

        In a process group every rank must call this with the same layers in the same
        order, each with its share of the rows; the statistics are reduced over the
        ranks in one all-reduce (:func:`reduce_over_ranks`), so every rank gets the
        factors of the global batch. In one process it is :func:`factorize` per layer.

        With ``postpone_short``, a refresh from fewer (global) rows than the last one
        (the short last batch of an epoch) keeps the cached factors and stays
        :attr:`due`, once: ``M`` samples leave ``n - M`` directions of each block at the
        damping alone, where the step is ``(1 + α) / α`` times the gradient, so a
        few-sample estimate would take the largest steps of the run.
        """
        layers = list(records)
        if not layers:
            return False
        if not distributed.is_initialized():
            rows = [records[layer][1].reshape(-1, records[layer][1].shape[-1]).shape[0]
                    for layer in layers]
            if postpone_short and self._short(rows, layers):
                self.postponed = True
                return False
            for layer in layers:
                inputs, logits, weights = records[layer]
                self.factors[layer] = factorize(inputs, logits, self.damping, weights,
                                                bias=layer.bias is not None)
        else:
            totals: list[int] = []

            def skip(rows: list[int]) -> bool:
                totals.extend(rows)
                return postpone_short and self._short(rows, layers)

            factors, self._counts = reduce_over_ranks(
                [(*records[layer], layer.bias is not None) for layer in layers], self.damping,
                self._counts if self._counted_layers == layers else None, skip)
            self._counted_layers = layers
            if factors is None:
                self.postponed = True
                return False
            self.factors.update(zip(layers, factors))
            rows = totals
        self.rows.update(zip(layers, rows))
        self.last_refresh, self.postponed = self.num_updates, False
        return True

    def precondition(self) -> None:
        for layer, factor in self.factors.items():
            if layer.weight.grad is None:
                continue
            factor.precondition_(layer.weight.grad,
                                 None if layer.bias is None else layer.bias.grad,
                                 1 + self.damping)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        """The update counter and the cached factors (keyed by the layer's position), so
        that a resumed run refreshes on the same updates with the same factors."""
        index = {layer: i for i, layer in enumerate(self.layers)}
        return {"num_updates": self.num_updates, "damping": self.damping,
                "refresh_every": self.refresh_every, "last_refresh": self.last_refresh,
                "postponed": self.postponed,
                "rows": {index[layer]: n for layer, n in self.rows.items()},
                "factors": {index[layer]: factor.state_dict()
                            for layer, factor in self.factors.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        factors = state["factors"]
        if any(not 0 <= int(i) < len(self.layers) for i in factors):
            raise ValueError(f"the saved preconditioner has factors for layers "
                             f"{sorted(factors)}, this one has {len(self.layers)} layers")
        self.factors = {}
        for i, saved in factors.items():
            layer = self.layers[int(i)]
            factor = LayerFactor.from_state_dict(saved)
            if factor.inverse.shape[0] != layer.out_features:
                raise ValueError(f"the saved factor of layer {i} has "
                                 f"{factor.inverse.shape[0]} units, the layer "
                                 f"{layer.out_features}")
            self.factors[layer] = factor
        self.num_updates = int(state["num_updates"])
        # states saved before postponement refreshed on multiples of refresh_every
        self.last_refresh = int(state.get(
            "last_refresh", self.num_updates - self.num_updates % self.refresh_every))
        self.postponed = bool(state.get("postponed", False))
        self.rows = {self.layers[int(i)]: int(n) for i, n in state.get("rows", {}).items()}
