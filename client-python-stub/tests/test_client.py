"""The low-level client: chunking, destinations, views, and the hand-written wire encoding."""

from __future__ import annotations

import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch

from conftest import subprocess_env
from optsidecar import Client, NotFound, wire
from optsidecar.buffers import CHUNK_ELEMENTS
from optsidecar.spec import model_spec, optimizer_config
from optsidecar.v1 import optimizer_pb2 as pb

#: Big enough for three chunks, with a partial last one.
BIG = 2 * CHUNK_ELEMENTS + 12345


def sgd_model(client: Client, sizes, lr: float = 0.5, **config):
    name = f"client-test-{uuid.uuid4().hex[:8]}"
    spec = model_spec(name, [(f"t{i}", (n,)) for i, n in enumerate(sizes)], [],
                      optimizer_config("SGD", {"lr": lr}, **config))
    rng = np.random.default_rng(1)
    weights = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    client.register(spec, weights)
    return name, weights


def test_multi_chunk_tensors_step_and_pull(client):
    name, w0 = sgd_model(client, [BIG, 7])
    try:
        rng = np.random.default_rng(2)
        grads = [rng.standard_normal(n).astype(np.float32) for n in (BIG, 7)]
        out = [np.zeros(BIG, np.float32), torch.zeros(7)]
        with client.step_stream(name) as stream:
            figures = stream.step(grads, out)
        assert figures.version == 1 and figures.view == "train"
        # θ − 0.5·g is exact in float32, so the server's SGD step must match bit for bit.
        expected = [w - np.float32(0.5) * g for w, g in zip(w0, grads)]
        assert np.array_equal(out[0], expected[0])
        assert np.array_equal(out[1].numpy(), expected[1])
        assert figures.grad_norm == pytest.approx(np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2))
                                                              for g in grads)), rel=1e-12)
        # Pull into destinations that need staging: float64, and a transposed (non-contiguous) tensor.
        as_double = np.zeros(BIG, np.float64)
        transposed = torch.zeros(7, 1).t()
        weights = client.pull(name, "train", [as_double, transposed])
        assert weights.version == 1 and weights.view.kind == pb.VIEW_TRAIN
        assert np.array_equal(as_double, expected[0].astype(np.float64))
        assert np.array_equal(transposed.reshape(-1).numpy(), expected[1])
    finally:
        client.delete(name)


def test_no_grad_view_none_and_group_lr(client):
    name, w0 = sgd_model(client, [5, 3])
    try:
        with client.step_stream(name, "tester") as stream:
            figures = stream.step([None, np.ones(3, np.float32)], view="none", group_lr={"default": 0.25})
            assert figures.view == "none" and figures.lr == {"default": 0.25}
            out = [np.zeros(5, np.float32), np.zeros(3, np.float32)]
            figures = stream.step([np.ones(5, np.float32), None], out)
        assert figures.version == 2 and figures.lr == {"default": 0.25}
        assert np.array_equal(out[0], w0[0] - np.float32(0.25))
        assert np.array_equal(out[1], w0[1] - np.float32(0.25))
        assert [t.steps for t in client.describe(name).tensors] == [1, 1]
    finally:
        client.delete(name)


def test_list_and_delete(client):
    name, _ = sgd_model(client, [4])
    assert name in client.list()
    client.delete(name)
    assert name not in client.list()
    with pytest.raises(NotFound, match=name):
        client.delete(name)


def test_register_checks_sizes_before_sending(client):
    spec = model_spec("never", [("w", (2, 3))], [], optimizer_config("SGD", {}))
    with pytest.raises(ValueError, match=r"'w' \(index 0\) have 5 elements; its shape \[2, 3\] has 6"):
        client.register(spec, [np.zeros(5, np.float32)])
    assert "never" not in client.list()


def test_importable_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import optsidecar, optsidecar.conformance\n"
            "from optsidecar import Client, StepStream\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n")
    run = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


# -- wire encoding: canonical protobuf, checked against the generated classes --------------------

@pytest.mark.parametrize("step_id, tensor, offset", [(1, 0, 0), (0, 3, 262144), (2**40, 2**31, 2**33 + 5)])
def test_gradient_chunk_encoding_matches_protobuf(step_id, tensor, offset):
    data = np.arange(10, dtype="<f4")
    encoded = wire.gradient_chunk(step_id, tensor, offset, memoryview(data).cast("B")).data
    expected = pb.StepRequest(chunk=pb.GradientChunk(step_id=step_id, tensor=tensor, offset=offset,
                                                     data=data.tobytes())).SerializeToString()
    assert encoded == expected


def test_register_chunk_encodings_match_protobuf():
    data = np.linspace(-1, 1, 300, dtype="<f4")
    raw = memoryview(data).cast("B")
    assert wire.register_weights_chunk(2, 1000, raw).data == pb.RegisterRequest(
        weights=pb.WeightsChunk(tensor=2, offset=1000, data=data.tobytes())).SerializeToString()
    assert wire.register_state_chunk(1, "ema:0.999", 0, raw).data == pb.RegisterRequest(
        state=pb.StateChunk(tensor=1, slot="ema:0.999", offset=0, data=data.tobytes())).SerializeToString()


def test_step_response_parsing_matches_protobuf():
    data = np.arange(1000, dtype="<f4").tobytes()
    chunk = pb.WeightsChunk(view=pb.View(kind=pb.VIEW_EMA, ema_decay=0.9), version=7, tensor=1,
                            offset=2**33, data=data)
    parsed = wire.parse_step_response(pb.StepResponse(weights=chunk).SerializeToString())
    assert isinstance(parsed, wire.ReceivedChunk)
    assert (parsed.view, parsed.version, parsed.tensor, parsed.offset) == (chunk.view, 7, 1, 2**33)
    assert bytes(parsed.data) == data
    pulled = wire.parse_weights_chunk(chunk.SerializeToString())
    assert bytes(pulled.data) == data and pulled.view == chunk.view
    result = pb.StepResult(step_id=3, version=3, groups=[pb.GroupStep(group="g", lr=0.1)], update_norm=0.0)
    assert wire.parse_step_response(pb.StepResponse(result=result).SerializeToString()) == result


def test_parsing_rejects_truncated_messages():
    chunk = pb.WeightsChunk(tensor=1, offset=5, data=b"\0" * 16).SerializeToString()
    with pytest.raises(wire.ProtocolError):
        wire.parse_weights_chunk(chunk[:-3])
