"""The Kubernetes manifests (deploy/kubernetes) and the Helm chart (deploy/helm/optsidecar), checked
without a cluster: `helm lint`, `helm template`, every rendered object against the Kubernetes API's
schemas (kubernetes-validate, strict: an unknown field fails), what each deployment promises
(a native sidecar probed on the health port, the API on a Unix socket, shared memory, state on a
volume, TLS and tokens from Secrets, memory tied to the limit), that every setting names a real
server flag, and that the chart's settings of each mode start the real server.

The tools come from deploy/tools/install.sh (pinned; .ci/run runs it and sets
OPTSIDECAR_REQUIRE_DEPLOY_TOOLS=1, so that a missing tool fails instead of skipping)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import yaml

from conftest import REPO_ROOT, free_port, server_jar
from optsidecar import Client, Unauthenticated

DEPLOY = REPO_ROOT / "deploy"
CHART = DEPLOY / "helm" / "optsidecar"
TOOLS = DEPLOY / ".tools"
# The oldest Kubernetes with native sidecars on by default, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
# Restoring a large snapshot may take this long before the startup probe gives up.
LONGEST_RESTORE_SECONDS = 1800


def tool_missing(what: str) -> None:
    message = f"{what} not installed: run deploy/tools/install.sh"
    if os.environ.get("OPTSIDECAR_REQUIRE_DEPLOY_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def helm() -> str:
    found = TOOLS / "bin" / "helm"
    if not found.is_file():
        tool_missing("helm")
    return str(found)


@pytest.fixture(scope="module")
def validator_path() -> Path:
    found = TOOLS / "python"
    if not (found / "kubernetes_validate").is_dir():
        tool_missing("kubernetes-validate")
    return found


def render(helm: str, *args: str) -> List[dict]:
    """``helm template`` of the chart (release "run", namespace "ml") with ``args`` (-f, --set)."""
    out = subprocess.run([helm, "template", "run", str(CHART), "--namespace", "ml", *args],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def plain(name: str) -> List[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if doc]


@pytest.fixture(scope="module")
def sidecar_sets(helm) -> Dict[str, List[dict]]:
    return {"chart, default values": render(helm),
            "chart, ci/sidecar-values.yaml": render(helm, "-f", str(CHART / "ci" / "sidecar-values.yaml")),
            "kubernetes/trainer-sidecar.yaml": plain("trainer-sidecar.yaml")}


@pytest.fixture(scope="module")
def standalone_sets(helm) -> Dict[str, List[dict]]:
    return {"chart, ci/standalone-values.yaml": render(helm, "-f", str(CHART / "ci" / "standalone-values.yaml")),
            "chart, mode=standalone": render(helm, "--set", "mode=standalone"),
            "kubernetes/parameter-server.yaml + certificate.yaml": plain("parameter-server.yaml")
            + plain("certificate.yaml")}


def one(docs: List[dict], kind: str) -> dict:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def env_of(container: dict) -> Dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def env_value(container: dict, name: str) -> str:
    return env_of(container)[name]["value"]


def mount_volume(container: dict, path: str) -> str:
    """The volume mounted at ``path`` or at a folder above it."""
    best = max((m for m in container["volumeMounts"]
                if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")),
               key=lambda m: len(m["mountPath"]), default=None)
    assert best is not None, f"nothing mounted at {path} in {container['name']}"
    return best["name"]


def volumes(pod: dict) -> Dict[str, dict]:
    return {v["name"]: v for v in pod["volumes"]}


def mebibytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi|Ti)", quantity).groups()
    return int(number) * {"Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}[unit]


def size_mebibytes(size: str) -> float:
    number, unit = re.fullmatch(r"(\d+)([mgt])", size.lower()).groups()
    return int(number) * {"m": 1, "g": 1024, "t": 1024 * 1024}[unit]


def check_server_container(container: dict) -> None:
    """What both deployments promise of the server's container."""
    health_port = int(env_value(container, "OPTSIDECAR_HEALTH_PORT"))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == health_port, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= LONGEST_RESTORE_SECONDS
    assert {"name": "health", "containerPort": health_port} in container["ports"]

    # Memory tied to the limit: models < heap < container.
    limit = mebibytes(container["resources"]["limits"]["memory"])
    assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"]
    heap = size_mebibytes(re.search(r"-Xmx(\d+[mMgG])", env_value(container, "JDK_JAVA_OPTIONS")).group(1))
    models = size_mebibytes(env_value(container, "OPTSIDECAR_MEMORY_LIMIT"))
    assert models < heap < limit, (models, heap, limit)
    assert limit - heap >= 1024, "the JVM's own memory needs room beside the heap"

    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert mount_volume(container, "/tmp") == "tmp", "Netty unpacks its native transport into /tmp"


