"""Small network builders shared by models and guides."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


def check_layer_sizes(name: str, sizes: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(sizes)
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{name} must be positive ints, got {sizes}")
    return sizes


def activation_module(activation: str) -> nn.Module:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    return ACTIVATIONS[activation]()


def mlp(
    in_dim: int, hidden: Sequence[int], out_dim: int, activation: str = "tanh"
) -> nn.Sequential:
    """``Linear -> act -> ... -> Linear``; ``hidden=()`` gives one linear map."""
    sizes = (in_dim, *check_layer_sizes("hidden", hidden), out_dim)
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(activation_module(activation))
    return nn.Sequential(*layers)
