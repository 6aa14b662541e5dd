"""The written protocols describe what the built-ins and the engines actually offer."""

import pytest
import torch

from posterity.guides import GaussianEncoder, SigmoidRecognitionNet
from posterity.infer import AmortizedVI, train
from posterity.infer.importance import has_density_protocol
from posterity.infer.protocols import (
    DATA_PLATE,
    Configurable,
    MinibatchLogJoint,
    SamplesJoint,
    SamplesLatents,
    ScoresGuide,
    ScoresJoint,
    Trainable,
)
from posterity.models import VAE, BayesianLogisticRegression, BayesianMLP, SigmoidBeliefNet


@pytest.mark.parametrize("obj, protocols", [
    (VAE(6, 2, (4,)), {ScoresJoint}),
    (GaussianEncoder(6, 2, (4,)), {SamplesLatents}),
    (SigmoidBeliefNet((6, 4, 2)), {ScoresJoint, SamplesJoint}),
    (SigmoidRecognitionNet((6, 4, 2)), {SamplesLatents, ScoresGuide}),
    (BayesianMLP(3, (4,)), {MinibatchLogJoint}),
    (BayesianLogisticRegression(3), {MinibatchLogJoint}),
])
def test_the_built_ins_meet_exactly_the_fast_paths_they_implement(obj, protocols):
    every = {SamplesLatents, ScoresJoint, SamplesJoint, ScoresGuide, MinibatchLogJoint}
    assert {p for p in every if isinstance(obj, p)} == protocols


def test_the_importance_fast_path_is_the_pair_of_protocols():
    model, guide = VAE(6, 2, (4,)), GaussianEncoder(6, 2, (4,))
    assert has_density_protocol(model, guide)
    assert isinstance(model, ScoresJoint) and isinstance(guide, SamplesLatents)
    assert not has_density_protocol(model, model)


def test_the_fast_paths_return_the_documented_shapes():
    model, guide = SigmoidBeliefNet((6, 4, 2)), SigmoidRecognitionNet((6, 4, 2))
    x = torch.bernoulli(torch.full((5, 6), 0.5))
    latents, log_q = guide.sample_latents(x, num_particles=3)
    assert log_q.shape == (3, 5) and all(v.shape[:2] == (3, 5) for v in latents.values())
    log_lik, log_prior = model.log_joint(x, latents)
    assert log_lik.shape == log_prior.shape == (3, 5)
    dreams = model.sample_joint(x, 3)
    assert "x" in dreams and all(v.shape[:2] == (3, 5) for v in dreams.values())
    dreamed_x = dreams.pop("x")
    assert guide.log_guide(dreamed_x, dreams).shape == (3, 5)


def test_engines_are_trainable_and_describe_their_settings():
    vi = AmortizedVI(VAE(6, 2, (4,)), GaussianEncoder(6, 2, (4,)))
    assert isinstance(vi, Trainable) and isinstance(vi, Configurable)
    assert train.Trainable is Trainable  # the old import path still works
    config = vi.config()
    assert config["lr"] == 1e-3
    from posterity.infer.checkpoints import plain_settings
    plain_settings(config)  # plain values only


def test_the_data_plate_is_named_data():
    assert DATA_PLATE == "data"