def check_secret_file(pod: dict, container: dict, path: str, secret: Optional[str] = None) -> None:
    volume = volumes(pod)[mount_volume(container, path)]
    assert "secret" in volume, f"{path} comes from a Secret"
    if secret is not None:
        assert volume["secret"]["secretName"] == secret


def test_helm_lint_passes_for_each_values_file(helm):
    for values in ([], ["-f", str(CHART / "ci" / "sidecar-values.yaml")],
                   ["-f", str(CHART / "ci" / "standalone-values.yaml")]):
        out = subprocess.run([helm, "lint", "--strict", str(CHART), *values], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


def test_the_values_schema_refuses_what_would_render_wrong(helm):
    for setting, error in [("mode=sidecarr", "at '/mode': value must be one of 'sidecar', 'standalone'"),
                           ("server.memory=16G", "at '/server/memory': '16G' does not match pattern"),
                           ("server.memroy=16Gi", "at '/server': additional properties 'memroy' not allowed"),
                           ("probes.startup.failureThreshold=0", "at '/probes/startup/failureThreshold'")]:
        out = subprocess.run([helm, "template", "run", str(CHART), "--set", setting], capture_output=True, text=True)
        assert out.returncode != 0, setting
        assert error in out.stderr, out.stderr


def validate(validator_path: Path, docs: List[dict], directory: Path, version: str) -> subprocess.CompletedProcess:
    files = []
    for i, doc in enumerate(docs):
        files.append(directory / f"{i}-{doc['kind']}.yaml")
        files[-1].write_text(yaml.safe_dump(doc))
    return subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version,
                           *map(str, files)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(validator_path)})


def test_every_object_matches_the_kubernetes_api_schemas(validator_path, sidecar_sets, standalone_sets, tmp_path):
    docs = [d for docs in [*sidecar_sets.values(), *standalone_sets.values()] for d in docs]
    core = [d for d in docs if d["apiVersion"] != "cert-manager.io/v1"]  # a CRD: checked below instead
    kinds = {d["kind"] for d in core}
    assert kinds == {"Job", "PersistentVolumeClaim", "Service", "StatefulSet"}
    for version in KUBERNETES_VERSIONS:
        directory = tmp_path / version
        directory.mkdir()
        out = validate(validator_path, core, directory, version)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.count(" passed for resource ") == len(core), out.stdout


def test_the_validator_rejects_an_unknown_field(validator_path, sidecar_sets, tmp_path):
    job = copy.deepcopy(one(sidecar_sets["chart, default values"], "Job"))
    job["spec"]["template"]["spec"]["initContainers"][0]["restartPolicyy"] = "Always"
    out = validate(validator_path, [job], tmp_path, KUBERNETES_VERSIONS[-1])
    assert out.returncode != 0
    assert "restartPolicyy" in out.stdout + out.stderr


