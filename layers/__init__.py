"""posterity.layers: building blocks that models and guides share (networks, β-gated
layers, the data plate, Bernoulli layers). Models and guides import from here, never
from each other."""

from .bernoulli import bernoulli_log_prob, bernoulli_site, check_layers, latent_site
from .gated import (
    BetaStandardizer,
    GatedLinear,
    GatedMLP,
    MultiRateMixin,
    check_beta_range,
    gate_parameters,
    hermite_features,
    multi_rate_settings,
    stagger_gates,
)
from .networks import activation_module, check_layer_sizes, mlp
from .plates import check_binary, check_matrix, check_width, data_plate

__all__ = [
    "BetaStandardizer",
    "GatedLinear",
    "GatedMLP",
    "MultiRateMixin",
    "activation_module",
    "bernoulli_log_prob",
    "bernoulli_site",
    "check_beta_range",
    "check_binary",
    "check_layer_sizes",
    "check_layers",
    "check_matrix",
    "check_width",
    "data_plate",
    "gate_parameters",
    "hermite_features",
    "latent_site",
    "mlp",
    "multi_rate_settings",
    "stagger_gates",
]
