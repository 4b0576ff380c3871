"""Replays reference vectors through a running server with the Python client.

    python3 -m optsidecar.conformance DIR [--target HOST:PORT]

For every case file in DIR (``index.json`` is a listing, not a case) it registers the case's
model (a resume case restores its checkpoint through the API: ``ModelSpec.state`` and
``StateChunk``s), feeds the recorded gradients step by step, and compares within the tolerance the
case carries: the train weights, the eval view (x, the EMA shadow or the slow weights, pulled
between steps), the lr, the scheduled lr and the recorded group scalars (Schedule-Free's k, lr_max
and weight_sum) by name at every step, and at the end every state buffer (through ``VIEW_SLOT``),
the step counts, the group scalars and the EMA and Lookahead counters. These are the checks of the server's own Java runner
(``server/.../conformance``), so the two runners can vouch for each other's clients.

Prints one line per case, ``PASS|FAIL|SKIP  name  worst X of tolerance``, then
``conformance: N passed, M failed``; exits 1 if any case failed.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, TextIO

import grpc
import numpy as np
from google.protobuf import json_format, struct_pb2

from .client import Client, StateBuffer
from .errors import NotFound, OptSidecarError, Unimplemented
from .v1 import optimizer_pb2 as pb
from .views import view_name

__all__ = ["CaseResult", "Comparison", "ReferenceCase", "run_case", "run_all", "main"]


def decode(b64: str) -> np.ndarray:
    """A base64 string of little-endian float32 values as a float32 array."""
    return np.frombuffer(base64.b64decode(b64), dtype="<f4").astype(np.float32)


def decode_all(values: Sequence[str]) -> List[np.ndarray]:
    return [decode(v) for v in values]


def _f32(x: float) -> str:
    return str(np.float32(x))


class Comparison:
    """Element-wise ``|a − ref| ≤ atol + rtol·|ref|`` and relative checks of double scalars,
    keeping the worst error as a fraction of its tolerance and where it occurred."""

    def __init__(self, atol: float, rtol: float, scalar_rtol: float):
        self.atol = atol
        self.rtol = rtol
        self.scalar_rtol = scalar_rtol
        self.worst = 0.0
        self.worst_where = "no values compared"
        self.first_failure: Optional[str] = None

    def tensors(self, what: str, names: Sequence[str], actual: Sequence[np.ndarray],
                expected: Sequence[np.ndarray]) -> None:
        for name, a, e in zip(names, actual, expected):
            if a.size != e.size:
                self.fail(f"{what} {name}: {a.size} values, expected {e.size}")
                continue
            if e.size == 0:
                continue
            e64 = e.astype(np.float64)
            err = np.abs(a.astype(np.float64) - e64)
            fractions = err / (self.atol + self.rtol * np.abs(e64))
            fractions[np.isnan(fractions)] = np.inf
            i = int(np.argmax(fractions))
            self._record(float(fractions[i]), f"{what} {name}[{i}]: got {_f32(a[i])}, expected {_f32(e[i])}")
            over = np.flatnonzero(fractions > 1)
            if over.size and self.first_failure is None:
                j = int(over[0])
                self.first_failure = f"{what} {name}[{j}]: got {_f32(a[j])}, expected {_f32(e[j])}"

    def scalar(self, what: str, actual: float, expected: float) -> None:
        limit = self.scalar_rtol * max(abs(expected), sys.float_info.min)
        err = abs(actual - expected)
        fraction = 0.0 if err == 0 else float("inf") if err != err else err / limit
        self._record(fraction, f"{what}: got {actual!r}, expected {expected!r}")
        if fraction > 1 and self.first_failure is None:
            self.first_failure = f"{what}: got {actual!r}, expected {expected!r}"

    def group_scalars(self, what: str, actual: Mapping[str, float], expected: Mapping[str, Any],
                      recorded: Sequence[str]) -> None:
        """The group scalars the reference records (of ``recorded``, those ``expected`` holds)
        against the server's, by name; one the server's group lacks is a failure."""
        for name in recorded:
            if name not in expected:
                continue
            if name not in actual:
                has = ", ".join(sorted(actual)) or "none"
                self.fail(f"{what} {name}: the reference records this group scalar; the server's group has {has}")
            else:
                self.scalar(f"{what} {name}", actual[name], float(expected[name]))

    def exact(self, what: str, actual: int, expected: int) -> None:
        if actual != expected:
            self.fail(f"{what}: got {actual}, expected {expected}")

    def _record(self, fraction: float, where: str) -> None:
        if fraction > self.worst or (self.worst == 0 and self.worst_where == "no values compared"):
            self.worst = fraction
            self.worst_where = where

    def fail(self, message: str) -> None:
        if self.first_failure is None:
            self.first_failure = message
        self.worst = float("inf")

    @property
    def passed(self) -> bool:
        return self.first_failure is None


@dataclass
class CaseResult:
    """A case's outcome: PASS or FAIL with the worst error as a fraction of tolerance, or SKIP."""

    name: str
    outcome: str
    worst: float
    detail: str

    def line(self) -> str:
        if self.outcome == "PASS":
            return f"PASS  {self.name:<40} worst {self.worst:.3f} of tolerance ({self.detail})"
        if self.outcome == "FAIL":
            return f"FAIL  {self.name:<40} worst {self.worst:.3g} of tolerance: {self.detail}"
        return f"SKIP  {self.name:<40} {self.detail}"


