"""The minibatch potential of a Pyro model in the unconstrained space of its latents.

Pyro's ``initialize_model`` refuses models with subsample sites, so the potential is
built here from a trace: latent values are mapped to their support with
``biject_to(support)``, the model is traced conditioned on them, and::

    U(u) = -[log p̃(x(u)) + log |det J(u)|],

where ``log p̃ = trace.log_prob_sum()`` already carries each subsampled plate's
``N / B`` scale, so ``-U`` is the unbiased minibatch estimate of the full log joint
(Welling & Teh 2011, eq. 4). Every call draws a fresh minibatch through the plate.

Fast path. Tracing costs about 1 ms a call in Python, several times the arithmetic of
a small network's minibatch. A model may implement
``minibatch_log_joint(values, *args, **kwargs)``: the same scaled log joint at the
constrained ``values``, drawing its minibatch with the same random numbers as its
plate. When it does and no Pyro handler that could change a density is active, the
potential calls it instead of tracing; ``tests/test_sgmcmc.py`` checks that both give
the same value and gradient.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions import constraints
from pyro.distributions.transforms import biject_to
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from ..handlers import densities_unaltered


def subsampled_plates(trace: poutine.Trace) -> dict[str, tuple[int, int]]:
    """``{plate name: (size, subsample size)}`` of the plates that subsample."""
    found = {}
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and site_is_subsample(site):
            size, subsample_size = site["fn"].size, site["fn"].subsample_size
            if subsample_size is not None and subsample_size < size:
                found[name] = (size, subsample_size)
    return found


def data_sites(trace: poutine.Trace, plates: set[str] | dict) -> dict[str, tuple[str, int]]:
    """The observed sites inside the data ``plates``: ``{site: (plate, axis)}``.

    ``axis`` is the position of the plate's dimension in the site's value (batch
    shape, then event shape). Each site's value must have exactly the shape of its
    distribution, ``batch_shape + event_shape``: a value that would broadcast (``y`` of
    shape ``[N, 1]`` against a ``[N]`` batch) is a ``ValueError`` naming the site.
    ``pyro.factor`` sites carry no data and are left out.
    """
    found = {}
    for name, site in trace.nodes.items():
        if (site["type"] != "sample" or not site["is_observed"] or site_is_subsample(site)
                or isinstance(site["fn"], dist.Unit)):
            continue
        frames = [f for f in site["cond_indep_stack"] if f.name in plates]
        if not frames:
            continue
        fn, value = site["fn"], site["value"]
        expected = tuple(fn.batch_shape + fn.event_shape)
        if not isinstance(value, Tensor) or tuple(value.shape) != expected:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"observed site {name!r} has a value of shape {got} but its distribution "
                f"has shape {expected} (batch {tuple(fn.batch_shape)} + event "
                f"{tuple(fn.event_shape)}); the data would broadcast instead of being "
                f"scored point by point: pass data of shape {expected} (for example y of "
                f"shape [N] rather than [N, 1])"
            )
        frame = frames[0]
        found[name] = (frame.name, len(fn.batch_shape) + frame.dim)
    return found


@contextmanager
def seeded(seed: int | None, device: torch.device | None = None) -> Iterator[None]:
    """Run the block on torch's generators seeded with ``seed``, then restore them
    (nothing happens with ``seed=None``)."""
    if seed is None:
        yield
        return
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def chain_seed(run_seed: int, chain: int) -> int:
    """A 63-bit seed that depends only on a run's seed and a chain's index."""
    return random.Random(f"{run_seed}:{chain}").getrandbits(63)


class Potential:
    """``U(u)`` and its gradient for a model called with fixed ``args`` and ``kwargs``.

    Attributes:
        transforms: ``{site: constrained -> unconstrained}``, as ``pyro.infer.MCMC``
            expects of a kernel.
        shapes: the shape of each latent site.
        plates: the subsampled plates, ``{name: (size, subsample size)}``.
    """

    def __init__(self, model: Callable, args: tuple = (), kwargs: dict | None = None) -> None:
        self.model, self.args, self.kwargs = model, args, kwargs or {}
        validate = getattr(model, "validate_data", None)
        if callable(validate):
            validate(*self.args, **self.kwargs)
        with poutine.block(), torch.no_grad():
            trace = poutine.trace(model).get_trace(*self.args, **self.kwargs)
        self.prior_trace = trace
        latents = {
            name: site for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"]
            and not site_is_subsample(site)
        }
        if not latents:
            raise ValueError("the model has no latent sample sites to sample")
        discrete = [n for n, s in latents.items() if s["fn"].support.is_discrete]
        if discrete:
            raise ValueError(f"SG-MCMC needs continuous latents; {discrete} are discrete")
        self.names = list(latents)
        self.transforms = {n: biject_to(s["fn"].support).inv for n, s in latents.items()}
        # real-valued sites need neither a transform nor a Jacobian in the hot path
        self.unconstrained = {n for n, s in latents.items()
                              if s["fn"].support in (constraints.real, constraints.real_vector)
                              or getattr(s["fn"].support, "base_constraint", None)
                              is constraints.real}
        self.shapes = {n: s["value"].shape for n, s in latents.items()}
        self.plates = subsampled_plates(trace)
        self.observed = data_sites(trace, self.plates)
        self.evaluations = 0  # gradient evaluations, for cost accounting

    @property
    def data_size(self) -> int:
        """``N``: the size of the subsampled data plate (the largest, if several; 1 if
        the model has none)."""
        return max((size for size, _ in self.plates.values()), default=1)

    def prior_draw(self, seed: int | None = None) -> dict[str, Tensor]:
        """Unconstrained values of a fresh draw from the prior (drawn with torch's
        generators seeded with ``seed``, and restored after, when one is given)."""
        first = next(iter(self.prior_trace.nodes[n]["value"] for n in self.names))
        with poutine.block(), torch.no_grad(), seeded(seed, first.device):
            trace = poutine.trace(self.model).get_trace(*self.args, **self.kwargs)
        return {n: self.transforms[n](trace.nodes[n]["value"]).detach() for n in self.names}

    def constrain(self, unconstrained: dict[str, Tensor]) -> dict[str, Tensor]:
        return {n: self.transforms[n].inv(u) for n, u in unconstrained.items()}

    def __call__(self, unconstrained: dict[str, Tensor]) -> Tensor:
        constrained, log_det = {}, 0.0
        for name, value in unconstrained.items():
            if name in self.unconstrained:
                constrained[name] = value
                continue
            to_support = self.transforms[name].inv
            constrained[name] = to_support(value)
            log_det = log_det + to_support.log_abs_det_jacobian(value, constrained[name]).sum()
        return -(self.log_joint(constrained) + log_det)

    def log_joint(self, constrained: dict[str, Tensor]) -> Tensor:
        """The scaled minibatch ``log p̃`` at constrained values (fast path or trace)."""
        fast = getattr(self.model, "minibatch_log_joint", None)
        if callable(fast) and densities_unaltered():
            return fast(constrained, *self.args, **self.kwargs)
        conditioned = poutine.condition(self.model, data=constrained)
        trace = poutine.trace(conditioned).get_trace(*self.args, **self.kwargs)
        return trace.log_prob_sum()

    def value_and_grad(self, params: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """``U`` at ``params`` and ``∇U``, both detached."""
        self.evaluations += 1
        leaves = {n: v.detach().requires_grad_(True) for n, v in params.items()}
        value = self(leaves)
        grads = torch.autograd.grad(value, list(leaves.values()))
        return value.detach(), dict(zip(leaves, grads))

