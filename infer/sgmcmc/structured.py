"""Structured SG-MCMC (Alexos, Boyd & Mandt, ICML 2022).

The latent variables are split into groups. The update of group ``g`` uses the
gradient of the potential at a *composite* state: group ``g`` at its current value and
every other group replaced by a draw from a buffer of earlier chain states. The chain
then targets the closest factorized approximation ``Π_g q_g(θ_g)``, trading exactness
for faster mixing across groups. In the dropout variant each other group is replaced
only with probability ``p``, and the
gradient is averaged over ``num_composites`` such composites.

With a single group the composite is the current state, and the kernel takes exactly
the base kernel's steps (same random numbers, same values).
"""

from __future__ import annotations

import random
from typing import Any

import torch
from torch import Tensor

from .kernels import Params, SGMCMCKernel

GROUPINGS = ("site", "layer", "random", "permuted", "neuron")


class StateBuffer:
    """Earlier chain states: the last ``capacity`` (ring) or a uniform sample of all of
    them (reservoir sampling, Vitter 1985)."""

    def __init__(self, capacity: int, kind: str = "ring", generator: random.Random | None = None):
        if kind not in ("ring", "reservoir"):
            raise ValueError(f"buffer must be 'ring' or 'reservoir', got {kind!r}")
        if capacity < 1:
            raise ValueError(f"buffer_size must be >= 1, got {capacity}")
        self.capacity, self.kind = capacity, kind
        self.states: list[Params] = []
        self.seen = 0
        self.rng = generator or random.Random(0)

    def __len__(self) -> int:
        return len(self.states)

    def add(self, state: Params) -> None:
        state = {k: v.detach().clone() for k, v in state.items()}
        self.seen += 1
        if len(self.states) < self.capacity:
            self.states.append(state)
        elif self.kind == "ring":
            self.states[(self.seen - 1) % self.capacity] = state
        else:
            slot = self.rng.randrange(self.seen)
            if slot < self.capacity:
                self.states[slot] = state

    def draw(self) -> Params:
        return self.states[self.rng.randrange(len(self.states))]


