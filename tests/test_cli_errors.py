"""The command line speaks flags: every bad flag value, bad data file or unusable ``--out``
ends the run before any compute with one line, ``posterity: error: <flag> ...``, exit
status 2 (1 for failures of the system, 130 for an interrupt), and no traceback unless
``--debug``."""

import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from posterity.infer.cli import build_parser, explain, main

BASE = {
    "vae": ["fit", "vae", "--epochs", "1", "--z-dim", "2", "--hidden", "8", "--eval-samples",
            "10", "--eval-points", "20", "--diagnostic-points", "5", "--quiet"],
    "sbn": ["fit", "sbn", "--layers", "4", "-k", "3", "--epochs", "1", "--valid-points", "20",
            "--eval-samples", "10", "--eval-points", "20", "--diagnostic-points", "5", "--quiet"],
    "ssm": ["fit", "ssm", "--steps", "2", "--num-particles", "10", "--filter-particles", "50",
            "--iters", "4", "--chains", "2", "--quiet"],
    "bnn": ["fit", "bnn", "--hidden", "4", "--steps", "200", "--samples", "10", "--chains", "1",
            "--quiet"],
}

# (family, extra flags, the flag the message starts with or names); "{F}" is the data folder.
CASES = [
    ("bnn", ["--test-fraction", "1.5"], "--test-fraction must be in (0, 1), got 1.5"),
    ("bnn", ["--test-fraction", "0"], "--test-fraction"),
    ("bnn", ["--steps", "10", "--samples", "50"], "--steps"),
    ("bnn", ["--steps", "3", "--cycles", "4", "--samples", "1"], "--steps"),
    ("bnn", ["--batch-size", "0"], "--batch-size"),
    ("bnn", ["--step-size", "0"], "--step-size"),
    ("bnn", ["--step-size", "0.5", "--friction", "10"], "--step-size"),
    ("bnn", ["--chains", "0"], "--chains"),
    ("bnn", ["--samples", "0"], "--samples"),
    ("bnn", ["--classes", "1"], "--classes"),
    ("bnn", ["--target", "99"], "--target"),
    ("bnn", ["--exploration-ratio", "1"], "--exploration-ratio"),
    ("bnn", ["--cycles", "-1"], "--cycles"),
    ("bnn", ["--temperature", "0"], "--temperature"),
    ("bnn", ["--hidden", "0"], "--hidden"),
    ("bnn", ["--step-size", "nan"], "--step-size"),
    ("bnn", ["--step-size", "adaptive"], "--step-size"),
    ("bnn", ["--step-size", "auto", "--cycles", "4"], "--cycles must be 0 with --step-size auto"),
    ("bnn", ["--step-size", "auto", "--warmup", "1"], "--warmup must be >= 2"),
    ("bnn", ["--steps", "50", "--samples", "40", "--warmup", "20"], "--steps"),
    ("bnn", ["--data", "{F}/empty.csv"], "--data"),
    ("bnn", ["--data", "{F}/onecol.csv"], "--data"),
    ("bnn", ["--data", "{F}/gauss.csv", "--classes", "3"], "--classes"),
    ("bnn", ["--data", "{F}/gauss.csv", "--test-fraction", "0.99"], "--test-fraction"),
    ("vae", ["--z-dim", "0"], "--z-dim must be >= 1, got 0"),
    ("vae", ["--objective", "beta"], "--beta is needed with --objective beta"),
    ("vae", ["--beta", "2"], "--beta applies to --objective beta only"),
    ("vae", ["--kl", "closed-form"], "--kl closed-form applies to elbo, beta and multi_rate"),
    ("vae", ["--kl", "exact"], "--kl"),
    ("vae", ["--eval-points", "0"], "--eval-points"),
    ("vae", ["--epochs", "0"], "--epochs"),
    ("vae", ["--epochs", "abc"], "--epochs must be an integer, got 'abc'"),
    ("vae", ["-k", "0"], "--num-particles"),
    ("vae", ["--lr", "0"], "--lr"),
    ("vae", ["--lr", "-1"], "--lr"),
    ("vae", ["--batch-size", "0"], "--batch-size"),
    ("vae", ["--hidden", "0"], "--hidden"),
    ("vae", ["--beta-range", "10", "1"], "--beta-range"),
    ("vae", ["--objective", "multi_rate", "--num-betas", "0"], "--num-betas"),
    ("vae", ["--beta-distribution", "0.5"], "--beta-distribution"),
    ("vae", ["--beta-distribution", "0,1"], "--beta-distribution"),
    ("vae", ["--gate-lr-multiplier", "0"], "--gate-lr-multiplier"),
    ("vae", ["--beta-extension", "-1"], "--beta-extension"),
    ("vae", ["--response-rank", "-1"], "--response-rank"),
    ("vae", ["--response-degree", "3"], "--response-degree"),
    ("vae", ["--scheduler", "linear"], "--scheduler"),
    ("vae", ["--eval-samples", "0"], "--eval-samples"),
    ("vae", ["--diagnostic-points", "0"], "--diagnostic-points"),
    ("vae", ["--patience", "0"], "--patience"),
    ("vae", ["--threads", "0"], "--threads"),
    ("vae", ["--time-budget", "-1"], "--time-budget"),
    ("vae", ["--activation", "foo"], "--activation"),
    ("vae", ["--objective", "foo"], "--objective"),
    ("vae", ["--no-such-flag"], "--no-such-flag"),
    ("vae", ["--likelihood", "bernoulli", "--data", "{F}/gauss.csv"], "--likelihood"),
    ("vae", ["--data", "{F}/nosuchfile.csv"], "--data"),
    ("vae", ["--data", "{F}"], "--data"),
    ("vae", ["--data", "{F}/empty.csv"], "--data"),
    ("vae", ["--data", "{F}/header.csv"], "--data"),
    ("vae", ["--data", "{F}/ragged.csv"], "--data"),
    ("vae", ["--data", "{F}/text.csv"], "--data"),
    ("vae", ["--data", "{F}/short.csv"], "--data"),
    ("vae", ["--data", "{F}/garbage.npz"], "--data"),
    ("vae", ["--data", "{F}/nokeys.npz"], "--data"),
    ("vae", ["--data", "{F}/nan.npy"], "--data"),
    ("vae", ["--out", "{F}/afile/sub"], "--out"),
    ("sbn", ["--data", "{F}/gauss.csv"], "--data"),
    ("sbn", ["--time-budget", "-1"], "--time-budget"),
    ("sbn", ["-k", "1"], "--num-particles"),
    ("sbn", ["--algorithm", "rws", "--damping", "0.1"], "--damping applies to --algorithm"),
    ("sbn", ["--algorithm", "bihm", "--insomnia", "1"], "--insomnia applies to --algorithm"),
    ("sbn", ["--layers", "0"], "--layers"),
    ("sbn", ["--damping", "-1"], "--damping"),
    ("sbn", ["--refresh-every", "0"], "--refresh-every"),
    ("sbn", ["--insomnia", "2"], "--insomnia"),
    ("sbn", ["--valid-points", "0"], "--valid-points"),
    ("sbn", ["--out", "{F}/afile/sub"], "--out"),
    ("ssm", ["--data", "{F}/allnan.csv"], "--data"),
    ("ssm", ["--data", "{F}/empty.csv"], "--data"),
    ("ssm", ["--data", "{F}/header.csv"], "--data"),
    ("ssm", ["--data", "{F}/sv_text.csv"], "--data"),
    ("ssm", ["--data", "{F}/two.csv", "--columns", "5"], "--columns"),
    ("ssm", ["--data", "{F}/two.csv", "--model", "sv"], "--model"),
    ("ssm", ["--particles", "1"], "--num-particles"),
    ("ssm", ["--filter-particles", "0"], "--filter-particles"),
    ("ssm", ["--iters", "0"], "--iters"),
    ("ssm", ["--chains", "0"], "--chains"),
    ("ssm", ["--steps", "-1"], "--steps"),
    ("ssm", ["--model", "lgssm", "--state-dim", "0"], "--state-dim"),
    ("ssm", ["--lr", "0"], "--lr"),
    ("ssm", ["--out", "{F}/afile/sub"], "--out"),
    ("ssm", ["--data", "nosuch"], "--data"),
    ("bnn", ["--out", "{F}/afile/sub"], "--out"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    (folder / "empty.csv").write_text("")
    (folder / "header.csv").write_text("a,b,c\n")
    (folder / "ragged.csv").write_text("1,0,1\n0,1\n1,1,1\n")
    (folder / "text.csv").write_text("1,0,1\n0,x,1\n1,1,1\n")
    (folder / "short.csv").write_text("1,0\n0,1\n")
    np.savetxt(folder / "gauss.csv", rng.normal(size=(50, 6)), delimiter=",")
    (folder / "allnan.csv").write_text("r\n" + "nan\n" * 30)
    np.savetxt(folder / "two.csv", rng.normal(size=(30, 2)), delimiter=",")
    np.savetxt(folder / "onecol.csv", rng.normal(size=(30, 1)), delimiter=",")
    (folder / "garbage.npz").write_bytes(b"not a zip file at all")
    np.savez(folder / "nokeys.npz", a=np.zeros((3, 3)))
    np.save(folder / "nan.npy", np.full((20, 3), np.nan))
    (folder / "afile").write_text("x")
    (folder / "sv_text.csv").write_text("r\n0.1\n0.2\nabc\n0.3\n")
    return folder


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert "Traceback" not in captured.err
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("posterity: error: "), lines[0]
    return lines[0][len("posterity: error: "):]


@pytest.mark.parametrize("family, extra, named", CASES,
                         ids=[f"{f} {' '.join(e)}".replace("{F}/", "") for f, e, _ in CASES])
def test_a_bad_flag_or_file_is_one_line_naming_the_flag(family, extra, named, files, tmp_path,
                                                       capsys):
    extra = [e.replace("{F}", str(files)) for e in extra]
    code = main([*BASE[family], "--out", str(tmp_path / "out"), *extra])
    assert code == 2
    message = _one_line_error(capsys)
    assert message.startswith(named) or named in message, message
    for written in ("checkpoint.pt", "idata.nc"):  # refused before any training
        assert not (tmp_path / "out" / written).exists()


def test_a_run_that_fails_on_its_data_leaves_no_new_out_folder(tmp_path, capsys):
    (tmp_path / "bad.csv").write_text("a,b\nx,y\n")
    fresh, existing = tmp_path / "fresh", tmp_path / "existing"
    existing.mkdir()
    for out in (fresh, existing):
        assert main([*BASE["vae"], "--data", str(tmp_path / "bad.csv"), "--out", str(out)]) == 2
        assert _one_line_error(capsys).startswith("--data")
    assert not fresh.exists()
    assert existing.is_dir()  # a folder the user made stays


def test_the_error_of_an_engine_names_the_flag_not_the_argument():
    args = build_parser().parse_args(["fit", "bnn"])
    status, message = explain(ValueError("subsample_size must be >= 1, got 0"), args)
    assert (status, message) == (2, "--batch-size must be >= 1, got 0")
    args = build_parser().parse_args(["fit", "sbn"])
    status, message = explain(ValueError("num_particles must be >= 2, got 1"), args)
    assert (status, message) == (2, "--num-particles must be >= 2, got 1")


def test_a_full_disk_is_one_plain_line_with_status_1(tmp_path, capsys, monkeypatch):
    import arviz as az

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))

    monkeypatch.setattr(az.InferenceData, "to_netcdf", full)
    code = main([*BASE["vae"], "--out", str(tmp_path / "out")])
    assert code == 1
    message = _one_line_error(capsys)
    assert "idata.nc" in message and "disk is full" in message


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="lines? 2"):
        (tmp_path / "r.csv").write_text("1,2\n3\n")
        main([*BASE["vae"], "--data", str(tmp_path / "r.csv"), "--debug",
              "--out", str(tmp_path / "out")])


