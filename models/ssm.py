"""State-space models: the protocol every SMC engine uses, and three models.

A subclass of :class:`StateSpaceModel` declares

* ``initial()``: the law of ``x_0``, ``event_shape == (state_dim,)``;
* ``transition(x_prev, t)``: the law of ``x_t`` given ``x_{t-1}``, with
  ``event_shape == (state_dim,)`` and ``batch_shape == x_prev.shape[:-1]``;
* ``emission(x, t)``: the law of ``y_t`` given ``x_t``, ``event_shape == (obs_dim,)``
  and ``batch_shape == x.shape[:-1]``;
* optionally ``transition_log_bound(t)``: an upper bound of ``log q_t(x' | x)`` over
  both arguments, for O(N) rejection backward sampling. Engines compare it with every
  density they compute; an exceeded bound is reported (a warning, the exact kernel for
  that step, and ``result.bound_violations``), never used silently;
* optionally the fast paths ``sample_transition``, ``transition_log_prob`` and
  ``emission_log_prob``: the same draws and densities in plain tensor code. At N = 1000
  the filter is bound by per-operation overhead, and building distribution objects
  every step costs more than the arithmetic. The defaults go through the laws above;
  a test checks every built-in override against them.

**Shapes.** States are ``[..., state_dim]``: every leading dimension is a batch
dimension (particles ``[N, d]``, chains of particles ``[C, N, d]``, one state ``[d]``
in :meth:`~StateSpaceModel.simulate` and :meth:`~StateSpaceModel.forward`), so write
``x_prev[..., 0]``, never ``x_prev[:, 0]`` (that indexes particles, not coordinates;
the engines detect it and say so). Laws are over vectors: a scalar state needs
``dist.Normal(loc, scale).to_event(1)`` with ``loc`` of shape ``[..., 1]``; a law with
``event_shape == ()`` is refused with that hint. ``state_dim`` and ``obs_dim`` are read
from the event shapes of ``initial()`` and ``emission``; declaring them is optional.
Observations ``ys`` are ``[T, obs_dim]`` (``[T]`` when ``obs_dim == 1``), converted to
the model's dtype and device. :func:`posterity.infer.smc.check_model` runs a model
through every call the engines make and reports what does not conform.

The base class derives the Pyro program ``forward(ys)`` (a ``pyro.markov`` loop) and
``simulate(T)``, so the same model runs with the SMC engines, SVI or NUTS. Parameters
are module parameters, which makes score-based learning plain autograd.

Example:
    >>> import pyro.distributions as dist
    >>> import torch
    >>> class RandomWalk(StateSpaceModel):
    ...     def initial(self):
    ...         return dist.Normal(torch.zeros(1), 1.0).to_event(1)
    ...     def transition(self, x_prev, t):
    ...         return dist.Normal(x_prev, 0.5).to_event(1)
    ...     def emission(self, x, t):
    ...         return dist.Normal(x[..., 0:1], 1.0).to_event(1)
    >>> model = RandomWalk()
    >>> model.state_dim, model.obs_dim
    (1, 1)
    >>> model.simulate(T=5).observations.shape
    torch.Size([5, 1])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor, nn

_LOG_2PI = math.log(2 * math.pi)


@dataclass
class SimulatedPath:
    """A draw from the model: ``states`` ``[T, state_dim]``, ``observations`` ``[T, obs_dim]``."""

    states: Tensor
    observations: Tensor


def _vector_event(law, method: str, dim_name: str) -> int:
    """``law.event_shape[0]``, or a ``TypeError``/``ValueError`` naming ``method``."""
    shape = getattr(law, "event_shape", None)
    if shape is None or not callable(getattr(law, "log_prob", None)):
        raise TypeError(f"{method} must return a pyro.distributions law, got "
                        f"{type(law).__name__}")
    if len(shape) != 1:
        what = "state" if dim_name == "state_dim" else "observation"
        hint = f" — add .to_event(1) (a scalar {what} is a vector of length 1)" \
            if len(shape) == 0 else ""
        raise ValueError(f"{method} returned a law with event_shape {tuple(shape)}; "
                         f"expected ({dim_name},){hint}")
    return int(shape[0])


class StateSpaceModel(PyroModule):
    """Base class: subclasses declare ``initial``, ``transition`` and ``emission``
    (see the module docstring for shapes). ``__init__`` takes no required argument."""

    def initial(self) -> dist.TorchDistribution:
        raise NotImplementedError(f"{type(self).__name__} must define initial()")

    def transition(self, x_prev: Tensor, t: int) -> dist.TorchDistribution:
        raise NotImplementedError(f"{type(self).__name__} must define transition(x_prev, t)")

    def emission(self, x: Tensor, t: int) -> dist.TorchDistribution:
        raise NotImplementedError(f"{type(self).__name__} must define emission(x, t)")

    # dimensions: declared (``self.state_dim = d`` or a class attribute) or read from laws
    @property
    def state_dim(self) -> int:
        if "_state_dim" not in self.__dict__:
            with torch.no_grad():
                self.__dict__["_state_dim"] = _vector_event(self.initial(), "initial()",
                                                            "state_dim")
        return self.__dict__["_state_dim"]

    @state_dim.setter
    def state_dim(self, value: int) -> None:
        self.__dict__["_state_dim"] = int(value)

    @property
    def obs_dim(self) -> int:
        if "_obs_dim" not in self.__dict__:
            with torch.no_grad():
                law = self.initial()
                x = law.mean if _has_mean(law) else law.sample()
                self.__dict__["_obs_dim"] = _vector_event(self.emission(x, 0), "emission(x, t)",
                                                          "obs_dim")
        return self.__dict__["_obs_dim"]

    @obs_dim.setter
    def obs_dim(self, value: int) -> None:
        self.__dict__["_obs_dim"] = int(value)

    def reference_tensor(self) -> Tensor:
        """A tensor with the model's dtype and device: its first floating parameter or
        buffer, else the mean (or a draw) of ``initial()``."""
        for tensor in (*self.parameters(), *self.buffers()):
            if tensor.is_floating_point():
                return tensor
        with torch.no_grad():
            law = self.initial()
            return law.mean if _has_mean(law) else law.sample()

    def sample_transition(self, x_prev: Tensor, t: int) -> Tensor:
        """A draw of ``x_t`` for every state in ``x_prev`` (``[..., state_dim]``)."""
        return self.transition(x_prev, t).sample()

    def transition_log_prob(self, x_prev: Tensor, x: Tensor, t: int) -> Tensor:
        """``log q_t(x | x_prev)``, broadcasting over the leading dimensions."""
        return self.transition(x_prev, t).log_prob(x)

    def emission_log_prob(self, x: Tensor, y: Tensor, t: int) -> Tensor:
        """``log g_t(y | x)`` batched over the leading dimensions of ``x``."""
        return self.emission(x, t).log_prob(y)

    def observation_log_prob(self, x: Tensor, y: Tensor, t: int) -> Tensor:
        """:meth:`emission_log_prob`, or zero where ``y`` is missing (any NaN), which
        engines only let through when the user asked for missing data."""
        if torch.isnan(y).any():
            return x.new_zeros(x.shape[:-1])
        return self.emission_log_prob(x, y, t)

    def check_observations(self, ys, allow_missing: bool = False) -> Tensor:
        """``ys`` as ``[T, obs_dim]`` in the model's dtype and on its device; NaN only
        where missing data is allowed. Arrays and lists are converted."""
        if not isinstance(ys, Tensor):
            if not isinstance(ys, (np.ndarray, list, tuple)):
                raise TypeError(f"ys must be a torch.Tensor or an array, got "
                                f"{type(ys).__name__}")
            try:
                ys = torch.as_tensor(np.asarray(ys, dtype=np.float64))
            except (TypeError, ValueError) as error:
                raise TypeError(f"ys could not be read as numbers: {error}") from None
        if ys.is_complex() or ys.dtype == torch.bool:
            raise TypeError(f"ys must hold real numbers, got dtype {ys.dtype}")
        reference = self.reference_tensor()
        ys = ys.to(dtype=reference.dtype, device=reference.device)
        obs_dim = self.obs_dim
        if ys.dim() == 1 and obs_dim == 1:
            ys = ys.unsqueeze(-1)
        if ys.dim() != 2 or ys.shape[1] != obs_dim:
            raise ValueError(f"ys must have shape [T, {obs_dim}] (obs_dim from "
                             f"emission's event_shape), got {tuple(ys.shape)}")
        if ys.shape[0] < 1:
            raise ValueError("ys is empty")
        if torch.isinf(ys).any():
            rows = torch.isinf(ys).any(-1).nonzero().flatten()[:5].tolist()
            raise ValueError(f"ys contains Inf (time steps {rows}); in {ys.dtype} the "
                             f"largest finite value is {torch.finfo(ys.dtype).max:.3g}")
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
        """Draw states ``[T, state_dim]`` and observations ``[T, obs_dim]``."""
        if isinstance(T, bool) or not isinstance(T, int):
            raise TypeError(f"T must be an int, got {type(T).__name__} {T!r}")
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


def _has_mean(law) -> bool:
    try:
        return isinstance(law.mean, Tensor)
    except NotImplementedError:
        return False


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
        for name, value in (("state_dim", state_dim), ("obs_dim", obs_dim)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
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
        exact ``log p(y_{0:T-1})`` (differentiable in the parameters). A ``y_t`` with NaN
        is missing: the step only predicts."""
        ys = self.check_observations(ys, allow_missing=True)
        eye = torch.eye(self.state_dim, dtype=ys.dtype, device=ys.device)
        means, covs, pred_means, pred_covs = [], [], [], []
        log_likelihood = ys.new_zeros(())
        m, P = self.m0, self.P0
        for t in range(ys.shape[0]):
            if t > 0:
                m, P = self.A @ m, self.A @ P @ self.A.T + self.Q
            pred_means.append(m)
            pred_covs.append(P)
            if torch.isnan(ys[t]).any():
                means.append(m)
                covs.append(P)
                continue
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

    def sample_transition(self, x_prev: Tensor, t: int) -> Tensor:
        mu, log_sigma = self.mu, self.log_sigma  # PyroModule attribute access is slow
        mean = torch.lerp(mu, x_prev, torch.tanh(self.phi_raw))  # μ + φ (x - μ)
        return torch.addcmul(mean, torch.randn_like(x_prev), log_sigma.exp())

    def transition_log_prob(self, x_prev: Tensor, x: Tensor, t: int) -> Tensor:
        mu, log_sigma = self.mu, self.log_sigma
        residual = (x - torch.lerp(mu, x_prev, torch.tanh(self.phi_raw))) / log_sigma.exp()
        return (-0.5 * residual.square() - log_sigma - 0.5 * _LOG_2PI).sum(-1)

    def emission_log_prob(self, x: Tensor, y: Tensor, t: int) -> Tensor:
        # log N(y; 0, e^x) = -(log 2π + x + y² e^{-x}) / 2
        return torch.addcmul(x, torch.exp(-x), y.square()).sum(-1).add(_LOG_2PI).mul(-0.5)


