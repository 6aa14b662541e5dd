"""Checks of user input that fail early with a message naming the argument."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from torch import Tensor

from .importance import latent_names, sample_sites


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int at least ``minimum``, or a ``ValueError``/``TypeError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not (value > 0 or (allow_zero and value == 0)) or value != value:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return float(value)


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_finite(name: str, value: Tensor, *, error: type[Exception] = ValueError) -> Tensor:
    """``value`` unchanged if every entry is finite; otherwise ``error`` (a
    ``ValueError`` unless given, e.g. ``NonFiniteError`` for a diverging state) saying
    how many entries are NaN and Inf and where the first one is.

    Example:
        >>> check_finite("theta", torch.tensor([[0.0, 1.0], [float("nan"), 2.0]]))
        Traceback (most recent call last):
        ...
        ValueError: theta has 1 NaN and 0 Inf entries of 4 (the first at index (1, 0))
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    finite = torch.isfinite(value)
    if bool(finite.all()):
        return value
    nan = int(torch.isnan(value).sum())
    first = tuple(int(i) for i in (~finite).nonzero()[0]) if value.dim() else ()
    raise error(f"{name} has {nan} NaN and {int((~finite).sum()) - nan} Inf entries of "
                f"{value.numel()} (the first at index {first})")


def check_event_shape(
    name: str,
    value: Tensor,
    expected_shape: Iterable[int],
    batch_shape: Iterable[int] | None = None,
) -> Tensor:
    """``value`` unchanged if its trailing dimensions are exactly ``expected_shape``
    (and, with ``batch_shape``, its leading ones exactly ``batch_shape``): never a
    silent broadcast, e.g. of ``y`` ``[N, 1]`` against a model whose ``y`` is ``[N]``.

    Example:
        >>> y = torch.zeros(10, 1)
        >>> check_event_shape("y", y, (1,)).shape
        torch.Size([10, 1])
        >>> check_event_shape("y", y, (), batch_shape=(10,))
        Traceback (most recent call last):
        ...
        ValueError: y must have shape [10] (batch (10,), event ()), got [10, 1]
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    event = tuple(int(d) for d in expected_shape)
    shape = tuple(value.shape)
    if batch_shape is not None:
        batch = tuple(int(d) for d in batch_shape)
        if shape != batch + event:
            raise ValueError(f"{name} must have shape {list(batch + event)} (batch {batch}, "
                             f"event {event}), got {list(shape)}")
        return value
    if len(shape) < len(event) or shape[len(shape) - len(event):] != event:
        raise ValueError(f"{name} must have event shape {event} in its last dimensions "
                         f"([..., {', '.join(map(str, event))}]), got shape {list(shape)}")
    return value


def check_data(
    x: Any,
    name: str = "data",
    *,
    event_dim: int | None = None,
    like: Iterable[Tensor] = (),
) -> Tensor:
    """A finite floating tensor ``[N, ...]`` (``[N, event_dim]`` when given) on the device
    of ``like``'s floating tensors (the modules' parameters) and of one of their dtypes."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"{name} must have shape [N, D] (or [N, ...]: one row per data "
                         f"point), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if event_dim is not None and x.shape[1] != event_dim:
        raise ValueError(f"{name} must have {event_dim} columns, got shape {tuple(x.shape)}")
    # one float64 sum: finite exactly when every value is (float64 data that overflows
    # it gets the exact check)
    if not torch.isfinite(x.sum(dtype=torch.float64)):
        bad = ~torch.isfinite(x)
        if bad.any():
            rows = bad.flatten(1).any(-1).nonzero().flatten()[:5].tolist()
            raise ValueError(
                f"{name} contains NaN or Inf ({int(bad.sum())} entries; first rows {rows})"
            )
    floating = [t for t in like if t.is_floating_point()]
    if floating and floating[0].device != x.device:
        raise ValueError(
            f"{name} is on {x.device} but the model's parameters are on "
            f"{floating[0].device}; move one of them with .to(device)"
        )
    dtypes = sorted({t.dtype for t in floating}, key=str)
    if dtypes and x.dtype not in dtypes:
        shown = ", ".join(map(str, dtypes))
        raise ValueError(
            f"{name} has dtype {x.dtype} but the modules' parameters have {shown}; convert "
            f"the data ({name}.to({dtypes[0]})) or, before building the engine, the modules "
            f"(model.to({x.dtype}), guide.to({x.dtype}))"
        )
    return x


def check_model_guide(
    model: Callable, guide: Callable, args: tuple, kwargs: dict | None = None
) -> set[str]:
    """Trace both programs once; their latent sites must carry the same names.

    Returns the latent names.
    """
    kwargs = kwargs or {}
    with poutine.block(), torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    observed = [n for n, s in sample_sites(model_trace).items() if s["is_observed"]]
    if not observed:
        raise ValueError(
            "the model observes nothing: pass the data as obs= of a sample site (its sites "
            f"{sorted(sample_sites(model_trace))} are all latent)")
    _warn_untrained_params(model, guide, args, kwargs)
    model_latents = latent_names(model_trace)
    guide_latents = set(sample_sites(guide_trace))
    if model_latents != guide_latents:
        raise ValueError(
            "the guide's latent sites must match the model's: "
            f"model has {sorted(model_latents)}, guide has {sorted(guide_latents)} "
            f"(missing in guide: {sorted(model_latents - guide_latents)}, "
            f"unknown to model: {sorted(guide_latents - model_latents)})"
        )
    return model_latents


_PACKAGE = Path(__file__).resolve().parents[1]
_INTERNAL = tuple(str(_PACKAGE / d) + os.sep for d in ("infer", "layers", "models", "guides",
                                                       "datasets")) + tuple(
    str(Path(module.__file__).resolve().parent) + os.sep for module in (torch, pyro)
) + (contextlib.__file__,)


def user_stacklevel() -> int:
    """The ``stacklevel`` that attributes a warning raised by the caller to the first
    frame outside posterity's own modules and the torch and pyro code between them
    (decorators such as ``torch.no_grad``): the user's line."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    return level


def _warn_untrained_params(model: Any, guide: Any, args: tuple, kwargs: dict) -> None:
    """Warn about ``pyro.param`` sites that are not parameters of the two modules: the
    engines optimize the modules' parameters only. Traced in a scratch parameter store,
    where a module's parameters are registered as themselves."""
    params = [p for m in (model, guide) if hasattr(m, "parameters") for p in m.parameters()]
    owned, flags = {id(p) for p in params}, [(p, p.requires_grad) for p in params]
    try:
        with pyro.get_param_store().scope(), poutine.block(), torch.no_grad():
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                *args, **kwargs)
    except Exception:  # noqa: BLE001 (a program that reads a stored pyro.param with no
        return         # initial value; the traces of the real store ran: no warning)
    finally:  # registering a parameter turns its requires_grad on
        for p, flag in flags:
            p.requires_grad_(flag)
    loose = []
    for trace in (guide_trace, model_trace):
        for name, site in trace.nodes.items():
            if site["type"] != "param" or not isinstance(site["value"], Tensor):
                continue
            value = site["value"]
            leaf = value.unconstrained() if callable(getattr(value, "unconstrained", None)) \
                else value
            if leaf is None:  # a weak reference into the scratch store, gone with it
                leaf = value
            if id(leaf) in owned or id(value) in owned or name in loose:
                continue
            # Pyro stores a non-contiguous parameter as a contiguous copy
            if not any(p.shape == leaf.shape and torch.equal(p.detach(), leaf.detach())
                       for p in params):
                loose.append(name)
    if loose:
        warnings.warn(
            f"pyro.param sites {loose} are not parameters of the model or guide module, so "
            "the engine does not train them: make them attributes of the module "
            "(nn.Parameter, or PyroParam with a constraint)", UserWarning,
            stacklevel=user_stacklevel())


