"""Structured SG-MCMC (Alexos, Boyd & Mandt, ICML 2022).

The latent variables are split into groups. The update of group ``g`` uses the
gradient of the potential at a *composite* state: group ``g`` at its current value and
every other group replaced by a draw from a buffer of earlier chain states. The chain
then targets the closest factorized approximation ``Π_g q_g(θ_g)``, trading exactness
for faster mixing across groups; each update costs ``num_groups × num_composites``
gradients.

In the dropout variant each other group is replaced only with probability ``p``. One
masked composite then serves every group at once (Alexos et al. 2022, section 3.3):
each group is kept at its current value with probability ``1 - p`` and otherwise
replaced, so for every kept group the composite is a draw of exactly its own
composite law (the others replaced independently with probability ``p``). Each group's
gradient is the inverse-probability average ``Σ_k r_kg ∇_g U(c_k) / (K (1 - p))`` over
the ``K = num_composites`` composites ``c_k`` (``r_kg = 1`` when group ``g`` was kept
in ``c_k``): unbiased, at ``K`` gradients per update whatever the number of groups.

With a single group (or before the buffer holds a state) the composite is the current
state: one gradient per update, and with one group the kernel takes exactly the base
kernel's steps (same random numbers, same values). The buffer draws use a generator
seeded from ``seed``, the run's seed and the chain's index, so chains draw
different composites.
"""

from __future__ import annotations

import random
from typing import Any

import torch
from torch import Tensor

from ..checks import check_int
from .kernels import Params, SGMCMCKernel
from .potential import chain_seed

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
        dropout: ``None`` (replace every other group: ``num_groups × num_composites``
            gradients per update) or ``p``, the probability that each other group is
            replaced in a composite (``num_composites`` gradients per update, each
            composite serving every group it keeps; see the module docstring).
        num_composites: composites per update (per group without dropout).
        seed: seeds the grouping (shared by all chains) and, with the run's seed and
            the chain index, the buffer draws (the chain itself follows torch's
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
                         initial_params=base._user_initial_params)
        if dropout is not None and (isinstance(dropout, bool) or not 0 < dropout <= 1):
            raise ValueError(f"dropout must be in (0, 1] or None, got {dropout!r}")
        self.base, self.grouping = base, groups
        self.num_groups = check_int("num_groups", num_groups, 1)
        self.num_composites = check_int("num_composites", num_composites, 1)
        self.buffer_size = check_int("buffer_size", buffer_size, 1)
        self.dropout, self.seed, self.buffer_kind = dropout, seed, buffer
        self.group_ids: dict[str, Tensor] = {}
        self.group_masks: dict[int, dict[str, Tensor]] = {}
        self.groups: list[int] = []
        self.buffer = StateBuffer(buffer_size, buffer, random.Random(seed))

    def setup(self, warmup_steps: int, *args: Any, **kwargs: Any) -> None:
        super().setup(warmup_steps, *args, **kwargs)
        base = self.base
        base.potential, base.transforms = self.potential, self.transforms
        base.chain, base.run_seed, base.warmup_steps = self.chain, self.run_seed, warmup_steps
        base.num_steps = 0
        base.state = self.state = base.init_state(self._initial_params)
        generator = torch.Generator().manual_seed(self.seed)
        ids = assign_groups(self.potential.shapes, self.grouping, self.num_groups, generator)
        self.group_ids = {n: g.to(self._initial_params[n].device) for n, g in ids.items()}
        self.groups = sorted({int(g) for ids in self.group_ids.values()
                              for g in torch.as_tensor(ids).unique()})
        self.group_masks = {g: {n: ids == g for n, ids in self.group_ids.items()}
                            for g in self.groups}
        # the grouping is shared by all chains; the buffer draws differ per chain
        stream = random.Random(f"{self.seed}:{chain_seed(self.run_seed, self.chain)}")
        self.buffer = StateBuffer(self.buffer_size, self.buffer_kind, stream)

    def state_tensors(self) -> dict[str, Tensor]:
        return self.base.state_tensors()

    def noise_limited_step(self, noise: float, curvature: float) -> float:
        return self.base.noise_limited_step(noise, curvature)

    def calibrate(self, curvature: float) -> None:
        self.base.calibrate(curvature)

    def measurement_metric(self, params: Params, probes: int) -> Params | None:
        return self.base.measurement_metric(params, probes)

    def effective_temperature(self, step: float, noise: float) -> float:
        return self.base.effective_temperature(step, noise)

    def stable_step(self, curvature: float) -> float:
        return self.base.stable_step(curvature)

    def step(self, params: Params, step_size: float, exploring: bool) -> Params:
        if len(self.groups) == 1:
            return super().step(params, step_size, exploring)
        new = self.update(params, self.structured_gradient(params, step_size), step_size,
                          exploring)
        self.check_finite(new, step_size)
        self.buffer.add(new)
        return new

    def structured_gradient(self, params: Params, step_size: float) -> Params:
        """Each group's gradient at its composites (``[site shape]`` per site)."""
        if not len(self.buffer):
            return self.gradient(params, step_size)
        grads = {n: torch.zeros_like(v) for n, v in params.items()}
        if self.dropout is None or self.dropout == 1:
            for group in self.groups:
                for _ in range(self.num_composites):
                    others = [h for h in self.groups if h != group]
                    group_grads = self.gradient(self.composite(params, others), step_size)
                    for name in params:
                        grads[name] += torch.where(self.group_masks[group][name],
                                                   group_grads[name], 0.0)
            return {n: g / self.num_composites for n, g in grads.items()}
        weight = 1.0 / (self.num_composites * (1 - self.dropout))
        for _ in range(self.num_composites):
            replaced = [h for h in self.groups if self.buffer.rng.random() < self.dropout]
            if len(replaced) == len(self.groups):
                continue  # no group kept: this composite contributes zero to every group
            composite_grads = self.gradient(self.composite(params, replaced), step_size)
            for name in params:
                kept = self._union(replaced, name, params[name]).logical_not()
                grads[name] += torch.where(kept, composite_grads[name], 0.0) * weight
        return grads

    def _union(self, groups: list[int], name: str, like: Tensor) -> Tensor:
        take = torch.zeros_like(like, dtype=torch.bool)
        for h in groups:
            take |= self.group_masks[h][name]
        return take

    def composite(self, params: Params, replaced: list[int]) -> Params:
        """``params`` with the groups in ``replaced`` taken from one buffered state."""
        if not len(self.buffer) or not replaced:
            return params
        draw = self.buffer.draw()
        return {name: torch.where(self._union(replaced, name, value), draw[name], value)
                for name, value in params.items()}

    def update(self, params: Params, grads: Params, step_size: float, exploring: bool) -> Params:
        return self.base.update(params, grads, step_size, exploring)


def StructuredSGLD(model: Any, step_size: Any = "auto", groups: str | dict = "site", **kwargs: Any):
    """Structured SGLD: ``StructuredSGMCMC(SGLD(model, step_size, ...), groups, ...)``."""
    from .kernels import SGLD

    structured_keys = ("num_groups", "buffer_size", "buffer", "dropout", "num_composites", "seed")
    structured = {k: kwargs.pop(k) for k in structured_keys if k in kwargs}
    return StructuredSGMCMC(SGLD(model, step_size, **kwargs), groups=groups, **structured)
