"""The protocols that engines, results, models and guides meet, written down.

Everything the engines ask of an object goes through one of these
:class:`typing.Protocol` classes; nothing else is assumed. They are structural: an
object conforms by having the methods, not by inheriting. Shapes use ``K`` for
particles, ``B`` for the rows of a minibatch and ``N`` for the rows of a data set.

* :class:`Trainable` (and :class:`Configurable`): what :func:`posterity.infer.fit` trains.
* :class:`Result`: what every ``run``/``fit`` returns, convertible to ArviZ.
* The density fast paths, which an engine calls instead of tracing the Pyro program
  when no Pyro handler that could change a density is active
  (:func:`posterity.infer.handlers.densities_unaltered`). Each must draw the same
  random numbers and return the same values as the traced program:

  - :class:`SamplesLatents` (guide) and :class:`ScoresJoint` (model): importance
    weights (:mod:`posterity.infer.importance`), with :class:`LatentDistributions`
    (guide) and :class:`PriorDistributions` (model) for the closed-form KL;
  - :class:`SamplesJoint` (model) and :class:`ScoresGuide` (guide): the wake-sleep
    sleep phase (:mod:`posterity.infer.wake_sleep.engine`);
  - :class:`MinibatchLogJoint` (model): SG-MCMC potentials
    (:mod:`posterity.infer.sgmcmc.potential`).

* :data:`DATA_PLATE`: the name of the plate that holds the data points.

Example:
    >>> import torch
    >>> from posterity.infer.protocols import SamplesLatents, ScoresJoint
    >>> class Model:
    ...     def log_joint(self, x, latents):
    ...         z = latents["z"]  # [K, B, 1]
    ...         return -(x - z).pow(2).sum(-1), -z.pow(2).sum(-1)
    >>> isinstance(Model(), ScoresJoint), isinstance(Model(), SamplesLatents)
    (True, False)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from torch import Tensor

if TYPE_CHECKING:
    import arviz as az

DATA_PLATE = "data"
"""The name of the ``pyro.plate`` over data points: ``pyro.plate(DATA_PLATE, N, ...)``.
Engines find per-data-point terms (importance weights, pointwise log-likelihoods,
minibatch scales) through it."""

OBSERVED_SITE = "obs"
"""The observed site of the built-in regression models (``pyro.sample("obs", ...,
obs=y)``), whose pointwise log-likelihood ArviZ reports."""


# --- training ---------------------------------------------------------------------------
@runtime_checkable
class Trainable(Protocol):
    """What :func:`posterity.infer.fit` trains.

    ``monitor = (name, "max" | "min")`` names the validation metric that early stopping
    and the best epoch follow. An engine may also implement :class:`Configurable`: its
    settings are then stored in checkpoints and compared on resume.
    """

    monitor: tuple[str, str]

    def step(self, batch: Any) -> dict[str, float]:
        """One update on a minibatch (``[B, ...]``, or a tuple of tensors sharing ``B``);
        returns the logged quantities as plain floats, ``"loss"`` first."""
        ...

    def validate(self, data: Any) -> dict[str, float]:
        """Validation metrics on ``data`` (``[N, ...]``), including ``monitor[0]``."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: module and optimizer state dicts,
        counters. Only tensors, numbers, strings, ``None`` and lists/tuples/dicts of
        them, so that checkpoints load with ``torch.load(weights_only=True)``."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        ...


@runtime_checkable
class Configurable(Protocol):
    """An engine whose settings describe its run (optional for a :class:`Trainable`)."""

    def config(self) -> dict[str, Any]:
        """The settings that define the model and the objective (sizes, objective,
        learning rate, ...) as plain values: numbers, strings, booleans, ``None`` and
        lists/dicts of them. A checkpoint stores them; resuming with different ones is
        refused (:class:`posterity.infer.checkpoints.CheckpointMismatchError`)."""
        ...


# --- results ----------------------------------------------------------------------------
@runtime_checkable
class Result(Protocol):
    """What every engine's ``run``/``fit`` returns (or the engine itself, for the
    amortized engines): it keeps what it needs to convert itself."""

    def to_inference_data(self) -> az.InferenceData:
        """ArviZ ``InferenceData`` with group names from
        :data:`posterity.infer.inference_data.GROUPS`; no argument is required."""
        ...


# --- density fast paths -----------------------------------------------------------------
@runtime_checkable
class SamplesLatents(Protocol):
    """Guide fast path of importance sampling."""

    def sample_latents(self, x: Tensor, num_particles: int, **kwargs: Any
                       ) -> tuple[dict[str, Tensor], Tensor]:
        """``K = num_particles`` draws per row of ``x`` (``[B, D]``):
        ``({site: [K, B, ...]}, log q(z | x) [K, B])``, site names as in the guide's
        program; reparameterized where the program's sites are."""
        ...


@runtime_checkable
class ScoresJoint(Protocol):
    """Model fast path of importance sampling."""

    def log_joint(self, x: Tensor, latents: dict[str, Tensor], **kwargs: Any
                  ) -> tuple[Tensor, Tensor]:
        """``(log p(x | z), log p(z))``, each ``[K, B]``, for ``x`` ``[B, D]`` and
        ``latents[site]`` ``[K, B, ...]``."""
        ...