def validate_data_for(module: Any, x: Tensor, name: str = "data") -> None:
    """Run a module's own ``validate_data(x)`` hook when it declares one."""
    hook = getattr(module, "validate_data", None)
    if callable(hook):
        hook(x, name=name)


@contextlib.contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Run a probe without moving the random streams that the real work will use."""
    state = pyro.util.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        yield
    finally:
        pyro.util.set_rng_state(state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, device)


def prepare_pair(
    model: Any,
    guide: Any,
    x: Any,
    name: str = "data",
    *,
    require_rsample: bool = False,
) -> tuple[Tensor, int]:
    """Check data and a model/guide pair once, before any hot loop.

    The probe traces leave the random number generators as they found them.
    Returns the checked data and the plate nesting that the particle plate sits beyond.
    """
    like = [p for m in (model, guide) if hasattr(m, "parameters") for p in m.parameters()]
    x = check_data(x, name, like=like)
    validate_data_for(model, x, name)
    with preserved_rng(x.device), parameters_kept(model, guide):
        return x, _probe_pair(model, guide, x[:2], require_rsample)


@contextlib.contextmanager
def parameters_kept(*modules: Any) -> Iterator[None]:
    """Refuse, with the modules' own parameters put back, a trace that swapped in others.

    Pyro keeps one global parameter store keyed by attribute path: a ``PyroModule``
    whose ``PyroParam`` shares its path with an entry made by another instance (an
    earlier model of the same class in the session) takes that instance's tensor when
    traced, and the engine, which trains the module's own parameters, would train
    tensors the programs no longer read."""
    owners = [m for m in modules if isinstance(m, torch.nn.Module)]
    before = [dict(m.named_parameters()) for m in owners]
    try:
        yield
    except Exception as error:  # a swapped-in tensor of another shape fails the trace
        problem = _restore_parameters(owners, before)
        if problem is not None:
            raise problem from error
        raise
    problem = _restore_parameters(owners, before)
    if problem is not None:
        raise problem


def _restore_parameters(owners: list, before: list[dict]) -> ValueError | None:
    """Put back every parameter a trace replaced; the error that says why, or None."""
    swapped, shared = [], []
    for index, (module, params) in enumerate(zip(owners, before)):
        others = {id(p) for i, kept in enumerate(before) if i != index for p in kept.values()}
        for path, original in params.items():
            owner, _, leaf = path.rpartition(".")
            holder = module.get_submodule(owner) if owner else module
            taken = holder._parameters.get(leaf)
            if taken is not original:
                holder._parameters[leaf] = original
                (shared if id(taken) in others else swapped).append(
                    f"{type(module).__name__}.{path}")
    if shared:
        return ValueError(
            f"the programs' parameters {shared} share their names in Pyro's global "
            "parameter store with parameters of the other program (the same attribute "
            "path in model and guide), so Pyro would hand both programs one tensor: "
            "rename one of them (their own parameters are restored)")
    if swapped:
        return ValueError(
            f"tracing the programs replaced their parameters {swapped} by tensors of "
            "the same name in Pyro's global parameter store, left there by another "
            "instance of the same class: call pyro.clear_param_store() before training "
            "or evaluating these modules (their own parameters are restored; the engines "
            "train a module's own parameters)")
    return None


def _probe_pair(model: Any, guide: Any, probe: Tensor, require_rsample: bool) -> int:
    from .importance import max_plate_nesting

    check_model_guide(model, guide, (probe,))
    if require_rsample:
        with poutine.block(), torch.no_grad():
            guide_trace = poutine.trace(guide).get_trace(probe)
        for site in sample_sites(guide_trace).values():
            if not site["fn"].has_rsample:
                raise ValueError(
                    f"guide site '{site['name']}' ({type(site['fn']).__name__}) is not "
                    "reparameterizable; AmortizedVI needs rsample. For discrete latents "
                    "use a wake-sleep engine"
                )
    return max_plate_nesting(model, guide, probe)
