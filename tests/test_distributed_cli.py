"""The command line under torchrun: `torchrun --nproc-per-node 2 --no-python posterity fit
vae ...` trains on both processes and writes its outputs once (rank 0); `fit bnn` and
`fit ssm` split their chains and write the chains of both processes once; a bad flag,
`--out` or data file ends every rank at once with one error line; a rank that fails later
ends the others instead of leaving them waiting; `posterity demo` refuses to run in more
than one process.

Two real torchrun launches (each about 15-30 s on 2 cores: two processes each import the
package); the other cases run `main` in two processes spawned by `distributed.run_local`,
which sets the same environment as torchrun, all in one spawned job.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import arviz as az
import pytest

from posterity.infer import distributed
from posterity.infer.cli import explain, main

BIN = Path(sys.executable).parent
TORCHRUN = BIN / "torchrun"
POSTERITY = BIN / "posterity"

SMALL_VAE = ["fit", "vae", "--data", "digits", "--epochs", "2", "--z-dim", "4", "--hidden",
             "16", "--batch-size", "64", "--eval-samples", "40", "--eval-points", "41",
             "--diagnostic-points", "10", "--quiet"]


def _torchrun(args: list[str], cwd: Path, timeout: float = 150) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node 2 --no-python posterity ARGS``; the whole process group
    is killed if it outlives ``timeout``."""
    env = {**os.environ, "POSTERITY_PROGRESS": "0", "OMP_NUM_THREADS": "1",
           "POSTERITY_DIST_TIMEOUT": "60"}
    command = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "--no-python",
               str(POSTERITY), *args]
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"torchrun {' '.join(args)} did not finish within {timeout} s")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _our_lines(text: str) -> list[str]:
    """Lines that posterity printed (torchrun adds its own warnings and failure report)."""
    return [line for line in text.splitlines() if line.startswith("posterity")]


@pytest.mark.skipif(not TORCHRUN.exists() or not POSTERITY.exists(),
                    reason="torchrun or the posterity script is not installed beside python")
