"""Amortized variational inference: ELBO, β-ELBO, IWAE and the multi-rate objective.

Objectives, per data point ``x`` with ``K`` particles ``z_k ~ q(z | x)`` and
``log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x)``:

* ``"elbo"``  (Kingma & Welling 2014): ``mean_k log w_k``.
* ``"beta"``  (Higgins et al. 2017):
  ``mean_k [log p(x | z_k) + β (log p(z_k) - log q(z_k | x))]``, i.e. the expected
  log-likelihood minus β times the (Monte Carlo) KL.
* ``"iwae"``  (Burda et al. 2016): ``log (1/K) Σ_k w_k``.
* ``"multi_rate"`` (Bae et al. 2023): the β objective with one β per data point
  drawn at every step over ``beta_range`` and ``beta_extension`` decades below it
  (from ``beta_distribution``, stratified over the minibatch by default), given to the
  model and guide as ``beta=`` so that their gated networks learn the response
  β ↦ optimal parameters.

All particles are drawn in one vectorized pass (:mod:`posterity.infer.importance`);
gradients are the reparameterization gradients of these estimates, which is what
Pyro's ``Trace_ELBO`` (``K=1``) and ``RenyiELBO(alpha=0)`` compute. The loss is
the negative objective averaged over the minibatch, so it reads in nats per data point.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from posterity.layers.gated import (
    DEFAULT_BETA_EXTENSION,
    check_beta_extension,
    check_beta_range,
    gate_parameters,
    multi_rate_settings,
    training_beta_range,
)

from .. import distributed, train
from ..checks import check_choice, check_int, check_positive, prepare_pair
from ..floats import subnormals_flushed
from ..importance import WeightedParticles, weighted_particles
from .betas import beta_at, check_beta_distribution, sample_betas
from .engine import AmortizedEngine

OBJECTIVES = ("elbo", "beta", "iwae", "multi_rate")
BETA_SAMPLING = ("example", "stratified", "batch")
# Measured in bench/mrvae.py (see the gate_lr_multiplier argument of AmortizedVI).
DEFAULT_GATE_LR_MULTIPLIER = 10.0
# Measured in bench/mrvae.py (see the beta_distribution argument of AmortizedVI).
DEFAULT_BETA_DISTRIBUTION: str | tuple[float, float] = (1.0, 0.7)
# β values at which a multi-rate run is validated: the mean β-objective over them.
_VALIDATION_BETAS = 5


def objective_per_data_point(
    particles: WeightedParticles, objective: str, beta: float | Tensor = 1.0
) -> Tensor:
    """The objective of each data point, shape ``[B]``, from ``[K, B]`` particle terms:
    ``E[log p(x | z)] - β R`` with the rate ``R`` in closed form where the particles
    carry it (:attr:`WeightedParticles.kl`), else its single-draw estimate."""
    if objective == "iwae":
        log_weights = particles.log_weights
        return torch.logsumexp(log_weights, 0) - math.log(log_weights.shape[0])
    if objective == "elbo":
        if particles.kl is None:
            return particles.log_weights.mean(0)
        beta = 1.0
    return (particles.log_likelihood - beta * particles.rate).mean(0)


def _spec_name(spec: Any) -> str | None:
    """An optimizer or scheduler argument as a plain value: its name, or the qualified
    name of a class or factory."""
    if spec is None or isinstance(spec, str):
        return spec
    return getattr(spec, "__qualname__", type(spec).__qualname__)


class AmortizedVI(AmortizedEngine):
    """Fit a Pyro model and its amortized guide by stochastic gradient ascent.

    Args:
        model: a ``PyroModule`` program ``model(x)`` with its data points in
            ``pyro.plate("data")``: ``x`` is ``[N, D]`` or ``[N, ...]`` (images
            ``[N, C, H, W]``), one data point per row.
        guide: a ``PyroModule`` program ``guide(x)`` with the same latent sites,
            all reparameterizable.
        objective: ``"elbo"``, ``"beta"``, ``"iwae"`` or ``"multi_rate"``.
        num_particles: ``K`` particles per data point (vectorized).
        lr: learning rate of the default Adam optimizer.
        beta: the KL weight of the ``"beta"`` objective.
        beta_range: ``(low, high)`` for ``"multi_rate"``; by default the modules' own
            (``VAE(..., multi_rate=True)`` and ``GaussianEncoder(..., multi_rate=True)``):
            the β the run is to serve.
        beta_extension: for ``"multi_rate"``, decades of β below ``beta_range`` that
            training draws from as well: β follows ``beta_distribution`` on
            ``training_beta_range = (low / 10**beta_extension, high)``. By default the
            modules' own (``VAE(..., beta_extension=2)``, whose
            :class:`~posterity.layers.gated.BetaStandardizer` standardizes ``log β``
            over that range; modules without the attribute: 2). The smallest β a run
            trains on is served worst: trained on ``[0.01, 10]`` (``bench/mrvae.py
            --protocol full``, 200 epochs, cosine schedule) the MR-VAE's distortion
            stopped falling below β = 0.02 (40.6 nats at both 0.02 and 0.01, where
            the β-VAE reaches 35.7), and its objective at β = 0.01 was better with the
            networks set to β = 0.02 (41.81 against 42.03 nats). With the draws
            reaching two decades lower, 0.01 is an inner point of the response and the
            distortion there fell to 35.8 nats. Excess objective over five β-VAEs at
            β = 0.01 / 0.1 / 1 / 3 / 10 (200 epochs, constant learning rate,
            ``gate_lr_multiplier=30``): ``beta_extension=0`` with the former
            ``beta_distribution=(0.7, 0.9)`` +15.9 / -3.5 / +0.3 / +0.2 / -0.5 %, 2
            decades with ``(1, 0.7)`` +0.7 / -6.1 / +1.7 / +0.4 / -1.3 % (at the
            default multiplier 10: +1.0 / -6.0 / +1.5 / -0.1 / -1.6 %), one decade
            +6.6 / -4.5 / +1.1 / -0.4 / -1.6 %; with log β standardized over
            ``beta_range`` only (the draws still 2 decades below) +2.2 / -6.0 / +2.3 /
            +0.5 / -1.4 %. With ``gate_lr_multiplier=10`` (the default since) and the
            staggered gates placed over the range to serve, 1.5 decades gave +0.8 / -6.6
            / +1.0 / -0.3 / -1.9 and +1.7 / -6.1 / +1.0 / -0.5 / -2.1 % (seeds 0 / 1), 1
            decade +2.3 / -6.3 / +0.8 / -0.7 / -2.2 %.
        beta_warmup: for ``"multi_rate"``, the number of updates over which the upper
            end of the sampled β range grows log-linearly from ``low`` to ``high``. Units
            that only pay off at small β are then recruited before large β can switch
            them off: in the linear check (``tests/test_multirate.py``, lr 3e-2,
            ``gate_lr_multiplier=3``) training without it missed the optimum by 1.2 nats
            at β = 0.1 and by 7.6-35 nats at β >= 1.4; with a third of the updates as
            warm-up it is within 0.018 nats at every β (2026-12-07). On binarized
            MNIST it hurts: in ``bench/mrvae.py --protocol full`` (20 epochs) a warm-up
            over 2000 of the 10 000 updates left the excess objective at β = 0.01 at
            +45.4 % (+14.0 % without), and
            the reverse (the lower end coming down from ``high``) at +16.4 %.
        beta_sampling: for ``"multi_rate"``, how the β of a minibatch's ``B`` data
            points are drawn from ``beta_distribution``: ``"stratified"`` (the default),
            one β per data point with one draw in each of the ``B`` slices of equal
            probability (every minibatch covers the range evenly; each β still follows
            ``beta_distribution``, so the objective is the expectation over it);
            ``"example"``, independent draws per data point; or ``"batch"``, one β
            per minibatch. In ``bench/mrvae.py --protocol short`` (two seeds, with
            the defaults of 2026-11-22) stratified draws lowered the excess objective
            over the β-VAEs by 0.3 to 1.0 points of % at β = 0.1 and 1 against
            ``"example"``; one β per minibatch shrank the rate span from 34 to 5 nats.
        beta_distribution: for ``"multi_rate"``, the distribution of β over
            ``training_beta_range``
            (:func:`~posterity.infer.amortized.betas.beta_at`): ``"log_uniform"`` (the
            paper's: Bae et al. 2023, eq. 7) or a pair ``(a, b)``: the position of
            ``log β`` in the range is Kumaraswamy(a, b), ``a < 1`` giving the small β
            more draws and ``b < 1`` the largest. The default ``(1, 0.7)`` on the
            default training range (``beta_range`` and 2 decades below it) puts 30 %
            of the draws below ``beta_range``, 17 % in its first decade, 20 % in
            the second and 32 % in the third (log-uniform: 40 / 20 / 20 / 20 %). In
            ``bench/mrvae.py --protocol full`` (200 epochs, constant learning rate),
            excess objective over five β-VAEs at β = 0.01 / 0.1 / 1 / 3 / 10: ``(1,
            0.7)`` +0.7 / -6.1 / +1.7 / +0.4 / -1.3 %, ``(1.3, 0.7)`` (fewer draws
            below the range) +3.6 / -4.5 / +1.3 / -0.3 / -1.4 %; with a cosine
            schedule for every model ``(1, 0.7)`` +2.4 / -7.7 / +2.7 / +1.0 / -1.0 %
            and log-uniform -0.1 / -9.7 / +3.3 / +2.8 / +0.5 %. Without the extension
            (``beta_extension=0``) more draws at the ends of ``[0.01, 10]`` helped
            the small β less: log-uniform +22.3 / -1.2 / -0.5 / -0.7 / -0.6 %,
            ``(0.7, 0.9)`` +15.9 / -3.5 / +0.3 / +0.2 / -0.5 %, ``(0.3, 0.8)`` +5.1 /
            -6.7 / +2.9 / +2.5 / +0.1 %. Every setting measured trades the smallest β
            against β = 1. (These runs had ``gate_lr_multiplier=30``.)
        gate_lr_multiplier: the gate slopes ``w`` of β-gated layers
            (``gate_parameters(..., slopes_only=True)``,
            :func:`posterity.layers.gate_parameters`) get their own optimizer
            group at ``lr * gate_lr_multiplier``; the gate biases and the low-rank
            β-dependent weights stay at ``lr`` (those weights diverged at 30 ``lr``).
            Without the low-rank weights the slopes are the only parameters through
            which the networks depend on β; at the base rate they move too slowly
            and a multi-rate run trains an average VAE at E[β] for thousands of
            updates. Fast biases instead closed most
            latent units at every β (``bench/mrvae.py --protocol full``, 20 epochs:
            excess objective at β = 0.01 +57.7 % with them, +29.1 % without).
            In ``bench/mrvae.py --protocol short`` (784-200-20, 3 epochs, two seeds,
            biases still in the fast group) the rate at β = 0.01 vs 10 went from 14.7
            vs 11.0 nats at 1 to about 42 vs 3.5 at 30; against 10, 30 lowered the
            excess objective at β ≤ 1 by about 1 point of % on both seeds and changed
            it at β = 10 by under 0.5; 3 doubled the excess at β = 10 and 100 was
            worse. With the slopes alone, 100 was again worse than 30 in the full
            protocol (+31.3 against +29.1 % at β = 0.01, +2.0 against -1.3 % at 1). No
            effect without gated layers. After the paper's 200 epochs (``--protocol
            full``, constant learning rate) 10 was better than 30 on both seeds: +1.0
            / -6.0 / +1.5 / -0.1 / -1.6 and +0.0 / -6.7 / +1.2 / -0.1 / -1.8 % against
            +0.7 / -6.1 / +1.7 / +0.4 / -1.3 and +0.5 / -6.0 / +2.1 / +0.4 / -1.1 %;
            averaged over two seeds of the β-VAEs too, its worst β is +1.02 % (β = 1;
            30: +1.57 %), hence the default 10. Over four seeds of each side
            (single-draw rate): +0.99 / -6.30 / +1.08 / -1.26 / -1.74 % (standard
            errors 0.11-0.62 %). 5 gave,
            over three seeds, +1.18 / -6.23 / +0.94 / -1.30 / -1.63 % (10 on the same
            seeds: +0.88 / -6.32 / +0.97 / -1.39 / -1.63 %); with 1.5 decades of
            ``beta_extension`` +1.4 / -6.2 / +0.8 / -0.6 / -1.9 and +1.1 / -6.5 / +1.0
            / -0.5 / -2.1 %.
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"``, a ``torch.optim`` class or a
            ``params -> Optimizer`` factory (:func:`posterity.infer.optim.make_optimizer`).
        scheduler: ``None``; ``"cosine"``, a cosine decay of every group's learning rate
            to 0 over ``total_steps`` updates (by default the updates of the first
            :meth:`fit`: ``epochs * ceil(N / batch_size)``; a run interrupted before
            its last epoch and resumed with more epochs stretches the rest of the decay
            to its new end, but
            once the decay has ended a further call warns and PyTorch's cosine rises
            again, as in a warm restart); or an
            ``optimizer -> LRScheduler`` factory, stepped after every update.
        total_steps: the length of the ``"cosine"`` schedule.
        grad_clip: clip the global gradient norm to this value (``None``: no clip).
        analytic_kl: how the rate ``KL(q(z | x) || p(z))`` of ``"elbo"``, ``"beta"``
            and ``"multi_rate"`` is estimated: ``None`` (the default) in closed form
            where every latent site has one (``pyro.distributions.kl.kl_divergence``;
            the guide must draw the latent sites in the model's order; the built-in
            ``VAE`` with ``GaussianEncoder`` do), else from the particles' draws;
            ``True`` in closed form or an error naming the site that has none; ``False``
            from the draws, ``log q(z | x) - log p(z)``. Both have the same
            expectation, but the draws' gradient carries noise ``β σ ε`` in every
            latent mean (Kingma & Welling 2014, eq. 10 against eq. 6), and a latent
            unit at the prior keeps being pushed off it. ``"iwae"`` weighs whole draws
            and takes ``None`` or ``False`` only. In ``bench/mrvae.py --protocol full``
            (200 epochs, seeds 0 / 1) the closed form lowered the β = 1 β-VAE's
            objective by 0.69 / 1.34 nats and the MR-VAE's there by 0.27 / 0.13.

    Example:
        >>> from posterity.models import VAE
        >>> from posterity.guides import GaussianEncoder
        >>> x = torch.bernoulli(torch.full((64, 20), 0.3))
        >>> vi = AmortizedVI(VAE(20, 4, (32,)), GaussianEncoder(20, 4, (32,)),
        ...                  objective="iwae", num_particles=5)
        >>> history = vi.fit(x, epochs=2, batch_size=16, progress=False)
        >>> len(history.epochs["train_loss"])
        2
    """

    def __init__(
        self,
        model: nn.Module,
        guide: nn.Module,
        objective: str = "elbo",
        num_particles: int = 1,
        lr: float = 1e-3,
        beta: float | None = None,
        beta_range: tuple[float, float] | None = None,
        beta_extension: float | None = None,
        beta_warmup: int = 0,
        beta_sampling: str = "stratified",
        beta_distribution: str | tuple[float, float] = DEFAULT_BETA_DISTRIBUTION,
        gate_lr_multiplier: float = DEFAULT_GATE_LR_MULTIPLIER,
        optimizer: train.OptimizerSpec = "adam",
        scheduler: train.SchedulerSpec = None,
        total_steps: int | None = None,
        grad_clip: float | None = None,
        analytic_kl: bool | None = None,
    ) -> None:
        if not isinstance(model, nn.Module) or not isinstance(guide, nn.Module):
            raise TypeError(
                "model and guide must be torch.nn.Module (e.g. PyroModule) programs, got "
                f"model={type(model).__name__}, guide={type(guide).__name__}"
            )
        self.model, self.guide = model, guide
        self.objective = check_choice("objective", objective, OBJECTIVES)
        self.num_particles = check_int("num_particles", num_particles, 1)
        if self.objective == "beta" and beta is None:
            raise ValueError("objective='beta' needs beta= (the weight of the KL term; "
                             "beta=1 is the ELBO)")
        if self.objective != "beta" and beta is not None:
            raise ValueError(f"beta= applies to objective='beta' only; objective="
                             f"{self.objective!r} " + (
                                 "draws β over beta_range" if self.objective == "multi_rate"
                                 else "has no KL weight"))
        self.beta = check_positive("beta", 1.0 if beta is None else beta, allow_zero=True)
        if analytic_kl not in (None, True, False):
            raise TypeError(f"analytic_kl must be None, True or False, got {analytic_kl!r}")
        if analytic_kl and self.objective == "iwae":
            raise ValueError("objective='iwae' weighs each draw by p(x, z) / q(z | x) and has "
                             "no KL term to take in closed form; analytic_kl=True applies to "
                             "'elbo', 'beta' and 'multi_rate'")
        self.analytic_kl = False if self.objective == "iwae" else analytic_kl
        self.lr = check_positive("lr", lr)
        self.grad_clip = None if grad_clip is None else check_positive("grad_clip", grad_clip)
        settings = self._module_settings() if self.objective == "multi_rate" else {}
        self.beta_range = self._check_beta_range(beta_range, settings)
        self.beta_extension = self._check_beta_extension(beta_extension, settings)
        self.training_beta_range = (None if self.beta_range is None
                                    else training_beta_range(self.beta_range, self.beta_extension))
        self.beta_warmup = check_int("beta_warmup", beta_warmup, 0)
        self.beta_sampling = check_choice("beta_sampling", beta_sampling, BETA_SAMPLING)
        self.beta_distribution = check_beta_distribution(beta_distribution)
        self.gate_lr_multiplier = check_positive("gate_lr_multiplier", gate_lr_multiplier)
        if total_steps is not None:
            check_int("total_steps", total_steps, 1)
        self.total_steps = total_steps
        self.num_steps = 0
        params = self.parameters()
        if not params:
            raise ValueError("model and guide have no parameters to train")
        gates = {id(p) for p in gate_parameters(self.model, self.guide, slopes_only=True)}
        groups = [{"params": [p for p in params if id(p) not in gates]}]
        if gates:
            groups.append({"params": [p for p in params if id(p) in gates],
                           "lr": self.lr * self.gate_lr_multiplier})
        groups = [g for g in groups if g["params"]]
        self._optimizer_spec, self._scheduler_spec = optimizer, scheduler
        deferred = scheduler == "cosine" and total_steps is None
        self.optimizer, self.scheduler = train.make_optimizer(
            groups, optimizer, lr=self.lr, scheduler=None if deferred else scheduler,
            total_steps=total_steps,
        )
        self._scheduler_pending = deferred
        self.history = train.History()
        self._plate_nesting: int | None = None

    @property
    def _config(self) -> dict[str, Any]:
        """This engine's settings for :meth:`AmortizedEngine.config` (plain values)."""
        return {
            "objective": self.objective,
            "num_particles": self.num_particles,
            "lr": self.lr,
            "beta": self.beta,
            "beta_range": list(self.beta_range) if self.beta_range is not None else None,
            "beta_extension": self.beta_extension,
            "beta_warmup": self.beta_warmup,
            "beta_sampling": self.beta_sampling,
            "beta_distribution": (self.beta_distribution if isinstance(self.beta_distribution, str)
                                  else list(self.beta_distribution)),
            "gate_lr_multiplier": self.gate_lr_multiplier,
            "scheduler": _spec_name(self._scheduler_spec),
            "total_steps": self.total_steps,
            "grad_clip": self.grad_clip,
            "analytic_kl": self.analytic_kl,
        }

    def _module_settings(self) -> dict[str, tuple[tuple[float, float] | None, float | None]]:
        return {role: multi_rate_settings(module)
                for role, module in (("model", self.model), ("guide", self.guide))}

    def _check_beta_range(self, beta_range, settings) -> tuple[float, float] | None:
        if self.objective != "multi_rate":
            if beta_range is not None:
                raise ValueError("beta_range applies to objective='multi_rate' only")
            return None
        for role, (module_range, _) in settings.items():
            if module_range is None:
                module = getattr(self, role)
                raise ValueError(
                    "objective='multi_rate' needs a multi-rate model and guide, taking beta=: "
                    f"the {role} ({type(module).__name__}) has no BetaStandardizer and no "
                    "beta_range attribute. Build VAE and GaussianEncoder with "
                    "multi_rate=True, or give your own modules a "
                    "posterity.layers.BetaStandardizer(beta_range)"
                )
        module_ranges = {r for r, _ in settings.values()}
        if len(module_ranges) > 1:
            raise ValueError("model and guide standardize β over different ranges: "
                             f"model {settings['model'][0]}, guide {settings['guide'][0]}")
        (module_range,) = module_ranges
        if beta_range is None:
            return module_range
        beta_range = check_beta_range(beta_range)
        if beta_range != module_range:
            raise ValueError(
                f"beta_range {beta_range} differs from the range {module_range} the modules "
                "were built with; build them with that beta_range too (VAE and "
                "GaussianEncoder: beta_range=; your own: BetaStandardizer(beta_range))"
            )
        return beta_range

    def _check_beta_extension(self, beta_extension, settings) -> float | None:
        if self.objective != "multi_rate":
            if beta_extension is not None:
                raise ValueError("beta_extension applies to objective='multi_rate' only")
            return None
        if beta_extension is not None:
            beta_extension = check_beta_extension(beta_extension)
        built = {e for _, e in settings.values()} - {None}
        if len(built) > 1:
            raise ValueError("model and guide were built with different beta_extension: "
                             f"model {settings['model'][1]}, guide {settings['guide'][1]}")
        if beta_extension is None:  # the modules' own, else the standardizer's default
            return built.pop() if built else DEFAULT_BETA_EXTENSION
        if built and beta_extension not in built:
            raise ValueError(
                f"beta_extension {beta_extension:g} differs from the {built.pop():g} the "
                "modules were built with; build them with it too (VAE and GaussianEncoder: "
                "beta_extension=; your own: BetaStandardizer(beta_range, extension=))"
            )
        return beta_extension

    def current_beta_range(self) -> tuple[float, float]:
        """The range β is drawn from at this update: ``training_beta_range``, the
        ``beta_range`` with ``beta_extension`` decades below it (growing from its low
        end during ``beta_warmup``)."""
        low, high = self.training_beta_range
        if self.beta_warmup and self.num_steps < self.beta_warmup:
            high = low * (high / low) ** ((self.num_steps + 1) / self.beta_warmup)
        return low, high

    def fit(self, data: Tensor, epochs: int, batch_size: int = 100,
            valid: Tensor | None = None, **kwargs: Any) -> train.History:
        """Train on ``data``; see :meth:`AmortizedEngine.fit`. A pending ``"cosine"``
        schedule gets its length here: ``epochs * ceil(N / batch_size)`` updates."""
        return super().fit(data, epochs, batch_size, valid, **kwargs)

    @property
    def monitor(self) -> tuple[str, str]:
        return (f"valid_{self.objective}", "max")

    # --- checks done once, not in the hot path -------------------------------------
    def prepare(self, x: Tensor, name: str = "data") -> Tensor:
        """Check data and the model/guide pair once; cache the plate nesting."""
        x, self._plate_nesting = prepare_pair(self.model, self.guide, x, name, require_rsample=True)
        return x

    # --- the objective ----------------------------------------------------------
    def particles(self, x: Tensor, num_particles: int | None = None) -> WeightedParticles:
        if self._plate_nesting is None:
            self.prepare(x)
        return weighted_particles(
            self.model,
            self.guide,
            (x,),
            num_particles=num_particles or self.num_particles,
            plate_nesting=self._plate_nesting,
            analytic_kl=self.analytic_kl,
        )

    def objective_value(
        self, x: Tensor, num_particles: int | None = None, beta: Tensor | None = None
    ) -> Tensor:
        """The objective of each row of ``x``, ``[B]``, differentiable.

        For ``"multi_rate"`` a β per row is drawn by :meth:`draw_beta` unless ``beta``
        (``[B]``) is given (under a process group every rank must then call this
        together, as :meth:`step` does).
        """
        if self.objective != "multi_rate":
            return objective_per_data_point(
                self.particles(x, num_particles), self.objective, self.beta
            )
        if beta is None:
            beta = self.draw_beta(x)
        if self._plate_nesting is None:
            self.prepare(x)
        particles = weighted_particles(
            self.model, self.guide, (x,), {"beta": beta},
            num_particles=num_particles or self.num_particles, plate_nesting=self._plate_nesting,
            analytic_kl=self.analytic_kl,
        )
        return objective_per_data_point(particles, "beta", beta)

    def draw_beta(self, x: Tensor) -> Tensor:
        """The β of each row of the minibatch ``x``, ``[B]``, per ``beta_sampling``.

        Under a process group (every rank calls it together, as :meth:`step` does) the
        draws are those of the global minibatch: ``"batch"`` uses rank 0's β, and
        ``"stratified"`` puts one β in each of the ``B_global`` slices of equal
        probability, the ranks taking the slices of a permutation that rank 0 broadcasts.
        """
        low, high = self.current_beta_range()
        rows = x.shape[0]
        if self.beta_sampling == "batch":
            beta = sample_betas(low, high, (1,), x, distribution=self.beta_distribution)
            return distributed.broadcast(beta).expand(rows)
        if self.beta_sampling == "stratified" and distributed.is_initialized():
            sizes = torch.zeros(distributed.world_size(), dtype=torch.int64, device=x.device)
            sizes[distributed.rank()] = rows
            sizes = distributed.all_reduce_sum(sizes).tolist()  # every rank's rows
            total, offset = sum(sizes), sum(sizes[: distributed.rank()])
            order = distributed.broadcast(torch.randperm(total, device=x.device))
            u = (order[offset: offset + rows].to(x.dtype)
                 + torch.rand(rows, dtype=x.dtype, device=x.device)) / total
            return beta_at(u, low, high, self.beta_distribution)
        return sample_betas(low, high, (rows,), x, self.beta_sampling == "stratified",
                            self.beta_distribution)

    def loss(self, x: Tensor) -> Tensor:
        """Minus the objective, averaged over the rows of ``x`` (nats per data point)."""
        return -self.objective_value(x).mean()

    def step(self, x: Tensor) -> dict[str, float]:
        """One gradient update on the minibatch ``x``; returns ``{"loss": ...}``."""
        if self._scheduler_pending:
            raise ValueError(
                "scheduler='cosine' needs its length: pass total_steps= to AmortizedVI, or "
                "train with fit(), which sets it to epochs * ceil(N / batch_size)"
            )
        with subnormals_flushed():
            loss = self.loss(x)
            train.optimizer_step(self.optimizer, loss, self.scheduler,
                                 clip_grad_norm=self.grad_clip)
        self.num_steps += 1
        return {"loss": loss.item()}

    @torch.no_grad()
    def validate(self, data: Tensor, batch_size: int = 1000) -> dict[str, float]:
        """The objective on ``data`` (nats per data point), without gradients.

        A multi-rate run reports the mean β-objective over 5 log-spaced β in its range.
        """
        if self.objective != "multi_rate":
            total = sum(
                self.objective_value(chunk).sum().item() for chunk in data.split(batch_size)
            )
            return {f"valid_{self.objective}": total / data.shape[0]}
        low, high = self.beta_range
        betas = torch.logspace(math.log10(low), math.log10(high), _VALIDATION_BETAS)
        total = sum(
            self.objective_value(chunk, beta=chunk.new_full((chunk.shape[0],), float(b)))
            .sum().item()
            for b in betas
            for chunk in data.split(batch_size)
        )
        return {"valid_multi_rate": total / (data.shape[0] * len(betas))}

    def to_inference_data(
        self, x: Tensor, num_samples: int = 200, num_betas: int = 20,
        num_model_samples: int = 64, **kwargs: Any
    ):
        """ArviZ ``InferenceData`` for the rows of ``x`` (``[N, ...]``, the data points
        whose amortized posteriors to describe): guide draws, importance weights, PSIS
        k̂, reconstructions, ``num_model_samples`` draws from the model and the training
        history; see :func:`~posterity.infer.amortized.amortized_inference_data`.

        A multi-rate run also gets a ``rate_distortion`` group: rate, distortion and the
        objective ``D + β R`` of ``x`` at ``num_betas`` log-spaced β across its range.
        """
        from .evaluate import rate_distortion
        from .inference_data import amortized_inference_data

        attrs = {"engine": "AmortizedVI", "objective": self.objective,
                 "num_particles": self.num_particles}
        if self.objective == "beta":
            attrs["beta"] = self.beta
        idata = amortized_inference_data(
            self.model, self.guide, x, num_samples=num_samples, history=self.history,
            attrs=attrs, num_model_samples=num_model_samples, **kwargs,
        )
        if self.objective == "multi_rate":
            low, high = self.beta_range
            betas = torch.logspace(math.log10(low), math.log10(high), num_betas)
            curve = rate_distortion(self.model, self.guide, x, betas)
            idata.add_groups(rate_distortion=curve.to_dataset())
        return idata

