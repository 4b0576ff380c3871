"""The server's container image (deploy/image/build_image.py): built offline, checked as `docker load`
and `podman load` read it, unpacked into a root file system, and run from it as a container
would run it: its own Java runtime, its entrypoint, environment and user, in a chroot with /proc
and /dev mounted (as root; otherwise straight from the unpacked folder)."""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Deque, Dict, List, Sequence

import pytest
import torch

from conftest import REPO_ROOT, free_port, server_jar
from helpers import assert_within_tolerance, make_mlp, train_step, twin
from optsidecar import Client, RemoteOptimizer

BUILD_SCRIPT = REPO_ROOT / "deploy" / "image" / "build_image.py"
IMAGE_USER = "10001:10001"
STARTUP_SECONDS = 180  # a shared CI machine can be slow to start a JVM


def server_version() -> str:
    with zipfile.ZipFile(server_jar()) as jar:
        properties = jar.read("META-INF/maven/dev.optsidecar/optsidecar-server/pom.properties").decode()
    return next(line.split("=", 1)[1].strip() for line in properties.splitlines() if line.startswith("version="))


def build(output: Path, *args: str) -> subprocess.CompletedProcess:
    jar = server_jar()
    if not jar.is_file():
        pytest.fail(f"missing {jar}: build the server first (mvn -B -ntp -q package -pl server -am -DskipTests)")
    return subprocess.run([sys.executable, str(BUILD_SCRIPT), "--jar", str(jar), "--output", str(output), *args],
                          capture_output=True, text=True, env={**os.environ, "SOURCE_DATE_EPOCH": "0"})


class Image:
    """An image archive read as the OCI layout (index.json) and as a docker-archive (manifest.json)."""

    def __init__(self, archive: Path):
        self.path = archive
        with tarfile.open(archive) as tar:
            self.files: Dict[str, bytes] = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        self.index = json.loads(self.files["index.json"])
        (entry,) = self.index["manifests"]
        self.manifest = json.loads(self.blob(entry["digest"]))
        self.config = json.loads(self.blob(self.manifest["config"]["digest"]))
        self.layers: List[bytes] = [self.blob(layer["digest"]) for layer in self.manifest["layers"]]
        (self.docker,) = json.loads(self.files["manifest.json"])

    def blob(self, digest: str) -> bytes:
        algorithm, _, hex_digest = digest.partition(":")
        data = self.files[f"blobs/{algorithm}/{hex_digest}"]
        assert hashlib.sha256(data).hexdigest() == hex_digest, f"blob {digest} does not match its digest"
        return data

    def layer_members(self, i: int) -> List[tarfile.TarInfo]:
        with tarfile.open(fileobj=io.BytesIO(self.layers[i])) as tar:
            return tar.getmembers()

    def unpack(self, rootfs: Path) -> Path:
        rootfs.mkdir()
        for layer in self.layers:
            with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
                if hasattr(tarfile, "fully_trusted_filter"):
                    tar.extraction_filter = tarfile.fully_trusted_filter  # keeps /tmp's sticky bit
                tar.extractall(rootfs, numeric_owner=True)
        return rootfs


@pytest.fixture(scope="module")
def cpu_image(tmp_path_factory) -> Image:
    archive = tmp_path_factory.mktemp("image") / "optsidecar-server-cpu.tar"
    result = build(archive)
    assert result.returncode == 0, result.stderr
    return Image(archive)


