"""The state-space protocol, checked: every call the SMC engines make on a model.

:func:`check_model` runs a :class:`~posterity.models.StateSpaceModel` through those
calls, with states batched as the engines batch them (``[d]`` in ``simulate`` and the
Pyro program, ``[N, d]`` in the filter, ``[C, N, d]`` over particle Gibbs chains, and
``[M, 1, d]`` against ``[1, N, d]`` in the backward kernels), and lists every
departure from the protocol. The engines run the same probes once, when they are built
(:func:`validate_model`), and raise on the first problem with the method named, so
that a model error never surfaces as a traceback from inside torch or Pyro.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from posterity.models.ssm import StateSpaceModel

from ..checks import preserved_rng

#: batch shapes the probes use: none, particles, chains of particles
_BATCHES = ((), (3,), (2, 3))
_INDEX_HINT = ("leading dimensions of the state are batch dimensions: index coordinates "
               "with x[..., i], not x[:, i]")


@dataclass
class ModelCheck:
    """What :func:`check_model` found.

    Attributes:
        problems: one line per call that does not conform (empty when the model
            conforms), each naming the method, what it returned and what was expected.
        warnings: findings that engines tolerate but report (a ``transition_log_bound``
            exceeded by a probed density).
        state_dim, obs_dim: the dimensions read from the laws (``None`` if unreadable).
        dtype: the dtype of the model's states.
    """

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    state_dim: int | None = None
    obs_dim: int | None = None
    dtype: torch.dtype | None = None
    _errors: list[type] = field(default_factory=list, repr=False)
    _failed: set[str] = field(default_factory=set, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        if self.ok and not self.warnings:
            return f"the model conforms (state_dim={self.state_dim}, obs_dim={self.obs_dim})"
        lines = [f"- {p}" for p in self.problems] + [f"- warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def raise_if_failed(self, name: str = "ssm") -> None:
        """Raise the first problem's error type with every problem listed."""
        if self.problems:
            error = self._errors[0] if self._errors else ValueError
            raise error(f"{name} does not meet the StateSpaceModel protocol:\n" +
                        "\n".join(f"- {p}" for p in self.problems))

    def _add(self, error: type, message: str) -> None:
        self.problems.append(message)
        self._errors.append(error)


def _index_hint(error: Exception) -> str:
    """The batch-indexing hint, for errors that look like a shape or index mistake (a
    NameError or a NaN argument gets its own message, unhinted); a parameter outside its
    law's support gets the hint to constrain it."""
    text = str(error).lower()
    if "expected parameter" in text or "to satisfy the constraint" in text:
        return (" (a parameter of the law is outside its support, e.g. a negative scale: "
                "keep it inside, e.g. PyroParam(value, constraint=constraints.positive) "
                "or exp() of an unconstrained parameter)")
    shapes = ("shape", "size", "dimension", "index", "broadcast", "mat1")
    return (f" ({_INDEX_HINT})" if isinstance(error, IndexError) or any(w in text for w in shapes)
            else "")


def _method(name: str) -> str:
    """The method a probe calls, without the shapes it was called with: each method's
    problem is reported once, at the first batch shape that shows it."""
    return name.split(" with ")[0]


def _shape(x) -> tuple:
    return tuple(x.shape) if isinstance(x, Tensor) else ()


def _law(check: ModelCheck, method: str, call, batch: tuple, dim: int | None,
         dim_name: str, args: tuple = ()):
    """Call ``call(*args)``; check it returns a law with ``event_shape (dim,)`` and
    ``batch_shape == batch``. Returns the law, or None after recording the problem (or
    when this method's problem is already recorded)."""
    if _method(method) in check._failed:
        return None
    check._failed.add(_method(method))
    try:
        law = call(*args)
    except Exception as error:  # a user's method failing: name it, with the shapes
        check._add(type(error) if isinstance(error, (TypeError, ValueError)) else ValueError,
                   f"{method} raised {type(error).__name__}: {error}" + _index_hint(error))
        return None
    if not hasattr(law, "event_shape") or not callable(getattr(law, "log_prob", None)):
        check._add(TypeError, f"{method} must return a pyro.distributions law, got "
                              f"{type(law).__name__}")
        return None
    event, got_batch = tuple(law.event_shape), tuple(law.batch_shape)
    if len(event) != 1 or (dim is not None and event[0] != dim):
        what = "state" if dim_name == "state_dim" else "observation"
        hint = (f" — add .to_event(1) (a scalar {what} is a vector of length 1)"
                if not event else "")
        expected = f"({dim_name},)" if dim is None else f"({dim},) = ({dim_name},)"
        check._add(ValueError, f"{method} returned a law with event_shape {event}; "
                               f"expected {expected}{hint}")
        return None
    if got_batch != batch:
        check._add(ValueError, f"{method} returned a law with batch_shape {got_batch}; "
                               f"expected {batch} ({_INDEX_HINT})")
        return None
    check._failed.discard(_method(method))
    return law