@runtime_checkable
class LatentDistributions(Protocol):
    """Guide fast path of the closed-form KL (``analytic_kl``)."""

    def latent_distributions(self, x: Tensor, **kwargs: Any) -> dict[str, Any]:
        """``{site: q(z | x)}``, each a ``torch.distributions.Distribution`` with batch
        shape ``[B]`` for ``x`` ``[B, D]``, whose ``rsample((K,))`` draws what
        :meth:`SamplesLatents.sample_latents` draws."""
        ...


@runtime_checkable
class PriorDistributions(Protocol):
    """Model fast path of the closed-form KL (``analytic_kl``)."""

    def prior_distributions(self, x: Tensor, **kwargs: Any) -> dict[str, Any]:
        """``{site: p(z)}`` for every latent site (whose prior then may not depend on
        other latents), batch shape ``[]`` or ``[B]``."""
        ...


@runtime_checkable
class SamplesJoint(Protocol):
    """Model fast path of the wake-sleep sleep phase."""

    def sample_joint(self, x: Tensor, num_particles: int, **kwargs: Any) -> dict[str, Tensor]:
        """Ancestral draws of every site, latent and observed (the observed site is
        named ``"x"``), each ``[K, B, ...]``; ``x`` (``[B, D]``) gives ``B`` and the
        device, its values are not used."""
        ...


@runtime_checkable
class ScoresGuide(Protocol):
    """Guide fast path of the wake-sleep sleep phase."""

    def log_guide(self, x: Tensor, latents: dict[str, Tensor], **kwargs: Any) -> Tensor:
        """``log q(z | x)`` ``[K, B]`` of given draws ``latents[site]`` ``[K, B, ...]``
        for data ``x`` ``[K, B, D]``: the dreamed data, one row per particle."""
        ...


@runtime_checkable
class MinibatchLogJoint(Protocol):
    """Model fast path of SG-MCMC potentials."""

    def minibatch_log_joint(self, values: dict[str, Tensor], *args: Any, **kwargs: Any
                            ) -> Tensor:
        """The scalar minibatch estimate of ``log p(x, θ)`` at constrained ``values``:
        ``log p(θ) + (N / B) Σ_{n in batch} log p(x_n | θ)``, equal to the traced
        program's ``log_prob_sum()``, drawing its minibatch with the same random numbers
        as the program's subsampled :data:`DATA_PLATE`."""
        ...


# --- state-space models -----------------------------------------------------------------
@runtime_checkable
class StateSpaceModel(Protocol):
    """What the SMC engines (:mod:`posterity.infer.smc`) ask of a state-space model.

    :class:`posterity.models.StateSpaceModel` meets it: subclass it and declare the three
    laws; it derives the fast paths, the dimensions, ``forward(ys)`` and ``simulate(T)``.

    **Shapes.** A state is ``[..., state_dim]`` and every leading dimension is a batch
    dimension: the engines call the model with ``[d]`` (``simulate``, ``forward``),
    ``[N, d]`` (filters), ``[C, N, d]`` (particle Gibbs chains) and broadcasting pairs
    ``[M, 1, d]`` / ``[1, N, d]`` (backward kernels). Index coordinates with
    ``x[..., i]``; ``x[:, i]`` indexes particles and is refused. Each law is over vectors:
    ``event_shape == (state_dim,)`` (or ``(obs_dim,)``) and ``batch_shape`` equal to the
    argument's leading dimensions (a scalar law needs ``.to_event(1)``). The dimensions
    are read from the event shapes. Observations ``ys`` are ``[T, obs_dim]``.

    **Checks.** Every engine runs :func:`posterity.infer.smc.check_model` once when it is
    built and raises the first departure, naming the method and the shapes.
    ``transition_log_bound(t)`` (optional, for O(N) rejection backward sampling) is
    compared with every transition density the kernels compute; an exceeded bound warns,
    uses the exact kernel for that step and is listed in ``result.bound_violations``.
    """

    def initial(self) -> Any:
        """The law of ``x_0``: ``event_shape (state_dim,)``, ``batch_shape ()``."""
        ...

    def transition(self, x_prev: Tensor, t: int) -> Any:
        """The law of ``x_t`` given ``x_prev`` ``[..., state_dim]``: ``event_shape
        (state_dim,)``, ``batch_shape x_prev.shape[:-1]``."""
        ...

    def emission(self, x: Tensor, t: int) -> Any:
        """The law of ``y_t`` given ``x`` ``[..., state_dim]``: ``event_shape
        (obs_dim,)``, ``batch_shape x.shape[:-1]``."""
        ...

    def sample_transition(self, x_prev: Tensor, t: int) -> Tensor:
        """A draw ``[..., state_dim]`` of ``x_t`` for every state in ``x_prev``."""
        ...

    def transition_log_prob(self, x_prev: Tensor, x: Tensor, t: int) -> Tensor:
        """``log q_t(x | x_prev)``, broadcasting the leading dimensions of both."""
        ...

    def emission_log_prob(self, x: Tensor, y: Tensor, t: int) -> Tensor:
        """``log g_t(y | x)`` ``[...]`` for ``x`` ``[..., state_dim]`` and ``y``
        ``[obs_dim]``."""
        ...


@runtime_checkable
class BoundedTransition(Protocol):
    """The optional bound of a :class:`StateSpaceModel`'s transition density."""

    def transition_log_bound(self, t: int) -> Tensor | float:
        """An upper bound of ``log q_t(x' | x)`` over both arguments (a scalar)."""
        ...
