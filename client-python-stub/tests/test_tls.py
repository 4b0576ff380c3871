"""TLS between the Python client and the packaged server (``--tls-cert``/``--tls-key``, mutual
with ``--tls-client-ca``), certificates made for the test by openssl; the bearer token on every call."""

from __future__ import annotations

import subprocess
import threading
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from helpers import assert_within_tolerance, make_mlp, train_step, twin
from optsidecar import Client, RemoteOptimizer
from optsidecar.errors import ServerUnavailable, Unimplemented


def openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


class Pki:
    """A CA in ``directory`` and the certificates it issues (P-256 keys, PEM)."""

    def __init__(self, directory: Path, name: str):
        self.directory = directory
        self.name = name
        directory.mkdir(parents=True, exist_ok=True)
        openssl(directory, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}")
        self.ca = directory / f"{name}.pem"

    def issue(self, name: str, extensions: str):
        (self.directory / f"{name}.ext").write_text(extensions)
        openssl(self.directory, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        openssl(self.directory, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{self.name}.pem",
                "-CAkey", f"{self.name}.key", "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext",
                "-out", f"{name}.pem")
        return str(self.directory / f"{name}.pem"), str(self.directory / f"{name}.key")

    def server(self):
        return self.issue("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")

    def client(self, name: str = "trainer"):
        return self.issue(name, "extendedKeyUsage=clientAuth\n")


@pytest.fixture
def pki(tmp_path) -> Pki:
    return Pki(tmp_path / "pki", "test-ca")


def tls_server(start_server, pki: Pki, *extra: str):
    cert, key = pki.server()
    return start_server("--tls-cert", cert, "--tls-key", key, *extra)


def test_remote_optimizer_trains_over_tls_as_torch_does(start_server, pki):
    server = tls_server(start_server, pki)
    remote_model = make_mlp()
    local_model = twin(remote_model)
    opt = RemoteOptimizer(remote_model.named_parameters(), 1e-2, target=server.target, algorithm="AdamW",
                          model="over-tls", tls_ca=str(pki.ca))
    reference = torch.optim.AdamW(local_model.parameters(), 1e-2, foreach=False)
    try:
        for t in range(1, 6):
            train_step(remote_model, opt, t)
            train_step(local_model, reference, t)
        assert_within_tolerance(list(remote_model.parameters()), list(local_model.parameters()), "AdamW over TLS")
        assert opt.client.security.tls
    finally:
        opt.delete()


def test_a_plaintext_client_or_one_trusting_another_ca_is_refused(start_server, pki, tmp_path):
    server = tls_server(start_server, pki)
    with Client(server.target, timeout=20, tls_ca="") as plaintext:
        with pytest.raises(ServerUnavailable):
            plaintext.list()
    other = Pki(tmp_path / "other", "other-ca")
    with Client(server.target, timeout=20, tls_ca=str(other.ca)) as wrong_ca:
        with pytest.raises(ServerUnavailable):
            wrong_ca.list()
    with Client(server.target, timeout=20, tls_ca=str(pki.ca)) as trusting:
        assert trusting.list() == []


def test_mutual_tls_from_the_environment(start_server, pki, monkeypatch):
    server = tls_server(start_server, pki, "--tls-client-ca", str(pki.ca))
    monkeypatch.setenv("OPTSIDECAR_TLS_CA", str(pki.ca))
    with Client(server.target, timeout=20) as without_certificate:
        with pytest.raises(ServerUnavailable):
            without_certificate.list()
    cert, key = pki.client()
    monkeypatch.setenv("OPTSIDECAR_TLS_CERT", cert)
    monkeypatch.setenv("OPTSIDECAR_TLS_KEY", key)
    with Client(server.target, timeout=20) as with_certificate:
        assert with_certificate.security.tls_cert == cert
        assert with_certificate.list() == []


def test_settings_that_do_not_go_together_are_refused(pki, monkeypatch):
    for variable in ("OPTSIDECAR_TLS_CA", "OPTSIDECAR_TLS_CERT", "OPTSIDECAR_TLS_KEY", "OPTSIDECAR_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    cert, key = pki.client()
    with pytest.raises(ValueError, match="needs tls_ca"):
        Client("127.0.0.1:1", tls_cert=cert, tls_key=key)
    with pytest.raises(ValueError, match="go together"):
        Client("127.0.0.1:1", tls_ca=str(pki.ca), tls_cert=cert)
    with pytest.raises(ValueError, match="plaintext"):
        Client("unix:/run/optsidecar.sock", tls_ca=str(pki.ca))
    with pytest.raises(ValueError, match="tls_ca .*missing.pem"):
        Client("127.0.0.1:1", tls_ca=str(pki.directory / "missing.pem"))


class _RecordingServer(grpc.GenericRpcHandler):
    """Records every call's metadata and implements nothing (every call ends UNIMPLEMENTED)."""

    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

    def service(self, handler_call_details):
        with self.lock:
            self.calls.append((handler_call_details.method, dict(handler_call_details.invocation_metadata)))
        return None


def test_the_token_goes_with_every_call(monkeypatch):
    recorder = _RecordingServer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[recorder])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with Client(f"127.0.0.1:{port}", timeout=20, token="s3cret") as client:
            with pytest.raises(Unimplemented):
                client.list()
        monkeypatch.setenv("OPTSIDECAR_TOKEN", "from-env")
        with Client(f"127.0.0.1:{port}", timeout=20) as client:
            with pytest.raises(Unimplemented):
                client.pull("m", "train", [np.zeros(1, dtype=np.float32)])
        with Client(f"127.0.0.1:{port}", timeout=20, token="") as client:
            with pytest.raises(Unimplemented):
                client.list()
    finally:
        server.stop(None)
    assert [(m.rsplit("/", 1)[1], md.get("authorization")) for m, md in recorder.calls] == [
        ("List", "Bearer s3cret"), ("Pull", "Bearer from-env"), ("List", None)]