def _tensor(check: ModelCheck, method: str, call, expected: tuple, dtype,
            args: tuple = ()) -> Tensor | None:
    if _method(method) in check._failed:
        return None
    check._failed.add(_method(method))
    try:
        value = call(*args)
    except Exception as error:
        check._add(type(error) if isinstance(error, (TypeError, ValueError)) else ValueError,
                   f"{method} raised {type(error).__name__}: {error}{_index_hint(error)}")
        return None
    if not isinstance(value, Tensor):
        check._add(TypeError, f"{method} must return a Tensor, got {type(value).__name__}")
        return None
    if tuple(value.shape) != expected:
        check._add(ValueError, f"{method} returned shape {tuple(value.shape)}; expected "
                               f"{expected} ({_INDEX_HINT})")
        return None
    if value.dtype != dtype:
        check._add(TypeError, f"{method} returned dtype {value.dtype}; the model's states are "
                              f"{dtype} (create tensors with new_zeros / dtype=x.dtype)")
        return value
    check._failed.discard(_method(method))
    return value


def check_model(ssm: StateSpaceModel, ys: Tensor | None = None) -> ModelCheck:
    """Run ``ssm`` through every call the SMC engines make and report what does not
    conform to the protocol of :class:`~posterity.models.StateSpaceModel`.

    The probes draw states from the model itself and leave the random number
    generators as they found them.

    Args:
        ssm: the model.
        ys: observations ``[T, obs_dim]`` (optional): checked and converted as the
            engines convert them, and scored by ``emission`` at every step.

    Returns:
        A :class:`ModelCheck`; ``str(result)`` lists the problems, and
        ``result.raise_if_failed()`` raises them.

    Example:
        >>> import pyro.distributions as dist
        >>> import torch
        >>> from posterity.models import StateSpaceModel
        >>> class Scalar(StateSpaceModel):  # laws without .to_event(1)
        ...     def initial(self):
        ...         return dist.Normal(torch.zeros(1), 1.0)
        ...     def transition(self, x_prev, t):
        ...         return dist.Normal(0.9 * x_prev, 1.0)
        ...     def emission(self, x, t):
        ...         return dist.Normal(x, 1.0)
        >>> report = check_model(Scalar())
        >>> report.ok
        False
        >>> print(report.problems[0])  # doctest: +ELLIPSIS
        initial() returned a law with event_shape (); expected (state_dim,) — add .to_event(1)...
    """
    if not isinstance(ssm, StateSpaceModel):
        raise TypeError(f"ssm must be a posterity.models.StateSpaceModel, got "
                        f"{type(ssm).__name__}")
    check = ModelCheck()
    try:
        reference = ssm.reference_tensor()
    except Exception as error:
        check._add(ValueError, f"initial() raised {type(error).__name__}: {error}")
        return check
    with torch.no_grad(), preserved_rng(reference.device):
        _probe(ssm, check, reference, ys)
    return check


