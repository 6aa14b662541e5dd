"""State-space models written from the documented protocol alone (DESIGN.md and the
``posterity.models.ssm`` docstring): subclass ``StateSpaceModel``, declare ``initial()``,
``transition(x_prev, t)`` and ``emission(x, t)`` returning ``pyro.distributions`` laws
over ``[..., state_dim]`` / ``[..., obs_dim]``, index states with ``...``; optionally
``transition_log_bound(t)``. None of them declares ``state_dim`` or ``obs_dim``.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn

from posterity.models import StateSpaceModel


class Kitagawa(StateSpaceModel):
    """Kitagawa's non-linear growth model (Kitagawa 1996):
    ``x_t = x/2 + 25 x / (1 + x²) + 8 cos(1.2 t) + v_t``, ``y_t = x_t² / 20 + w_t``."""

    def __init__(self, process_sd: float = math.sqrt(10.0), obs_sd: float = 1.0) -> None:
        super().__init__()
        self.log_process_sd = nn.Parameter(torch.tensor(math.log(process_sd)))
        self.log_obs_sd = nn.Parameter(torch.tensor(math.log(obs_sd)))

    def initial(self):
        loc = self.log_process_sd.new_zeros(1)
        return dist.Normal(loc, 2.0 * torch.ones_like(loc)).to_event(1)

    def transition(self, x_prev, t):
        x = x_prev[..., 0]
        mean = x / 2 + 25 * x / (1 + x**2) + 8 * math.cos(1.2 * t)
        return dist.Normal(mean.unsqueeze(-1), self.log_process_sd.exp()).to_event(1)

    def emission(self, x, t):
        return dist.Normal(x**2 / 20, self.log_obs_sd.exp()).to_event(1)

    def transition_log_bound(self, t):
        return -0.5 * math.log(2 * math.pi) - self.log_process_sd


class ConstantVelocity(StateSpaceModel):
    """2-D constant-velocity tracking: state ``(px, py, vx, vy)``, noisy positions
    observed. Written with ``...`` indexing, as the protocol asks."""

    def __init__(self, dt: float = 1.0, accel_sd: float = 0.3, obs_sd: float = 0.5) -> None:
        super().__init__()
        self.dt = dt
        self.log_accel_sd = nn.Parameter(torch.tensor(math.log(accel_sd)))
        self.log_obs_sd = nn.Parameter(torch.tensor(math.log(obs_sd)))

    def initial(self):
        loc = self.log_accel_sd.new_zeros(4)
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)

    def transition(self, x_prev, t):
        px, py, vx, vy = (x_prev[..., i] for i in range(4))
        mean = torch.stack([px + self.dt * vx, py + self.dt * vy, vx, vy], dim=-1)
        return dist.Normal(mean, self.log_accel_sd.exp()).to_event(1)

    def emission(self, x, t):
        return dist.Normal(x[..., :2], self.log_obs_sd.exp()).to_event(1)

    def transition_log_bound(self, t):
        return 4 * (-0.5 * math.log(2 * math.pi) - self.log_accel_sd)


class ScalarNoEvent(StateSpaceModel):
    """An AR(1) model written with plain scalar laws, without ``.to_event(1)``:
    the protocol asks for ``event_shape == (state_dim,)``, so engines must name it."""

    def __init__(self) -> None:
        super().__init__()
        self.phi = nn.Parameter(torch.tensor(0.8))

    def initial(self):
        return dist.Normal(self.phi.new_zeros(1), 1.0)

    def transition(self, x_prev, t):
        return dist.Normal(self.phi * x_prev, 0.5)

    def emission(self, x, t):
        return dist.Normal(x, 1.0)


class NoBound(StateSpaceModel):
    """A 2-D linear-Gaussian model without ``transition_log_bound``."""

    def __init__(self) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.tensor([[0.9, 0.1], [0.0, 0.8]]))
        self.log_q = nn.Parameter(torch.tensor(math.log(0.5)))

    def initial(self):
        loc = self.A.new_zeros(2)
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)

    def transition(self, x_prev, t):
        return dist.Normal(x_prev @ self.A.T, self.log_q.exp()).to_event(1)

    def emission(self, x, t):
        return dist.Normal(x.sum(-1, keepdim=True), 1.0).to_event(1)


class WrongBound(StateSpaceModel):
    """A 1-D linear-Gaussian model whose ``transition_log_bound`` is 3 nats too low."""

    def __init__(self, sd: float = 0.7) -> None:
        super().__init__()
        self.log_sd = nn.Parameter(torch.tensor(math.log(sd)))

    def initial(self):
        loc = self.log_sd.new_zeros(1)
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)

    def transition(self, x_prev, t):
        return dist.Normal(0.9 * x_prev, self.log_sd.exp()).to_event(1)

    def emission(self, x, t):
        return dist.Normal(x, 1.0).to_event(1)

    def transition_log_bound(self, t):
        return -0.5 * math.log(2 * math.pi) - self.log_sd - 3.0


class ColonIndexed(StateSpaceModel):
    """The tracking model written with ``x_prev[:, i]``, which the protocol rules out:
    engines must name the failure instead of crashing deep inside."""

    def initial(self):
        return dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)

    def transition(self, x_prev, t):
        mean = torch.stack([x_prev[:, 0] + x_prev[:, 1], x_prev[:, 1]], dim=-1)
        return dist.Normal(mean, 0.3).to_event(1)

    def emission(self, x, t):
        return dist.Normal(x[..., :1], 0.5).to_event(1)


def simulate(model: StateSpaceModel, T: int, seed: int = 0) -> torch.Tensor:
    """Observations ``[T, obs_dim]`` drawn from the model itself."""
    torch.manual_seed(seed)
    with torch.no_grad():
        x = model.initial().sample()
        ys = []
        for t in range(T):
            if t:
                x = model.transition(x, t).sample()
            ys.append(model.emission(x, t).sample())
    return torch.stack(ys)
