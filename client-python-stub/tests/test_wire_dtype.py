"""Chunks of bfloat16 or float16 (``wire_dtype``): half the bytes each way, while the server keeps
float32 weights and state. A 16-bit run is the float32 run of the rounded gradients, bit for bit,
and the weights it receives are the server's float32 weights rounded; torch's own conversions are
the reference for the rounding."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest
import torch

from optsidecar import Client, InvalidArgument, RemoteOptimizer
from optsidecar.buffers import CHUNK_BYTES, Destination, source_array, wire_chunks
from optsidecar.spec import model_spec, optimizer_config
from test_exactly_once import Proxy

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def rounded(t: torch.Tensor, wire_dtype: str) -> torch.Tensor:
    """``t`` as a 16-bit chunk carries it: rounded by torch (nearest even) and widened back."""
    return t.detach().to(TORCH_DTYPES[wire_dtype]).to(torch.float32)


def shapes():
    return [(37, 23), (23,), (5, 37)]


def gradients(step: int):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(*s, generator=g) * 0.1 for s in shapes()]


def parameters(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in shapes()]


@pytest.mark.parametrize("wire_dtype", ["bfloat16", "float16"])
def test_a_16_bit_run_is_the_float32_run_of_the_rounded_gradients(target, client, wire_dtype):
    narrow_params, wide_params = parameters(), parameters()
    narrow = RemoteOptimizer(narrow_params, target=target, algorithm="RAdam", lr=0.01, weight_decay=0.1,
                             wire_dtype=wire_dtype)
    wide = RemoteOptimizer(wide_params, target=target, algorithm="RAdam", lr=0.01, weight_decay=0.1)
    try:
        assert narrow.wire_dtype == wire_dtype and wide.wire_dtype == "float32"
        for step in range(1, 8):
            for p, q, g in zip(narrow_params, wide_params, gradients(step)):
                p.grad = g.clone()
                q.grad = rounded(g, wire_dtype)
            narrow.step()
            wide.step()
            # What came back into the parameters: the float32 weights, rounded.
            for p, q in zip(narrow_params, wide_params):
                assert torch.equal(p.detach(), rounded(q, wire_dtype)), f"step {step}"
        # The master weights on the server are the same to the bit.
        a = [np.zeros(int(np.prod(s)), np.float32) for s in shapes()]
        b = [np.zeros(int(np.prod(s)), np.float32) for s in shapes()]
        client.pull(narrow.model, "train", a)
        client.pull(wide.model, "train", b)
        assert all(np.array_equal(x.view(np.uint32), y.view(np.uint32)) for x, y in zip(a, b))
        # The master weights differ from what the 16-bit trainer holds: they are not rounded.
        assert any(not torch.equal(torch.from_numpy(x).view(p.shape), p.detach()) for x, p in zip(a, narrow_params))
    finally:
        narrow.close()
        wide.close()


@pytest.mark.parametrize("wire_dtype", ["bfloat16", "float16"])
def test_a_16_bit_pull_gives_the_rounded_weights_into_torch_and_numpy(target, client, wire_dtype):
    params = parameters(3)
    opt = RemoteOptimizer(params, target=target, algorithm="AdamW", lr=0.05)
    try:
        for p, g in zip(params, gradients(1)):
            p.grad = g
        opt.step()
        master = [torch.zeros(s) for s in shapes()]
        client.pull(opt.model, "train", master)
        as_torch = [torch.zeros(s) for s in shapes()]
        as_numpy = [np.zeros(s, np.float32) for s in shapes()]
        staged = [torch.zeros(s, dtype=torch.float64) for s in shapes()]  # through a staging buffer
        for out in (as_torch, as_numpy, staged):
            weights = client.pull(opt.model, "train", out, wire_dtype=wire_dtype)
            assert weights.version == 1
        for m, t, n, s in zip(master, as_torch, as_numpy, staged):
            expected = rounded(m, wire_dtype)
            assert torch.equal(t, expected)
            assert torch.equal(torch.from_numpy(n), expected)
            assert torch.equal(s, expected.double())
    finally:
        opt.close()


@pytest.mark.parametrize("wire_dtype", ["bfloat16", "float16"])
def test_numpy_and_torch_sources_round_alike(wire_dtype):
    """Without torch the client rounds with numpy; the bits must be torch's."""
    g = torch.Generator().manual_seed(5)
    values = torch.cat([
        torch.randn(20_000, generator=g) * torch.exp2(torch.randint(-30, 20, (20_000,), generator=g).float()),
        torch.tensor([0.0, -0.0, 1.0, 1.00390625, 1.01171875, 65504.0, 65519.0, 65520.0, 1e6, -1e6,
                      2.0 ** -24, 2.0 ** -25, 1.5 * 2.0 ** -24, 3.4028235e38, float("inf"), float("-inf")]),
    ])
    from_torch = source_array(values, wire_dtype)
    from_numpy = source_array(values.numpy(), wire_dtype)
    expected = values.to(TORCH_DTYPES[wire_dtype]).view(torch.int16).numpy().view(np.uint16)
    assert from_torch.itemsize == from_numpy.itemsize == 2
    assert np.array_equal(from_torch.view(np.uint16), expected)
    assert np.array_equal(from_numpy.view(np.uint16), expected)
    # Widening them back is exact.
    out = np.empty(values.numel(), np.float32)
    Destination(out).write(0, memoryview(from_numpy).cast("B"), wire_dtype)
    assert torch.equal(torch.from_numpy(out), values.to(TORCH_DTYPES[wire_dtype]).float())


