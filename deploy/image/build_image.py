#!/usr/bin/env python3
"""Builds the optsidecar server's container image offline, without a container engine or a registry.

The image is written as one tar that is both an OCI image layout (index.json, oci-layout, blobs/)
and a docker-archive (manifest.json), as `docker save` writes since Docker 25: `docker load -i`
and `podman load -i` take it. Its layers, uncompressed and reproducible (sorted entries, fixed
owners and mtimes: SOURCE_DATE_EPOCH, default 0):

1. base: the C libraries the Java runtime links against, copied from this machine (what `ldd`
   names for the runtime's own libraries, the desktop ones left out), /etc/passwd and /etc/group
   with the image's user, and the folders the server writes (/tmp, /var/lib/optsidecar, /run/optsidecar);
2. runtime: a `jlink` Java runtime of the modules `jdeps` finds the server jar needs (plus the
   service-loaded ones it cannot see), at /opt/optsidecar/runtime;
3. app: the server jar and the health probe at /opt/optsidecar;
4. native (the cuda variant, when given): native libraries at /opt/optsidecar/native, on
   java.library.path and LD_LIBRARY_PATH.

The cuda variant is the cpu image with that optional layer and the settings NVIDIA's container
runtime reads; it needs no CUDA base image as long as the native library links the CUDA runtime
statically (nvcc's default): the driver's libcuda is mounted into the container by the runtime.

Usage: python3 deploy/image/build_image.py [--variant cpu|cuda] [--native-lib PATH]... [--output FILE]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_JAR = REPO_ROOT / "server" / "target" / "optsidecar-server.jar"
HEALTH_PROBE_SOURCE = Path(__file__).resolve().parent / "HealthProbe.java"

APP_DIR = "/opt/optsidecar"
RUNTIME_DIR = f"{APP_DIR}/runtime"
NATIVE_DIR = f"{APP_DIR}/native"
SERVER_JAR = f"{APP_DIR}/optsidecar-server.jar"
HEALTH_PROBE_JAR = f"{APP_DIR}/health-probe.jar"
STATE_DIR = "/var/lib/optsidecar"
RUN_DIR = "/run/optsidecar"
USER_ID = 10001
USER_NAME = "optsidecar"
API_PORT = 50051
HEALTH_PORT = 8081

# Loaded by the service loader or by name, so jdeps cannot see them: EC keys and certificates (TLS).
EXTRA_MODULES = ("jdk.crypto.ec",)
# Native libraries of java.desktop (AWT, fonts, sound, images): the module's classes are needed
# (java.beans), its graphics libraries are never loaded by a headless server, so their X11 and
# font dependencies stay out of the image.
DESKTOP_LIBRARIES = re.compile(r"lib(awt.*|fontmanager|jawt|jsound|javajpeg|lcms|mlib_image|splashscreen)\.so$")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


class Layer:
    """One layer's tar, built in memory with deterministic entries."""

    def __init__(self, name: str, mtime: int):
        self.name = name
        self.mtime = mtime
        self.entries: Dict[str, Tuple[tarfile.TarInfo, Optional[bytes]]] = {}

    def directory(self, path: str, mode: int = 0o755, owner: int = 0) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            name = "/".join(parts[:i])
            if name not in self.entries or i == len(parts):
                info = self._info(name, tarfile.DIRTYPE, mode if i == len(parts) else 0o755,
                                  owner if i == len(parts) else 0)
                self.entries[name] = (info, None)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        name = path.strip("/")
        if "/" in name:
            parent = name.rsplit("/", 1)[0]
            if parent not in self.entries:
                self.directory(parent)
        info = self._info(name, tarfile.REGTYPE, mode, 0)
        info.size = len(data)
        self.entries[name] = (info, data)

    def tree(self, source: Path, target: str) -> None:
        """A folder copied as it is: files keep their exec bits, symlinks stay links."""
        self.directory(target)
        for path in sorted(source.rglob("*")):
            name = f"{target.strip('/')}/{path.relative_to(source).as_posix()}"
            if path.is_symlink():
                info = self._info(name, tarfile.SYMTYPE, 0o777, 0)
                info.linkname = os.readlink(path)
                self.entries[name] = (info, None)
            elif path.is_dir():
                self.directory(name)
            else:
                self.file(name, path.read_bytes(), 0o755 if os.access(path, os.X_OK) else 0o644)

    def _info(self, name: str, kind: bytes, mode: int, owner: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.uid = info.gid = owner
        info.uname = info.gname = ""
        info.mtime = self.mtime
        return info

    def tar(self) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(self.entries):
                info, data = self.entries[name]
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return out.getvalue()


def run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def java_tool(java_home: Path, name: str) -> str:
    tool = java_home / "bin" / name
    if not tool.is_file():
        sys.exit(f"build_image: {tool} not found: --java-home must be a JDK with {name}")
    return str(tool)


def default_java_home() -> Path:
    if os.environ.get("JAVA_HOME"):
        return Path(os.environ["JAVA_HOME"])
    javac = shutil.which("javac")
    if javac is None:
        sys.exit("build_image: no JDK found: set JAVA_HOME or put javac on PATH")
    return Path(os.path.realpath(javac)).parent.parent


def server_modules(java_home: Path, jar: Path) -> List[str]:
    """The modules the server jar uses, as jdeps reads them, plus those it cannot see."""
    found = run(java_tool(java_home, "jdeps"), "--ignore-missing-deps", "--print-module-deps",
                "--multi-release", "17", str(jar)).strip().split(",")
    return sorted(set(found) | set(EXTRA_MODULES))


def jlink_runtime(java_home: Path, modules: List[str], output: Path) -> None:
    run(java_tool(java_home, "jlink"), "--add-modules", ",".join(modules), "--strip-debug", "--no-header-files",
        "--no-man-pages", "--compress=2", "--output", str(output))


def runtime_objects(runtime: Path) -> List[Path]:
    """The runtime's binaries and libraries, less java.desktop's graphics libraries."""
    return [p for p in sorted(runtime.rglob("*")) if p.is_file()
            and (p.suffix == ".so" or p.parent.name == "bin") and not DESKTOP_LIBRARIES.search(p.name)]


def jar_native_libraries(jar: Path, into: Path) -> List[Path]:
    """The Linux libraries of this architecture that the jar unpacks and loads at run time (Netty's
    epoll transport, which Unix sockets need, and its TLS library; the CPU engine's native loops,
    built for x86-64): their dependencies must be in the image too."""
    arch = {"x86_64": "x86_64", "aarch64": "aarch_64"}[platform.machine()]
    ours = "native/linux-x86_64/liboptsidecar_cpu.so" if arch == "x86_64" else None
    out = []
    with zipfile.ZipFile(jar) as z:
        for name in z.namelist():
            if (name.startswith("META-INF/native/") and name.endswith(f"_{arch}.so")) or name == ours:  # not .dll
                target = into / Path(name).name
                target.write_bytes(z.read(name))
                out.append(target)
    return out


def linked_libraries(objects: List[Path], inside: Path, optional: List[Path] = ()) -> Dict[str, Path]:
    """What the objects need from the system, as image path -> host file. A library found inside
    ``inside`` (the runtime: libjvm.so, which the launcher loads first) is not the system's; one
    missing here fails the build, except for the ``optional`` objects, whose missing libraries
    (the GPU driver's) come from the container runtime."""
    needed: Dict[str, Path] = {}
    for obj in objects:
        result = subprocess.run(["ldd", str(obj)], capture_output=True, text=True)
        if result.returncode != 0:  # not a dynamic executable (a script, a static file)
            continue
        for line in result.stdout.splitlines():
            line = line.strip()
            if "=>" in line:
                soname, _, rest = line.partition("=>")
                soname, location = soname.strip(), rest.split("(")[0].strip()
                if location == "not found":
                    if any(inside.rglob(soname)) or obj in optional:
                        continue
                    sys.exit(f"build_image: {obj.name} needs {soname}, which this machine lacks")
                if location and not Path(location).resolve().is_relative_to(inside.resolve()):
                    needed[f"/lib/{multiarch()}/{soname}"] = Path(location)
            elif line.startswith("/"):  # the dynamic loader, at the path the binaries name
                loader = line.split("(")[0].strip()
                needed[loader] = Path(loader)
    return needed


def multiarch() -> str:
    return {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}[platform.machine()]


def architecture() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}[platform.machine()]


