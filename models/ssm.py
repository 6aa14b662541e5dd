"""State-space models: the protocol every SMC engine uses, and two models.

A subclass of :class:`StateSpaceModel` declares

* ``initial()``: the law of ``x_0``, ``event_shape == (state_dim,)``;
* ``transition(x_prev, t)``: the law of ``x_t`` given ``x_{t-1}`` (batched over the
  leading dimensions of ``x_prev``);
* ``emission(x, t)``: the law of ``y_t`` given ``x_t``, ``event_shape == (obs_dim,)``;
* optionally ``transition_log_bound(t)``: an upper bound of ``log q_t(x' | x)`` over
  both arguments, for O(N) rejection backward sampling.

The base class derives the Pyro program ``forward(ys)`` (a ``pyro.markov`` loop) and
``simulate(T)``, so the same model runs with the SMC engines, SVI or NUTS. Parameters
are module parameters, which makes score-based learning plain autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor, nn


@dataclass
class SimulatedPath:
    """A draw from the model: ``states`` ``[T, state_dim]``, ``observations`` ``[T, obs_dim]``."""

    states: Tensor
    observations: Tensor


class StateSpaceModel(PyroModule):
    """Base class: subclasses declare ``initial``, ``transition`` and ``emission``."""

    state_dim: int
    obs_dim: int

    def initial(self) -> dist.TorchDistribution:
        raise NotImplementedError

    def transition(self, x_prev: Tensor, t: int) -> dist.TorchDistribution:
        raise NotImplementedError

    def emission(self, x: Tensor, t: int) -> dist.TorchDistribution:
        raise NotImplementedError

    def check_observations(self, ys: Tensor, allow_missing: bool = False) -> Tensor:
        """``ys`` as ``[T, obs_dim]``; NaN only where missing data is allowed."""
        if not isinstance(ys, Tensor):
            raise TypeError(f"ys must be a torch.Tensor, got {type(ys).__name__}")
        if ys.dim() == 1 and self.obs_dim == 1:
            ys = ys.unsqueeze(-1)
        if ys.dim() != 2 or ys.shape[1] != self.obs_dim:
            raise ValueError(f"ys must have shape [T, {self.obs_dim}], got {tuple(ys.shape)}")
        if ys.shape[0] < 1:
            raise ValueError("ys is empty")
        if torch.isinf(ys).any():
            raise ValueError("ys contains Inf")
        if not allow_missing and torch.isnan(ys).any():
            raise ValueError(
                "ys contains NaN; pass missing=True to treat NaN as missing observations"
            )
        return ys

    def forward(self, ys: Tensor) -> Tensor:
        """The Pyro program: latent ``x_t`` and observed ``y_t`` for ``t < T``."""
        ys = self.check_observations(ys)
        x = None
        states = []
        for t in pyro.markov(range(ys.shape[0])):
            law = self.initial() if t == 0 else self.transition(x, t)
            x = pyro.sample(f"x_{t}", law)
            pyro.sample(f"y_{t}", self.emission(x, t), obs=ys[t])
            states.append(x)
        return torch.stack(states)

    @torch.no_grad()
    def simulate(self, T: int) -> SimulatedPath:
        """Draw states and observations for ``T`` steps."""
        if T < 1:
            raise ValueError(f"T must be >= 1, got {T}")
        x = self.initial().sample()
        states, observations = [], []
        for t in range(T):
            if t > 0:
                x = self.transition(x, t).sample()
            states.append(x)
            observations.append(self.emission(x, t).sample())
        return SimulatedPath(torch.stack(states), torch.stack(observations))


def _matrix(value, shape: tuple[int, int], name: str) -> Tensor:
    tensor = torch.as_tensor(value, dtype=torch.get_default_dtype())
    if tensor.dim() == 0:
        tensor = tensor * torch.eye(*shape) if shape[0] == shape[1] else tensor.expand(shape)
    if tensor.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
    return tensor.clone()


class LinearGaussianSSM(StateSpaceModel):
    """``x_0 ~ N(m0, P0)``, ``x_t = A x_{t-1} + N(0, Q)``, ``y_t = C x_t + N(0, R)``.

    All matrices are module parameters (covariances through their Cholesky factors).
    :meth:`kalman_filter` and :meth:`rts_smoother` give the exact answers the particle
    methods are checked against.

    Args:
        state_dim, obs_dim: dimensions.
        A, Q, C, R, m0, P0: matrices (a scalar ``s`` means ``s I``).
    """

    def __init__(self, state_dim: int = 1, obs_dim: int = 1, A=0.9, Q=0.5, C=1.0, R=1.0,
                 m0=0.0, P0=1.0) -> None:
        super().__init__()
        self.state_dim, self.obs_dim = state_dim, obs_dim
        self.A = nn.Parameter(_matrix(A, (state_dim, state_dim), "A"))
        self.C = nn.Parameter(_matrix(C, (obs_dim, state_dim), "C"))
        self.Q_tril = nn.Parameter(torch.linalg.cholesky(_matrix(Q, (state_dim, state_dim), "Q")))
        self.R_tril = nn.Parameter(torch.linalg.cholesky(_matrix(R, (obs_dim, obs_dim), "R")))
        m0 = torch.as_tensor(m0, dtype=torch.get_default_dtype())
        self.m0 = nn.Parameter(m0.expand(state_dim).clone())
        self.P0_tril = nn.Parameter(
            torch.linalg.cholesky(_matrix(P0, (state_dim, state_dim), "P0")))

    @property
    def Q(self) -> Tensor:
        return self.Q_tril @ self.Q_tril.T

    @property
    def R(self) -> Tensor:
        return self.R_tril @ self.R_tril.T

    @property
    def P0(self) -> Tensor:
        return self.P0_tril @ self.P0_tril.T

    def initial(self) -> dist.TorchDistribution:
        return dist.MultivariateNormal(self.m0, scale_tril=self.P0_tril)

    def transition(self, x_prev: Tensor, t: int) -> dist.TorchDistribution:
        return dist.MultivariateNormal(x_prev @ self.A.T, scale_tril=self.Q_tril)

    def emission(self, x: Tensor, t: int) -> dist.TorchDistribution:
        return dist.MultivariateNormal(x @ self.C.T, scale_tril=self.R_tril)

    def transition_log_bound(self, t: int) -> Tensor:
        """``max log q(x' | x)``: the Gaussian density at its mode."""
        return -0.5 * self.state_dim * math.log(2 * math.pi) - self.Q_tril.diagonal().log().sum()

    def kalman_filter(self, ys: Tensor) -> dict[str, Tensor]:
        """Filtering means ``[T, d]``, covariances ``[T, d, d]``, predicted moments and the
        exact ``log p(y_{0:T-1})`` (differentiable in the parameters)."""
        ys = self.check_observations(ys)
        eye = torch.eye(self.state_dim, dtype=ys.dtype, device=ys.device)
        means, covs, pred_means, pred_covs = [], [], [], []
        log_likelihood = ys.new_zeros(())
        m, P = self.m0, self.P0
        for t in range(ys.shape[0]):
            if t > 0:
                m, P = self.A @ m, self.A @ P @ self.A.T + self.Q
            pred_means.append(m)
            pred_covs.append(P)
            S = self.C @ P @ self.C.T + self.R
            log_likelihood = log_likelihood + dist.MultivariateNormal(
                self.C @ m, covariance_matrix=S).log_prob(ys[t])
            gain = torch.linalg.solve(S, self.C @ P).T  # P C^T S^-1
            m = m + gain @ (ys[t] - self.C @ m)
            P = (eye - gain @ self.C) @ P
            P = 0.5 * (P + P.T)
            means.append(m)
            covs.append(P)
        return {"mean": torch.stack(means), "cov": torch.stack(covs),
                "predicted_mean": torch.stack(pred_means), "predicted_cov": torch.stack(pred_covs),
                "log_likelihood": log_likelihood}

    def rts_smoother(self, ys: Tensor) -> dict[str, Tensor]:
        """Rauch-Tung-Striebel smoothing: means ``[T, d]``, covariances ``[T, d, d]``
        and lag-one cross-covariances ``Cov(x_t, x_{t-1} | y)`` ``[T, d, d]`` (zero at
        ``t = 0``)."""
        filtered = self.kalman_filter(ys)
        T = filtered["mean"].shape[0]
        means, covs = [filtered["mean"][-1]], [filtered["cov"][-1]]
        cross = []
        for t in range(T - 2, -1, -1):
            m_f, P_f = filtered["mean"][t], filtered["cov"][t]
            m_p, P_p = filtered["predicted_mean"][t + 1], filtered["predicted_cov"][t + 1]
            J = torch.linalg.solve(P_p, self.A @ P_f).T  # P_f A^T P_p^-1
            m_s = m_f + J @ (means[0] - m_p)
            P_s = P_f + J @ (covs[0] - P_p) @ J.T
            cross.insert(0, covs[0] @ J.T)  # Cov(x_{t+1}, x_t | y)
            means.insert(0, m_s)
            covs.insert(0, 0.5 * (P_s + P_s.T))
        cross.insert(0, torch.zeros_like(covs[0]))
        return {"mean": torch.stack(means), "cov": torch.stack(covs),
                "cross_cov": torch.stack(cross)}


class StochasticVolatility(StateSpaceModel):
    """``x_0 ~ N(μ, σ²/(1-φ²))``, ``x_t = μ + φ (x_{t-1} - μ) + σ ε_t``,
    ``y_t ~ N(0, exp(x_t))`` (the univariate model of Kim, Shephard & Chib 1998).

    ``mu`` is free, ``phi`` lives in (-1, 1) through tanh and ``sigma`` is positive
    through exp, so that every parameter can be learned unconstrained.
    """

    state_dim = obs_dim = 1

    def __init__(self, mu: float = -1.0, phi: float = 0.95, sigma: float = 0.3) -> None:
        super().__init__()
        if not -1 < phi < 1:
            raise ValueError(f"phi must be in (-1, 1), got {phi}")
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.mu = nn.Parameter(torch.tensor(float(mu)))
        self.phi_raw = nn.Parameter(torch.tensor(math.atanh(phi)))
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)))

    @property
    def phi(self) -> Tensor:
        return torch.tanh(self.phi_raw)

    @property
    def sigma(self) -> Tensor:
        return self.log_sigma.exp()

    def initial(self) -> dist.TorchDistribution:
        scale = self.sigma / (1 - self.phi**2).sqrt()
        return dist.Normal(self.mu, scale).expand([1]).to_event(1)

    def transition(self, x_prev: Tensor, t: int) -> dist.TorchDistribution:
        return dist.Normal(self.mu + self.phi * (x_prev - self.mu), self.sigma).to_event(1)

    def emission(self, x: Tensor, t: int) -> dist.TorchDistribution:
        return dist.Normal(torch.zeros_like(x), (0.5 * x).exp()).to_event(1)

    def transition_log_bound(self, t: int) -> Tensor:
        return -0.5 * math.log(2 * math.pi) - self.log_sigma