def assign_groups(
    shapes: dict[str, torch.Size],
    grouping: str | dict[str, Tensor],
    num_groups: int,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """A group id for every latent element: ``{site: LongTensor of the site's shape}``.

    ``"site"``: one group per site; ``"layer"``: sites sharing the name before their
    last ``.`` (``layer0.weight`` and ``layer0.bias``); ``"random"``: each element
    uniformly at random among ``num_groups``; ``"permuted"``: a random permutation cut
    into ``num_groups`` equal parts; ``"neuron"``: the output units (first axis) of each
    site dealt round-robin into ``num_groups``. A dict gives the ids directly.
    """
    if isinstance(grouping, dict):
        missing = set(shapes) - set(grouping)
        if missing:
            raise ValueError(f"groups lacks the sites {sorted(missing)}")
        return {n: torch.as_tensor(grouping[n]).long().expand(shapes[n]) for n in shapes}
    if grouping not in GROUPINGS:
        raise ValueError(f"groups must be one of {GROUPINGS} or a dict, got {grouping!r}")
    if grouping in ("site", "layer"):
        keys = [n if grouping == "site" else n.rsplit(".", 1)[0] for n in shapes]
        ids = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        return {n: torch.full(shapes[n], ids[k], dtype=torch.long) for n, k in zip(shapes, keys)}
    if grouping == "neuron":
        out = {}
        for name, shape in shapes.items():
            units = torch.arange(shape[0] if len(shape) else 1) % num_groups
            out[name] = units.reshape(-1, *([1] * (len(shape) - 1))).expand(shape).clone() \
                if len(shape) else units[0]
        return out
    sizes = [int(torch.Size(s).numel()) for s in shapes.values()]
    total = sum(sizes)
    if grouping == "random":
        flat = torch.randint(num_groups, (total,), generator=generator)
    else:
        flat = torch.empty(total, dtype=torch.long)
        flat[torch.randperm(total, generator=generator)] = torch.arange(total) * num_groups // total
    return {n: part.reshape(s) for (n, s), part in zip(shapes.items(), flat.split(sizes))}


class StructuredSGMCMC(SGMCMCKernel):
    """Structured SG-MCMC around a base kernel's update rule.

    Args:
        base: the kernel whose update rule moves each group (SGLD, pSGLD, SGHMC, ...).
        groups: a grouping name (see :func:`assign_groups`) or ``{site: group ids}``.
        num_groups: the number of groups for ``"random"``, ``"permuted"``, ``"neuron"``.
        buffer_size: earlier states kept for the composites.
        buffer: ``"ring"`` or ``"reservoir"``.
        dropout: ``None`` (replace every other group) or ``p``, the probability that
            each other group is replaced in a composite.
        num_composites: composites averaged per group gradient.
        seed: seeds the grouping and the buffer draws (the chain itself follows torch's
            generator, as the base kernel does).

    Example:
        >>> from posterity.models import BayesianMLP
        >>> from posterity.infer.sgmcmc import SGLD
        >>> kernel = StructuredSGMCMC(SGLD(BayesianMLP(8, (50,), 1, subsample_size=32),
        ...                                step_size=1e-4), groups="layer")
        >>> kernel.base.thin
        1
    """

    def __init__(
        self,
        base: SGMCMCKernel,
        groups: str | dict[str, Tensor] = "site",
        num_groups: int = 2,
        buffer_size: int = 100,
        buffer: str = "ring",
        dropout: float | None = None,
        num_composites: int = 1,
        seed: int = 0,
    ) -> None:
        if not isinstance(base, SGMCMCKernel):
            raise TypeError(f"base must be a posterity SG-MCMC kernel, got {type(base).__name__}")
        if isinstance(base, StructuredSGMCMC):
            raise TypeError("base must not itself be structured")
        super().__init__(base.model, base.schedule, temperature=base.temperature,
                         thin=base.thin, require_subsample=base.require_subsample,
                         initial_params=base._initial_params)
        if dropout is not None and not 0 < dropout <= 1:
            raise ValueError(f"dropout must be in (0, 1], got {dropout}")
        if num_composites < 1:
            raise ValueError(f"num_composites must be >= 1, got {num_composites}")
        self.base, self.grouping, self.num_groups = base, groups, num_groups
        self.dropout, self.num_composites = dropout, num_composites
        self.seed, self.buffer_kind, self.buffer_size = seed, buffer, buffer_size
        self.group_ids: dict[str, Tensor] = {}
        self.buffer = StateBuffer(buffer_size, buffer, random.Random(seed))

    def setup(self, warmup_steps: int, *args: Any, **kwargs: Any) -> None:
        self.base._initial_params = self._initial_params
        self.base.setup(warmup_steps, *args, **kwargs)
        self.potential, self.transforms = self.base.potential, self.base.transforms
        self._initial_params = self.base.initial_params
        self.num_steps = 0
        generator = torch.Generator().manual_seed(self.seed)
        ids = assign_groups(self.potential.shapes, self.grouping, self.num_groups, generator)
        self.group_ids = {n: g.to(self._initial_params[n].device) for n, g in ids.items()}
        self.groups = sorted({int(g) for ids in self.group_ids.values()
                              for g in torch.as_tensor(ids).unique()})
        self.buffer = StateBuffer(self.buffer_size, self.buffer_kind, random.Random(self.seed))

    def step(self, params: Params, step_size: float, exploring: bool) -> Params:
        if len(self.groups) == 1:
            return self.base.step(params, step_size, exploring)
        grads = {n: torch.zeros_like(v) for n, v in params.items()}
        for group in self.groups:
            for _ in range(self.num_composites):
                composite = self.composite(params, group)
                group_grads = self.base.gradient(composite)
                for name in params:
                    mask = (self.group_ids[name] == group).to(params[name].dtype)
                    grads[name] += mask * group_grads[name] / self.num_composites
        new = self.base.update(params, grads, step_size, exploring)
        self.buffer.add(new)
        return new

    def composite(self, params: Params, group: int) -> Params:
        """``group`` at its current value, the other groups from the buffer."""
        if not len(self.buffer):
            return params
        draw = self.buffer.draw()
        replaced = {h: self.dropout is None or self.buffer.rng.random() < self.dropout
                    for h in self.groups if h != group}
        out = {}
        for name, value in params.items():
            take = torch.zeros_like(self.group_ids[name], dtype=torch.bool)
            for h, swap in replaced.items():
                if swap:
                    take |= self.group_ids[name] == h
            out[name] = torch.where(take, draw[name], value)
        return out

    def logging(self) -> dict[str, float]:
        return self.base.logging()

    def update(self, params: Params, grads: Params, step_size: float, exploring: bool) -> Params:
        return self.base.update(params, grads, step_size, exploring)


def StructuredSGLD(model: Any, step_size: Any, groups: str | dict = "site", **kwargs: Any):
    """Structured SGLD: ``StructuredSGMCMC(SGLD(model, step_size, ...), groups, ...)``."""
    from .kernels import SGLD

    structured_keys = ("num_groups", "buffer_size", "buffer", "dropout", "num_composites", "seed")
    structured = {k: kwargs.pop(k) for k in structured_keys if k in kwargs}
    return StructuredSGMCMC(SGLD(model, step_size, **kwargs), groups=groups, **structured)
