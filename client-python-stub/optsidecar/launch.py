"""Running the optsidecar server jar as a child process, for scripts that want a server of their own
(the examples and :mod:`optsidecar.bench`).

Example::

    with LocalServer("server/target/optsidecar-server.jar", java_options=["-Xmx8g"]) as server:
        opt = RemoteOptimizer(model.parameters(), target=server.target, algorithm="RAdam")
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import List, Sequence

__all__ = ["LocalServer"]

_SERVING = re.compile(r"serving on ([^\s:]+):(\d+)")


class LocalServer:
    """The server jar, started with ``--port 0`` on the loopback interface; :attr:`target` is the
    address it reports. Stopped (SIGTERM, then SIGKILL) by :meth:`stop` or on leaving a ``with``.

    Args:
        jar: path of ``optsidecar-server.jar``.
        java_options: JVM options, e.g. ``["-Xmx8g"]``.
        server_args: extra server flags, e.g. ``["--threads", "2"]``.
        startup_timeout: seconds to wait for the server to report its port.
    """

    def __init__(self, jar: str, java_options: Sequence[str] = (), server_args: Sequence[str] = (),
                 startup_timeout: float = 60.0):
        if not Path(jar).is_file():
            raise FileNotFoundError(f"server jar not found: {jar} (build it with mvn -B -q package -DskipTests)")
        java = shutil.which("java") or str(Path(os.environ.get("JAVA_HOME", "/usr")) / "bin" / "java")
        command = [java, *java_options, "-jar", str(jar), "--port", "0", "--bind", "127.0.0.1", *server_args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._log: List[str] = []
        self.target = self._await_target(startup_timeout)

    def _await_target(self, timeout: float) -> str:
        """Reads the server's output until it says where it serves; keeps draining it afterwards
        so the server never blocks on a full pipe."""
        found: List[str] = []
        ready = threading.Event()

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                if not found:
                    self._log.append(line)
                    match = _SERVING.search(line)
                    if match:
                        found.append(f"{match.group(1)}:{match.group(2)}")
                        ready.set()
            ready.set()  # the process ended

        threading.Thread(target=read, name="optsidecar-server-log", daemon=True).start()
        if not ready.wait(timeout) or not found:
            self.stop()
            raise RuntimeError("the server did not report its port:\n" + "".join(self._log))
        return found[0]

    def stop(self, timeout: float = 20.0) -> None:
        """Stops the server: SIGTERM (it shuts down cleanly), SIGKILL if it has not ended in time."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