def test_the_archive_is_an_oci_layout_and_a_docker_archive_of_the_same_image(cpu_image):
    assert json.loads(cpu_image.files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    (entry,) = cpu_image.index["manifests"]
    assert entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    version = server_version()
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == version
    assert entry["annotations"]["io.containerd.image.name"] == f"docker.io/optsidecar/server:{version}"
    assert cpu_image.docker["RepoTags"] == [f"optsidecar/server:{version}"]
    assert cpu_image.docker["Config"] == "blobs/sha256/" + cpu_image.manifest["config"]["digest"][7:]
    assert cpu_image.docker["Layers"] == ["blobs/sha256/" + layer["digest"][7:] for layer in cpu_image.manifest["layers"]]
    # Uncompressed layers: each layer's diff_id is its digest, and the sizes are the blobs'.
    assert cpu_image.config["rootfs"]["diff_ids"] == [layer["digest"] for layer in cpu_image.manifest["layers"]]
    assert [layer["size"] for layer in cpu_image.manifest["layers"]] == [len(data) for data in cpu_image.layers]
    assert len(cpu_image.layers) == 3, "base, runtime, app"


def test_podman_reads_it_as_a_docker_archive_and_as_an_oci_archive(cpu_image):
    """What `docker load` and `podman load` read: containers/image (podman's) checks the blobs'
    digests and sizes, and keeps the docker format's health check."""
    podman = shutil.which("podman")
    if podman is None:
        message = "podman not installed (apt-get install podman)"
        if os.environ.get("OPTSIDECAR_REQUIRE_DEPLOY_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    # A store of the test's own; podman wants a short runroot path.
    store_dir = Path(tempfile.mkdtemp(prefix="podman-"))
    store = [podman, "--root", str(store_dir / "root"), "--runroot", str(store_dir / "run"), "--storage-driver", "vfs"]
    try:
        ids = pull_both(store, cpu_image)
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)
    assert ids[0] == ids[1] == cpu_image.manifest["config"]["digest"][len("sha256:"):], "one image, one config"


def pull_both(store: List[str], cpu_image: Image) -> List[str]:
    ids = []
    for transport in ("docker-archive", "oci-archive"):
        pulled = subprocess.run([*store, "pull", "-q", f"{transport}:{cpu_image.path}"], capture_output=True, text=True)
        assert pulled.returncode == 0, pulled.stderr
        ids.append(pulled.stdout.strip())
        (inspected,) = json.loads(subprocess.run([*store, "image", "inspect", ids[-1]], check=True, capture_output=True,
                                                 text=True).stdout)
        # Named by the archive's tag (podman prefixes a docker-archive's with localhost/, an OCI one's with docker.io/).
        (name,) = inspected["RepoTags"]
        assert name.endswith(f"/optsidecar/server:{server_version()}"), name
        assert inspected["User"] == IMAGE_USER
        assert inspected["Config"]["Entrypoint"] == cpu_image.config["config"]["Entrypoint"]
        assert set(inspected["Config"]["ExposedPorts"]) == {"50051/tcp", "8081/tcp"}
        if transport == "docker-archive":
            assert inspected["Healthcheck"]["Test"] == cpu_image.config["config"]["Healthcheck"]["Test"]
        subprocess.run([*store, "rmi", "-f", ids[-1]], check=True, capture_output=True)
    return ids


def test_the_config_runs_the_server_as_a_numeric_non_root_user_with_its_ports_and_health_check(cpu_image):
    config = cpu_image.config["config"]
    assert config["User"] == IMAGE_USER
    assert config["Entrypoint"] == ["/opt/optsidecar/runtime/bin/java", "-jar", "/opt/optsidecar/optsidecar-server.jar"]
    assert config["ExposedPorts"] == {"50051/tcp": {}, "8081/tcp": {}}
    assert "OPTSIDECAR_HEALTH_PORT=8081" in config["Env"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert config["Healthcheck"]["Test"][-1] == "dev.optsidecar.deploy.HealthProbe"
    assert config["Labels"]["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert config["Labels"]["org.opencontainers.image.version"] == server_version()
    assert config["Labels"]["dev.optsidecar.variant"] == "cpu"
    assert (cpu_image.config["os"], cpu_image.config["architecture"]) == ("linux", "amd64")


def test_layers_are_reproducible_root_owned_but_for_the_servers_folders(cpu_image):
    for i in range(len(cpu_image.layers)):
        for member in cpu_image.layer_members(i):
            assert member.mtime == 0, member.name
            owned = (member.uid, member.gid)
            if member.name in ("var/lib/optsidecar", "run/optsidecar"):
                assert owned == (10001, 10001) and member.isdir(), member.name
            else:
                assert owned == (0, 0), member.name
    base = {m.name: m for m in cpu_image.layer_members(0)}
    assert base["tmp"].mode == 0o1777
    with tarfile.open(fileobj=io.BytesIO(cpu_image.layers[0])) as tar:
        passwd = tar.extractfile("etc/passwd").read().decode()
    assert "optsidecar:x:10001:10001:" in passwd


def test_the_runtime_holds_the_modules_jdeps_finds_and_not_the_whole_jdk(cpu_image):
    with tarfile.open(fileobj=io.BytesIO(cpu_image.layers[1])) as tar:
        release = tar.extractfile("opt/optsidecar/runtime/release").read().decode()
    modules = set(next(line for line in release.splitlines() if line.startswith("MODULES="))
                  .split("=", 1)[1].strip('"').split())
    jdeps = shutil.which("jdeps") or str(Path(os.environ.get("JAVA_HOME", "/usr")) / "bin" / "jdeps")
    needed = subprocess.run([jdeps, "--ignore-missing-deps", "--print-module-deps", "--multi-release", "17",
                             str(server_jar())], check=True, capture_output=True, text=True).stdout.strip().split(",")
    assert set(needed) | {"jdk.crypto.ec"} <= modules
    assert not modules & {"jdk.compiler", "jdk.jshell", "java.se", "jdk.jdeps", "jdk.jlink"}


class ImageProcess:
    """A command of the image run as its container would run it: the image's environment (plus
    ``env``), its user, inside the unpacked root file system."""

    def __init__(self, rootfs: Path, config: dict, argv: Sequence[str], env: Dict[str, str]):
        image_env = dict(entry.split("=", 1) for entry in config["Env"])
        image_env.update(env)
        variables = [f"{k}={v}" for k, v in image_env.items()]
        if os.geteuid() == 0:
            for mount_point in ("proc", "dev"):
                (rootfs / mount_point).mkdir(exist_ok=True)
            # A mount namespace of its own, so /proc and /dev go away with the process; exec keeps
            # one pid from unshare to the JVM, which gets the test's signals itself.
            command = ["unshare", "--mount", "sh", "-c",
                       'mount --rbind /dev "$0/dev" && mount -t proc proc "$0/proc" && exec "$@"', str(rootfs),
                       "env", "-i", *variables, shutil.which("chroot") or "/usr/sbin/chroot",
                       f"--userspec={config['User']}", str(rootfs), *argv]
        else:
            inside = [a.replace("/opt/optsidecar", f"{rootfs}/opt/optsidecar") for a in argv]
            command = ["env", "-i", *variables, *inside]
        self.log: Deque[str] = collections.deque(maxlen=200)
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.serving = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)
            if "optsidecar serving on" in line:
                self.serving.set()
        self.serving.set()

    def output(self) -> str:
        return "".join(self.log)


def test_the_server_runs_from_the_unpacked_image_and_answers(cpu_image, tmp_path):
    rootfs = cpu_image.unpack(tmp_path / "rootfs")
    config = cpu_image.config["config"]
    api_port, health_port = free_port(), free_port()
    socket_in_image = "/run/optsidecar/api.sock"
    server = ImageProcess(rootfs, config, [*config["Entrypoint"], "--port", str(api_port), "--threads", "2",
                                           "--listen", f"unix:{socket_in_image}"],
                          {"OPTSIDECAR_HEALTH_PORT": str(health_port)})
    try:
        assert server.serving.wait(STARTUP_SECONDS) and server.process.poll() is None, server.output()
        serving = next(line for line in server.log if "optsidecar serving on" in line)
        # The image's C libraries are enough for Netty's native transport (Unix sockets need it).
        assert "epoll" in serving and f"health on 0.0.0.0:{health_port}" in serving, serving
        # So are they for the CPU engine's native loops, where the jar carries them (built with g++).
        with zipfile.ZipFile(server_jar()) as jar:
            native = "native/linux-x86_64/liboptsidecar_cpu.so" in jar.namelist()
        engine = "engine: cpu, native bulk loops" if native else "engine: cpu, Java bulk loops"
        deadline = time.monotonic() + STARTUP_SECONDS  # logged once the server serves
        while not any(engine in line for line in list(server.log)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(engine in line for line in list(server.log)), server.output()

        probe = ImageProcess(rootfs, config, config["Healthcheck"]["Test"][1:],
                             {"OPTSIDECAR_HEALTH_PORT": str(health_port)})
        assert probe.process.wait(STARTUP_SECONDS) == 0, probe.output()
        assert f"127.0.0.1:{health_port}: SERVING" in probe.output()

        remote_model = make_mlp()
        local_model = twin(remote_model)
        opt = RemoteOptimizer(remote_model.named_parameters(), 1e-2, target=f"unix://{rootfs}{socket_in_image}",
                              algorithm="AdamW", model="from-the-image")
        reference = torch.optim.AdamW(local_model.parameters(), 1e-2, foreach=False)
        for t in range(1, 4):
            train_step(remote_model, opt, t)
            train_step(local_model, reference, t)
        assert_within_tolerance(list(remote_model.parameters()), list(local_model.parameters()),
                                "AdamW in the image's server")
        with Client(f"127.0.0.1:{api_port}") as over_tcp:
            assert over_tcp.list() == ["from-the-image"]
            assert over_tcp.describe("from-the-image").version == 3
    finally:
        server.process.send_signal(signal.SIGTERM)
        try:
            code = server.process.wait(60)
        except subprocess.TimeoutExpired:
            server.process.kill()
            raise
    assert code == 143, server.output()
    assert not (rootfs / socket_in_image.lstrip("/")).exists(), "the server removes its socket when it stops"


def test_the_cuda_image_is_the_cpu_image_plus_the_native_layer(cpu_image, tmp_path):
    # A stand-in for the native library's build output: the layer takes whatever the folder holds.
    native = tmp_path / "native-build"
    native.mkdir()
    (native / "libstand-in.so").write_bytes(b"not a real library\n")
    archive = tmp_path / "optsidecar-server-cuda.tar"
    result = build(archive, "--variant", "cuda", "--native-lib", str(native))
    assert result.returncode == 0, result.stderr
    cuda = Image(archive)
    # Built twice from the same inputs, the shared layers are the same bytes: reproducible.
    assert cuda.manifest["layers"][:3] == cpu_image.manifest["layers"]
    assert len(cuda.layers) == 4
    native_layer = {m.name: m for m in cuda.layer_members(3)}
    assert "opt/optsidecar/native/libstand-in.so" in native_layer
    config = cuda.config["config"]
    assert config["Entrypoint"][:2] == ["/opt/optsidecar/runtime/bin/java", "-Djava.library.path=/opt/optsidecar/native"]
    assert "LD_LIBRARY_PATH=/opt/optsidecar/native" in config["Env"]
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in config["Env"]
    assert config["Labels"]["dev.optsidecar.variant"] == "cuda"
    assert cuda.docker["RepoTags"] == [f"optsidecar/server:{server_version()}-cuda"]


def test_a_missing_native_library_is_refused_by_name(tmp_path):
    missing = tmp_path / "build" / "libmissing.so"
    result = build(tmp_path / "cuda.tar", "--variant", "cuda", "--native-lib", str(missing))
    assert result.returncode != 0
    assert f"--native-lib {missing} does not exist" in result.stderr
    assert not (tmp_path / "cuda.tar").exists()