def test_a_second_run_on_the_same_out_is_refused(tmp_path, capsys):
    from posterity.infer.checkpoints import RunLock

    out = tmp_path / "out"
    out.mkdir()
    with RunLock(out / "run"):
        assert main([*BASE["vae"], "--out", str(out)]) == 2
    message = _one_line_error(capsys)
    assert message.startswith("--out") and "another posterity run" in message


def test_a_corrupt_checkpoint_names_the_file_and_fresh(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"garbage")
    assert main([*BASE["vae"], "--out", str(out)]) == 2
    message = _one_line_error(capsys)
    assert str(out / "checkpoint.pt") in message and "--fresh" in message


def test_sigint_saves_a_checkpoint_and_exits_130_in_one_line(tmp_path):
    """A real interrupt of the command: one line, status 130, and a checkpoint to resume
    from (resuming exactly is tested with the training loop)."""
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "posterity.infer.cli", *BASE["vae"], "--epochs", "100000",
            "--batch-size", "200", "--out", str(out)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "POSTERITY_PROGRESS": "0"})
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline \
            and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("posterity: ")
    assert "rerun" in err and (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("family", sorted(BASE))
def test_help_shows_every_options_default(family):
    """``posterity fit FAMILY --help`` states the default of every option that has one."""
    fit = build_parser()._subparsers._group_actions[0].choices["fit"]
    command = fit._subparsers._group_actions[0].choices[family]
    page = " ".join(command.format_help().split())
    for action in command._actions:
        if action.option_strings and action.default not in (None, False, "==SUPPRESS=="):
            shown = (" ".join(map(str, action.default)) if isinstance(action.default, list)
                     else str(action.default))
            stated = f"default {shown}" in page or "default" in (action.help or "")
            assert stated, (action.option_strings, shown)
