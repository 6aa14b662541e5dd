"""Wake-sleep engines for Helmholtz machines: WS, RWS, natural RWS, BiHM and natural BiHM.

Per data point ``x`` the wake phase draws ``K`` particles ``h_k ~ q(h | x)`` with log
weights ``log w_k = log p(x, h_k) - log q(h_k | x)`` (vectorized over particles and the
minibatch, :mod:`posterity.infer.importance`); the sleep phase draws ``(x, h) ~ p``.

* ``"ws"`` (Hinton, Dayan, Frey & Neal 1995): wake-p ``∇θ mean_k log p(x, h_k)``;
  sleep-q ``∇φ log q(h | x)`` on sleep samples.
* ``"rws"`` (Bornschein & Bengio 2015, eq. 8-10): wake-p ``Σ_k w̃_k ∇θ log p(x, h_k)``
  with self-normalized weights ``w̃ = softmax_k(log w)``; q gets
  ``insomnia · Σ_k w̃_k ∇φ log q(h_k | x) + (1 - insomnia) · sleep-q``. Unlike Pyro's
  ``ReweightedWakeSleep``, whose weights span the whole minibatch, the weights are
  normalized per data point, so minibatches are the sum of independent estimates.
* ``"bihm"`` (Bornschein, Shabanian, Fischer & Bengio 2016): the model is
  ``p*(x) = (Σ_h √(p(x, h) q(h | x)))² / Z``; ``log p*`` is bounded below by
  ``2 log mean_k √w_k``, whose gradient is ``Σ_k ω̃_k ∇ [log p(x, h_k) + log q(h_k | x)]``
  with ``ω̃ = softmax_k(log w / 2)``, for p and q alike. There is no sleep phase.
* ``"nrws"``, ``"nbihm"`` (Várady, Volpi, Malagò & Ay 2022): the same gradients, each
  ``nn.Linear`` Bernoulli layer preconditioned by its exact per-unit Fisher blocks
  (:mod:`posterity.infer.wake_sleep.natural`). Generative layers take their blocks from sleep
  samples (or, with ``fisher_weights="importance"``, from the wake particles weighted by
  ``w̃``); recognition layers from the wake particles.

The loss reported is the negated training bound per data point (the IWAE bound for the
reweighted algorithms, the BiHM bound for BiHM). ``validate`` reports ``log p̂(x)``
(importance-sampled) of the top-down model ``p``, and for BiHM the estimate of
``log p*(x)`` with its partition function (:meth:`WakeSleep.log_likelihood`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import pyro.poutine as poutine
import torch
from torch import Tensor, nn

from .. import train
from ..amortized.engine import AmortizedEngine
from ..checks import check_choice, check_int, check_positive, prepare_pair, preserved_rng
from ..floats import subnormals_flushed
from ..handlers import densities_unaltered
from ..importance import (
    ObservedSitesError,
    _per_data_point,
    ancestral_draws,
    sample_sites,
    weighted_particles,
)
from .natural import BernoulliNaturalGradient, LayerRecorder, linear_layers

ALGORITHMS = ("ws", "rws", "nrws", "bihm", "nbihm")
FISHER_WEIGHTS = ("sleep", "importance")
#: Each algorithm's default optimizer and learning rate: the best of a small grid at the
#: benchmark budget (bench/wake_sleep.py: SBN 784-100-10, K = 10, batch 32, 471 updates on
#: 5000 binarized-MNIST images; see the class docstring for the measurements).
#: The natural algorithms decay their rate along a cosine over the run that ``fit``
#: trains (constant when stepped by hand), with the damping that suits that schedule.
DEFAULTS: dict[str, dict[str, Any]] = {
    "ws": {"optimizer": "adam", "lr": 3e-2, "scheduler": None},
    "rws": {"optimizer": "adam", "lr": 1e-2, "scheduler": None},
    "nrws": {"optimizer": "sgd", "lr": 5e-2, "scheduler": "cosine", "damping": 0.03},
    "bihm": {"optimizer": "adam", "lr": 1e-2, "scheduler": None},
    "nbihm": {"optimizer": "sgd", "lr": 5e-2, "scheduler": "cosine", "damping": 0.05},
}
DEFAULT = "default"
DEFAULT_INSOMNIA, DEFAULT_REFRESH_EVERY = 0.5, 10
_ADAPTIVE = tuple(getattr(torch.optim, name) for name in (
    "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad", "Adadelta",
    "SparseAdam", "Adafactor") if hasattr(torch.optim, name))


def sleep_samples(model: Callable, x: Tensor, num_particles: int, plate_nesting: int
                  ) -> tuple[dict[str, Tensor], str]:
    """``num_particles`` ancestral draws of every site per row of ``x``, ``[K, B, ...]``,
    and the name of the observed site."""
    if densities_unaltered() and callable(getattr(model, "sample_joint", None)):
        return model.sample_joint(x, num_particles), "x"
    try:
        return ancestral_draws(model, x, num_particles, plate_nesting)
    except ObservedSitesError as error:
        raise ObservedSitesError(f"the sleep phase: {error}") from None


def guide_log_density(guide: Callable, x: Tensor, latents: dict[str, Tensor],
                      plate_nesting: int) -> Tensor:
    """``log q(h | x)`` of given ``[K, B, ...]`` draws, ``[K, B]``."""
    if densities_unaltered() and callable(getattr(guide, "log_guide", None)):
        return guide.log_guide(x, latents)
    K, B = x.shape[:2]
    flat = {name: value.reshape(K * B, *value.shape[2:]) for name, value in latents.items()}
    trace = poutine.trace(poutine.condition(guide, data=flat)).get_trace(
        x.reshape(K * B, *x.shape[2:]))
    terms = [_per_data_point(site, "data", -(plate_nesting + 1), 1)
             for site in sample_sites(trace).values()]
    return sum(terms[1:], terms[0]).reshape(K, B)


class WakeSleep(AmortizedEngine):
    """Train a Helmholtz machine (a generative program and its recognition program).

    Args:
        model: a ``PyroModule`` program ``model(x)`` with Bernoulli (or other discrete)
            latents and its data in ``pyro.plate("data")``; continuous latents work with
            ``"ws"``, ``"rws"`` and ``"bihm"`` (the draws are detached: score-function
            gradients). With a sleep phase, exactly one observed site.
        guide: its recognition program ``guide(x)`` with the same latent site names.
        algorithm: ``"ws"``, ``"rws"``, ``"nrws"``, ``"bihm"`` or ``"nbihm"``.
        num_particles: ``K`` (``>= 2`` except for ``"ws"``).
        lr: learning rate; ``None`` takes the algorithm's default (:data:`DEFAULTS`).
        insomnia: RWS/NRWS weight of wake-q against sleep-q (1: wake only; default 0.5).
        damping: ``α >= 0`` of the natural-gradient preconditioner (natural algorithms);
            ``None`` takes the algorithm's default (:data:`DEFAULTS`).
        refresh_every: recompute the Fisher blocks' inverses every this many updates
            (natural algorithms; default 10). ``insomnia``, ``damping`` and
            ``refresh_every`` given to an algorithm that has no use for them are refused.
            A refresh that falls on a batch with fewer rows than
            the last refresh (an epoch's short last batch) waits one update. The cached
            inverses and the counters are part of :meth:`state_dict`, so a resumed run
            refreshes on the same updates. In a process group the blocks are those of
            the global batch (one all-reduce per refresh).
        fisher_weights: ``"sleep"`` (generative blocks from sleep samples) or
            ``"importance"`` (from the wake particles weighted by ``w̃``).
        fisher_samples: ``"batch"`` (default): each block is estimated from ``M = B``
            samples, one particle per data point (the ``K`` copies of ``x`` that the
            first recognition layer sees are one sample); ``"all"``: from all
            ``M = B K`` particles. With ``M < n_in + 1`` the blocks are solved through
            the Woodbury identity, so ``"batch"`` keeps the per-update cost of the
            preconditioner a small fraction of an RWS update; ``"all"`` gives lower-
            variance blocks at O(units · n_in²) memory traffic per update.
        optimizer: ``"sgd"``, ``"adam"``, ``"adamw"``, a ``torch.optim.Optimizer``
            class or a ``params -> Optimizer`` factory
            (:func:`posterity.infer.optim.make_optimizer`); ``None`` takes the
            algorithm's default. The natural algorithms hand it preconditioned
            gradients and are meant for plain SGD: an adaptive optimizer (Adam,
            RMSprop, ...) rescales every coordinate by its own gradient scale, which
            discards the preconditioner's step sizes, and is warned about.
        scheduler: ``"default"`` (the algorithm's, :data:`DEFAULTS`), ``None`` (a
            constant rate), ``"cosine"`` or an ``optimizer -> LRScheduler`` factory,
            stepped every update. A cosine decay without ``total_steps`` takes its
            length from :meth:`fit` (``epochs * ceil(N / batch_size)`` updates);
            stepping by hand then needs ``total_steps``, except under the default,
            which keeps the rate constant until ``fit`` gives the length.
        total_steps: the number of updates, for ``scheduler="cosine"``.

    Defaults (:data:`DEFAULTS`): for ``"nrws"`` and ``"nbihm"`` plain SGD at lr 0.05
    decayed along a cosine over the run that :meth:`fit` trains, ``damping`` 0.03
    (NRWS) / 0.05 (NBiHM) and ``refresh_every=10`` (the paper uses plain SGD and damping
    0.01-0.03; the cosine tables below chose the rest); Adam at a constant rate for the
    others. The first table is the constant-rate grid from which the non-natural
    defaults were chosen, the smallest worst-case loss over two nets at the benchmark budget
    (``bench/wake_sleep.py``: K = 10, batch 32, 471 updates on 5000 binarized-MNIST
    images, seed 0; validation ``log p̂(x)``, S = 100 on 300 images, of ``p`` or for
    BiHM of ``p*``; nets 784-100-10 / 784-200-200-10; "-" not run):

    ======================  ===================  =====================  ===================
    algorithm               lr 0.003             lr 0.01                lr 0.03
    ======================  ===================  =====================  ===================
    ws, Adam                -157.2* / -          -131.6 / -             **-121.5 / -**
    rws, Adam               - / -147.5           **-123.2 / -124.3**    -118.3 / -131.6
    nrws, SGD, α = 0.01     -127.7 / -122.3      -119.9 / -132.0        -138.2 / -218.3
    nrws, SGD, α = 0.03     - / -                **-122.5 / -121.6**    - / -
    bihm, Adam              - / -149.8           **-129.1 / -132.8**    -126.7 / -135.7
    nbihm, SGD, α = 0.01    -129.6 / -126.3      -121.2 / -138.9        -132.5 / -155.9
    nbihm, SGD, α = 0.03    - / -                **-124.1 / -125.1**    - / -
    ======================  ===================  =====================  ===================

    Bold: the defaults. (*) on 500 validation images. BiHM and NBiHM, which run
    past 471 updates to RWS's time budget, are read at their last curve point before
    it (420 / 395 updates) in the first runs.

    With α = 0.01 the natural algorithms at lr 0.01 oscillate on the deeper net and
    diverge at lr 0.03; α = 0.03 keeps lr 0.01 stable on both nets.

    With a known number of updates, a cosine decay (``scheduler="cosine"``,
    ``total_steps=``) lets the natural algorithms take larger steps early: validation
    ``log p̂(x)`` after 471 updates (S = 100 on 500 images, seeds 0 / 1), against each
    peer's best of Adam {0.01, 0.03} x {constant, cosine}:

    ===========================================  =====================  =====================
    setting                                      784-100-10             784-200-200-10
    ===========================================  =====================  =====================
    rws, Adam 0.01 (default)                     -123.7 / -124.0        -125.1 / -125.3
    rws, Adam 0.03, cosine                       -118.1 / -118.9        -
    rws, Adam 0.01, cosine                       -                      -130.3 / -129.5
    nrws, SGD 0.01, α = 0.03 (earlier default)   -123.6 / -123.8        -120.8 / -120.8
    nrws, SGD 0.03, α = 0.01, cosine             -116.1 / -116.1        -125.4 / -125.0
    nrws, SGD 0.03, α = 0.02, cosine (earlier)   -116.7 / -116.7 (‡)    -118.6 / -118.7 (‡)
    nrws, SGD 0.03, α = 0.03, cosine             -118.3 / -118.4 (†)    -117.4 / -117.4
    nrws, SGD 0.04, α = 0.02, cosine             -115.7 / -115.6 (‡)    -120.2 / - (‡)
    nrws, SGD 0.05, α = 0.02, cosine             -115.6 / -115.6 (‡)    -122.6 / - (‡)
    **nrws, SGD 0.05, α = 0.03, cosine**         **-115.7 / -115.3**    **-118.0 / -118.5**
    nrws, SGD 0.02, α = 0.01, cosine             -116.6 / -116.3 (†)    -120.6 / -120.5
    bihm, Adam 0.01 (default)                    -128.5 / -127.8        -131.3 / -131.1
    bihm, Adam 0.03, cosine                      -122.8 / -124.1        -
    nbihm, SGD 0.03, α = 0.01, cosine            -122.1 / -122.5        -
    nbihm, SGD 0.03, α = 0.02, cosine            -119.3 / -119.5        -130.8 / -
    nbihm, SGD 0.03, α = 0.03, cosine (earlier)  -120.2 / -120.7 (‡)    -126.1 / -125.5 (‡)
    nbihm, SGD 0.05, α = 0.03, cosine            -119.2 / -119.6 (‡)    -129.3 / - (‡)
    **nbihm, SGD 0.05, α = 0.05, cosine**        **-119.5 / -119.8**    **-124.8 / -124.6**
    nbihm, SGD 0.08, α = 0.03, cosine            -121.2 / - (‡)         -
    nbihm, SGD 0.08, α = 0.05, cosine            -118.9 / -119.0 (‡)    -129.1 / - (‡)
    nbihm, SGD 0.02, α = 0.01, cosine            -120.5 / -121.2        -137.9 / -
    ===========================================  =====================  =====================

    Bold: the defaults. (†) before the short-batch rule of ``refresh_every``; (‡) and the
    default's row with the current preconditioner (the earlier default's row read
    -116.4 / -116.5 and -118.5 / -118.2 before). RWS with Adam 0.03 constant reaches
    -119.8 / -120.1 (shallow) and -131.7 (deep, seed 0).

    The NRWS default was picked on the shallow net from lr {0.03, 0.04, 0.05} x
    α {0.02, 0.03} x {constant, cosine} by the updates it needs to reach tuned RWS's
    final validation value (curves every 30 updates), then checked on the deep net.
    Every constant rate, and lr 0.04 with α = 0.03, is still below that value after
    270 updates on seed 0 (-119.6 to -124.3; -118.4). The default reaches it after
    270 / 240 updates (seeds 0 / 1; 270 / 240 on seeds 2 / 3), where the earlier
    default needed 300 / 270 (270 / 270), and scores -127.0 / -127.3 on the test set
    (S = 1000 on 500 images) against tuned RWS's -131.3 / -131.3 and the earlier
    default's -128.0 / -128.5. On the deep net it reaches tuned RWS (Adam 0.01) after
    270 / 270 updates (earlier default: 240 / 270) and scores -129.6 / -129.5 on the
    test set (earlier default: -129.9 / -129.7). Damping 0.02 with lr 0.04-0.05 falls
    behind on the deep net.

    The NBiHM default was picked likewise from lr {0.05, 0.08} x α {0.03, 0.05}
    (cosine) against tuned BiHM (Adam 0.03, cosine; test -138.0 / -137.9). On the
    shallow net it reaches tuned BiHM's final value after 270 / 240 updates (seeds
    0 / 1; the earlier default 270 / 270; with a curve point every 10 updates on
    seed 0: 240 against 270) and scores -132.5 / -132.9 on the test set (earlier
    default -134.3 / -133.6). On the deep net it scores
    -136.1 / -137.3 (earlier default -139.4 / -138.3). Lr 0.05 with α = 0.03, and lr
    0.08 with α = 0.05, fall 3 nats behind the earlier default on the deep net.

    Example:
        >>> from posterity.infer.wake_sleep import helmholtz_machine
        >>> model, guide = helmholtz_machine((20, 8, 4))
        >>> x = torch.bernoulli(torch.full((64, 20), 0.3))
        >>> ws = WakeSleep(model, guide, algorithm="nrws", num_particles=5)
        >>> history = ws.fit(x, epochs=2, batch_size=16, progress=False)
        >>> len(history.epochs["train_loss"])
        2
    """

    def __init__(
        self,
        model: nn.Module,
        guide: nn.Module,
        algorithm: str = "rws",
        num_particles: int = 10,
        lr: float | None = None,
        insomnia: float | None = None,
        damping: float | None = None,
        refresh_every: int | None = None,
        fisher_weights: str = "sleep",
        fisher_samples: str = "batch",
        optimizer: train.OptimizerSpec | None = None,
        scheduler: train.SchedulerSpec | str = DEFAULT,
        total_steps: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module) or not isinstance(guide, nn.Module):
            raise TypeError("model and guide must be torch.nn.Module (e.g. PyroModule) programs")
        self.model, self.guide = model, guide
        self.algorithm = check_choice("algorithm", algorithm, ALGORITHMS)
        self.num_particles = check_int("num_particles", num_particles,
                                       1 if self.algorithm == "ws" else 2)
        defaults = DEFAULTS[self.algorithm]
        self.lr = check_positive("lr", defaults["lr"] if lr is None else lr)
        natural = self.algorithm in ("nrws", "nbihm")
        for name, value, applies, where in (
                ("insomnia", insomnia, self.algorithm in ("rws", "nrws"), "'rws' and 'nrws'"),
                ("damping", damping, natural, "the natural algorithms, 'nrws' and 'nbihm'"),
                ("refresh_every", refresh_every, natural,
                 "the natural algorithms, 'nrws' and 'nbihm'")):
            if value is not None and not applies:
                raise ValueError(f"{name}= applies to {where}; algorithm="
                                 f"{self.algorithm!r} has no use for it")
        insomnia = DEFAULT_INSOMNIA if insomnia is None else insomnia
        if not 0 <= insomnia <= 1:
            raise ValueError(f"insomnia must be in [0, 1], got {insomnia}")
        self.insomnia = float(insomnia)
        self.damping = check_positive(
            "damping", defaults.get("damping", 0.03) if damping is None else damping,
            allow_zero=True)
        self.refresh_every = check_int(
            "refresh_every", DEFAULT_REFRESH_EVERY if refresh_every is None else refresh_every,
            1)
        self.fisher_weights = check_choice("fisher_weights", fisher_weights, FISHER_WEIGHTS)
        self.fisher_samples = check_choice("fisher_samples", fisher_samples, ("batch", "all"))
        model_layers, guide_layers = layer_sizes(model), layer_sizes(guide)
        if model_layers is not None and guide_layers is not None and \
                model_layers != guide_layers:
            raise ValueError(f"model and guide layers differ: {model_layers} and "
                             f"{guide_layers}")
        params = self.parameters()
        if not params:
            raise ValueError("model and guide have no parameters to train")
        self._schedule_by_default = scheduler == DEFAULT
        if self._schedule_by_default:
            scheduler = defaults["scheduler"]
        self._scheduler_pending = scheduler == "cosine" and total_steps is None
        self.total_steps = total_steps
        self.optimizer, self.scheduler = train.make_optimizer(
            params, defaults["optimizer"] if optimizer is None else optimizer, lr=self.lr,
            scheduler=None if self._scheduler_pending else scheduler, total_steps=total_steps)
        self.natural = self.algorithm in ("nrws", "nbihm")
        if self.natural:
            if isinstance(self.optimizer, _ADAPTIVE):
                warnings.warn(
                    f"algorithm={self.algorithm!r} with {type(self.optimizer).__name__}: an "
                    f"adaptive optimizer divides each coordinate by its own running gradient "
                    f"scale, which discards the step sizes that the Fisher preconditioner "
                    f"chose; the natural algorithms are meant for plain SGD (the default, "
                    f"optimizer='sgd', as in Várady et al. 2022)", UserWarning, stacklevel=2)
            self.model_layers, self.guide_layers = linear_layers(model), linear_layers(guide)
            for role, layers in (("model", self.model_layers), ("guide", self.guide_layers)):
                if not layers:
                    warnings.warn(
                        f"algorithm={self.algorithm!r}: the {role} has no nn.Linear layer, "
                        "so its parameters get plain gradients; the natural algorithms "
                        "precondition nn.Linear layers whose outputs are Bernoulli logits",
                        UserWarning, stacklevel=2)
            self.preconditioner = BernoulliNaturalGradient(
                self.model_layers + self.guide_layers, self.damping, self.refresh_every)
            self.recorder = LayerRecorder(self.model_layers + self.guide_layers)
        self.history = train.History()
        self.num_steps = 0
        self._plate_nesting: int | None = None
        self._template: Tensor | None = None
        self._pending: dict[nn.Linear, tuple[Tensor, Tensor, Tensor | None]] = {}

    def config(self) -> dict[str, Any]:
        """The engine's settings as plain values (stored in checkpoints, so that a resume
        with different settings is caught). Settings that do not apply to the algorithm
        (damping and refresh interval of a non-natural one) are ``None``."""
        layers = layer_sizes(self.model)
        return {
            "engine": "WakeSleep",
            "algorithm": self.algorithm,
            "num_particles": self.num_particles,
            "lr": self.lr,
            "optimizer": type(self.optimizer).__name__,
            "scheduler": None if self.scheduler is None else type(self.scheduler).__name__,
            "insomnia": self.insomnia if self.uses_sleep and self.algorithm != "ws" else None,
            "damping": self.damping if self.natural else None,
            "refresh_every": self.refresh_every if self.natural else None,
            "fisher_weights": self.fisher_weights if self.natural else None,
            "fisher_samples": self.fisher_samples if self.natural else None,
            "model": type(self.model).__name__,
            "guide": type(self.guide).__name__,
            "layers": None if layers is None else list(layers),
        }

    @property
    def bidirectional(self) -> bool:
        return self.algorithm in ("bihm", "nbihm")

    @property
    def uses_sleep(self) -> bool:
        if self.bidirectional:
            return False
        return self.algorithm == "ws" or self.insomnia < 1

    @property
    def monitor(self) -> tuple[str, str]:
        return ("valid_log_likelihood", "max")

    def prepare(self, x: Tensor, name: str = "data") -> Tensor:
        x, self._plate_nesting = prepare_pair(self.model, self.guide, x, name)
        self._check_latents(x[:2])
        self._template = x[:1]  # the shape the sleep phase asks the model for
        return x

    def _check_latents(self, probe: Tensor) -> None:
        """Each latent site of the guide must propose values of the kind the model
        scores (a guide's Normal draws are not Bernoulli states), and the natural
        algorithms, whose Fisher blocks are those of Bernoulli layers, need Bernoulli
        latents in both programs."""
        with preserved_rng(probe.device), poutine.block(), torch.no_grad():
            guide_sites = sample_sites(poutine.trace(self.guide).get_trace(probe))
            model_sites = sample_sites(poutine.trace(self.model).get_trace(probe))
        observed = [name for name, site in model_sites.items() if site["is_observed"]]
        fisher_sleep = self.natural and self.fisher_weights == "sleep"
        if (self.uses_sleep or fisher_sleep) and len(observed) != 1:
            if self.algorithm == "ws":
                fix = "use algorithm='rws' with insomnia=1 (wake updates only) or 'bihm'"
            elif self.natural:
                fix = ("use fisher_weights='importance'"
                       + (" with insomnia=1" if self.uses_sleep else ""))
            else:
                fix = "use insomnia=1 (wake updates only) or algorithm='bihm'"
            what = ("has a sleep phase" if self.uses_sleep else
                    "takes its generative Fisher blocks from sleep samples")
            raise ObservedSitesError(
                f"algorithm={self.algorithm!r}"
                + (f" with insomnia={self.insomnia:g}" if self.algorithm in ("rws", "nrws")
                   else "")
                + f" {what}, whose ancestral draws need exactly one observed site; the "
                f"model observes {observed}: {fix}")
        for name, site in guide_sites.items():
            if name not in model_sites or model_sites[name]["is_observed"]:
                continue
            guide_fn, model_fn = _base(site["fn"]), _base(model_sites[name]["fn"])
            if _support(guide_fn) != _support(model_fn):
                raise ValueError(
                    f"latent site {name!r}: the guide proposes a {type(guide_fn).__name__} "
                    f"({_support(guide_fn)} values) where the model has a "
                    f"{type(model_fn).__name__} ({_support(model_fn)}); the guide must "
                    "propose values the model can score")
            if self.natural and not isinstance(model_fn, torch.distributions.Bernoulli):
                raise ValueError(
                    f"algorithm={self.algorithm!r} preconditions Bernoulli layers, but latent "
                    f"site {name!r} is a {type(model_fn).__name__}; use "
                    f"algorithm={self.algorithm[1:]!r}, which takes any discrete latents")

    # --- one update ----------------------------------------------------------------
    def losses(self, x: Tensor) -> dict[str, Tensor]:
        """The surrogate losses of one minibatch (their gradients are the algorithm's
        updates) and the bound, as tensors."""
        if self._plate_nesting is None:
            self.prepare(x)
        refresh = self.natural and self.preconditioner.due
        self._batch_rows = x.shape[0]
        if refresh:
            self.recorder.recording = True  # hooks only on refreshing updates
        particles = weighted_particles(self.model, self.guide, (x,),
                                       num_particles=self.num_particles,
                                       plate_nesting=self._plate_nesting,
                                       detach_latents=True)
        log_weights = particles.log_weights.detach()
        K = log_weights.shape[0]
        if self.bidirectional:
            normalized = torch.softmax(0.5 * log_weights, 0)
            bound = 2 * (torch.logsumexp(0.5 * log_weights, 0) - math.log(K))
        else:
            normalized = (torch.full_like(log_weights, 1.0 / K) if self.algorithm == "ws"
                          else torch.softmax(log_weights, 0))
            bound = torch.logsumexp(log_weights, 0) - math.log(K)
        log_p = particles.log_likelihood + particles.log_prior
        wake_p = -(normalized * log_p).sum(0).mean()
        wake_q = -(normalized * particles.log_guide).sum(0).mean()
        if refresh:
            self._refresh_guide_and_weighted_model(normalized)
        sleep_q = None
        if self.uses_sleep or (refresh and self.fisher_weights == "sleep"):
            if self.natural:
                self.recorder.recording = refresh
            # a sleep pass only for the Fisher blocks needs one draw per data point
            # with fisher_samples="batch" (only the first B rows are used)
            draws_per_row = self.num_particles if self.uses_sleep or \
                self.fisher_samples == "all" else 1
            with torch.no_grad():
                draws, observed = sleep_samples(self.model, x, draws_per_row,
                                                self._plate_nesting)
            if refresh:
                self._record(self.model_layers)
            if self.uses_sleep:
                latents = {n: v for n, v in draws.items() if n != observed}
                sleep_q = -guide_log_density(self.guide, draws[observed], latents,
                                             self._plate_nesting).mean()
        if self.natural:
            self.recorder.recording = False
            self.recorder.clear()
        if refresh:  # one call: in a process group, one all-reduce of every layer's blocks
            self.preconditioner.refresh(self._pending, postpone_short=True)
            self._pending = {}
        if self.algorithm == "ws":
            guide_loss = sleep_q
        elif self.bidirectional or self.insomnia == 1:
            guide_loss = wake_q
        else:
            guide_loss = self.insomnia * wake_q + (1 - self.insomnia) * sleep_q
        return {"model_loss": wake_p, "guide_loss": guide_loss, "bound": bound.mean()}

    def _record(self, layers: list[nn.Linear], weights: Tensor | None = None) -> None:
        """Queue the recorded statistics of ``layers`` for this update's refresh."""
        for layer in layers:
            recorded = self.recorder.take(layer)
            if recorded is None:
                continue
            inputs, logits = recorded
            layer_weights = None
            if weights is not None and inputs.shape[0] == weights.numel():
                layer_weights = weights.reshape(-1)
            elif self.fisher_samples == "batch":
                # rows are particle-major: the first B are one particle per data point
                inputs, logits = inputs[: self._batch_rows], logits[: self._batch_rows]
            self._pending[layer] = (inputs, logits, layer_weights)

    def _refresh_guide_and_weighted_model(self, normalized: Tensor) -> None:
        """Recognition blocks from the wake pass; generative ones too when they are
        importance-weighted (otherwise the sleep pass provides them)."""
        self._pending = {}
        self._record(self.guide_layers)
        if self.fisher_weights == "importance":
            # w̃ sums to one per data point: a scale shared by the ranks of a process
            # group, normalized over the global batch by the preconditioner
            self._record(self.model_layers, normalized)
        else:
            for layer in self.model_layers:  # the wake pass's records are not wanted
                self.recorder.records.pop(layer, None)

    def step(self, x: Tensor) -> dict[str, float]:
        """One update on the minibatch ``x``; returns ``{"loss": -bound, ...}``."""
        if self._scheduler_pending and not self._schedule_by_default:
            raise ValueError(
                "scheduler='cosine' needs its length: pass total_steps= to WakeSleep, or "
                "train with fit(), which sets it to epochs * ceil(N / batch_size)")
        with subnormals_flushed():
            losses = self.losses(x)
            train.optimizer_step(self.optimizer, losses["model_loss"] + losses["guide_loss"],
                                 self.scheduler,
                                 before_step=self.preconditioner.precondition if self.natural
                                 else None)
        self.num_steps += 1
        return {"loss": -losses["bound"].item(), "guide_loss": losses["guide_loss"].item()}

    # --- evaluation ----------------------------------------------------------------
    @torch.no_grad()
    def log_partition(self, num_samples: int = 1000, num_particles: int = 100,
                      batch_size: int = 100) -> tuple[float, float]:
        """BiHM's ``log Z`` and its standard error (delta method).

        ``Z = Σ_x p̃*(x) = E_{x ~ p}[p̃*(x) / p(x)]`` with ``p̃*(x) = (E_q √w)²``; both
        ``p̃*(x)`` and ``p(x) = E_q w`` are estimated from the same ``num_particles``
        draws of ``q(h | x)`` for each of ``num_samples`` sleep samples ``x ~ p``. The
        ratio is consistent as ``num_particles`` grows; ``Z ≤ 1`` by Cauchy-Schwarz.
        """
        if self._template is None:
            raise RuntimeError("log_partition needs the data's shape: call fit or prepare first")
        ratios = []
        for begin in range(0, num_samples, batch_size):
            rows = min(batch_size, num_samples - begin)
            like = self._template.expand(rows, *self._template.shape[1:])
            draws, observed = sleep_samples(self.model, like, 1, self._plate_nesting)
            x = draws[observed][0]
            log_w = weighted_particles(self.model, self.guide, (x,),
                                       num_particles=num_particles,
                                       plate_nesting=self._plate_nesting or 1).log_weights
            log_tilde = 2 * (torch.logsumexp(0.5 * log_w, 0) - math.log(num_particles))
            log_p = torch.logsumexp(log_w, 0) - math.log(num_particles)
            ratios.append(log_tilde - log_p)
        log_ratios = torch.cat(ratios)
        log_z = torch.logsumexp(log_ratios, 0) - math.log(log_ratios.numel())
        relative = torch.exp(log_ratios - log_z)
        return float(log_z), float(relative.std() / math.sqrt(log_ratios.numel()))

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, num_samples: int = 5000, batch_size: int = 100,
                       log_partition: float | None = None, progress: bool = False) -> Tensor:
        """``log p̂(x)`` per row: of the model ``p`` (importance-sampled with ``q``), or
        for BiHM of ``p*``: ``2 log mean_s √w_s - log Ẑ``."""
        from ..amortized.evaluate import log_likelihood

        if not self.bidirectional:
            return log_likelihood(self.model, self.guide, x, num_samples,
                                  batch_size=batch_size, progress=progress)
        check_int("num_samples", num_samples, 1)
        check_int("batch_size", batch_size, 1)
        if self._plate_nesting is None:
            x = self.prepare(x, "x")
        else:  # the same checks and conversions as before training
            x = prepare_pair(self.model, self.guide, x, "x")[0]
        if log_partition is None:
            log_partition = self.log_partition()[0]
        values = []
        for chunk in x.split(batch_size):
            total = None
            for part in range(0, num_samples, 500):
                k = min(500, num_samples - part)
                log_w = weighted_particles(self.model, self.guide, (chunk,), num_particles=k,
                                           plate_nesting=self._plate_nesting).log_weights
                piece = torch.logsumexp(0.5 * log_w, 0)
                total = piece if total is None else torch.logaddexp(total, piece)
            values.append(2 * (total - math.log(num_samples)) - log_partition)
        return torch.cat(values)

    @torch.no_grad()
    def validate(self, data: Tensor, num_samples: int = 100, batch_size: int = 500
                 ) -> dict[str, float]:
        """``log p̂(x)`` with ``num_samples`` particles (of ``p*`` for BiHM)."""
        log_partition = self.log_partition(num_samples=500, num_particles=num_samples)[0] \
            if self.bidirectional else None
        values = self.log_likelihood(data, num_samples, batch_size, log_partition)
        metrics = {"valid_log_likelihood": float(values.mean())}
        if log_partition is not None:
            metrics["log_partition"] = log_partition
        return metrics

    def fit(self, data: Tensor, epochs: int, batch_size: int = 32,
            valid: Tensor | None = None, **kwargs: Any) -> train.History:
        """Train on binary ``data`` (``[N, D]``) with the shared loop
        (:func:`posterity.infer.fit`)."""
        return super().fit(data, epochs, batch_size, valid, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        """Modules, optimizer, counters and, for the natural algorithms, the
        preconditioner's counter and cached factors (resume is bit-identical)."""
        state = super().state_dict()
        if self.natural:
            state["natural"] = self.preconditioner.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.natural:
            if state.get("natural") is not None:
                self.preconditioner.load_state_dict(state["natural"])
            else:  # a state without a preconditioner: rebuild it at the next update
                self.preconditioner.factors.clear()
                self.preconditioner.num_updates = 0

    def to_inference_data(self, x: Tensor, num_samples: int = 200, num_model_samples: int = 64,
                          log_partition: float | None = None, **kwargs: Any):
        """ArviZ ``InferenceData``: guide draws, log weights and PSIS k̂ for the rows of
        ``x``, the training history, and ``num_model_samples`` samples from the model
        (group ``model_samples``: ``model.sample(n)``, or the observed site of ancestral
        draws for a model without one). ``amortization.log_likelihood`` is ``log p̂(x)``
        of the top-down model ``p``; for BiHM, ``amortization.log_likelihood_star``
        holds ``log p̂*(x)`` of its model ``p*`` (as :meth:`log_likelihood`, with
        ``log_partition``, or ``log Ẑ`` from :meth:`log_partition` when it is ``None``,
        in the attributes)."""
        from ..amortized.inference_data import amortized_inference_data

        attrs = {"engine": "WakeSleep", "algorithm": self.algorithm,
                 "num_particles": self.num_particles}
        if self.natural:
            attrs["damping"] = self.damping
        idata = amortized_inference_data(self.model, self.guide, x, num_samples=num_samples,
                                         history=self.history, attrs=attrs,
                                         num_model_samples=num_model_samples, **kwargs)
        if self.bidirectional:  # BiHM's model is p*, not the top-down p
            if self._template is None:
                self.prepare(x, "x")
            if log_partition is None:
                with torch.no_grad():
                    log_partition = self.log_partition()[0]
            log_w = torch.as_tensor(idata.sample_stats["log_importance_weight"].values)
            log_w = log_w.reshape(-1, log_w.shape[-1])  # [S, N]
            star = 2 * (torch.logsumexp(0.5 * log_w, 0) - math.log(log_w.shape[0]))
            idata.amortization["log_likelihood_star"] = (
                "data", (star - log_partition).numpy())
            idata.amortization.attrs["log_partition"] = log_partition
            idata.posterior.attrs["log_partition"] = log_partition
        return idata


def layer_sizes(program: nn.Module) -> tuple[int, ...] | None:
    """The layer widths of a :func:`helmholtz_machine` program (its ``layers``), or
    ``None`` for a program of one's own (whose ``layers``, if any, may be modules)."""
    layers = getattr(program, "layers", None)
    if isinstance(layers, (tuple, list)) and layers and all(
            isinstance(n, int) and not isinstance(n, bool) for n in layers):
        return tuple(layers)
    return None


def _base(fn: Any) -> Any:
    """The distribution under ``Independent`` / ``.to_event`` wrappers."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def _support(fn: Any) -> str:
    """The kind of values ``fn`` puts mass on (``Boolean``, ``Real``, ...)."""
    support = fn.support
    while hasattr(support, "base_constraint"):
        support = support.base_constraint
    return type(support).__name__.lstrip("_")
