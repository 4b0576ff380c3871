"""Fixtures: the package on sys.path, the real server as a process, the reference vectors."""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Deque, List, Optional, Sequence

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
    """The packaged server jar, run as its own process on a loopback port.

    Args:
        port: the port to listen on; 0 picks a free one, which later restarts keep.
        args: extra server flags, e.g. ``["--state-dir", DIR, "--restore", "latest"]``.
    """

    def __init__(self, port: int = 0, args: Sequence[str] = ()):
        self.port = port
        self.args = [str(a) for a in args]
        self.process: Optional[subprocess.Popen] = None
        #: The server's most recent log lines, for failure messages.
        self.log: Deque[str] = collections.deque(maxlen=200)
        self.start()

    def start(self) -> None:
        """Starts the server on its port (it must not be running) and waits until it serves."""
        if self.running:
            raise RuntimeError("the server is already running")
        jar = server_jar()
        if not jar.is_file():
            pytest.fail(f"missing {jar}: build the server first (mvn -B -q -o package -DskipTests)")
        java = shutil.which("java") or str(Path(os.environ.get("JAVA_HOME", "/usr")) / "bin" / "java")
        self.process = subprocess.Popen(
            [java, "-jar", str(jar), "--port", str(self.port), "--bind", "127.0.0.1", "--threads", "2",
             "--memory-limit", "1g", *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.port = self._await_port(self.process)
        self.target = f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _await_port(self, process: subprocess.Popen) -> int:
        found: list = []
        ready = threading.Event()

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:  # keeps draining after the port is found
                self.log.append(line)
                if not found:
                    match = _SERVING.search(line)
                    if match:
                        found.append(int(match.group(1)))
                        ready.set()
            ready.set()

        threading.Thread(target=read, name="server-log", daemon=True).start()
        if not ready.wait(60) or not found:
            self.stop()
            pytest.fail("server did not report its port:\n" + "".join(self.log))
        return found[0]

    def stop(self, crash: bool = False) -> None:
        """Stops the server: SIGTERM (it shuts down cleanly), or SIGKILL with ``crash``."""
        if self.process is not None and self.process.poll() is None:
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

    def kill(self) -> None:
        """SIGKILL: the process dies at once, as in a crash or an OOM kill."""
        self.stop(crash=True)

    def restart(self, crash: bool = False, args: Optional[Sequence[str]] = None) -> None:
        """Stops the server (killing it with ``crash``) and starts it again on the same port, with
        the same flags or with ``args``."""
        self.stop(crash)
        if args is not None:
            self.args = [str(a) for a in args]
        self.start()


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
    p = ServerProcess()
    yield p
    p.stop()


@pytest.fixture
def start_server():
    """Starts servers of the test's own: ``start_server(*flags, port=0)``; all are stopped after the test."""
    started: List[ServerProcess] = []

    def start(*args: str, port: int = 0) -> ServerProcess:
        started.append(ServerProcess(port, args))
        return started[-1]

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def shm_server(start_server, tmp_path):
    """A server of the test's own with ``--shm-dir`` (its path in ``shm_dir``)."""
    directory = tmp_path / "shm"
    directory.mkdir()
    server = start_server("--shm-dir", directory)
    server.shm_dir = str(directory)
    return server