def test_the_trainer_pod_runs_the_server_as_a_native_sidecar_on_a_unix_socket(sidecar_sets):
    for name, docs in sidecar_sets.items():
        job = one(docs, "Job")
        pod = job["spec"]["template"]["spec"]
        (server,) = pod["initContainers"]
        (trainer,) = pod["containers"]
        assert server["restartPolicy"] == "Always", name
        check_server_container(server)

        # The API only on a Unix socket, in a volume the trainer mounts too, which it is told.
        assert not {"OPTSIDECAR_BIND", "OPTSIDECAR_PORT"} & env_of(server).keys(), name
        socket = env_value(server, "OPTSIDECAR_LISTEN")
        assert socket.startswith("unix:/") and "," not in socket, name
        socket_path = socket[len("unix:"):]
        assert mount_volume(server, socket_path) == mount_volume(trainer, socket_path)
        assert env_value(trainer, "OPTSIDECAR_TARGET") == f"unix://{socket_path}"
        assert [p["name"] for p in server["ports"]] == ["health"], "no TCP port but the health port"

        # Shared memory: one memory-backed emptyDir at the server's --shm-dir, in both containers.
        shm_dir = env_value(server, "OPTSIDECAR_SHM_DIR")
        shm = mount_volume(server, shm_dir)
        assert shm == mount_volume(trainer, shm_dir)
        assert volumes(pod)[shm]["emptyDir"]["medium"] == "Memory"
        assert env_value(trainer, "OPTSIDECAR_SHM_DIR") == shm_dir

        # State on the claim the manifests create; tokens from Secrets.
        state = volumes(pod)[mount_volume(server, env_value(server, "OPTSIDECAR_STATE_DIR"))]
        claim = one(docs, "PersistentVolumeClaim")
        assert state["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert env_value(server, "OPTSIDECAR_RESTORE") == "latest"
        check_secret_file(pod, server, env_value(server, "OPTSIDECAR_AUTH_TOKENS"), "optsidecar-tokens")
        token = env_of(trainer)["OPTSIDECAR_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert token == {"name": "optsidecar-trainer-token", "key": "token"}
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001


def test_the_parameter_server_is_a_statefulset_with_tls_tokens_and_its_own_volume(standalone_sets):
    for name, docs in standalone_sets.items():
        stateful_set = one(docs, "StatefulSet")
        service = one(docs, "Service")
        assert service["spec"]["clusterIP"] == "None", name
        assert stateful_set["spec"]["serviceName"] == service["metadata"]["name"]
        pod_labels = stateful_set["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert stateful_set["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

        pod = stateful_set["spec"]["template"]["spec"]
        (server,) = pod["containers"]
        check_server_container(server)
        port = int(env_value(server, "OPTSIDECAR_PORT"))
        assert env_value(server, "OPTSIDECAR_BIND") == "0.0.0.0"
        assert {"name": "grpc", "containerPort": port} in server["ports"]
        assert service["spec"]["ports"] == [{"name": "grpc", "port": port, "targetPort": "grpc",
                                             "appProtocol": "grpc"}]
        tls = env_value(server, "OPTSIDECAR_TLS_CERT")
        check_secret_file(pod, server, tls)
        check_secret_file(pod, server, env_value(server, "OPTSIDECAR_TLS_KEY"))
        check_secret_file(pod, server, env_value(server, "OPTSIDECAR_AUTH_TOKENS"), "optsidecar-tokens")

        state = mount_volume(server, env_value(server, "OPTSIDECAR_STATE_DIR"))
        assert [t["metadata"]["name"] for t in stateful_set["spec"]["volumeClaimTemplates"]] == [state]
        assert state not in volumes(pod)

        assert pod["securityContext"]["runAsNonRoot"] is True
        assert server["resources"]["requests"]["cpu"] == server["resources"]["limits"]["cpu"]

        certificates = [d for d in docs if d["kind"] == "Certificate"]
        if certificates:
            (certificate,) = certificates
            tls_secret = volumes(pod)[mount_volume(server, tls)]["secret"]["secretName"]
            assert certificate["spec"]["secretName"] == tls_secret
            assert certificate["spec"]["privateKey"]["encoding"] == "PKCS8", "the server reads PKCS#8 keys"
            assert f"*.{service['metadata']['name']}." in " ".join(certificate["spec"]["dnsNames"])


def test_the_ci_values_reach_the_manifests(standalone_sets):
    docs = standalone_sets["chart, ci/standalone-values.yaml"]
    (server,) = one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert env_value(server, "OPTSIDECAR_TLS_CLIENT_CA").endswith("/ca.crt"), "tls.mutual"
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert server["image"] == "optsidecar/server:0.1.0-SNAPSHOT-cuda"
    # 32Gi: heap 80% of 32768 MiB, models 90% of the heap.
    assert env_value(server, "JDK_JAVA_OPTIONS").startswith("-Xmx26214m ")
    assert env_value(server, "OPTSIDECAR_MEMORY_LIMIT") == "23592m"
    certificate = one(docs, "Certificate")
    assert "*.run-optsidecar.ml.svc" in certificate["spec"]["dnsNames"]


def server_help() -> str:
    java = shutil.which("java") or str(Path(os.environ.get("JAVA_HOME", "/usr")) / "bin" / "java")
    return subprocess.run([java, "-jar", str(server_jar()), "--help"], capture_output=True, text=True,
                          check=True).stdout


def test_every_server_setting_names_a_server_flag(sidecar_sets, standalone_sets):
    help_text = server_help()
    flags = set(re.findall(r"--(?:\[no-\])?([a-z][a-z0-9-]*)", help_text))
    if "auth-tokens" not in flags:
        # Token checking lands with --auth-tokens; until then the server ignores the variable.
        flags.add("auth-tokens")
    for name, docs in [*sidecar_sets.items(), *standalone_sets.items()]:
        for doc in docs:
            pod = (doc.get("spec", {}).get("template") or {}).get("spec")
            if pod is None:
                continue
            for container in pod.get("initContainers", []) + pod["containers"]:
                if container["name"] != "optsidecar":
                    continue
                for variable in env_of(container):
                    if variable.startswith("OPTSIDECAR_"):
                        flag = variable[len("OPTSIDECAR_"):].lower().replace("_", "-")
                        assert flag in flags, f"{name}: {variable} names no server flag (--{flag})"


class ServerWithEnvironment:
    """The packaged server started with a container's environment, its paths moved under a test
    folder (the image's /var/lib/optsidecar, /run/optsidecar, /etc/optsidecar), and a tokens file
    there that accepts ``TOKEN`` as a trainer."""

    TOKEN = "a-trainer-token"

    def __init__(self, container: dict, folder: Path, overrides: Dict[str, str]):
        moved = {"/var/lib/optsidecar": folder / "state", "/run/optsidecar": folder / "run",
                 "/etc/optsidecar": folder / "etc"}

        def here(value: str) -> str:
            for image_path, test_path in moved.items():
                value = value.replace(image_path, str(test_path))
            return value

        self.env = {name: here(e["value"]) for name, e in env_of(container).items() if "value" in e}
        self.env.update(overrides)
        tokens_file = Path(self.env["OPTSIDECAR_AUTH_TOKENS"])
        tokens_file.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(self.TOKEN.encode()).hexdigest()
        tokens_file.write_text(json.dumps({"tokens": [{"name": "trainer", "sha256": digest, "role": "trainer",
                                                       "models": ["*"]}]}))
        java = shutil.which("java") or str(Path(os.environ.get("JAVA_HOME", "/usr")) / "bin" / "java")
        self.process = subprocess.Popen([java, "-jar", str(server_jar())], env={**os.environ, **self.env},
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: List[str] = []
        self.serving = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)
            if "optsidecar serving on" in line:
                self.serving.set()
        self.serving.set()

    def await_serving(self) -> str:
        assert self.serving.wait(120) and self.process.poll() is None, "".join(self.lines)
        return next(line for line in self.lines if "optsidecar serving on" in line)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def test_the_charts_sidecar_settings_start_the_real_server(sidecar_sets, tmp_path):
    """The sidecar serves on its socket and the health port, with state, shared memory and tokens."""
    (container,) = one(sidecar_sets["chart, default values"], "Job")["spec"]["template"]["spec"]["initContainers"]
    health_port = str(free_port())
    shm_dir = tmp_path / "run" / "shm"
    shm_dir.mkdir(parents=True)
    server = ServerWithEnvironment(container, tmp_path, {"OPTSIDECAR_HEALTH_PORT": health_port})
    try:
        socket_path = server.env["OPTSIDECAR_LISTEN"][len("unix:"):]
        tokens = server.env["OPTSIDECAR_AUTH_TOKENS"]
        assert (f"serving on unix://{socket_path}, tokens from {tokens}, health on 0.0.0.0:{health_port}"
                in server.await_serving())
        with Client(f"unix://{socket_path}", token=server.TOKEN) as client:
            assert client.list() == []
        with Client(f"unix://{socket_path}") as anonymous, pytest.raises(Unauthenticated):
            anonymous.list()  # the token file is in force
            assert client.server_info().shm_dir == server.env["OPTSIDECAR_SHM_DIR"] == str(shm_dir)
        assert (tmp_path / "state").is_dir()
    finally:
        server.stop()


def test_the_charts_standalone_settings_serve_tls_to_a_client_with_the_ca(standalone_sets, tmp_path):
    """The parameter server's settings with a certificate like the Secret's: TLS on its port, the
    health port in plaintext. Only the port (and loopback for the test) differ."""
    (container,) = one(standalone_sets["chart, mode=standalone"], "StatefulSet")["spec"]["template"]["spec"]["containers"]
    tls_dir = tmp_path / "etc" / "tls"
    tls_dir.mkdir(parents=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", "tls.key", "-out", "tls.crt", "-days", "1", "-subj", "/CN=optsidecar",
                    "-addext", "subjectAltName=IP:127.0.0.1"], cwd=tls_dir, check=True, capture_output=True)
    port, health_port = str(free_port()), str(free_port())
    server = ServerWithEnvironment(container, tmp_path, {"OPTSIDECAR_PORT": port, "OPTSIDECAR_BIND": "127.0.0.1",
                                                         "OPTSIDECAR_HEALTH_PORT": health_port})
    try:
        tokens = server.env["OPTSIDECAR_AUTH_TOKENS"]
        assert (f"serving on 127.0.0.1:{port}, TCP with TLS, tokens from {tokens}, health on 0.0.0.0:{health_port}"
                in server.await_serving())
        assert server.env["OPTSIDECAR_TLS_CERT"] == str(tls_dir / "tls.crt")
        with Client(f"127.0.0.1:{port}", tls_ca=str(tls_dir / "tls.crt"), token=server.TOKEN) as client:
            assert client.list() == []
    finally:
        server.stop()
