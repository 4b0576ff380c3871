"""Fixtures: the package on sys.path, the real server as a process, the reference vectors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Optional

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
REPO_ROOT = PACKAGE_ROOT.parent
TESTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(PACKAGE_ROOT))

_SERVING = re.compile(r"serving on 127\.0\.0\.1:(\d+)")


def server_jar() -> Path:
    return Path(os.environ.get("OPTSIDECAR_SERVER_JAR", REPO_ROOT / "server" / "target" / "optsidecar-server.jar"))


def reference_dir() -> Path:
    return Path(os.environ.get("OPTSIDECAR_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "reference"))


def subprocess_env() -> dict:
    """Environment for child Python processes: the package and the test helpers importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PACKAGE_ROOT), str(TESTS_DIR)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


class ServerProcess:
    """The packaged server jar, run as its own process on a loopback port."""

    def __init__(self, port: int = 0):
        jar = server_jar()
        if not jar.is_file():
            pytest.fail(f"missing {jar}: build the server first (mvn -B -q -o package -DskipTests)")
        java = shutil.which("java") or str(Path(os.environ.get("JAVA_HOME", "/usr")) / "bin" / "java")
        self.process = subprocess.Popen(
            [java, "-jar", str(jar), "--port", str(port), "--bind", "127.0.0.1", "--threads", "2",
             "--memory-limit", "1g"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.port = self._await_port()
        self.target = f"127.0.0.1:{self.port}"

    def _await_port(self) -> int:
        found: list = []
        ready = threading.Event()
        log: list = []

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:  # keeps draining after the port is found
                if not found:
                    log.append(line)
                    match = _SERVING.search(line)
                    if match:
                        found.append(int(match.group(1)))
                        ready.set()
            ready.set()

        threading.Thread(target=read, name="server-log", daemon=True).start()
        if not ready.wait(60) or not found:
            self.stop()
            pytest.fail("server did not report its port:\n" + "".join(log))
        return found[0]

    def stop(self, crash: bool = False) -> None:
        """Stops the server: SIGTERM (it shuts down cleanly), or SIGKILL with ``crash``."""
        if self.process.poll() is None:
            if crash:
                self.process.kill()
                self.process.wait()
                return
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def server():
    process = ServerProcess()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def target(server) -> str:
    return server.target


@pytest.fixture(scope="session")
def client(target):
    from optsidecar import Client

    with Client(target) as c:
        yield c


@pytest.fixture
def reference() -> Path:
    path = reference_dir()
    if not path.is_dir():
        pytest.fail(f"reference vectors not found at {path} (set OPTSIDECAR_REFERENCE_DIR)")
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_server():
    """A server of the test's own, for tests that stop it; ``restart()`` brings it back on its port."""

    class Private:
        def __init__(self) -> None:
            self.current: Optional[ServerProcess] = ServerProcess()
            self.port = self.current.port
            self.target = self.current.target

        def stop(self, crash: bool = False) -> None:
            if self.current is not None:
                self.current.stop(crash)
                self.current = None

        def restart(self) -> None:
            self.stop()
            self.current = ServerProcess(self.port)

    p = Private()
    yield p
    p.stop()