def _struct(values: Dict[str, Any]) -> struct_pb2.Struct:
    return json_format.ParseDict(values, struct_pb2.Struct())


class ReferenceCase:
    """One case file (format_version 1): configuration, initial tensors and recorded trajectory."""

    def __init__(self, root: Dict[str, Any]):
        self.root = root
        self.name: str = root.get("case", "")
        tolerance = root["tolerance"]
        self.atol = float(tolerance["atol"])
        self.rtol = float(tolerance["rtol"])
        self.scalar_rtol = float(tolerance["scalar_rtol"])

    @classmethod
    def read(cls, path: Path) -> "ReferenceCase":
        root = json.loads(path.read_text())
        if root.get("format_version") != 1:
            raise ValueError(f"{path.name}: unsupported format_version {root.get('format_version')}")
        if not isinstance(root.get("tolerance"), dict):
            raise ValueError(f"{path.name}: no tolerance field")
        return cls(root)

    @property
    def param_names(self) -> List[str]:
        return [p["name"] for p in self.root["params"]]

    def initial_params(self) -> List[np.ndarray]:
        return [decode(p["init"]) for p in self.root["params"]]

    def resume_after(self) -> int:
        checkpoint = self.root.get("checkpoint")
        return int(checkpoint["after_step"]) if isinstance(checkpoint, dict) else 0

    def starting_params(self) -> List[np.ndarray]:
        """The checkpoint's weights when resuming, else the initial ones."""
        if not self.resume_after():
            return self.initial_params()
        return decode_all(self.root["checkpoint"]["params"])

    def eval_view(self) -> Optional[pb.View]:
        kind = self.root.get("eval_view")
        if kind == "x":
            return pb.View(kind=pb.VIEW_EVAL)
        if kind == "ema":
            return pb.View(kind=pb.VIEW_EMA, ema_decay=float(self.root["ema"]["decay"]))
        if kind == "slow":
            return pb.View(kind=pb.VIEW_SLOW)
        return None

    def spec(self, model: str) -> pb.ModelSpec:
        """The model spec that reproduces the reference optimizer."""
        spec = pb.ModelSpec(name=model)
        for p in self.root["params"]:
            spec.tensors.append(pb.TensorSpec(name=p["name"], shape=[int(d) for d in p["shape"]]))
        config = spec.optimizer
        if self.root["algorithm"] == "Lookahead":
            inner = self.root["inner"]
            hp = self.root["hyperparameters"]
            config.algorithm = inner["algorithm"]
            config.hyperparameters.CopyFrom(_struct(inner["hyperparameters"]))
            config.lookahead.CopyFrom(pb.Lookahead(k=int(hp["la_steps"]), alpha=float(hp["la_alpha"]),
                                                   pullback_momentum=hp.get("pullback_momentum", "none")))
        else:
            config.algorithm = self.root["algorithm"]
            config.hyperparameters.CopyFrom(_struct(self.root["hyperparameters"]))
        schedule = self.root.get("schedule")
        if isinstance(schedule, dict):
            parameters = {k: v for k, v in schedule.items() if k != "type"}
            config.schedule.CopyFrom(pb.Schedule(type=schedule["type"], parameters=_struct(parameters)))
        ema = self.root.get("ema")
        if isinstance(ema, dict):
            config.ema.append(pb.EmaShadow(decay=float(ema["decay"]), every=int(ema.get("every", 1))))
        return spec

    #: The entry of a step's ``group`` record that is the step's effective lr, not a group scalar.
    SCHEDULED_LR = "scheduled_lr"

    def recorded_scalars(self) -> List[str]:
        """The group scalars the case records, by name: what its steps' ``group`` records hold
        besides the scheduled lr (Schedule-Free: k, lr_max, weight_sum); none without such records."""
        for step in self.root["steps"]:
            group = step.get("group")
            if isinstance(group, dict):
                return [name for name in group if name != self.SCHEDULED_LR]
        return []

    def checkpoint_state(self, group_name: str = "default") -> pb.ModelState:
        """A resume case's counters in the protocol's terms: torch's per-parameter step, the
        recorded group scalars by name, the scheduler's last_epoch, which point the weights are."""
        cp = self.root["checkpoint"]
        after = int(cp["after_step"])
        scheduler = cp.get("scheduler")
        last_epoch = scheduler.get("last_epoch", after) if isinstance(scheduler, dict) else after
        state = pb.ModelState(
            version=after,
            schedule_step=int(last_epoch),
            weights_view=pb.VIEW_EVAL if cp.get("params_mode") == "eval" else pb.VIEW_TRAIN,
        )
        group = cp["groups"][0]
        for s in cp["state"]:
            # Torch counts steps per parameter; Schedule-Free counts k per group.
            state.tensor_steps.append(int(s["step"]) if "step" in s else int(group["k"]))
        counters = pb.GroupCounters(group=group_name, lr=float(group["lr"]))
        for name in self.recorded_scalars():
            if not isinstance(group.get(name), (int, float)):
                raise ValueError(f"{self.name}: checkpoint.groups[0] lacks the group scalar {name}")
            counters.scalars[name] = float(group[name])
        state.groups.append(counters)
        return state

    def checkpoint_buffers(self) -> List[StateBuffer]:
        """The checkpoint's state tensors under their reference names, which the server uses too."""
        out = []
        for index, s in enumerate(self.root["checkpoint"]["state"]):
            for slot, value in s.items():
                if isinstance(value, str):
                    out.append(StateBuffer(index, slot, decode(value)))
        return out


