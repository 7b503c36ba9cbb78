"""`numpyvae train` as separate processes: concurrent runs, the run lock, kill -9 in the middle
of a save, divergence, resume with conflicting options, and Ctrl-C.

Every child is `python -c CHILD MODE MARKER <numpyvae arguments>`: CHILD runs the command line
with, depending on MODE, one hook that makes it stop at a known point and say so by creating
the file MARKER. The test waits for the marker, then acts (starts a rival process, sends
SIGKILL or SIGINT). Nothing depends on timing except generous timeouts.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from numpyvae.checkpoint import load_checkpoint
from numpyvae.cli import main
from numpyvae.training import load_run

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

TINY = ["--hidden", "8", "--latent-dim", "2", "--epochs", "1", "--batch-size", "512", "--no-figures"]
TIMEOUT = 60

CHILD = r"""
import os, sys, time
mode, marker, argv = sys.argv[1], sys.argv[2], sys.argv[3:]

def announce_and_wait():
    open(marker, "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(marker + ".go") and time.monotonic() < deadline:
        time.sleep(0.01)

if mode == "pause-after-first-step":      # hold the run (and its lock) inside epoch 1
    from numpyvae import optim
    step, calls = optim.Optimizer.step, []
    def paused_step(self, grads):
        step(self, grads)
        calls.append(1)
        if len(calls) == 1:
            announce_and_wait()
    optim.Optimizer.step = paused_step
elif mode == "hang-in-second-save":       # hang while the second checkpoint's temporary is flushed
    fsync, seen = os.fsync, []
    def slow_fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.basename(name).startswith(".checkpoint.npz.") and name.endswith(".tmp"):
            seen.append(name)
            if len(seen) == 2:
                open(marker, "w").close()
                time.sleep(60)
        return fsync(fd)
    os.fsync = slow_fsync

from numpyvae.cli import main
sys.exit(main(argv))
"""


def child_env():
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start(args, cwd, mode="plain", marker="unused"):
    return subprocess.Popen([sys.executable, "-c", CHILD, mode, str(marker), *args], cwd=cwd, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc):
    out, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out, err


def wait_for(path, proc):
    deadline = time.monotonic() + TIMEOUT
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(f"child exited ({proc.returncode}) before {path}: {proc.communicate()}")
        assert time.monotonic() < deadline, f"no {path} after {TIMEOUT} s"
        time.sleep(0.01)


def error_lines(err):
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.strip()]


def same_run(directory):
    """config.json, history.json and the checkpoint of one directory were written by one run."""
    config = json.loads((directory / "config.json").read_text())
    history = json.loads((directory / "history.json").read_text())
    _, meta = load_checkpoint(directory / "checkpoint.npz")
    assert config["train"] == meta["train"] and config["model"] == meta["model"]
    assert history == meta["history"]
    return meta["train"]["seed"]


def test_concurrent_runs_without_out_get_their_own_directories(tmp_path):
    # Started together, the three usually ask for the same one-second name: before the fix they
    # shared it, each writing its files over the others'.
    procs = [start(["train", *TINY, "--seed", str(seed)], cwd=tmp_path) for seed in (1, 2, 3)]
    results = [finish(p) for p in procs]
    assert [r[0] for r in results] == [0, 0, 0], results
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 3, runs
    assert sorted(same_run(r) for r in runs) == [1, 2, 3]


@pytest.mark.parametrize("resume", [False, True], ids=["new", "resume"])
def test_second_writer_of_a_run_directory_is_refused(tmp_path, resume):
    out = tmp_path / "run"
    if resume:
        assert main(["train", *TINY, "--out", str(out)]) == 0
    extra = ["--resume", "--epochs", "2"] if resume else []
    marker = tmp_path / "holding"
    first = start(["train", *TINY, "--out", str(out), *extra], cwd=tmp_path, mode="pause-after-first-step",
                  marker=marker)
    wait_for(marker, first)
    code, _, err = finish(start(["train", *TINY, "--out", str(out), *extra], cwd=tmp_path))
    (tmp_path / "holding.go").touch()
    assert finish(first)[0] == 0
    assert code == 1
    [line] = error_lines(err)
    assert re.fullmatch(rf"numpyvae train: error: {re.escape(str(out))} is in use by pid {first.pid} "
                        r"\(started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\); wait for it to finish or choose another --out",
                        line), line
    assert load_run(out).epoch == (2 if resume else 1)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="the hook finds the file being flushed in /proc")
def test_kill_9_during_a_save_leaves_nothing_a_resume_cannot_clean(tmp_path):
    out = tmp_path / "run"
    marker = tmp_path / "saving"
    proc = start(["train", *TINY, "--epochs", "2", "--out", str(out)], cwd=tmp_path, mode="hang-in-second-save",
                 marker=marker)
    wait_for(marker, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=TIMEOUT)
    leftovers = [f for f in os.listdir(out) if f.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".checkpoint.npz."), os.listdir(out)
    assert load_run(out).epoch == 1, "the checkpoint on disk is the complete one of epoch 1"
    # run.lock still names the killed process, but the kernel dropped its lock with it
    assert f"pid {proc.pid}" in (out / "run.lock").read_text()
    code, stdout, err = finish(start(["train", "--out", str(out), "--resume"], cwd=tmp_path))
    assert code == 0, err
    assert "resuming" in stdout and "trained epoch 2 (1 in this call)" in stdout
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    assert load_run(out).epoch == 2 and same_run(out) == 0


def test_divergence_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    before = (out / "checkpoint.npz").read_bytes()
    code, _, err = finish(start(["train", "--out", str(out), "--resume", "--epochs", "3", "--lr", "1e10"],
                                cwd=tmp_path))
    assert code == 1
    lines = error_lines(err)
    assert len(lines) == 2 and lines[1].startswith("hint: "), lines
    assert lines[0].startswith("numpyvae train: error: training diverged at epoch 2, step ")
    assert f"{out} keeps the checkpoint of epoch 1" in lines[0] and "--lr (now 1e+10)" in lines[0]
    assert sum("epoch 2, step" in line for line in lines) == 1
    assert (out / "checkpoint.npz").read_bytes() == before
    assert json.loads((out / "history.json").read_text())["epoch"] == [1]


def test_resume_refuses_conflicting_options_in_one_line(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    before = (out / "checkpoint.npz").read_bytes()
    code, _, err = finish(start(["train", "--out", str(out), "--resume", "--epochs", "2", "--latent-dim", "3",
                                 "--hidden", "16", "--objective", "iwae", "--likelihood", "gaussian"], cwd=tmp_path))
    assert code == 1
    assert error_lines(err) == ["numpyvae train: error: --resume cannot change: --hidden (saved 8, given 16), "
                                "--latent-dim (saved 2, given 3), --likelihood (saved bernoulli, given gaussian), "
                                "--objective (saved elbo, given iwae); start a new run (another --out) to train "
                                "with different settings"]
    assert (out / "checkpoint.npz").read_bytes() == before


def test_ctrl_c_in_the_first_epoch_says_nothing_was_saved(tmp_path):
    out = tmp_path / "run"
    marker = tmp_path / "in-epoch-1"
    proc = start(["train", *TINY, "--out", str(out)], cwd=tmp_path, mode="pause-after-first-step", marker=marker)
    wait_for(marker, proc)
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc)
    assert code == 130
    assert error_lines(err) == [f"numpyvae train: interrupted during epoch 1; nothing was saved "
                                f"(the new run directory {out} was removed)"]
    assert not out.exists()


def test_ctrl_c_after_saved_epochs_gives_the_resume_command(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    marker = tmp_path / "in-epoch-2"
    proc = start(["train", "--out", str(out), "--resume", "--epochs", "3"], cwd=tmp_path,
                 mode="pause-after-first-step", marker=marker)
    wait_for(marker, proc)
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc)
    assert code == 130
    assert error_lines(err) == [f"numpyvae train: interrupted during epoch 2; epoch 1 is saved in {out}: resume "
                                f"with `numpyvae train --out {out} --resume --epochs 3`"]
    assert load_run(out).epoch == 1
    assert np.isfinite(json.loads((out / "history.json").read_text())["test_elbo"][0])
