"""Checkpoints lose nothing, say nothing silently wrong and run nothing: kills, interrupts,
changed settings, corrupt and malicious files, concurrent runs, full disks."""

import errno
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

from posterity.guides import GaussianEncoder
from posterity.infer import AmortizedVI, fit
from posterity.infer import checkpoints as ckpt
from posterity.infer.train import (
    CheckpointError,
    CheckpointLockedError,
    CheckpointMismatchError,
    Interrupted,
)
from posterity.models import VAE

EPOCHS, BATCH = 3, 25


def make_vi(seed: int = 0, lr: float = 1e-2, objective: str = "iwae", hidden=(8,)) -> AmortizedVI:
    torch.manual_seed(seed)
    return AmortizedVI(VAE(16, 3, hidden), GaussianEncoder(16, 3, hidden), objective=objective,
                       num_particles=3, lr=lr)


def make_data(rows: int = 120) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.bernoulli(torch.full((rows, 16), 0.3), generator=generator)


def parameters(vi: AmortizedVI) -> list[torch.Tensor]:
    return [p.detach().clone() for p in vi.parameters()]


def assert_same_run(a: AmortizedVI, b: AmortizedVI) -> None:
    for x, y in zip(parameters(a), parameters(b)):
        assert torch.equal(x, y)
    assert a.history.steps == b.history.steps
    assert a.history.epochs["valid_iwae"] == b.history.epochs["valid_iwae"]


def run(vi: AmortizedVI, path=None, epochs: int = EPOCHS, **kwargs) -> AmortizedVI:
    data = make_data()
    vi.fit(data, epochs=epochs, batch_size=BATCH, valid=data[:40], seed=3, progress=False,
           checkpoint=path, **kwargs)
    return vi


@pytest.fixture(scope="module")
def straight() -> AmortizedVI:
    return run(make_vi())


# --- interrupts in this process ---------------------------------------------------------
def signal_at(vi: AmortizedVI, update: int, signum: int) -> None:
    """Make the ``update``-th call of ``vi.step`` deliver ``signum`` to this process."""
    step, count = vi.step, [0]

    def stepping(batch):
        count[0] += 1
        if count[0] == update:
            signal.raise_signal(signum)
        return step(batch)

    vi.step = stepping


@pytest.mark.parametrize("update", [2, 5, 10])  # 5 updates an epoch: mid-epoch and at its end
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_update_writes_a_checkpoint_and_resumes_exactly(
        straight, tmp_path, update, signum):
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    path = tmp_path / "run.pt"
    first = make_vi()
    signal_at(first, update, signum)
    with pytest.raises(Interrupted) as stop:
        run(first, path)
    name = signal.Signals(signum).name
    epoch = (update - 1) // 5 + 1
    assert str(stop.value) == (f"AmortizedVI stopped by {name} at epoch {epoch}, step {update}; "
                               f"checkpoint written to {path}; rerun to resume")
    assert isinstance(stop.value, KeyboardInterrupt)
    assert len(first.history.steps["loss"]) == update  # the update in flight was finished
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers

    pyro.set_rng_seed(999)  # whatever happens between the runs must not matter
    resumed = run(make_vi(seed=42), path)
    assert_same_run(straight, resumed)


def test_a_signal_without_a_checkpoint_stops_after_the_update():
    vi = make_vi()
    signal_at(vi, 3, signal.SIGINT)
    with pytest.raises(Interrupted, match="no checkpoint was written"):
        run(vi)
    assert len(vi.history.steps["loss"]) == 3


