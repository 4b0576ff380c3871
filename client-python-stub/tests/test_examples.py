"""The examples run end to end against the test server (a few epochs, as a smoke test)."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import threading
from pathlib import Path

from conftest import PACKAGE_ROOT, server_jar, subprocess_env

EXAMPLES = PACKAGE_ROOT / "examples"

#: RAdamScheduleFree's eval-view test accuracy after 3 epochs: 0.86 to 0.90 over seeds 0-2 with the
#: default hyperparameters (its rectification makes the first epochs a warmup); the bound leaves margin.
THREE_EPOCH_BOUND = 0.75


def test_digits_trains_both_optimizers_and_plots(target: str, tmp_path: Path):
    plot = tmp_path / "digits.png"
    run = subprocess.run([sys.executable, str(EXAMPLES / "digits.py"), "--target", target, "--epochs", "3",
                          "--plot", str(plot)],
                         env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr

    epochs = re.findall(r"^\s+(\d+)\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s+([\d.]+)\s", run.stdout, re.MULTILINE)
    assert [int(e) for e, _, _ in epochs] == [1, 2, 3], run.stdout
    final = re.search(r"RAdamScheduleFree \(remote, eval view\) ([\d.]+), AdamW \+ cosine \(local\) ([\d.]+)",
                      run.stdout)
    assert final, run.stdout
    sf, adamw = float(final.group(1)), float(final.group(2))
    assert (sf, adamw) == (float(epochs[-1][1]), float(epochs[-1][2]))
    assert sf > THREE_EPOCH_BOUND, run.stdout
    assert adamw > THREE_EPOCH_BOUND, run.stdout

    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_digits_trains_as_well_over_a_bfloat16_wire(target: str, tmp_path: Path):
    run = subprocess.run([sys.executable, str(EXAMPLES / "digits.py"), "--target", target, "--epochs", "3",
                          "--wire-dtype", "bfloat16", "--plot", str(tmp_path / "digits.png")],
                         env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    final = re.search(r"RAdamScheduleFree \(remote, eval view\) ([\d.]+), .*; bfloat16 on the wire", run.stdout)
    assert final, run.stdout
    assert float(final.group(1)) > THREE_EPOCH_BOUND, run.stdout


def test_lr_sweep_trains_every_run_side_by_side_and_writes_table_and_plot(target: str, client, tmp_path: Path):
    """A tiny grid (2 optimizers x 2 lrs x 1 seed, 1 epoch); while it runs, the server is polled for
    the sweep's models, which must all be there at once."""
    prefix = f"test-sweep-{tmp_path.name}"
    grid = {(o, lr) for o in ("adam", "radam-sf") for lr in ("0.001", "0.01")}
    expected_models = {f"{prefix}/{o}/lr={lr}/seed=0" for o, lr in grid}
    most_at_once: set = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            present = {m for m in client.list() if m.startswith(prefix + "/")}
            if len(present) > len(most_at_once):
                most_at_once.clear()
                most_at_once.update(present)
            done.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out = tmp_path / "out"
    try:
        run = subprocess.run([sys.executable, str(EXAMPLES / "lr_sweep.py"), "--target", target,
                              "--optimizers", "adam,radam_sf", "--lrs", "0.001,0.01", "--seeds", "1", "--epochs", "1",
                              "--name-prefix", prefix, "--out-dir", str(out)],
                             env=subprocess_env(), capture_output=True, text=True, timeout=120)
    finally:
        done.set()
        watcher.join()
    assert run.returncode == 0, run.stdout + run.stderr
    assert most_at_once == expected_models, run.stdout
    assert not [m for m in client.list() if m.startswith(prefix + "/")], "the sweep's models outlived it"

    with (out / "runs.csv").open() as f:
        runs = list(csv.DictReader(f))
    assert {(r["optimizer"].replace("_", "-"), r["lr"]) for r in runs} == grid
    assert {r["seed"] for r in runs} == {"0"}
    accuracy = {(r["optimizer"], r["lr"]): float(r["test_accuracy"]) for r in runs}
    assert all(0.0 <= a <= 1.0 for a in accuracy.values()), accuracy
    # One epoch of Adam at lr 0.01 gets 0.88 on the test images (10 classes: chance is 0.1).
    assert accuracy["adam", "0.01"] > 0.5, accuracy

    with (out / "table.csv").open() as f:
        cells = list(csv.DictReader(f))
    # One seed: each cell's mean, min and max are its run's accuracy, its spread zero.
    assert {(c["optimizer"], c["lr"]): (float(c["mean"]), float(c["min"]), float(c["max"]), float(c["std"]))
            for c in cells} == {key: (a, a, a, 0.0) for key, a in accuracy.items()}
    table = (out / "table.md").read_text()
    assert table.startswith("| lr | Adam | RAdamScheduleFree (x) |\n"), table
    assert table in run.stdout
    assert (out / "accuracy_vs_lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lr_sweep_names_an_unknown_optimizer():
    run = subprocess.run([sys.executable, str(EXAMPLES / "lr_sweep.py"), "--optimizers", "adam,lion"],
                         env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "--optimizers: unknown ['lion']" in run.stderr, run.stderr


def test_ps_experiment_runs_sync_and_async_trainer_processes(tmp_path: Path):
    """The experiment with tiny settings, starting a server of its own from the jar."""
    figure = tmp_path / "ps.png"
    run = subprocess.run([sys.executable, str(EXAMPLES / "ps_experiment.py"), "--jar", str(server_jar()),
                          "--trainers", "2", "--epochs", "1", "--warmup-epochs", "0", "--out", str(figure)],
                         env=subprocess_env(), capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr

    assert re.search(r"^mode\s+trainers\s+steps\s+steps/s\s+contrib/s\s+test acc\s+late\s+rejected\s+stale mean\s+"
                     r"stale max$", run.stdout, re.MULTILINE), run.stdout
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(
        r"^(sync|async)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+(\d+\+?)$",
        run.stdout, re.MULTILINE)}
    assert sorted(rows) == ["async", "sync"], run.stdout
    batches = int(re.search(r"\((\d+) batches of", run.stdout).group(1))
    trainers, steps, _, _, accuracy, late, rejected, stale_mean, stale_max = rows["sync"]
    # Sync: one step per round of both trainers' gradients, none late, nothing stale.
    assert (int(trainers), int(steps), int(late), int(rejected)) == (2, batches, 0, 0)
    assert (float(stale_mean), stale_max) == (0.0, "0")
    trainers, steps, _, _, accuracy, late, rejected, stale_mean, stale_max = rows["async"]
    # Async: every gradient is a step of its own (down-weighted past the bound, not rejected).
    assert (int(trainers), int(steps), int(late), int(rejected)) == (2, 2 * batches, 0, 0)
    assert 0.0 < float(accuracy) <= 1.0
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