def _blanks(like: Sequence[np.ndarray]) -> List[np.ndarray]:
    return [np.zeros(p.size, dtype=np.float32) for p in like]


def run_case(client: Client, case: ReferenceCase, model: str) -> CaseResult:
    """Registers the case's model, replays its steps and checks them; raises on server errors."""
    start = case.starting_params()
    resume_after = case.resume_after()
    spec = case.spec(model)
    if resume_after:
        spec.state.CopyFrom(case.checkpoint_state())
        client.register(spec, start, case.checkpoint_buffers())
    else:
        client.register(spec, start)
    eval_view = case.eval_view()
    cmp = Comparison(case.atol, case.rtol, case.scalar_rtol)
    names = case.param_names
    train = _blanks(start)
    evaluated = _blanks(start)
    with client.step_stream(model, "conformance") as stream:
        for step in case.root["steps"]:
            t = int(step["t"])
            if t <= resume_after:
                continue
            result = stream.step(decode_all(step["grads"]), train)
            at = f"step {t}"
            if result.version != t:
                cmp.fail(f"{at}: server reports version {result.version}")
            group = result.groups[0]
            cmp.scalar(f"{at} lr", group.lr, float(step["lr"]))
            expected_group = step.get("group")
            if isinstance(expected_group, dict):
                cmp.scalar(f"{at} scheduled_lr", group.effective_lr, float(expected_group[case.SCHEDULED_LR]))
                cmp.group_scalars(at, group.scalars, expected_group, case.recorded_scalars())
            if "train" in step:
                cmp.tensors(f"{at} train", names, train, decode_all(step["train"]))
            if "eval" in step:
                if eval_view is None:
                    cmp.fail(f"{at}: the case records an eval view of unknown kind {case.root.get('eval_view')!r}")
                    continue
                got = client.pull(model, eval_view, evaluated)
                if got.view != eval_view or got.version != t:
                    cmp.fail(f"{at}: eval pull labelled {view_name(got.view)} version {got.version}")
                label = pb.ViewKind.Name(eval_view.kind)[len("VIEW_"):].lower()
                cmp.tensors(f"{at} {label}", names, evaluated, decode_all(step["eval"]))
    _check_final_state(client, model, case, cmp)
    if cmp.passed:
        return CaseResult(case.name, "PASS", cmp.worst, f"at {cmp.worst_where}")
    return CaseResult(case.name, "FAIL", cmp.worst, cmp.first_failure or "")