@pytest.mark.parametrize("wire_dtype", ["bfloat16", "float16"])
def test_chunk_by_chunk_rounding_is_the_whole_tensors(wire_dtype):
    """A CPU gradient is rounded one chunk at a time into a reused buffer; the bytes sent are
    those of rounding it whole, for a contiguous tensor, a transposed one and one already 16-bit."""
    per_chunk = CHUNK_BYTES // 2
    g = torch.randn(2 * per_chunk + 12_345, generator=torch.Generator().manual_seed(3))
    transposed = torch.randn(1_000, 700).t()
    already = g.to(TORCH_DTYPES[wire_dtype])
    threads = torch.get_num_threads()
    for value in (g, transposed, already):
        expected = value.to(TORCH_DTYPES[wire_dtype]).reshape(-1).view(torch.int16).numpy().tobytes()
        pieces = [(offset, bytes(data)) for offset, data in wire_chunks(value, wire_dtype)]
        assert [offset for offset, _ in pieces] == list(range(0, value.numel(), per_chunk))
        assert all(len(data) <= CHUNK_BYTES for _, data in pieces)
        assert b"".join(data for _, data in pieces) == expected
    assert torch.get_num_threads() == threads  # the conversions' single thread was given back


@pytest.mark.parametrize("wire_dtype", ["float32", "bfloat16"])
def test_received_weights_are_fingerprinted_as_they_arrive(target, monkeypatch, wire_dtype):
    """The optimizer records what it received from the chunks themselves, as they arrive, instead
    of hashing its parameters again after the step; the records are those of hashing them, and an
    edit through ``p.data`` after the step is still noticed. A parameter received through a staging
    buffer (not contiguous) is hashed as before."""
    from optsidecar import edits

    g = torch.Generator().manual_seed(4)
    params = [torch.nn.Parameter(torch.randn(300_000, generator=g)),  # two pieces, the second partial
              torch.nn.Parameter(torch.randn(700, 3, generator=g).t()),  # staged
              torch.nn.Parameter(torch.randn(17, generator=g))]
    opt = RemoteOptimizer(params, target=target, algorithm="AdamW", lr=1e-3, wire_dtype=wire_dtype)
    hashed = []
    fingerprint = edits._fingerprint
    monkeypatch.setattr(edits, "_fingerprint", lambda p: hashed.append(p) or fingerprint(p))
    try:
        for step in range(2):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            hashed.clear()
            opt.step()
            # Before the step every parameter, after it only the staged one.
            assert [id(h) for h in hashed] == [id(p) for p in params] + [id(params[1])]
            assert opt.edits.recorded_crc32c() == [c for p in params for c in fingerprint(p)]
        with torch.no_grad():
            params[0].data[299_999] += 1.0  # in the partial piece; no version counter sees it
        params[0].grad = torch.zeros(300_000)
        opt.step()
        assert opt.last_push is not None and opt.last_push.tensors == ("p0",)
    finally:
        opt.close()


