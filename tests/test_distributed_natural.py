"""Natural RWS in a process group: the Fisher blocks reduced over the ranks are those of
the global batch (issue 14).

Two gloo processes (spawned by :func:`posterity.infer.distributed.run_local`) each hold
a contiguous share of a global batch of 7 rows (4 and 3: an uneven split); the reference
is one process with the same rows. Everything is float64, so "equal" means equal up to
the rounding of a different summation order.
"""

import warnings

import torch
from torch import nn

from posterity.infer import distributed
from posterity.infer.wake_sleep import WakeSleep, helmholtz_machine
from posterity.infer.wake_sleep.natural import BernoulliNaturalGradient, bernoulli_fisher_blocks

DAMPING = 0.05
TOLERANCE = {"atol": 1e-10, "rtol": 1e-9}


def make_problem(rows: int, seed: int):
    """Three layers and a global batch of recorded statistics: a Woodbury layer (12
    inputs, 5 units: 13 > rows) with importance weights, a direct layer (3 inputs,
    4 units: 4 <= rows) and a bias-only layer (no inputs, like a belief net's top)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # a Linear without inputs warns about its init
        warnings.simplefilter("ignore", UserWarning)
        layers = [nn.Linear(12, 5).double(), nn.Linear(3, 4).double(),
                  nn.Linear(0, 3).double()]
    records, targets = [], []
    for i, layer in enumerate(layers):
        inputs = torch.bernoulli(torch.full((rows, layer.in_features), 0.4, dtype=torch.float64),
                                 generator=generator)
        with torch.no_grad():
            logits = layer(inputs)
        weights = torch.rand(rows, generator=generator, dtype=torch.float64) if i == 0 else None
        records.append((inputs, logits, weights))
        targets.append(torch.bernoulli(torch.full((rows, layer.out_features), 0.5,
                                                  dtype=torch.float64), generator=generator))
    return layers, records, targets


def loss_of(layers, records, targets, part: slice) -> torch.Tensor:
    """A mean over the rows of ``part`` (the data-parallel contract: each rank's loss is
    the mean over its rows, its gradient weighted by its share of the rows)."""
    total = 0.0
    for layer, (inputs, _, _), target in zip(layers, records, targets):
        total = total + nn.functional.binary_cross_entropy_with_logits(
            layer(inputs[part]), target[part], reduction="none").sum(-1).mean()
    return total


def precondition(layers, records, targets, part: slice, rows: int, natural):
    """Refresh from ``part`` of the rows, average the gradient by rows, precondition."""
    natural.refresh({layer: (inputs[part], logits[part], None if w is None else w[part])
                     for layer, (inputs, logits, w) in zip(layers, records)})
    for layer in layers:
        layer.zero_grad()
    loss_of(layers, records, targets, part).backward()
    params = [p for layer in layers for p in layer.parameters()]
    distributed.average_gradients(params, weight=(part.stop - part.start) / rows)
    natural.precondition()
    return [torch.cat([layer.weight.grad, layer.bias.grad[:, None]], -1).clone()
            for layer in layers]


def on_each_rank(rows_per_refresh: list[int]) -> dict:
    """Per rank: the factors, Fisher blocks and preconditioned gradients after refreshes
    on successive global batches (their sizes change, so the buffer layout does), then
    the factors of a NRWS engine after one update on this rank's share of a batch."""
    torch.set_default_dtype(torch.float64)
    out = {"refreshes": []}
    natural = None
    for step, rows in enumerate(rows_per_refresh):
        layers, records, targets = make_problem(rows, seed=step)
        if natural is None:
            natural = BernoulliNaturalGradient(layers, damping=DAMPING)
        else:  # the same modules, this step's parameters
            for old, new in zip(natural.layers, layers):
                old.load_state_dict(new.state_dict())
            layers = natural.layers
        grads = precondition(layers, records, targets, distributed.share(rows), rows, natural)
        out["refreshes"].append({
            "kinds": [natural.factors[layer].kind for layer in layers],
            "fisher": [natural.factors[layer].fisher() for layer in layers],
            "inverse": [natural.factors[layer].inverse for layer in layers],
            "gradient": grads,
        })
    torch.manual_seed(0)  # the same initial parameters on every rank ...
    model, guide = helmholtz_machine((10, 6, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        engine = WakeSleep(model, guide, algorithm="nrws", num_particles=3,
                           fisher_weights="importance")
    x = torch.bernoulli(torch.full((7, 10), 0.3), generator=torch.Generator().manual_seed(5))
    torch.manual_seed(100 + distributed.rank())  # ... and each rank its own particles
    engine.step(engine.prepare(x[distributed.share(7)]))
    out["engine"] = [f.inverse for f in engine.preconditioner.factors.values()]
    return out


def reference(rows_per_refresh: list[int]) -> list[dict]:
    """The same refreshes in one process on the global batches."""
    torch.set_default_dtype(torch.float64)
    out = []
    natural = None
    try:
        for step, rows in enumerate(rows_per_refresh):
            layers, records, targets = make_problem(rows, seed=step)
            if natural is None:
                natural = BernoulliNaturalGradient(layers, damping=DAMPING)
            else:
                for old, new in zip(natural.layers, layers):
                    old.load_state_dict(new.state_dict())
                layers = natural.layers
            grads = precondition(layers, records, targets, slice(0, rows), rows, natural)
            out.append({
                "kinds": [natural.factors[layer].kind for layer in layers],
                "fisher": [natural.factors[layer].fisher() for layer in layers],
                "blocks": [bernoulli_fisher_blocks(inputs, logits, weights, layer.bias is not None)
                           for layer, (inputs, logits, weights) in zip(layers, records)],
                "inverse": [natural.factors[layer].inverse for layer in layers],
                "gradient": grads,
            })
    finally:
        torch.set_default_dtype(torch.float32)
    return out


def test_two_ranks_reduce_the_fisher_blocks_of_the_global_batch():
    """Global batches of 7 (split 4 / 3), 6 (3 / 3) and 7 again: every rank's factors,
    Fisher blocks and preconditioned gradients equal one process's on the global batch;
    a NRWS engine's factors after one data-parallel update are the same on both ranks."""
    sizes = [7, 6, 7]
    ranks = distributed.run_local(on_each_rank, 2, (sizes,), timeout=120)
    expected = reference(sizes)
    for want in expected:  # 7 rows < 13 columns: Woodbury; 4 and 1 columns: direct
        assert want["kinds"] == ["woodbury", "direct", "direct"]
    for result in ranks:
        for got, want in zip(result["refreshes"], expected):
            assert got["kinds"] == want["kinds"]
            for name in ("fisher", "inverse", "gradient"):
                for a, b in zip(got[name], want[name]):
                    torch.testing.assert_close(a, b, **TOLERANCE)
            for a, b in zip(got["fisher"], want["blocks"]):  # and the blocks' formula
                torch.testing.assert_close(a, b, **TOLERANCE)
    first, second = (result["engine"] for result in ranks)
    assert len(first) == 5  # 3 generative layers (with the top's bias) + 2 recognition
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