def health_probe_jar(java_home: Path, server_jar: Path, work: Path, mtime: int) -> bytes:
    classes = work / "probe-classes"
    run(java_tool(java_home, "javac"), "--release", "17", "-cp", str(server_jar), "-d", str(classes),
        str(HEALTH_PROBE_SOURCE))
    out = io.BytesIO()
    stamp = (1980, 1, 1, 0, 0, 0) if mtime < 315532800 else tuple(time.gmtime(mtime)[:6])
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as jar:
        entries = [("META-INF/MANIFEST.MF", b"Manifest-Version: 1.0\r\nCreated-By: optsidecar\r\n\r\n")]
        entries += [(p.relative_to(classes).as_posix(), p.read_bytes())
                    for p in sorted(classes.rglob("*.class"))]
        for name, data in entries:
            info = zipfile.ZipInfo(name, stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            jar.writestr(info, data)
    return out.getvalue()


def server_version(jar: Path) -> str:
    with zipfile.ZipFile(jar) as z:
        props = z.read("META-INF/maven/dev.optsidecar/optsidecar-server/pom.properties").decode()
    return re.search(r"^version=(.+)$", props, re.M).group(1).strip()


def java_version(runtime: Path) -> str:
    release = (runtime / "release").read_text()
    return re.search(r'^JAVA_VERSION="([^"]+)"', release, re.M).group(1)


def base_layer(libraries: Dict[str, Path], mtime: int) -> Layer:
    layer = Layer("base", mtime)
    for image_path, host_file in sorted(libraries.items()):
        layer.file(image_path, host_file.resolve().read_bytes(), 0o755)
    layer.file("/etc/passwd", f"root:x:0:0:root:/root:/sbin/nologin\n"
                              f"{USER_NAME}:x:{USER_ID}:{USER_ID}:optsidecar:{STATE_DIR}:/sbin/nologin\n".encode())
    layer.file("/etc/group", f"root:x:0:\n{USER_NAME}:x:{USER_ID}:\n".encode())
    layer.file("/etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files dns\n")
    layer.directory("/tmp", 0o1777)
    layer.directory("/root", 0o700)
    layer.directory(STATE_DIR, 0o750, USER_ID)
    layer.directory(RUN_DIR, 0o750, USER_ID)
    return layer


def native_layer(paths: Iterable[Path], mtime: int) -> Layer:
    layer = Layer("native", mtime)
    layer.directory(NATIVE_DIR)
    for path in paths:
        if path.is_dir():
            layer.tree(path, NATIVE_DIR)
        else:
            layer.file(f"{NATIVE_DIR}/{path.name}", path.read_bytes(), 0o755)
    return layer


def image_config(variant: str, version: str, java: str, layers: List[Tuple[Layer, str]], mtime: int) -> dict:
    created = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    java_bin = f"{RUNTIME_DIR}/bin/java"
    env = [f"PATH={RUNTIME_DIR}/bin:/usr/bin:/bin",
           f"JAVA_HOME={RUNTIME_DIR}",
           # Defaults for the server's JVM, replaced as a whole by setting the variable: the heap
           # follows the container's memory limit, and an OutOfMemoryError ends the process
           # (the kubelet or the engine restarts it) instead of leaving it half alive.
           "JDK_JAVA_OPTIONS=-XX:MaxRAMPercentage=75 -XX:+ExitOnOutOfMemoryError",
           f"OPTSIDECAR_HEALTH_PORT={HEALTH_PORT}"]
    if variant == "cuda":
        env += [f"LD_LIBRARY_PATH={NATIVE_DIR}",
                # What NVIDIA's container runtime reads: every GPU, the compute driver libraries.
                "NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"]
    entrypoint = [java_bin]
    if variant == "cuda":
        entrypoint.append(f"-Djava.library.path={NATIVE_DIR}")
    entrypoint += ["-jar", SERVER_JAR]
    seconds = 1_000_000_000
    return {
        "created": created,
        "architecture": architecture(),
        "os": "linux",
        "config": {
            "User": f"{USER_ID}:{USER_ID}",
            "Env": env,
            "Entrypoint": entrypoint,
            "WorkingDir": STATE_DIR,
            "ExposedPorts": {f"{API_PORT}/tcp": {}, f"{HEALTH_PORT}/tcp": {}},
            "StopSignal": "SIGTERM",
            # Docker and Podman (docker format) run it; Kubernetes ignores it and uses its own
            # grpc probes on the same port.
            "Healthcheck": {
                "Test": ["CMD", java_bin, "-Xmx32m", "-XX:TieredStopAtLevel=1", "-cp",
                         f"{HEALTH_PROBE_JAR}:{SERVER_JAR}", "dev.optsidecar.deploy.HealthProbe"],
                "Interval": 30 * seconds, "Timeout": 10 * seconds, "StartPeriod": 60 * seconds, "Retries": 3,
            },
            "Labels": {
                "org.opencontainers.image.title": "optsidecar-server",
                "org.opencontainers.image.description":
                    "optsidecar: an optimizer as a service (gRPC); " + variant + " image",
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.licenses": "Apache-2.0",
                "org.opencontainers.image.created": created,
                "dev.optsidecar.variant": variant,
                "dev.optsidecar.java.version": java,
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{digest}" for _, digest in layers]},
        "history": [{"created": created, "created_by": f"build_image.py: {layer.name} layer"}
                    for layer, _ in layers],
    }


def qualified_name(tag: str) -> str:
    """The full name containerd records: a name without a registry host is Docker Hub's."""
    first = tag.split("/")[0]
    has_host = "/" in tag and ("." in first or ":" in first or first == "localhost")
    return tag if has_host else "docker.io/" + (tag if "/" in tag.rpartition(":")[0] else "library/" + tag)


def write_archive(output: Path, tag: str, config: dict, layers: List[Tuple[bytes, str]], mtime: int) -> str:
    """The OCI layout and docker-archive tar; returns the manifest's digest."""
    blobs: Dict[str, bytes] = {}

    def blob(data: bytes) -> Tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return digest, len(data)

    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_digest, config_size = blob(config_bytes)
    layer_refs = []
    for data, _ in layers:
        digest, size = blob(data)
        layer_refs.append({"mediaType": OCI_LAYER, "digest": f"sha256:{digest}", "size": size})
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": f"sha256:{config_digest}", "size": config_size},
                "layers": layer_refs}
    manifest_digest, manifest_size = blob(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    repository, _, reference = tag.rpartition(":")
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
             "manifests": [{"mediaType": OCI_MANIFEST, "digest": f"sha256:{manifest_digest}", "size": manifest_size,
                            "annotations": {"io.containerd.image.name": qualified_name(tag),
                                            "org.opencontainers.image.ref.name": reference}}]}
    docker_manifest = [{"Config": f"blobs/sha256/{config_digest}", "RepoTags": [tag],
                        "Layers": [f"blobs/sha256/{ref['digest'][7:]}" for ref in layer_refs]}]

    archive = Layer("archive", mtime)
    archive.file("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
    archive.file("index.json", json.dumps(index, sort_keys=True).encode())
    archive.file("manifest.json", json.dumps(docker_manifest, sort_keys=True).encode())
    for digest, data in blobs.items():
        archive.file(f"blobs/sha256/{digest}", data)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    partial.write_bytes(archive.tar())
    partial.replace(output)
    return f"sha256:{manifest_digest}"


def build(jar: Path, output: Path, variant: str, native_libs: List[Path], tag: Optional[str],
          java_home: Path, mtime: int) -> str:
    if not jar.is_file():
        sys.exit(f"build_image: {jar} not found: build it first (mvn -B -ntp -q package -pl server -am -DskipTests)")
    if native_libs and variant != "cuda":
        sys.exit("build_image: --native-lib belongs to --variant cuda")
    for path in native_libs:
        if not path.exists():
            sys.exit(f"build_image: --native-lib {path} does not exist (build the native library first)")
    version = server_version(jar)
    with tempfile.TemporaryDirectory(prefix="optsidecar-image-") as work_dir:
        work = Path(work_dir)
        runtime = work / "runtime"
        jlink_runtime(java_home, server_modules(java_home, jar), runtime)
        natives = [p for p in native_libs for p in ([p] if p.is_file() else sorted(p.rglob("*.so*")))]
        (work / "jar-native").mkdir()
        objects = runtime_objects(runtime) + jar_native_libraries(jar, work / "jar-native") + natives
        base = base_layer(linked_libraries(objects, runtime, optional=natives), mtime)
        runtime_layer = Layer("runtime", mtime)
        runtime_layer.tree(runtime, RUNTIME_DIR)
        app = Layer("app", mtime)
        app.file(SERVER_JAR, jar.read_bytes())
        app.file(HEALTH_PROBE_JAR, health_probe_jar(java_home, jar, work, mtime))
        layers = [base, runtime_layer, app]
        if variant == "cuda" and native_libs:
            layers.append(native_layer(native_libs, mtime))
        tars = [(layer, layer.tar()) for layer in layers]
        digests = [(layer, hashlib.sha256(data).hexdigest()) for layer, data in tars]
        config = image_config(variant, version, java_version(runtime), digests, mtime)
    default_tag = f"optsidecar/server:{version}" + ("-cuda" if variant == "cuda" else "")
    return write_archive(output, tag or default_tag, config, [(data, layer.name) for layer, data in tars], mtime)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jar", type=Path, default=DEFAULT_JAR, help="the packaged server jar")
    parser.add_argument("--variant", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--native-lib", type=Path, action="append", default=[], metavar="PATH",
                        help="cuda: a native library (file) or a folder of them for the native layer")
    parser.add_argument("--output", type=Path, help="the image archive (default deploy/target/optsidecar-server-VARIANT.tar)")
    parser.add_argument("--tag", help="repository:tag to load it as (default optsidecar/server:VERSION[-cuda])")
    parser.add_argument("--java-home", type=Path, default=None, help="the JDK whose jlink makes the runtime")
    args = parser.parse_args(argv)
    output = args.output or REPO_ROOT / "deploy" / "target" / f"optsidecar-server-{args.variant}.tar"
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    digest = build(args.jar, output, args.variant, args.native_lib, args.tag, args.java_home or default_java_home(),
                   mtime)
    print(f"{output} {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