def test_a_nan_stays_a_nan_in_bfloat16_without_torch():
    bits = np.array([0x7FC00000, 0xFF800001, 0x7F800001], np.uint32)
    narrowed = source_array(bits.view(np.float32), "bfloat16")
    out = np.empty(3, np.float32)
    Destination(out).write(0, memoryview(narrowed).cast("B"), "bfloat16")
    assert np.isnan(out).all()


def test_a_float16_overflow_in_a_gradient_is_the_non_finite_error(target, client):
    params = parameters(4)
    opt = RemoteOptimizer(params, target=target, algorithm="SGD", lr=0.1, wire_dtype="float16")
    try:
        before = [p.detach().clone() for p in params]
        for p, g in zip(params, gradients(2)):
            p.grad = g
        params[1].grad[5] = 70_000.0  # past float16's 65504: Inf on the wire
        with pytest.raises(InvalidArgument, match="non-finite"):
            opt.step()
        assert client.describe(opt.model).version == 0
        assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))
    finally:
        opt.close()


def test_an_unknown_wire_dtype_is_refused_before_anything_is_sent(target):
    with pytest.raises(ValueError, match="wire_dtype"):
        RemoteOptimizer(parameters(), target=target, algorithm="SGD", lr=0.1, wire_dtype="int8")


@pytest.mark.parametrize("wire_dtype", ["bfloat16", "float16"])
def test_a_16_bit_step_whose_reply_is_lost_is_retried_exactly_once(client, server, wire_dtype):
    sizes = [300_000, 3]  # the large tensor takes more than one 16-bit chunk
    name = f"wire-once-{uuid.uuid4().hex[:8]}"
    client.register(model_spec(name, [(f"t{i}", (n,)) for i, n in enumerate(sizes)], [],
                               optimizer_config("SGD", {"lr": 0.5})),
                    [np.random.default_rng(3).standard_normal(n).astype(np.float32) for n in sizes])
    w0 = [np.zeros(n, np.float32) for n in sizes]
    client.pull(name, "train", w0)
    proxy = Proxy(server.port)
    try:
        with Client(proxy.target) as lossy:
            stream = lossy.step_stream(name, "lossy", retry_for=30, wire_dtype=wire_dtype)
            grads = [[torch.from_numpy(np.random.default_rng(s * 10 + i).standard_normal(n).astype(np.float32))
                      for i, n in enumerate(sizes)] for s in (1, 2, 3)]
            out = [np.zeros(n, np.float32) for n in sizes]
            assert stream.step(grads[0], out).version == 1

            def cut_once_applied() -> None:
                deadline = time.monotonic() + 20
                while client.describe(name).version < 2 and time.monotonic() < deadline:
                    time.sleep(0.005)
                proxy.cut()

            proxy.drop_replies()
            cutter = threading.Thread(target=cut_once_applied)
            cutter.start()
            second = stream.step(grads[1], out)
            cutter.join()
            assert stream.retries >= 1
            assert second.replayed and (second.step_id, second.version) == (2, 2)
            # SGD on the rounded gradients, once each, in float32; sent back rounded.
            half = torch.tensor(0.5)
            master = [(torch.from_numpy(w) - half * rounded(a, wire_dtype)) - half * rounded(b, wire_dtype)
                      for w, a, b in zip(w0, grads[0], grads[1])]
            assert all(torch.equal(torch.from_numpy(o), rounded(m, wire_dtype)) for o, m in zip(out, master))
            assert client.describe(name).version == 2
            assert stream.step(grads[2], out).version == 3
            stream.close()
    finally:
        proxy.close()
        client.delete(name)
