"""The conformance runner, as a user runs it: a separate process against the running server."""

from __future__ import annotations

import subprocess
import sys

from conftest import subprocess_env


def test_every_reference_case_passes(target, reference):
    cases = sorted(p.stem for p in reference.glob("*.json") if p.name != "index.json")
    assert cases, f"no case files in {reference}"
    run = subprocess.run([sys.executable, "-m", "optsidecar.conformance", str(reference), "--target", target],
                         env=subprocess_env(), capture_output=True, text=True, timeout=300)
    lines = run.stdout.splitlines()
    assert run.returncode == 0, run.stdout + run.stderr
    assert lines[-1] == f"conformance: {len(cases)} passed, 0 failed"
    reported = {line.split()[1]: line.split()[0] for line in lines[:-1]}
    assert reported == {case: "PASS" for case in cases}


def test_a_failing_case_fails_the_run(target, reference, tmp_path):
    """The runner must be able to fail: a copy of a case with one expected value changed."""
    import base64
    import json

    import numpy as np

    case = json.loads((reference / "adam.json").read_text())
    train = np.frombuffer(base64.b64decode(case["steps"][9]["train"][0]), dtype="<f4").copy()
    train[0] += 1e-3
    case["steps"][9]["train"][0] = base64.b64encode(train.astype("<f4").tobytes()).decode()
    (tmp_path / "adam_tampered.json").write_text(json.dumps(case))
    run = subprocess.run([sys.executable, "-m", "optsidecar.conformance", str(tmp_path), "--target", target],
                         env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stdout.startswith("FAIL  adam ")
    assert "step 10 train p0[0]" in run.stdout
    assert run.stdout.splitlines()[-1] == "conformance: 0 passed, 1 failed"


def test_group_scalars_are_compared_by_name(target, reference, tmp_path):
    """A case recording a group scalar the server's group lacks fails, and so does a recorded
    weight_sum off by far more than the scalar tolerance."""
    import json

    case = json.loads((reference / "sgd_schedulefree.json").read_text())
    unknown = json.loads(json.dumps(case))
    unknown["case"] = "unknown_scalar"
    unknown["steps"][0]["group"]["momentum_sum"] = 1.0
    (tmp_path / "unknown_scalar.json").write_text(json.dumps(unknown))
    shifted = json.loads(json.dumps(case))
    shifted["case"] = "shifted_scalar"
    shifted["steps"][2]["group"]["weight_sum"] *= 1 + 1e-9
    (tmp_path / "shifted_scalar.json").write_text(json.dumps(shifted))
    run = subprocess.run([sys.executable, "-m", "optsidecar.conformance", str(tmp_path), "--target", target],
                         env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    assert ("step 1 momentum_sum: the reference records this group scalar; the server's group has "
            "k, lr_max, weight_sum") in run.stdout
    assert "FAIL  shifted_scalar" in run.stdout and "step 3 weight_sum" in run.stdout
    assert run.stdout.splitlines()[-1] == "conformance: 0 passed, 2 failed"
