"""β-gated layers of the Multi-Rate VAE (Bae et al., ICLR 2023).

Each linear layer's pre-activations are multiplied, unit by unit, by
``gate(w * u + b)``, where ``u`` is the standardized ``log β`` and ``(w, b)`` are two
parameters per unit. Three gate shapes (``GATES``), the first two 1 at their starting
``b`` (``sqrt_relu`` starts at 0.93):

* ``"two_sigmoid"``, ``2 sigmoid(x)``: the encoder's gates and the decoder's gate on
  each latent dimension. The paper's encoder gate is the sigmoid (section 4.2), which
  can only attenuate: the shared weights settle at the rates that suit the average β,
  and a gate below 1 cannot give the small β more. With the sigmoid, the MR-VAE's rate at
  β = 0.01 stayed near 43 nats where the β-VAE reached 89 (784-200-20); with
  ``2 sigmoid`` the excess objective over five β-VAEs in ``bench/mrvae.py --protocol
  short`` went from -7.5 / +1.1 / +2.6 / -1.2 / +4.0 % to -14.3 / -6.1 / -3.3 / -5.3 /
  +2.8 % at β = 0.01 / 0.1 / 1 / 3 / 10. On the decoder input (:class:`GatedScale`) it
  lets each latent direction get its own factor, as the linear analysis's optimal
  decoder ``sqrt(1 - β σ² / λ_i)`` does.
* ``"softplus"``, ``softplus(x) / log 2``: the decoder's hidden units and outputs. It
  has no ceiling, so a decoder unit can be amplified at small β as far as it needs (a
  sharper decoder for more precise codes), and a closed unit never reaches 0 exactly,
  so it can reopen.
  Against the paper's ``"sqrt_relu"`` gates on the hidden units and ``2 sigmoid`` on the
  outputs, in ``bench/mrvae.py --protocol full`` (784-200-200-50, 20 epochs) the excess
  went from +19.9 / +0.6 / -1.5 / -0.1 / -0.6 % to +16.3 / -2.6 / -0.8 / -0.2 / -1.2 %.
* ``"sqrt_relu"``, ``sqrt(relu(1 - exp(x)))``: the paper's decoder gate, the form of the
  linear β-VAE's optimal decoder scales. It is kept as an option: a unit whose gate
  reaches 0 gets no gradient and stays off at every β (an output unit switched off
  early froze its pixel's logit at 0 and cost 0.23 nats at β = 0.01 in the linear check
  of ``tests/test_multirate.py``).

With ``rank > 0`` a :class:`GatedLinear` also has β-dependent weights ``u M_out M_in``
of that rank, so that β can turn the directions a layer reads as well as scale its
units: the best-response form of self-tuning networks (MacKay et al., ICLR 2019), whose
hypernetwork is the source of the MR-VAE's gates, kept to a few directions. The
multi-rate modules use rank 16 in every gated layer (``response_rank``); in
``bench/mrvae.py --protocol full`` (20 epochs, softplus decoder gates) it moved the
excess from +16.3 / -2.6 / -0.8 / -0.2 / -1.2 % to +14.0 / -4.1 / -0.3 / -0.4 / -1.7 %
(seed 1: +12.9 / -4.6 / -0.2 / -0.2 / -1.4 %), the gain coming from the encoder's
layers (encoder alone: +14.7 / -3.5 / -0.6 / -0.1 / -0.7 %; decoder alone: +17.0 %
at β = 0.01); rank 64 did no better (+14.6 %), and the same extra weights on a fast
learning rate diverged.

``degree=2`` (``response_degree=2`` of the multi-rate modules) adds a second block of
that rank whose coefficient is ``u**2 - 1`` (:func:`hermite_features`), so that the
weights can turn faster over part of the β range than over the rest. After 200 epochs of
``bench/mrvae.py --protocol full`` it moved the excess of the mean of four seeds over
the β-VAEs' from +0.99 / -6.30 / +1.08 / -1.26 / -1.74 % to +0.92 / -6.80 / +1.01 /
-1.17 / -1.64 % at a constant rate, and with a cosine schedule (two seeds) from +2.22 /
-7.51 / +2.54 / +0.50 / -1.15 % to +1.79 / -8.19 / +2.37 / +0.30 / -1.64 %, for 11 %
more parameters than degree 1. It is not the default because it is less stable: at lr
3e-3 it was behind degree 1 at every β after 3 epochs of the same protocol (17 % at
β = 0.01), at lr 1e-2 its loss became infinite in the second epoch where degree 1
trains, and the linear check of ``tests/test_multirate.py`` (lr 3e-2) diverges with it,
with or without the β warm-up.

The networks see ``u``, ``log β`` standardized by :class:`BetaStandardizer` over the
range a run trains on: ``beta_range`` (the β to serve) and ``extension`` decades below
it (``DEFAULT_BETA_EXTENSION = 2``, the default ``beta_extension`` of
:class:`posterity.infer.amortized.AmortizedVI`, which draws β over that range).

The gate biases train at the base learning rate and only the slopes get the faster one
(:func:`gate_parameters`, ``slopes_only``); a fast bias closed most latent units at
every β. The encoder's output gates and the decoder's latent input gates start
staggered over the β range (:func:`stagger_gates`), the others flat.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .networks import activation_module, check_layer_sizes

DEFAULT_BETA_RANGE = (0.01, 10.0)
# Decades of β below ``beta_range`` that a multi-rate run also trains on (see
# BetaStandardizer and the beta_extension argument of posterity.infer.amortized.AmortizedVI).
DEFAULT_BETA_EXTENSION = 2.0


def two_sigmoid_gate(x: Tensor) -> Tensor:
    # 2 sigmoid: 1 at x = 0, so a gate can amplify as well as attenuate (module docstring)
    return 2 * torch.sigmoid(x)


def sqrt_relu_gate(x: Tensor) -> Tensor:
    # clamp: the gradient of sqrt at 0 is infinite; relu already zeroes those units
    return torch.relu(-torch.expm1(x)).clamp(min=1e-12).sqrt()


def softplus_gate(x: Tensor) -> Tensor:
    # 1 at x = 0 and no ceiling: a unit can be amplified without bound at small β
    return F.softplus(x) / math.log(2.0)


GATES = {  # gate, initial b
    "two_sigmoid": (two_sigmoid_gate, 0.0),
    "sqrt_relu": (sqrt_relu_gate, -2.0),
    "softplus": (softplus_gate, 0.0),
}
DEFAULT_RESPONSE_RANK = 16
RESPONSE_DEGREES = (1, 2)
DEFAULT_RESPONSE_DEGREE = 1


def hermite_features(u: Tensor, degree: int) -> Tensor:
    """``[He_1(u), ..., He_degree(u)]`` along a new last axis (``He_1 = u``,
    ``He_2 = u**2 - 1``): orthogonal under N(0, 1), and uncorrelated with mean 0 for
    the standardized ``u`` of a log-uniform β.

    Example:
        >>> hermite_features(torch.tensor([0.0, 2.0]), 2)
        tensor([[ 0., -1.],
                [ 2.,  3.]])
    """
    if degree == 1:
        return u.unsqueeze(-1)
    return torch.stack([u, u * u - 1][:degree], -1)


def check_beta_range(beta_range: Sequence[float]) -> tuple[float, float]:
    """``(low, high)`` as floats, with ``0 < low < high``."""
    try:
        low, high = (float(b) for b in beta_range)
    except (TypeError, ValueError):
        raise TypeError(f"beta_range must be a pair (low, high) of numbers, got "
                        f"{beta_range!r}") from None
    if not 0 < low < high:
        raise ValueError(f"beta_range must be (low, high) with 0 < low < high, got {beta_range}")
    return low, high


def check_beta_extension(extension: float) -> float:
    """Decades of β below the range to serve; a finite number >= 0."""
    if isinstance(extension, bool) or not isinstance(extension, (int, float)):
        raise TypeError(f"beta_extension must be a number of decades, got {extension!r}")
    if not (math.isfinite(extension) and extension >= 0):
        raise ValueError(f"beta_extension must be a finite number >= 0, got {extension!r}")
    return float(extension)


def training_beta_range(beta_range: Sequence[float], extension: float) -> tuple[float, float]:
    """``(low / 10**extension, high)``: the range a multi-rate run draws β from.

    Example:
        >>> training_beta_range((0.01, 10.0), 2.0)
        (0.0001, 10.0)
    """
    low, high = check_beta_range(beta_range)
    return low / 10.0 ** check_beta_extension(extension), high


class BetaStandardizer(nn.Module):
    """``u = (log β - m) / s``, with ``m`` and ``s`` the mean and standard deviation of
    ``log β`` when β is log-uniform on the training range
    ``(low / 10**extension, high)``, where ``beta_range = (low, high)`` is the range
    to serve: the range :class:`posterity.infer.amortized.AmortizedVI` draws β from by default
    (``beta_extension``), on which ``u`` has mean 0 and variance 1.

    Example:
        >>> standardize = BetaStandardizer((0.01, 10.0), extension=1.0)
        >>> standardize.training_range
        (0.001, 10.0)
        >>> standardize(torch.tensor([0.001, 10.0]))  # the ends of the training range
        tensor([-1.7321,  1.7321])
    """

    def __init__(self, beta_range: Sequence[float] = DEFAULT_BETA_RANGE,
                 extension: float = DEFAULT_BETA_EXTENSION) -> None:
        super().__init__()
        low, high = check_beta_range(beta_range)
        self.beta_range = (low, high)
        self.extension = check_beta_extension(extension)
        self.training_range = training_beta_range(self.beta_range, self.extension)
        log_low, log_high = (math.log(b) for b in self.training_range)
        self.register_buffer("center", torch.tensor(0.5 * (log_low + log_high)))
        self.register_buffer("spread", torch.tensor((log_high - log_low) / 12**0.5))

    def forward(self, beta: Tensor | float) -> Tensor:
        """``beta``: a number or a tensor of positive finite values, any shape; ``u`` has
        its shape."""
        if not isinstance(beta, Tensor):
            beta = self.center.new_tensor(beta)
        bad = ~(torch.isfinite(beta) & (beta > 0))
        if bad.any():
            raise ValueError(f"beta must be positive and finite, got values such as "
                             f"{beta[bad].flatten()[:3].tolist()}")
        return (beta.log() - self.center) / self.spread


def multi_rate_settings(module: nn.Module) -> tuple[tuple[float, float] | None, float | None]:
    """``(beta_range, beta_extension)`` of a multi-rate module, ``(None, None)`` for
    one that takes no β.

    Read from its ``beta_range`` and ``beta_extension`` attributes (the built-in
    multi-rate modules set both) and from every :class:`BetaStandardizer` inside it (a
    user-written module needs nothing else); they must agree. What one module does not
    say is ``None``.

    Example:
        >>> net = nn.ModuleDict({"standardize": BetaStandardizer((0.1, 10.0), extension=1)})
        >>> multi_rate_settings(net)
        ((0.1, 10.0), 1.0)
        >>> multi_rate_settings(nn.Linear(2, 2))
        (None, None)
    """
    name = type(module).__name__
    found: dict[str, dict] = {"beta_range": {}, "beta_extension": {}}
    for attribute, check in (("beta_range", check_beta_range),
                             ("beta_extension", check_beta_extension)):
        value = getattr(module, attribute, None)
        if value is not None:
            try:
                found[attribute][check(value)] = f"its {attribute} attribute"
            except (TypeError, ValueError) as error:
                raise type(error)(f"{name}.{attribute}: {error}") from None
    for path, sub in module.named_modules():
        if isinstance(sub, BetaStandardizer):
            where = f"BetaStandardizer {path or name!r}"
            found["beta_range"].setdefault(sub.beta_range, where)
            found["beta_extension"].setdefault(sub.extension, where)
    for attribute, values in found.items():
        if len(values) > 1:
            raise ValueError(f"{name} has different {attribute}: " + ", ".join(
                f"{value} ({where})" for value, where in values.items()))
    return (next(iter(found["beta_range"]), None), next(iter(found["beta_extension"]), None))


class GatedLinear(nn.Module):
    """``((W + sum_k He_k(u) M_out^(k) M_in^(k)) h + c) * gate(w u + b)``: one gate
    ``(w, b)`` per output unit and, with ``rank > 0``, β-dependent low-rank weights
    whose coefficients are the probabilists' Hermite polynomials of ``u`` up to
    ``degree`` (``He_1 = u``, ``He_2 = u**2 - 1``; each ``M_out^(k)``: ``[out, rank]``,
    starting at 0; ``M_in^(k)``: ``[rank, in]``).

    The gates only rescale a unit; the low-rank terms let β turn the directions a
    layer reads, the form of the best-response weights of self-tuning networks
    (MacKay et al., ICLR 2019, eq. 9: a hyperparameter-scaled second weight matrix),
    kept to ``rank`` directions per degree. With ``degree=2`` the change of the weights
    along the β range need not be uniform: ``He_2`` is the same at both ends and lowest
    in the middle, so the top decades can turn the weights faster than the bottom ones.
    The ``degree`` blocks are stored stacked (``modulation_in``: ``[degree * rank,
    in]``, ``modulation_out``: ``[out, degree * rank]``), so that degree 1 is the
    earlier layer. See the module docstring for what each measured.

    Example:
        >>> layer = GatedLinear(4, 3, "two_sigmoid", rank=2, degree=2)
        >>> layer(torch.ones(5, 4), torch.zeros(5)).shape
        torch.Size([5, 3])
        >>> tuple(layer.modulation_in.shape), tuple(layer.modulation_out.shape)
        ((4, 4), (3, 4))
    """

    def __init__(self, in_features: int, out_features: int, gate: str, rank: int = 0,
                 degree: int = 1) -> None:
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"gate must be one of {sorted(GATES)}, got {gate!r}")
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
            raise ValueError(f"rank must be an integer >= 0, got {rank!r}")
        if degree not in RESPONSE_DEGREES:
            raise ValueError(f"degree must be one of {RESPONSE_DEGREES}, got {degree!r}")
        self.gate, initial_bias = GATES[gate]
        self.linear = nn.Linear(in_features, out_features)
        self.gate_weight = nn.Parameter(torch.zeros(out_features))
        self.gate_bias = nn.Parameter(torch.full((out_features,), initial_bias))
        self.rank, self.degree = rank, degree
        if rank:
            blocks = [torch.randn(rank, in_features) for _ in range(degree)]
            self.modulation_in = nn.Parameter(torch.cat(blocks) / in_features**0.5)
            self.modulation_out = nn.Parameter(torch.zeros(out_features, degree * rank))

    def forward(self, h: Tensor, u: Tensor) -> Tensor:
        """``h``: ``[..., B, in]``; ``u``: ``[B]`` (one standardized log β per row)."""
        pre = self.linear(h)
        if self.rank:
            blocks = (h @ self.modulation_in.T).unflatten(-1, (self.degree, self.rank))
            blocks = blocks * hermite_features(u, self.degree).unsqueeze(-1)
            pre = pre + blocks.flatten(-2) @ self.modulation_out.T
        u = u.unsqueeze(-1)
        return pre * self.gate(u * self.gate_weight + self.gate_bias)


class GatedScale(nn.Module):
    """``h * gate(w u + b)``: one gate ``(w, b)`` per feature of ``h``, no weight matrix
    (the multi-rate decoder's gate on each latent dimension, see the module docstring).

    Example:
        >>> scale = GatedScale(3, "two_sigmoid")  # 2 sigmoid(w u + b) gates, initially 1
        >>> scale(torch.ones(2, 3), torch.zeros(2)).shape
        torch.Size([2, 3])
    """

    def __init__(self, features: int, gate: str) -> None:
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"gate must be one of {sorted(GATES)}, got {gate!r}")
        self.gate, initial_bias = GATES[gate]
        self.gate_weight = nn.Parameter(torch.zeros(features))
        self.gate_bias = nn.Parameter(torch.full((features,), initial_bias))

    def forward(self, h: Tensor, u: Tensor) -> Tensor:
        """``h``: ``[..., B, features]``; ``u``: ``[B]``."""
        return h * self.gate(u.unsqueeze(-1) * self.gate_weight + self.gate_bias)


# Staggered initial gates (stagger_gates): slope and the span of thresholds, in u.
STAGGER_SLOPE = -3.0
STAGGER_SPAN = (-0.5, 2.5)


@torch.no_grad()
def stagger_gates(layer: GatedLinear | GatedScale, repeats: int = 1,
                  slope: float = STAGGER_SLOPE,
                  span: tuple[float, float] = STAGGER_SPAN) -> None:
    """Initialize ``2 sigmoid`` gates with staggered thresholds, in place.

    Unit ``j`` of ``n`` gets ``2 sigmoid(slope (u - t_j))``: 1 at its threshold ``t_j``,
    open (towards 2) below it and closing above it, with the ``t_j`` evenly spaced over
    ``span`` (in standardized ``u``, where the β range runs from ``-sqrt(3)`` to
    ``sqrt(3)``: -0.5 is about a third of the way up in log β, and 2.5 lies above the
    top). At the start every unit is then open at the smallest β and fewer stay open as
    β grows, the way the β-VAEs along the range use fewer latent units; the weights of a
    unit are trained by the β below its threshold, not by an average over the whole
    range. ``repeats`` blocks of outputs share the thresholds (the encoder's mean and
    log-scale halves).

    The span starts at -0.5, not at the bottom of the range: a unit whose gate closes
    just above the smallest β is trained by few draws, and such units died. With the
    span starting at ``-sqrt(3)`` the MR-VAE of ``bench/mrvae.py --protocol full``
    (784-200-200-50, 20 epochs, seed 0) ended with its 20 lowest-threshold latent units
    inactive (KL < 0.05 nats) at every β, 30 of 50 active at β = 0.01; from -0.5, 42
    were active there and the excess objective over the β-VAEs at β = 0.01 / 0.1 / 1 /
    3 / 10 went from +21.3 / +1.7 / -1.5 / -0.0 / -0.5 % to +18.2 / +0.3 / -1.3 / +0.1
    / -0.4 %; in ``--protocol short`` from -15.2 / -7.5 / -5.1 / -7.5 / +1.1 and -14.7
    / -10.0 / -7.5 / -7.2 / -0.2 % to -18.6 / -10.7 / -6.1 / -7.3 / +1.6 and -17.9 /
    -12.2 / -6.5 / -5.1 / +1.7 % (seeds 0 and 1); after the paper's 200 epochs
    (``full``, seed 0) from +36.8 / +8.4 / -1.7 / -0.4 / -0.4 to +27.7 / +3.8 / -1.4 /
    -0.4 / -0.2 %, 34 units active at β = 0.01 (29). Measured the same way and not kept:
    a span from 0.5 (+18.8 / +0.8 / -1.2 / +0.1 / -0.7, every unit active at 0.01),
    from -0.5 to 4 (+17.0 / -0.2 / -1.0 / +0.5 / -0.2 in ``full``, but +2.5 and +3.3 %
    at β = 10 in ``short``), a slope of -1.5 (+23.4 at 0.01), and the gates frozen at
    their staggered start (+24.0 at 0.01 with the slopes frozen, +42.0 with every gate
    parameter frozen).

    The thresholds and slope are in the ``u`` the layer sees, standardized over the
    training range: the default extension of two decades puts them at β = 0.006-130
    with a slope of -2.1 per decade (0.12-46 and -3.5 without it). Placing them back
    over the range to serve (2026-12-07) helped at 20 epochs (β = 0.01: +1.9 against
    +5.3 % at ``gate_lr_multiplier=30``, +4.2 against +6.2 % at 10) but not after 200
    (multiplier 10, seed 0): +0.1 / -6.5 / +1.8 / +0.3 / -1.7 against +1.0 / -6.0 /
    +1.5 / -0.1 / -1.6 %. With 1.5 decades of extension it gave +0.8 / -6.6 / +1.0 /
    -0.3 / -1.9 and +1.7 / -6.1 / +1.0 / -0.5 / -2.1 % (seeds 0 / 1); averaged over two
    seeds of each side, +1.46 / +0.64 % at β = 0.01 / 1, against +0.68 / +1.02 % for
    the kept start with two decades.

    The multi-rate encoder staggers its output gates and the decoder its latent input
    gates. Against gates that start flat (``w = 0, b = 0``), in ``bench/mrvae.py``: the
    excess objective over the β-VAEs at β = 0.01 / 0.1 / 1 / 3 / 10 went from +24.5 /
    +3.3 / -1.3 / -0.8 / +0.4 % to +20.9 / +1.5 / -1.4 / +0.1 / -0.4 % (``full``,
    784-200-200-50, 20 epochs) and from -11.1 / -2.1 / +1.7 / -1.9 / +2.4 and -7.3 /
    -1.8 / +0.8 / -0.7 / +2.5 % to -15.2 / -7.5 / -5.1 / -7.5 / +1.1 and -14.7 / -10.0 /
    -7.5 / -7.2 / -0.2 % (``short``, seeds 0 and 1).

    Example:
        >>> layer = GatedLinear(4, 6, "two_sigmoid")
        >>> stagger_gates(layer, repeats=2)
        >>> u = torch.tensor([-3.0, 3.0])  # below and above every threshold
        >>> gates = two_sigmoid_gate(u[:, None] * layer.gate_weight + layer.gate_bias)
        >>> bool((gates[0] > 1.9).all() and (gates[1] < 1).all())
        True
    """
    if layer.gate is not two_sigmoid_gate:
        raise ValueError("stagger_gates needs 2 sigmoid gates (gate='two_sigmoid')")
    n = layer.gate_weight.shape[0]
    if repeats < 1 or n % repeats:
        raise ValueError(f"repeats must divide the {n} gated units, got {repeats}")
    weight = layer.gate_weight
    thresholds = torch.linspace(span[0], span[1], n // repeats, dtype=weight.dtype,
                                device=weight.device).repeat(repeats)
    weight.fill_(slope)
    layer.gate_bias.copy_(-slope * thresholds)


def gate_parameters(*modules: nn.Module, slopes_only: bool = False) -> list[nn.Parameter]:
    """The gate parameters ``(w, b)`` of every :class:`GatedLinear` and
    :class:`GatedScale` inside ``modules``; with ``slopes_only`` only the slopes ``w``.

    The slopes are, with the low-rank β-dependent weights of :class:`GatedLinear`, the
    parameters through which the networks depend on β; at the base learning rate they
    lag behind the weights, so the multi-rate engines give them their own optimizer
    group (``gate_lr_multiplier`` of :class:`posterity.infer.amortized.AmortizedVI`; the low-rank
    weights stay at the base rate, where they train, and diverged when fast). The
    biases ``b`` stay at the base rate: a gate's bias scales its unit at every β alike,
    which the weights can do too, and a fast bias follows the β-average of the
    gradient, which the large β dominate. In ``bench/mrvae.py --protocol full``
    (784-200-200-50, 20 epochs) fast biases closed the gates of most latent units at
    every β within a few hundred updates: the
    MR-VAE kept 8 units at β = 0.01 after 3 epochs (the β-VAE: 50) and its rate there
    stayed at 45 nats (β-VAE 163; excess objective +57.7 %). With the slopes alone in
    the fast group: 25 units, 78 nats, excess +29.1 / +6.2 / -1.3 / -0.2 / +1.2 % at
    β = 0.01 / 0.1 / 1 / 3 / 10 (before: +57.7 / +25.5 / +1.1 / -3.0 / -0.1).

    Example:
        >>> len(gate_parameters(GatedMLP(4, (3,), 2, "two_sigmoid")))
        4
        >>> len(gate_parameters(GatedMLP(4, (3,), 2, "two_sigmoid"), slopes_only=True))
        2
    """
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, (GatedLinear, GatedScale)):
                params = (layer.gate_weight, layer.gate_bias)
                for p in params[:1] if slopes_only else params:
                    seen.setdefault(id(p), p)
    return list(seen.values())


class GatedMLP(nn.Module):
    """An MLP of :class:`GatedLinear` layers: ``forward(h, u)``.

    ``gate`` names the gate of the hidden layers (``GATES``). ``gate_output`` is
    ``True`` (the last layer is gated like the others), a gate name (the last layer gets
    that gate instead) or ``False`` (a plain ``nn.Linear``; that needs at least one
    hidden layer). With ``input_gate`` (a gate name) the input is first scaled feature
    by feature, ``h * gate(w u + b)`` (:class:`GatedScale`): the decoder's choice, so
    that it can switch each latent dimension off as β grows (see the module docstring).
    ``rank`` and ``degree`` give every gated layer its β-dependent low-rank weights
    (:class:`GatedLinear`).
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        out_dim: int,
        gate: str,
        activation: str = "tanh",
        gate_output: bool | str = True,
        input_gate: str | None = None,
        rank: int = 0,
        degree: int = 1,
    ) -> None:
        super().__init__()
        sizes = (in_dim, *check_layer_sizes("hidden", hidden), out_dim)
        self.input_gate = None if input_gate is None else GatedScale(in_dim, input_gate)
        if gate_output is False and len(sizes) < 3:
            raise ValueError(
                "a multi-rate decoder gates its hidden layers: give it at least one "
                "(hidden=(...) must not be empty)"
            )
        layers: list[nn.Module] = [
            GatedLinear(a, b, gate, rank, degree) for a, b in zip(sizes[:-2], sizes[1:-1])
        ]
        if gate_output is False:
            layers.append(nn.Linear(sizes[-2], sizes[-1]))
        else:
            output_gate = gate if gate_output is True else gate_output
            layers.append(GatedLinear(sizes[-2], sizes[-1], output_gate, rank, degree))
        self.layers = nn.ModuleList(layers)
        self.activation = activation_module(activation)

    def forward(self, h: Tensor, u: Tensor) -> Tensor:
        if self.input_gate is not None:
            h = self.input_gate(h, u)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h, u) if isinstance(layer, GatedLinear) else layer(h)
            if i < last:
                h = self.activation(h)
        return h


