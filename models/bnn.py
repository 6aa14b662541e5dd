"""Bayesian neural networks and logistic regression with a subsampled data plate.

Both models put a Gaussian prior on every weight and bias and their data points in
``pyro.plate("data", N, subsample_size=B)`` when trained (``y`` given), so that
SG-MCMC kernels see an unbiased minibatch estimate of the log joint. Prediction
(``y=None``, or ``subsample=False``) uses every row.

Both also implement ``minibatch_log_joint(values, X, y)``, the same quantity as the
traced program's ``log_prob_sum()`` drawn with the same random numbers, which the
SG-MCMC potential uses to skip Pyro's tracing overhead (see
:mod:`posterity.infer.sgmcmc.potential`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor

from posterity.layers.networks import activation_module, check_layer_sizes

LIKELIHOODS = ("gaussian", "categorical")


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _subsample_size(X: Tensor, y: Tensor | None, subsample_size: int | None,
                    subsample: bool) -> int | None:
    n = X.shape[0]
    if y is not None and y.shape[0] != n:
        raise ValueError(f"y has {y.shape[0]} rows but X has {n}")
    use = subsample and y is not None and subsample_size is not None and subsample_size < n
    return subsample_size if use else None


def _plate(X: Tensor, y: Tensor | None, subsample_size: int | None, subsample: bool):
    size = _subsample_size(X, y, subsample_size, subsample)
    return pyro.plate("data", X.shape[0], subsample_size=size, device=X.device)


def _minibatch(X: Tensor, y: Tensor | None, subsample_size: int | None,
               subsample: bool) -> tuple[Tensor, float]:
    """The indices ``pyro.plate`` would draw, and the ``N / B`` scale."""
    size = _subsample_size(X, y, subsample_size, subsample)
    n = X.shape[0]
    if size is None:
        return torch.arange(n, device=X.device), 1.0
    return torch.randperm(n, device=X.device)[:size].clone(), n / size


def _normal_log_prob(value: Tensor, scale: float) -> Tensor:
    """``Σ log N(value; 0, scale²)``."""
    return -0.5 * value.pow(2).sum() / scale**2 - value.numel() * (math.log(scale) + _HALF_LOG_2PI)


def _check_X(X: Tensor, in_dim: int) -> None:
    if not isinstance(X, Tensor) or X.dim() != 2 or X.shape[1] != in_dim:
        shape = tuple(X.shape) if isinstance(X, Tensor) else type(X).__name__
        raise ValueError(f"X must have shape [N, {in_dim}], got {shape}")


def _check_y(X: Tensor, y: Tensor | None) -> None:
    """``y`` is ``[N]``: the likelihood's event shape is ``()``, so a column ``[N, 1]``
    would broadcast against the ``[N]`` predictions instead of being scored row by row."""
    if y is None:
        return
    if not isinstance(y, Tensor) or y.dim() != 1:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(
            f"y must have shape [N] (one scalar target or label per row of X), got {shape}; "
            f"a column [N, 1] would broadcast against the [N] predictions: pass "
            f"y.squeeze(-1)")
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"y has {y.shape[0]} rows but X has {X.shape[0]}")


def _validate(X: Tensor, y: Tensor | None, in_dim: int) -> None:
    _check_X(X, in_dim)
    if not torch.isfinite(X).all():
        raise ValueError("X contains NaN or Inf")
    _check_y(X, y)
    if y is not None:
        if y.is_floating_point() and not torch.isfinite(y).all():
            raise ValueError("y contains NaN or Inf")


class BayesianMLP(PyroModule):
    """An MLP with ``N(0, s_l^2)`` priors on its weights (``s_l = prior_scale`` or, by
    default, ``1 / sqrt(fan_in)``) and a Gaussian or categorical likelihood.

    Sites: ``layer{i}.weight`` ``[out, in]``, ``layer{i}.bias`` ``[out]``, and for the
    Gaussian likelihood ``noise_scale ~ LogNormal(-1, 1)`` (targets are expected to be
    standardized), then ``obs`` in ``pyro.plate("data")``.

    Args:
        in_dim, hidden, out_dim: layer widths.
        likelihood: ``"gaussian"`` (regression, ``out_dim = 1``) or ``"categorical"``
            (``out_dim`` classes, integer labels).
        subsample_size: minibatch size of the data plate during training.
        prior_scale: a common prior scale for all weights (default: ``1/sqrt(fan_in)``).
        activation: hidden nonlinearity.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int] = (50,),
        out_dim: int = 1,
        likelihood: str = "gaussian",
        subsample_size: int | None = None,
        prior_scale: float | None = None,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if likelihood == "gaussian" and out_dim != 1:
            raise ValueError("the Gaussian likelihood needs out_dim=1")
        if subsample_size is not None and subsample_size < 1:
            raise ValueError(f"subsample_size must be >= 1, got {subsample_size}")
        self.sizes = (in_dim, *check_layer_sizes("hidden", hidden), out_dim)
        self.likelihood, self.subsample_size = likelihood, subsample_size
        self.prior_scale = prior_scale
        self.activation = activation_module(activation)

    def _layer_scale(self, fan_in: int) -> float:
        return self.prior_scale if self.prior_scale is not None else 1 / math.sqrt(fan_in)

    @property
    def layer_shapes(self) -> list[tuple[int, int]]:
        return [(fan_out, fan_in) for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:])]

    def validate_data(self, X: Tensor, y: Tensor | None = None, **kwargs) -> None:
        _validate(X, y, self.sizes[0])
        if y is not None and self.likelihood == "categorical":
            if y.is_floating_point() or y.min() < 0 or y.max() >= self.sizes[-1]:
                raise ValueError(f"y must hold integer class labels in [0, {self.sizes[-1]})")

    def network(self, h: Tensor, weights: list[tuple[Tensor, Tensor]]) -> Tensor:
        for i, (w, b) in enumerate(weights):
            h = torch.nn.functional.linear(h, w, b)
            if i < len(weights) - 1:
                h = self.activation(h)
        return h

    def minibatch_log_joint(self, values: dict[str, Tensor], X: Tensor,
                            y: Tensor | None = None, subsample: bool = True) -> Tensor:
        """The scaled minibatch log joint, as the traced program's ``log_prob_sum()``."""
        log_prior = X.new_zeros(())
        weights = []
        for i, (_, fan_in) in enumerate(self.layer_shapes):
            w, b = values[f"layer{i}.weight"], values[f"layer{i}.bias"]
            scale = self._layer_scale(fan_in)
            log_prior = log_prior + _normal_log_prob(w, scale) + _normal_log_prob(b, scale)
            weights.append((w, b))
        if self.likelihood == "gaussian":
            noise = values["noise_scale"]
            log_prior = log_prior + dist.LogNormal(X.new_tensor(-1.0), 1.0).log_prob(noise)
        idx, data_scale = _minibatch(X, y, self.subsample_size, subsample)
        out = self.network(X[idx], weights)
        if y is None:
            return log_prior
        if self.likelihood == "gaussian":
            log_lik = dist.Normal(out.squeeze(-1), noise).log_prob(y[idx]).sum()
        else:
            log_lik = -torch.nn.functional.cross_entropy(out, y[idx], reduction="sum")
        return log_prior + data_scale * log_lik

    def forward(self, X: Tensor, y: Tensor | None = None, subsample: bool = True) -> Tensor:
        _check_X(X, self.sizes[0])
        _check_y(X, y)
        zero = X.new_zeros(())
        weights = []
        for i, (fan_in, fan_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            scale = self._layer_scale(fan_in)
            w = pyro.sample(f"layer{i}.weight",
                            dist.Normal(zero, scale).expand([fan_out, fan_in]).to_event(2))
            b = pyro.sample(f"layer{i}.bias",
                            dist.Normal(zero, scale).expand([fan_out]).to_event(1))
            weights.append((w, b))
        if self.likelihood == "gaussian":
            noise = pyro.sample("noise_scale", dist.LogNormal(zero - 1.0, 1.0))
        with _plate(X, y, self.subsample_size, subsample) as idx:
            h = self.network(X[idx], weights)
            target = y[idx] if y is not None else None
            if self.likelihood == "gaussian":
                pyro.sample("obs", dist.Normal(h.squeeze(-1), noise), obs=target)
            else:
                pyro.sample("obs", dist.Categorical(logits=h), obs=target)
        return h


class BayesianLogisticRegression(PyroModule):
    """``weight ~ N(0, s^2 I)``, ``bias ~ N(0, s^2)``,
    ``y_n ~ Bernoulli(sigmoid(x_n · weight + bias))`` in a subsampled data plate."""

    def __init__(self, in_dim: int, prior_scale: float = 1.0,
                 subsample_size: int | None = None) -> None:
        super().__init__()
        self.in_dim, self.prior_scale, self.subsample_size = in_dim, prior_scale, subsample_size

    def validate_data(self, X: Tensor, y: Tensor | None = None, **kwargs) -> None:
        _validate(X, y, self.in_dim)
        if y is not None and not ((y == 0) | (y == 1)).all():
            raise ValueError("y must be binary (0 or 1) for logistic regression")

    def minibatch_log_joint(self, values: dict[str, Tensor], X: Tensor,
                            y: Tensor | None = None, subsample: bool = True) -> Tensor:
        """The scaled minibatch log joint, as the traced program's ``log_prob_sum()``."""
        weight, bias = values["weight"], values["bias"]
        log_prior = _normal_log_prob(weight, self.prior_scale) + _normal_log_prob(
            bias, self.prior_scale)
        if y is None:
            return log_prior
        idx, data_scale = _minibatch(X, y, self.subsample_size, subsample)
        logits = X[idx] @ weight + bias
        log_lik = -torch.nn.functional.binary_cross_entropy_with_logits(
            logits, y[idx], reduction="sum")
        return log_prior + data_scale * log_lik

    def forward(self, X: Tensor, y: Tensor | None = None, subsample: bool = True) -> Tensor:
        _check_X(X, self.in_dim)
        _check_y(X, y)
        zero = X.new_zeros(())
        weight = pyro.sample("weight",
                             dist.Normal(zero, self.prior_scale).expand([self.in_dim]).to_event(1))
        bias = pyro.sample("bias", dist.Normal(zero, self.prior_scale))
        with _plate(X, y, self.subsample_size, subsample) as idx:
            logits = X[idx] @ weight + bias
            pyro.sample("obs", dist.Bernoulli(logits=logits),
                        obs=y[idx] if y is not None else None)
        return logits
