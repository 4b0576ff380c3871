"""Writes a small snapshot with a given server jar, and records what that jar does after it.

    PYTHONPATH=client-python-stub python3 make_snapshot.py --jar JAR --out DIR

DIR/state is the server's state directory after: registering a RAdamScheduleFree model of three
tiny tensors in two parameter groups with an EMA shadow, twelve steps of trainer "trainer" with
the gradients of ``gradient`` below, and one Snapshot RPC. DIR/expected.json records a second run
of the same jar on a copy of that directory: Restore, three more steps (their gradients and
figures), the train, eval and EMA views after them, and the group counters a second snapshot
holds then. Everything is read through fields that every protocol version has, or from the
snapshots' manifests, so any version of the Python client can run this against any jar.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from optsidecar.client import Client, StepStream
from optsidecar.launch import LocalServer
from optsidecar.spec import to_struct
from optsidecar.v1 import optimizer_pb2 as pb

MODEL = "format1"
TRAINER = "trainer"
SHAPES = {"w": [2, 3], "b": [3], "s": [2]}
SNAPSHOT_AFTER = 12
EXTRA_STEPS = 3
VIEWS = ["train", "eval", "ema:0.9"]


def spec() -> pb.ModelSpec:
    s = pb.ModelSpec(name=MODEL)
    for name, shape in SHAPES.items():
        s.tensors.append(pb.TensorSpec(name=name, shape=shape))
    s.groups.append(pb.ParamGroup(name="decay", tensors=["w"]))
    s.groups.append(pb.ParamGroup(name="no_decay", tensors=["b", "s"],
                                  hyperparameters=to_struct({"weight_decay": 0.0, "lr": 0.02})))
    s.optimizer.algorithm = "RAdamScheduleFree"
    s.optimizer.hyperparameters.CopyFrom(to_struct({"lr": 0.01, "weight_decay": 0.01}))
    s.optimizer.schedule.type = "cosine"
    s.optimizer.schedule.parameters.CopyFrom(to_struct({"warmup_steps": 2, "total_steps": 40}))
    s.optimizer.ema.append(pb.EmaShadow(decay=0.9))
    return s


def initial_weights() -> list:
    return [np.arange(1, int(np.prod(shape)) + 1, dtype=np.float32) / 8 for shape in SHAPES.values()]


def gradient(step: int) -> list:
    """Step ``step``'s gradients: small multiples of 1/4, exact in float32."""
    out = []
    for t, shape in enumerate(SHAPES.values()):
        i = np.arange(int(np.prod(shape)))
        out.append((((step * 7 + t * 5 + i * 3) % 13) - 6).astype(np.float32) / 4)
    return out


def pull(client: Client, view: str) -> list:
    out = [np.empty(int(np.prod(shape)), dtype=np.float32) for shape in SHAPES.values()]
    client.pull(MODEL, view, out)
    return [[float(x) for x in a] for a in out]


def counters(state_dir: Path, snapshot_id: str) -> list:
    """The group counters as the snapshot's manifest holds them."""
    [manifest] = state_dir.glob(f"*/{snapshot_id}/manifest.json")
    return json.loads(manifest.read_text())["model_meta"]["state"]["groups"]


def trainer(client: Client) -> StepStream:
    """The trainer's stream; its steps name no base version, so each counts as fresh (staleness 0)."""
    stream = client.step_stream(MODEL, TRAINER, retry_for=0)
    stream.base_version = None
    return stream


def serve(jar: str, state_dir: Path) -> LocalServer:
    return LocalServer(jar, server_args=["--state-dir", str(state_dir), "--journal", "off", "--threads", "1"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jar", required=True)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    state = args.out / "state"

    with serve(args.jar, state) as server, Client(server.target) as client:
        client.register(spec(), initial_weights())
        stream = trainer(client)
        for step in range(1, SNAPSHOT_AFTER + 1):
            stream.step(gradient(step), view="none")
        stream.close()
        snapshot = client.snapshot(MODEL)

    steps = []
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "state"
        shutil.copytree(state, copy)
        with serve(args.jar, copy) as server, Client(server.target) as client:
            client.restore(MODEL, snapshot.id)
            stream = trainer(client)
            for step in range(SNAPSHOT_AFTER + 1, SNAPSHOT_AFTER + EXTRA_STEPS + 1):
                grads = gradient(step)
                figures = stream.step(grads, view="none")
                steps.append({
                    "step_id": figures.step_id,
                    "version": figures.version,
                    "gradients": [[float(x) for x in g] for g in grads],
                    "groups": [{"group": g.name, "lr": g.lr, "effective_lr": g.effective_lr,
                                "averaging_weight": g.averaging_weight} for g in figures.groups],
                })
            stream.close()
            views = {view: pull(client, view) for view in VIEWS}
            after = client.snapshot(MODEL)
            counters_after = counters(copy, after.id)

    expected = {
        "model": MODEL,
        "snapshot": snapshot.id,
        "client_id": TRAINER,
        "steps": steps,
        "views": views,
        "counters_after": counters_after,
    }
    (args.out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