class MultiRateMixin:
    """β handling shared by the built-in multi-rate modules (:class:`~posterity.models.VAE`
    and :class:`~posterity.guides.GaussianEncoder` with ``multi_rate=True``; Bae et al.
    2023): the ``multi_rate``, ``beta_range`` and ``beta_extension`` attributes and a
    :class:`BetaStandardizer`.

    ``beta`` is ``None`` (the plain VAE, β = 1), a float, or a ``[B]`` tensor with one
    β per data point; the gated networks see its standardized logarithm. A module of
    your own needs none of this: a :class:`BetaStandardizer` inside it is enough for
    :class:`~posterity.infer.amortized.AmortizedVI` (see :func:`multi_rate_settings` and
    ``docs/families/amortized.md``).
    """

    multi_rate: bool
    beta_range: tuple[float, float] | None
    beta_extension: float | None

    def _init_multi_rate(self, multi_rate: bool, beta_range,
                         beta_extension: float = DEFAULT_BETA_EXTENSION) -> None:
        self.multi_rate = bool(multi_rate)
        if self.multi_rate:
            self.standardize = BetaStandardizer(beta_range, beta_extension)
            self.beta_range = self.standardize.beta_range
            self.beta_extension = self.standardize.extension
        else:
            self.beta_range = self.beta_extension = None

    def _standardized(self, beta, like: Tensor) -> Tensor | None:
        if not self.multi_rate:
            if beta is not None:
                raise ValueError(
                    f"beta= needs a multi-rate {type(self).__name__} (multi_rate=True)"
                )
            return None
        beta = torch.as_tensor(1.0 if beta is None else beta, dtype=like.dtype, device=like.device)
        return self.standardize(beta)  # which checks that β > 0