def test_torchrun_fit_vae_trains_on_two_processes_and_writes_its_outputs_once(tmp_path):
    done = _torchrun([*SMALL_VAE, "--out", "runs/vae"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "runs" / "vae"
    for name in ("report.html", "idata.nc", "metrics.json", "checkpoint.pt"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in out.glob("*.pt")) == ["checkpoint.pt"]
    assert not list(out.glob(".*tmp")), "a temporary file was left behind"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["epochs"] == 2
    assert metrics["test_points"] == 41  # 21 + 20 rows evaluated on the two ranks
    idata = az.from_netcdf(str(out / "idata.nc"))
    assert idata.posterior["z"].shape[2:] == (10, 4)
    # rank 0 alone prints: one summary and one report line
    assert done.stdout.count("report:") == 1, done.stdout
    assert done.stdout.count("test log p(x)") == 1, done.stdout
    assert not _our_lines(done.stderr), done.stderr[-3000:]


@pytest.mark.skipif(not TORCHRUN.exists() or not POSTERITY.exists(),
                    reason="torchrun or the posterity script is not installed beside python")
def test_torchrun_a_count_the_processes_cannot_split_is_one_error_line(tmp_path):
    done = _torchrun(["fit", "bnn", "--chains", "3", "--steps", "20", "--samples", "5",
                      "--out", "runs/bnn"], cwd=tmp_path)
    assert done.returncode != 0
    assert _our_lines(done.stderr) == [
        "posterity: error: --chains must be divisible by the number of processes (2), so "
        "that each holds the same share; got 3"]
    assert not (tmp_path / "runs").exists(), "a refused run must not create --out"


# --- two processes spawned by run_local (torchrun's environment, no torchrun) -----------


def _cli_cases(root: str) -> dict[str, object]:
    """Per rank: several command lines, with their exit status and what they printed."""
    import contextlib
    import io

    rank = distributed.rank()
    results: dict[str, object] = {}

    def run(name: str, argv: list[str]) -> None:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(argv)
        results[name] = (status, out.getvalue(), err.getvalue())

    run("demo", ["demo", "--out", f"{root}/demo"])
    run("z_dim", ["fit", "vae", "--z-dim", "0"])
    Path(root, "afile").write_text("")
    run("out", [*SMALL_VAE, "--out", f"{root}/afile/x"])
    run("particles", ["fit", "ssm", "--filter-particles", "301", "--out", f"{root}/ssm"])
    run("data", [*SMALL_VAE, "--data", f"{root}/missing.csv", "--out", f"{root}/data"])
    # chains split over the processes and gathered into one InferenceData, written once
    # (a categorical likelihood: no noise scale whose prior draw could start a chain far
    # out)
    if rank == 0:
        Path(root, "classes.csv").write_text("\n".join(
            f"{math.sin(i):.3f},{math.cos(3 * i):.3f},{int(math.sin(i) > 0)}"
            for i in range(60)) + "\n")
        Path(root, "series.csv").write_text("\n".join(f"{0.5 * math.sin(t):.3f}"
                                                      for t in range(30)) + "\n")
    distributed.barrier()
    run("bnn", ["fit", "bnn", "--data", f"{root}/classes.csv", "--classes", "2", "--kernel",
                "sgld", "--steps", "40", "--samples", "5", "--chains", "2", "--cycles", "0",
                "--hidden", "8", "--quiet", "--out", f"{root}/bnn"])
    run("ssm", ["fit", "ssm", "--data", f"{root}/series.csv", "--steps", "2",
                "--num-particles", "10", "--filter-particles", "20", "--iters", "5",
                "--chains", "2", "--quiet", "--out", f"{root}/ssm_run"])
    # 48 training rows in global batches of 47: a last minibatch of 1 row for 2 processes
    run("last_batch", ["fit", "vae", "--data", f"{root}/classes.csv", "--batch-size", "47",
                       "--epochs", "1", "--quiet", "--out", f"{root}/last_batch"])
    # a resumed run with another model: refused by rank 0's checkpoint, said once
    run("first", [*SMALL_VAE, "--epochs", "1", "--eval-samples", "5", "--out", f"{root}/resume"])
    run("changed", [*SMALL_VAE, "--epochs", "1", "--z-dim", "3", "--out", f"{root}/resume"])
    # what a collective raises when a peer does not answer in time
    results["timeout"] = explain(RuntimeError(
        "[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 300000ms for recv "
        "operation to complete"), argparse.Namespace())
    # data that only rank 0 can use: rank 1 fails while rank 0 trains, and rank 0 must
    # then stop with an error instead of waiting for rank 1 forever
    rows = ["1,0,1,0", "0,1,0,1"] if rank == 0 else ["1,0,2,0", "0,1,0,1"]
    Path(root, f"rows{rank}.csv").write_text("\n".join(rows * 20) + "\n")
    run("lost", ["fit", "vae", "--data", f"{root}/rows{rank}.csv", "--likelihood", "bernoulli",
                 "--epochs", "50", "--z-dim", "2", "--hidden", "4", "--batch-size", "4",
                 "--eval-samples", "5", "--quiet", "--out", f"{root}/lost"])
    return results


def test_under_two_processes_errors_are_one_line_and_no_rank_waits_forever(tmp_path):
    ranks = distributed.run_local(_cli_cases, 2, args=(str(tmp_path),), timeout=150)
    first, second = ranks
    # refused or bad before any work: the same status on both ranks, one line from rank 0
    expected = {
        "demo": "posterity: error: posterity demo runs in one process; launch it without "
                "torchrun (posterity fit FAMILY runs under torchrun)",
        "z_dim": "posterity: error: --z-dim must be >= 1, got 0",
        "out": f"posterity: error: --out {tmp_path}/afile/x is not a writable folder (a file "
               f"is in the way)",
        "particles": "posterity: error: --filter-particles must be divisible by the number "
                     "of processes (2), so that each holds the same share; got 301",
    }
    assert first["data"][2].startswith("posterity: error: --data ")
    assert "missing.csv' (no such file)" in first["data"][2]
    assert len(first["data"][2].strip().splitlines()) == 1
    expected["data"] = first["data"][2].strip()
    for name, line in expected.items():
        assert first[name][0] == second[name][0] == 2, (name, first[name], second[name])
        assert first[name][2].strip() == line, (name, first[name][2])
        assert second[name][1:] == ("", ""), (name, second[name])
    assert not (tmp_path / "demo").exists() and not (tmp_path / "ssm").exists()
    written = [p.name for p in (tmp_path / "data").glob("*") if not p.name.endswith(".lock")]
    assert not written, f"a run refused for its data wrote {written}"
    # the work split, the outputs written once: chains from both ranks in one idata.nc
    for name, folder in (("bnn", "bnn"), ("ssm", "ssm_run")):
        assert first[name][0] == second[name][0] == 0, (name, first[name], second[name])
        assert first[name][1].count("report:") == 1 and second[name][1:] == ("", "")
        metrics = json.loads((tmp_path / folder / "metrics.json").read_text())
        assert metrics["processes"] == 2
        posterior = az.from_netcdf(str(tmp_path / folder / "idata.nc")).posterior
        values = posterior["x" if name == "ssm" else "layer1.bias"].values
        assert posterior.sizes["chain"] == 2 and not (values[0] == values[1]).all(), name
    # a rule of the shared loop, met alike on every rank before any update
    assert first["last_batch"][0] == second["last_batch"][0] == 2
    assert first["last_batch"][2].startswith("posterity: error: --batch-size 47 "), \
        first["last_batch"]
    assert "last minibatch of 1 rows" in first["last_batch"][2]
    assert first["first"][0] == second["first"][0] == 0
    assert first["changed"][0] == second["changed"][0] == 2
    assert "--z-dim" in first["changed"][2] and "--fresh" in first["changed"][2]
    assert len(first["changed"][2].strip().splitlines()) == 1, first["changed"][2]
    assert second["changed"][1:] == ("", ""), second["changed"]
    status, message = first["timeout"]
    assert status == 1 and message.startswith("another process of this run did not answer "
                                              "within POSTERITY_DIST_TIMEOUT"), message
    # a failure on rank 1 alone: rank 1 names itself, rank 0 stops in its next collective
    status, _, err = second["lost"]
    assert status == 2 and err.startswith("posterity: error: rank 1: --likelihood bernoulli "
                                          "needs data in {0, 1}"), err
    status, _, err = first["lost"]
    assert status == 1 and err.startswith("posterity: error: another process of this run "
                                          "stopped"), err
    assert len(err.strip().splitlines()) == 1


def test_world_size_without_the_rest_of_torchruns_environment_is_one_error_line(
        monkeypatch, capsys):
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["fit", "vae", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("posterity: error: cannot join the process group of this run: "
                          "init_process_group() needs torchrun's environment; RANK, "), err
    assert "\n" not in err


def test_fit_help_says_what_each_command_splits(capsys):
    for family, words in (("vae", "contiguous shares"), ("sbn", "Fisher blocks"),
                          ("ssm", "--filter-particles"), ("bnn", "chains are split")):
        assert main(["fit", family, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "Under torchrun:" in text and words in text, (family, text[-600:])