def _probe(ssm: StateSpaceModel, check: ModelCheck, reference: Tensor, ys) -> None:
    init = _law(check, "initial()", ssm.initial, (), None, "state_dim")
    if init is None:
        if check.problems and "batch_shape" in check.problems[-1]:
            check.problems[-1] = check.problems[-1].replace(
                _INDEX_HINT, "initial() is the law of one state x_0: add .to_event(1) to "
                             "make a scalar law over [state_dim] a vector law")
        init = _scalar_law(ssm)
        if init is None:
            return
        # A law over [d] written without .to_event(1): its draws still have the state's
        # shape, so the other methods can be probed and their problems listed too.
    d = int(init.event_shape[0]) if init.event_shape else int(init.batch_shape[0])
    check.state_dim, check.dtype = d, reference.dtype
    declared = ssm.__dict__.get("_state_dim", getattr(type(ssm), "state_dim", None))
    if isinstance(declared, int) and declared != d:
        check._add(ValueError, f"state_dim is declared {declared} but initial() has "
                               f"event_shape ({d},)")
    x0 = init.sample()
    if x0.dtype != reference.dtype or x0.device != reference.device:
        check._add(TypeError, f"initial() draws {x0.dtype} on {x0.device} but the model's "
                              f"parameters are {reference.dtype} on {reference.device}: "
                              "create tensors from the parameters (new_zeros, dtype=, device=)")
    if ys is not None:
        try:
            ys = ssm.check_observations(ys, allow_missing=True)
        except (TypeError, ValueError) as error:
            if not str(error).startswith("emission(x, t)"):  # else the probes report it
                check._add(type(error), f"ys: {error}")
            ys = None
        except Exception:  # noqa: BLE001 (obs_dim calls emission, whose failure the
            ys = None      # emission probes below report with the method named)
    obs_dim = None
    bound = _bound(ssm, check)
    for batch in _BATCHES:
        x = init.sample(batch)
        law = _law(check, f"transition(x_prev, t) with x_prev of shape {batch + (d,)}",
                   ssm.transition, batch, d, "state_dim", (x, 1))
        if law is not None:
            x_next = law.sample()
            _tensor(check, f"transition(x_prev, t).log_prob(x) with x of shape "
                           f"{batch + (d,)}", law.log_prob, batch, reference.dtype, (x_next,))
        else:
            x_next = init.sample(batch)
        emission = _law(check, f"emission(x, t) with x of shape {batch + (d,)}",
                        ssm.emission, batch, obs_dim, "obs_dim", (x_next, 1))
        if emission is None:
            continue
        obs_dim = int(emission.event_shape[0])
        draw = emission.sample()
        if (draw.is_floating_point() and draw.dtype != reference.dtype
                and "emission draws" not in check._failed):
            check._failed.add("emission draws")
            check._add(TypeError, f"emission(x, t) draws {draw.dtype} but the model's states "
                                  f"are {reference.dtype} (create tensors with new_zeros / "
                                  "dtype=x.dtype)")
        y = draw[(0,) * len(batch)] if ys is None else ys[min(1, len(ys) - 1)]
        if torch.isnan(y).any():
            y = emission.sample()[(0,) * len(batch)]
        # the fast paths the engines call in their hot loops (the transition's default
        # ones derive from transition(), whose problem is already listed when law is None)
        log_q = None
        if law is not None:
            _tensor(check, f"sample_transition(x_prev, t) with x_prev of shape "
                           f"{batch + (d,)}", ssm.sample_transition, batch + (d,),
                    reference.dtype, (x, 1))
            log_q = _tensor(check, f"transition_log_prob(x_prev, x, t) with shapes "
                                   f"{batch + (d,)}", ssm.transition_log_prob, batch,
                            reference.dtype, (x, x_next, 1))
        _tensor(check, f"emission_log_prob(x, y, t) with x of shape {batch + (d,)}",
                ssm.emission_log_prob, batch, reference.dtype, (x_next, y, 1))
        if bound is not None and law is not None and log_q is not None:
            _compare_bound(check, bound, law, log_q)
    check.obs_dim = obs_dim
    declared = ssm.__dict__.get("_obs_dim", getattr(type(ssm), "obs_dim", None))
    if isinstance(declared, int) and obs_dim is not None and declared != obs_dim:
        check._add(ValueError, f"obs_dim is declared {declared} but emission(x, t) has "
                               f"event_shape ({obs_dim},)")
    # the backward kernels' call: targets [M, 1, d] against previous particles [1, N, d]
    previous, targets = init.sample((1, 4)), init.sample((3, 1))
    if "transition(x_prev, t)" not in check._failed:
        _tensor(check, "transition_log_prob(x_prev, x, t) with x_prev [1, 4, d] and x [3, 1, d] "
                       "(backward kernels broadcast them)",
                ssm.transition_log_prob, (3, 4), reference.dtype, (previous, targets, 1))
    if ys is not None and obs_dim is not None and not check.problems:
        _score_observations(ssm, check, init, ys)
    if not check.problems:
        try:
            import pyro
            import pyro.poutine as poutine

            data = ys[:2] if ys is not None else torch.stack(
                [ssm.emission(x0, 0).sample(), ssm.emission(x0, 1).sample()])
            # Tracing a PyroModule registers its parameters in Pyro's param store, which
            # turns requires_grad on: use a scratch store and restore the flags.
            flags = [(p, p.requires_grad) for p in ssm.parameters()]
            try:
                with pyro.get_param_store().scope():
                    poutine.trace(ssm).get_trace(data.nan_to_num())
            finally:
                for p, flag in flags:
                    p.requires_grad_(flag)
        except Exception as error:
            check._add(ValueError, f"the Pyro program forward(ys) raised "
                                   f"{type(error).__name__}: {error}")