# --- kills and interrupts of another process --------------------------------------------
def _train_job(path: str, result: str, die_while_writing: bool) -> None:
    """A child process: train (resuming from ``path``) and save the final state."""
    torch.set_num_threads(1)
    if die_while_writing:  # write half a checkpoint, then hang until killed
        def half_write(tmp, data):
            with open(tmp, "wb") as handle:
                handle.write(bytes(data)[: len(data) // 2])
            Path(result + ".writing").touch()
            time.sleep(60)

        ckpt._write_file = half_write
    # a resumed child starts from other weights: they must come from the checkpoint
    vi = make_vi(seed=int(time.time() * 1e6) % 1000 + 1 if Path(path).exists() else 0)
    step = vi.step

    def paced(batch):  # 20 ms an update, so that a kill lands mid-run on a fast machine too
        time.sleep(0.02)
        return step(batch)

    vi.step = paced
    try:
        run(vi, path, epochs=20, checkpoint_every=1)
    except Interrupted as stop:
        Path(result + ".message").write_text(str(stop))
        os._exit(130)
    torch.save({"parameters": parameters(vi), "steps": vi.history.steps}, result)


@pytest.fixture(scope="module")
def processes():
    """Children forked from a server process that imports torch and posterity once.

    Not forked from this process: a fork of a process whose OpenMP pool has run can hang
    in the child's first parallel kernel.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs the forkserver start method (POSIX)")
    context = multiprocessing.get_context("forkserver")
    # torch._dynamo: the first torch optimizer imports it, seconds of work per child
    context.set_forkserver_preload(["torch", "torch._dynamo", "pyro", "posterity.infer",
                                    "posterity.models", "posterity.guides", __name__])
    return context


def start(processes, path, result, die_while_writing=False):
    child = processes.Process(target=_train_job, args=(str(path), str(result), die_while_writing))
    child.start()
    return child


def wait_for(condition, child, seconds=120.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert child.is_alive() and time.monotonic() < deadline, "the child did not get there"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def uninterrupted(processes, tmp_path_factory):
    folder = tmp_path_factory.mktemp("straight")
    child = start(processes, folder / "run.pt", folder / "result.pt")
    child.join(300)
    assert child.exitcode == 0
    return torch.load(folder / "result.pt", weights_only=True)


def test_kill_9_at_random_moments_and_during_a_write_then_resume_bit_identical(
        processes, uninterrupted, tmp_path):
    path, result = tmp_path / "run.pt", tmp_path / "result.pt"
    chance = random.Random(16)
    for die_while_writing in (False, False, True):
        before = path.stat().st_mtime_ns if path.exists() else None
        child = start(processes, path, result, die_while_writing)
        if die_while_writing:
            wait_for(Path(str(result) + ".writing").exists, child)
        else:  # some time after this child has written a checkpoint of its own
            wait_for(lambda b=before: path.exists() and path.stat().st_mtime_ns != b, child)
            time.sleep(chance.uniform(0.0, 0.3))
        child.kill()
        child.join()
        assert child.exitcode == -signal.SIGKILL
    assert list(tmp_path.glob("run.pt.*.tmp"))  # the half-written file of the killed writer
    child = start(processes, path, result)
    child.join(300)
    assert child.exitcode == 0
    assert not list(tmp_path.glob("run.pt.*.tmp"))  # stale temporary files are removed
    finished = torch.load(result, weights_only=True)
    assert finished["steps"] == uninterrupted["steps"]
    for a, b in zip(finished["parameters"], uninterrupted["parameters"]):
        assert torch.equal(a, b)


def test_sigint_from_outside_exits_with_one_line_and_resumes_exactly(
        processes, uninterrupted, tmp_path):
    path, result = tmp_path / "run.pt", tmp_path / "result.pt"
    child = start(processes, path, result)
    wait_for(path.exists, child)
    os.kill(child.pid, signal.SIGINT)
    child.join(60)
    assert child.exitcode == 130
    message = Path(str(result) + ".message").read_text()
    assert "\n" not in message
    assert message.startswith("AmortizedVI stopped by SIGINT at epoch ")
    assert message.endswith(f"checkpoint written to {path}; rerun to resume")
    child = start(processes, path, result)
    child.join(300)
    assert child.exitcode == 0
    finished = torch.load(result, weights_only=True)
    assert finished["steps"] == uninterrupted["steps"]
    for a, b in zip(finished["parameters"], uninterrupted["parameters"]):
        assert torch.equal(a, b)


# --- settings ---------------------------------------------------------------------------
RUN = {"data": "digits", "hidden": [8], "activation": "tanh", "epochs": EPOCHS}


@pytest.fixture
def trained(tmp_path):
    path = tmp_path / "run.pt"
    run(make_vi(), path, config=RUN)
    return path


@pytest.mark.parametrize("engine, config, fit_kwargs, named", [
    ({}, {"activation": "relu"}, {}, "activation 'tanh' -> 'relu'"),
    ({}, {"data": "mnist"}, {}, "data 'digits' -> 'mnist'"),
    ({"lr": 1e-3}, {}, {}, "engine.lr 0.01 -> 0.001"),
    ({"objective": "elbo"}, {}, {}, "engine.objective 'iwae' -> 'elbo'"),
    ({}, {}, {"batch_size": 30}, "batch_size 25 -> 30"),
    ({}, {"z_dim": 4}, {}, "z_dim (not set) -> 4"),
])
def test_resuming_with_a_setting_that_changes_the_run_is_refused_by_name(
        trained, engine, config, fit_kwargs, named):
    data = make_data()
    with pytest.raises(CheckpointMismatchError) as refused:
        make_vi(**engine).fit(data, epochs=EPOCHS, batch_size=fit_kwargs.get("batch_size", BATCH),
                              valid=data[:40], seed=3, progress=False, checkpoint=trained,
                              config={**RUN, **config})
    message = str(refused.value)
    assert named in message and str(trained) in message
    assert "resume=False" in message and "--fresh" in message and "\n" not in message


def test_two_changed_settings_are_both_named(trained):
    with pytest.raises(CheckpointMismatchError, match="activation 'tanh' -> 'relu'.*hidden "
                       r"\[8\] -> \[16\]"):
        run(make_vi(), trained, config={**RUN, "activation": "relu", "hidden": [16]})


def test_a_checkpoint_that_does_not_fit_the_engine_is_refused_not_traced(trained):
    with pytest.raises(CheckpointMismatchError, match="does not fit this AmortizedVI.*--fresh"):
        run(make_vi(hidden=(5,)), trained, config=RUN)


def test_a_checkpoint_of_other_layer_sizes_names_the_tensors_and_shapes(trained):
    with pytest.raises(CheckpointMismatchError, match=r"size mismatch for decoder.0.weight: "
                       r"copying a param with shape torch.Size\(\[8, 3\]\) from checkpoint, "
                       r"the shape in current model is torch.Size\(\[5, 3\]\)"):
        run(make_vi(hidden=(5,)), trained, config=RUN)


def test_a_run_stopped_by_its_time_budget_inside_an_epoch_resumes_exactly(straight, tmp_path):
    path = tmp_path / "run.pt"
    first = run(make_vi(), path, time_budget=1e-9)  # stops after the first update
    assert first.num_steps == 1 and first.history.out_of_time
    assert first.history.num_epochs == 1  # the cut epoch is logged for the caller
    assert_same_run(run(make_vi(), path), straight)


def test_a_later_call_on_the_same_engine_finishes_the_epoch_a_budget_cut(tmp_path):
    vi = run(make_vi(), time_budget=1e-9)
    assert vi.history.partial is not None and vi.history.num_epochs == 1
    run(vi)  # no budget: the rest of epoch 1, then epochs 2 and 3
    assert vi.num_steps == 3 * 5  # 120 rows in minibatches of 25: 5 updates per epoch
    assert vi.history.epochs["epoch"] == [1, 2, 3] and vi.history.partial is None
    assert len(vi.history.steps["loss"]) == vi.num_steps and not vi.history.out_of_time


def test_resuming_without_a_seed_keeps_the_runs_and_another_seed_is_refused(tmp_path):
    path, data = tmp_path / "run.pt", make_data()
    run(make_vi(), path)
    resumed = make_vi()
    with pytest.warns(UserWarning, match=r"with epochs 4 \(was 3\)$"):  # and not the seed
        resumed.fit(data, epochs=EPOCHS + 1, batch_size=BATCH, valid=data[:40], progress=False,
                    checkpoint=path)  # seed=None: the generators come from the checkpoint
    assert resumed.history.epochs["epoch"] == [1, 2, 3, 4]
    with pytest.raises(CheckpointMismatchError, match="seed 3 -> 4"):
        make_vi().fit(data, epochs=EPOCHS + 2, batch_size=BATCH, valid=data[:40], seed=4,
                      progress=False, checkpoint=path)


def test_safe_settings_are_applied_and_reported(trained):
    with pytest.warns(UserWarning, match=r"with epochs 5 \(was 3\), patience 4 \(was None\), "
                      r"time_budget 100.0 \(was None\)"):
        vi = run(make_vi(), trained, epochs=5, patience=4, time_budget=100.0,
                 config={**RUN, "epochs": 5})
    assert vi.history.epochs["epoch"] == [1, 2, 3, 4, 5]


def test_callers_name_their_own_safe_settings(trained):
    with pytest.warns(UserWarning, match=r"report_every 2 \(was \(not set\)\)"):
        run(make_vi(), trained, config={**RUN, "report_every": 2}, safe_keys=("report_every",))


def test_resume_false_starts_over_whatever_the_checkpoint(trained):
    fresh = run(make_vi(seed=7), trained, config={"activation": "relu"}, resume=False)
    assert fresh.history.epochs["epoch"] == [1, 2, 3]


# --- files ------------------------------------------------------------------------------
class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_malicious_checkpoint_is_refused_and_its_payload_does_not_run(tmp_path):
    path, marker = tmp_path / "run.pt", tmp_path / "pwned"
    torch.save({"format": 2, "engine": Payload(marker)}, path)
    torch.load(path, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match="holds objects other than tensors.*--fresh"):
        run(make_vi(), path)
    assert not marker.exists()


@pytest.mark.parametrize("damage, says", [
    ("empty", "the file is empty"),
    ("truncated", "the file is truncated or not a checkpoint"),
    ("garbage", "the file is truncated or not a checkpoint"),
    ("foreign", "not a posterity training checkpoint"),
])
def test_a_corrupt_checkpoint_gives_one_line_naming_the_file_and_the_way_out(
        trained, damage, says):
    whole = trained.read_bytes()
    if damage == "empty":
        trained.write_bytes(b"")
    elif damage == "truncated":
        trained.write_bytes(whole[: len(whole) // 2])
    elif damage == "garbage":
        trained.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        torch.save({"weights": torch.ones(3)}, trained)
    with pytest.raises(CheckpointError) as error:
        run(make_vi(), trained, config=RUN)
    message = str(error.value)
    assert message.startswith(f"cannot read checkpoint {trained}: {says}")
    assert message.endswith("pass resume=False (CLI: --fresh) to start over, or use another "
                            "directory")
    assert "\n" not in message


def test_a_second_run_on_the_same_checkpoint_fails_at_once(tmp_path):
    path = tmp_path / "run.pt"
    started = time.perf_counter()
    with ckpt.RunLock(path):  # another run holds it (flock is per open file)
        with pytest.raises(CheckpointLockedError, match=f"pid {os.getpid()}.*{path}"):
            run(make_vi(), path)
    assert time.perf_counter() - started < 5
    run(make_vi(), path)  # released: the next run goes ahead


def test_a_finished_run_leaves_no_lock_file(tmp_path):
    path = tmp_path / "run.pt"
    run(make_vi(), path, epochs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]


def test_a_lock_taken_on_a_removed_lock_file_moves_to_the_new_one(tmp_path, monkeypatch):
    """A run that opened the lock file just before its holder removed it finds its
    lock on a file no longer in place, and locks the file now at the path."""
    path = tmp_path / "run.pt"
    lock = ckpt.RunLock(path)
    opened = lock._open_and_lock
    calls = []

    def open_then_lose_the_race() -> int:
        fd = opened()
        if not calls:  # the holder removes the file after this run opened it
            lock.path.unlink()
        calls.append(fd)
        return fd

    monkeypatch.setattr(lock, "_open_and_lock", open_then_lose_the_race)
    with lock:
        assert len(calls) == 2 and lock.path.exists()
        with pytest.raises(CheckpointLockedError):
            ckpt.RunLock(path).__enter__()
    assert not lock.path.exists()


def test_a_run_in_another_process_holds_its_checkpoint(processes, tmp_path):
    path = tmp_path / "run.pt"
    child = start(processes, path, tmp_path / "result.pt")
    try:
        wait_for(path.exists, child)
        with pytest.raises(CheckpointLockedError, match=f"another run \\(pid {child.pid}\\)"):
            run(make_vi(), path)
    finally:
        child.kill()
        child.join()


def test_stale_temporary_files_beside_the_checkpoint_are_removed(tmp_path):
    path = tmp_path / "run.pt"
    stale = [tmp_path / "run.pt.tmp", tmp_path / "run.pt.12345.tmp"]
    for file in stale:
        file.write_bytes(b"half")
    other = tmp_path / "other.pt.1.tmp"
    other.write_bytes(b"not ours")
    run(make_vi(), path, epochs=1)
    assert not any(f.exists() for f in stale) and other.exists()


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "No space left on device"),
                                          (errno.EACCES, "Permission denied")])
def test_a_full_disk_or_a_refused_write_is_one_plain_line(tmp_path, monkeypatch, code, reason):
    def failing(tmp, data):
        Path(tmp).write_bytes(b"part")
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(ckpt, "_write_file", failing)
    path = tmp_path / "run.pt"
    with pytest.raises(OSError) as error:
        run(make_vi(), path, epochs=1)
    assert str(error.value) == f"could not write the checkpoint {path}: {reason}"
    assert error.value.errno == code
    assert not list(tmp_path.glob("*.tmp")) and not path.exists()


def _write_with_a_size_limit(path: str, connection) -> None:
    """A child whose files may not exceed 1 kB, as on a nearly full disk."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
    try:
        run(make_vi(), Path(path), epochs=1)
    except OSError as error:
        connection.send(str(error))
    connection.close()


def test_a_real_failed_write_speaks_plainly(processes, tmp_path):
    path = tmp_path / "run.pt"
    receive, send = processes.Pipe(duplex=False)
    child = processes.Process(target=_write_with_a_size_limit, args=(str(path), send))
    child.start()
    child.join(60)
    assert receive.poll(30), "the child sent no error"
    message = receive.recv()
    assert message == f"could not write the checkpoint {path}: File too large"
    assert not list(tmp_path.glob("*.tmp"))


def test_an_unwritable_directory_fails_before_any_update(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    vi = make_vi()
    with pytest.raises(OSError, match=f"could not write beside the checkpoint {blocker}"):
        run(vi, blocker / "run.pt")
    assert vi.num_steps == 0


def test_state_that_is_not_plain_data_is_named_when_saving(tmp_path):
    vi = make_vi()
    state_dict = vi.state_dict
    vi.state_dict = lambda: {**state_dict(), "counts": np.zeros(3)}
    with pytest.raises(TypeError, match=r"checkpoint\['engine'\]\['counts'\] is a numpy.ndarray"):
        run(vi, tmp_path / "run.pt", epochs=1)


def test_every_random_stream_round_trips_through_a_weights_only_file(tmp_path):
    pyro.set_rng_seed(5)
    ckpt.save(tmp_path / "rng.pt", {"rng": ckpt.rng_state()})
    draws = torch.rand(3), np.random.rand(3), random.random(), random.gauss(0, 1)
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = torch.rand(3), np.random.rand(3), random.random(), random.gauss(0, 1)
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1])
    assert draws[2:] == again[2:]


# --- time budget ------------------------------------------------------------------------
class Slow:
    """A stand-in engine whose every update takes 20 ms."""

    monitor = ("valid_metric", "max")

    def __init__(self):
        self.updates = torch.zeros((), dtype=torch.int64)

    def step(self, batch):
        time.sleep(0.02)
        self.updates += 1
        return {"loss": 1.0}

    def validate(self, data):
        return {"valid_metric": 0.0}

    def state_dict(self):
        return {"updates": self.updates.clone()}

    def load_state_dict(self, state):
        self.updates = state["updates"].clone()


def test_a_time_budget_belongs_to_one_call_not_to_the_checkpoint(tmp_path):
    path, data = tmp_path / "run.pt", torch.zeros(100, 2)
    engine = Slow()
    history = fit(engine, data, epochs=3, batch_size=10, checkpoint=path, time_budget=0.1,
                  progress=False)
    assert history.out_of_time and history.num_epochs == 1 and engine.updates < 10
    later = Slow()
    with pytest.warns(UserWarning, match=r"time_budget None \(was 0.1\)"):
        history = fit(later, data, epochs=3, batch_size=10, checkpoint=path, progress=False)
    assert not history.out_of_time and history.num_epochs == 3
    assert int(later.updates) == 30  # the rest of the cut epoch, then two more


def test_resuming_on_other_data_is_refused(tmp_path):
    path = tmp_path / "run.pt"
    run(make_vi(), path, epochs=1)
    other = 1 - make_data()  # the same shape, other values
    with pytest.raises(CheckpointMismatchError, match="data_digest"):
        make_vi().fit(other, epochs=EPOCHS, batch_size=BATCH, valid=other[:40], seed=3,
                      progress=False, checkpoint=path)


def test_a_checkpoint_written_before_the_data_digest_still_resumes():
    from posterity.infer.checkpoints import compare_settings

    saved = {"engine": "AmortizedVI", "num_data": 120}
    assert compare_settings("run.pt", saved, {**saved, "data_digest": "0123abcd"}) == []
    with pytest.raises(CheckpointMismatchError, match="data_digest"):
        compare_settings("run.pt", {**saved, "data_digest": "ffff"},
                         {**saved, "data_digest": "0123abcd"})
