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
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


def _with_ones(inputs: Tensor, bias: bool) -> Tensor:
    return torch.cat([inputs, inputs.new_ones(inputs.shape[0], 1)], -1) if bias else inputs


def _normalized(weights: Tensor | None, num_samples: int, like: Tensor) -> Tensor:
    if weights is None:
        return like.new_full((num_samples,), 1.0 / num_samples)
    weights = weights.reshape(-1).to(like)
    if weights.shape[0] != num_samples or (weights < 0).any():
        raise ValueError(f"weights must be {num_samples} non-negative numbers")
    return weights / weights.sum()


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
    logits = logits.reshape(-1, logits.shape[-1])
    inputs = inputs.reshape(logits.shape[0], inputs.shape[-1])
    if inputs.shape[0] != logits.shape[0]:
        raise ValueError(f"inputs and logits disagree on the number of samples: "
                         f"{inputs.shape[0]} and {logits.shape[0]}")
    extended = _with_ones(inputs, bias)
    probs = torch.sigmoid(logits)
    curvature = probs * (1 - probs) * _normalized(weights, inputs.shape[0], probs)[:, None]
    return torch.einsum("mu,mi,mj->uij", curvature, extended, extended)


def spd_inverse(matrices: Tensor) -> Tensor:
    """The inverses of symmetric positive-definite ``[..., k, k]`` matrices.

    One batched Cholesky factorization ``A = L Lᵀ`` and one batched triangular solve
    ``L⁻¹``, then ``A⁻¹ = L⁻ᵀ L⁻¹``. Applying a cached inverse is one batched
    matrix-vector product, several times cheaper on a CPU than a batched
    ``cholesky_solve`` of many small systems, whose per-matrix overhead dominates.

    Example:
        >>> a = torch.tensor([[[4.0, 2.0], [2.0, 3.0]]])
        >>> torch.allclose(spd_inverse(a) @ a, torch.eye(2), atol=1e-6)
        True
    """
    cholesky, info = torch.linalg.cholesky_ex(matrices)
    if (info > 0).any():
        raise ValueError("a damped Fisher block is not positive definite: use damping > 0 "
                         "or more samples")
    eye = torch.eye(matrices.shape[-1], dtype=matrices.dtype, device=matrices.device)
    root = torch.linalg.solve_triangular(cholesky, eye.expand_as(matrices), upper=False)
    return root.transpose(-1, -2) @ root


@dataclass
class LayerFactor:
    """The cached inverse of one layer's damped Fisher blocks.

    ``kind == "direct"``: ``inverse`` ``[U, n, n]`` is ``(F_u + α I)⁻¹``.
    ``kind == "woodbury"``: ``inverse`` ``[U, M, M]`` is ``(α I + S_u S_uᵀ)⁻¹``, with
    ``extended`` ``H̃`` ``[M, n]`` and ``scales`` ``√(ω σ(1-σ))`` ``[U, M]``
    (``S_u = diag(scales_u) H̃``).
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
        projected = self.scales * (gradient @ self.extended.T)  # S_u g_u, [U, M]
        inner = (self.inverse @ projected.unsqueeze(-1)).squeeze(-1)
        return (gradient - (self.scales * inner) @ self.extended) / self.damping

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
    logits = logits.reshape(-1, logits.shape[-1])
    inputs = inputs.reshape(logits.shape[0], inputs.shape[-1])
    num_samples, width = inputs.shape[0], inputs.shape[1] + int(bias)
    if method not in ("auto", "direct", "woodbury"):
        raise ValueError(f"method must be 'auto', 'direct' or 'woodbury', got {method!r}")
    if method == "auto":
        method = "woodbury" if num_samples < width and damping > 0 else "direct"
    if method == "woodbury":
        if damping <= 0:
            raise ValueError("the Woodbury solve needs damping > 0")
        extended = _with_ones(inputs, bias)
        probs = torch.sigmoid(logits)
        omega = _normalized(weights, num_samples, probs)
        scales = (probs * (1 - probs) * omega[:, None]).sqrt().T  # [U, M]
        gram = extended @ extended.T  # shared by every unit
        inner = scales.unsqueeze(-1) * gram * scales.unsqueeze(-2)
        inner.diagonal(dim1=-2, dim2=-1).add_(damping)
        return LayerFactor("woodbury", spd_inverse(inner), damping, extended, scales)
    blocks = bernoulli_fisher_blocks(inputs, logits, weights, bias)
    blocks.diagonal(dim1=-2, dim2=-1).add_(damping)
    return LayerFactor("direct", spd_inverse(blocks), damping)


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
        outputs = torch.cat([o.reshape(-1, o.shape[-1]) for _, o in records])
        inputs = torch.cat([i.reshape(o.shape[:-1].numel(), i.shape[-1]) for i, o in records])
        return inputs, outputs

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

    Call :meth:`update` with recorded inputs and logits (from :class:`LayerRecorder`)
    whenever the factorization is due (:attr:`due`), and :meth:`precondition` after
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

    @property
    def due(self) -> bool:
        """Whether the next update should refresh the factorizations."""
        return self.num_updates % self.refresh_every == 0 or not self.factors

    def update(self, layer: nn.Linear, inputs: Tensor, logits: Tensor,
               weights: Tensor | None = None) -> None:
        self.factors[layer] = factorize(inputs, logits, self.damping, weights,
                                        bias=layer.bias is not None)

    def precondition(self) -> None:
        for layer, factor in self.factors.items():
            if layer.weight.grad is None:
                continue
            parts = [layer.weight.grad]
            if layer.bias is not None:
                parts.append(layer.bias.grad.unsqueeze(-1))
            natural = (1 + self.damping) * factor.solve(torch.cat(parts, -1))
            layer.weight.grad.copy_(natural[:, : layer.in_features])
            if layer.bias is not None:
                layer.bias.grad.copy_(natural[:, -1])
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        """The update counter and the cached factors (keyed by the layer's position), so
        that a resumed run refreshes on the same updates with the same factors."""
        index = {layer: i for i, layer in enumerate(self.layers)}
        return {"num_updates": self.num_updates, "damping": self.damping,
                "refresh_every": self.refresh_every,
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