def _check_final_state(client: Client, model: str, case: ReferenceCase, cmp: Comparison) -> None:
    """Every state tensor (through VIEW_SLOT), step counts, the recorded group scalars, the EMA
    shadow and its update count, Lookahead's slow weights and counter."""
    final = case.root.get("final_state")
    if not isinstance(final, dict):
        return
    info = client.describe(model)
    names = case.param_names
    pulled: Dict[str, List[np.ndarray]] = {}

    def pull(slot: str) -> List[np.ndarray]:
        if slot not in pulled:
            out = _blanks(case.initial_params())
            client.pull(model, pb.View(kind=pb.VIEW_SLOT, slot=slot), out)
            pulled[slot] = out
        return pulled[slot]

    for index, state in enumerate(final.get("state", [])):
        for key, value in state.items():
            if key == "step":
                cmp.exact(f"final {names[index]} step", info.tensors[index].steps, int(value))
            elif isinstance(value, str):
                cmp.tensors(f"final {key}", [names[index]], [pull(key)[index]], [decode(value)])
    groups = final.get("groups") or []
    if groups:
        cmp.group_scalars("final", info.state.groups[0].scalars, groups[0], case.recorded_scalars())
    ema = final.get("ema")
    if isinstance(ema, dict):
        cmp.exact("final ema n_averaged", info.state.ema_updates[0], int(ema["n_averaged"]))
        cmp.tensors("final ema shadow", names, pull("ema:0"), decode_all(ema.get("shadow") or []))
    lookahead = final.get("lookahead")
    if isinstance(lookahead, dict):
        cmp.exact("final la_step", info.state.lookahead_step, int(lookahead["la_step"]))
        cmp.tensors("final slow", names, pull("slow"), decode_all(lookahead.get("slow") or []))


def run_file(client: Client, path: Path) -> CaseResult:
    """One case file, as a result line: server errors and unreadable files are failures, an
    UNIMPLEMENTED status a skip."""
    fallback = path.name[:-len(".json")]
    try:
        case = ReferenceCase.read(path)
    except (OSError, ValueError, KeyError) as e:
        return CaseResult(fallback, "FAIL", float("inf"), f"cannot read case: {e}")
    model = f"conformance-{case.name}-{uuid.uuid4()}"
    try:
        return run_case(client, case, model)
    except Unimplemented as e:
        return CaseResult(case.name, "SKIP", 0.0, f"not implemented: {e.details}")
    except OptSidecarError as e:
        code = e.code.name if e.code is not None else "client"
        return CaseResult(case.name, "FAIL", float("inf"), f"server error {code}: {e.details}")
    except Exception as e:  # a malformed case must not stop the others
        return CaseResult(case.name, "FAIL", float("inf"), repr(e))
    finally:
        try:
            client.delete(model)
        except (NotFound, OptSidecarError, grpc.RpcError):
            pass  # never registered, or the server is gone


def run_all(client: Client, directory: Path, out: TextIO = sys.stdout) -> List[CaseResult]:
    """Runs every case in ``directory`` and prints a line each, then the totals."""
    files = sorted(p for p in directory.iterdir() if p.suffix == ".json" and p.name != "index.json")
    results = []
    for path in files:
        result = run_file(client, path)
        print(result.line(), file=out, flush=True)
        results.append(result)
    passed = sum(r.outcome == "PASS" for r in results)
    failed = sum(r.outcome == "FAIL" for r in results)
    skipped = sum(r.outcome == "SKIP" for r in results)
    if skipped:
        print(f"skipped: {skipped}", file=out)
    print(f"conformance: {passed} passed, {failed} failed", file=out)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m optsidecar.conformance",
        description="Replays every reference case in DIR through a running optsidecar server with the Python "
                    "client and compares each recorded step within the tolerance the case carries.")
    parser.add_argument("dir", metavar="DIR", type=Path, help="folder of case files (*.json; index.json is skipped)")
    parser.add_argument("--target", metavar="HOST:PORT", default="127.0.0.1:50051",
                        help="server to test (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        print(f"conformance: not a directory: {args.dir}", file=sys.stderr)
        return 2
    with Client(args.target) as client:
        results = run_all(client, args.dir)
    return 1 if any(r.outcome == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