class ChaoticRNN(StateSpaceModel):
    """A chaotic recurrent network state observed through a linear map.

    ``x_t = x_{t-1} + (Δ/τ) (-x_{t-1} + γ W tanh(x_{t-1})) + σ_x ε_t`` and
    ``y_t = B x_t + σ_y η_t`` with ``x_0 ~ N(0, I)``: the Euler-discretized rate network
    of Sompolinsky, Crisanti & Sommers (1988), chaotic for gain ``γ > 1``, used as a
    non-linear multivariate benchmark by Zhao et al. (2020) and Cardoso et al. (2023,
    §5). ``W`` (recurrent weights), ``B`` (read-out) and both log noise scales are
    learnable; ``γ``, ``Δ`` and ``τ`` are fixed.

    Args:
        state_dim, obs_dim: dimensions (default 5 and 5).
        gain: ``γ`` (default 2.5).
        step, time_constant: ``Δ`` and ``τ`` (default 0.009 and 0.025).
        transition_scale, observation_scale: ``σ_x`` and ``σ_y``.
        seed: the seed of the random initial ``W ~ N(0, 1/d)`` and ``B ~ N(0, 1/d)``.
    """

    def __init__(self, state_dim: int = 5, obs_dim: int = 5, gain: float = 2.5,
                 step: float = 0.009, time_constant: float = 0.025,
                 transition_scale: float = 0.1, observation_scale: float = 0.5,
                 seed: int = 0) -> None:
        super().__init__()
        if transition_scale <= 0 or observation_scale <= 0:
            raise ValueError("transition_scale and observation_scale must be > 0")
        self.state_dim, self.obs_dim = int(state_dim), int(obs_dim)
        generator = torch.Generator().manual_seed(seed)
        scale = self.state_dim ** -0.5
        self.W = nn.Parameter(torch.randn(state_dim, state_dim, generator=generator) * scale)
        self.B = nn.Parameter(torch.randn(obs_dim, state_dim, generator=generator) * scale)
        self.log_transition_scale = nn.Parameter(torch.tensor(math.log(transition_scale)))
        self.log_observation_scale = nn.Parameter(torch.tensor(math.log(observation_scale)))
        self.gain, self.rate = float(gain), float(step) / float(time_constant)

    def drift(self, x: Tensor) -> Tensor:
        """The deterministic part of the transition, batched over leading dimensions."""
        return x + self.rate * (-x + self.gain * torch.tanh(x) @ self.W.T)

    def initial(self) -> dist.TorchDistribution:
        zeros = self.W.new_zeros(self.state_dim)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def transition(self, x_prev: Tensor, t: int) -> dist.TorchDistribution:
        scale = self.log_transition_scale.exp()
        return dist.Normal(self.drift(x_prev), scale).to_event(1)

    def emission(self, x: Tensor, t: int) -> dist.TorchDistribution:
        scale = self.log_observation_scale.exp()
        return dist.Normal(x @ self.B.T, scale).to_event(1)

    def transition_log_bound(self, t: int) -> Tensor:
        return self.state_dim * (-0.5 * _LOG_2PI - self.log_transition_scale)

    def sample_transition(self, x_prev: Tensor, t: int) -> Tensor:
        noise = torch.randn_like(x_prev)
        return torch.addcmul(self.drift(x_prev), noise, self.log_transition_scale.exp())

    def transition_log_prob(self, x_prev: Tensor, x: Tensor, t: int) -> Tensor:
        residual = (x - self.drift(x_prev)) / self.log_transition_scale.exp()
        return -0.5 * residual.square().sum(-1) + self.transition_log_bound(t)

    def emission_log_prob(self, x: Tensor, y: Tensor, t: int) -> Tensor:
        residual = (y - x @ self.B.T) / self.log_observation_scale.exp()
        return -0.5 * residual.square().sum(-1) - self.obs_dim * (
            0.5 * _LOG_2PI + self.log_observation_scale)