def _scalar_law(ssm: StateSpaceModel):
    """``initial()`` when it is a law over ``[d]`` of scalar events (``.to_event(1)``
    forgotten), else None."""
    try:
        law = ssm.initial()
    except Exception:  # noqa: BLE001 (already reported by the probe of initial())
        return None
    if tuple(getattr(law, "event_shape", (0,))) == () and len(law.batch_shape) == 1:
        return law
    return None


def _bound(ssm: StateSpaceModel, check: ModelCheck) -> Tensor | None:
    method = getattr(ssm, "transition_log_bound", None)
    if not callable(method):
        return None
    try:
        value = torch.as_tensor(method(1))
    except Exception as error:
        check._add(ValueError, f"transition_log_bound(t) raised {type(error).__name__}: {error}")
        return None
    if value.numel() != 1 or not torch.isfinite(value).all():
        check._add(ValueError, f"transition_log_bound(t) must return a finite scalar, got "
                               f"{value!r}")
        return None
    return value.reshape(())


def _compare_bound(check: ModelCheck, bound: Tensor, law, log_q: Tensor) -> None:
    """The bound against the densities at the probes and at the laws' means (the modes
    of the usual unimodal laws)."""
    densities = [log_q.flatten()]
    try:
        densities.append(law.log_prob(law.mean).flatten())
    except (NotImplementedError, ValueError):
        pass
    top = float(torch.cat(densities).max())
    if top > float(bound) + 1e-4 * max(1.0, abs(float(bound))) and not check.warnings:
        check.warnings.append(
            f"transition_log_bound(1) = {float(bound):.4g} is not an upper bound: a "
            f"transition log-density reaches {top:.4g} ({top - float(bound):.3g} nats "
            "above); rejection backward sampling would be biased (engines fall back to "
            "the exact kernel where they see it)")


def _score_observations(ssm: StateSpaceModel, check: ModelCheck, init, ys: Tensor) -> None:
    x = init.sample()
    for t in range(ys.shape[0]):
        if torch.isnan(ys[t]).any():
            continue
        try:
            value = ssm.emission_log_prob(x, ys[t], t)
        except Exception as error:  # e.g. an observation outside the emission's support
            check._add(type(error) if isinstance(error, (TypeError, ValueError)) else ValueError,
                       f"emission_log_prob(x, y, t) raised {type(error).__name__} at time step "
                       f"{t} (y = {ys[t].tolist()}): {error}")
            return
        if torch.isnan(value).any():
            check._add(ValueError, f"emission_log_prob(x, y, t) is NaN at time step {t}")
            return


def validate_model(ssm) -> StateSpaceModel:
    """What every engine calls when it is built: :func:`check_model` once per model,
    dtype and device (cached on the model), raising the problems it finds."""
    if not isinstance(ssm, StateSpaceModel):
        raise TypeError(f"ssm must be a posterity.models.StateSpaceModel, got "
                        f"{type(ssm).__name__}")
    try:
        reference = ssm.reference_tensor()
        key = (type(ssm), reference.dtype, reference.device)
    except Exception:
        key = None
    if key is not None and ssm.__dict__.get("_posterity_checked") == key:
        return ssm
    check_model(ssm).raise_if_failed()
    ssm.__dict__["_posterity_checked"] = key
    return ssm
