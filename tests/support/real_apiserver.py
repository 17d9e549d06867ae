"""A real Kubernetes API server for tests: the shared `real-apiserver` tool, driven by PIDs.

The tool (`shared/tools/real-apiserver/setup.sh`, next to the project checkout or named by
`CDB_REAL_APISERVER`) runs kube-apiserver and kube-controller-manager v1.20.2 on a real etcd
on 127.0.0.1, and ships kubectl and helm. Each `ApiServer` has its own state directory and its
own free ports, so it never meets another run; its binaries are unpacked once into
`.cdb/tools/real-apiserver/` and shared by later runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN_CACHE = ROOT / ".cdb" / "tools" / "real-apiserver"
KCM_PORT_OFFSET = 3814
"""The tool puts the controller-manager on the API server's port plus this."""


class ApiServerUnavailable(RuntimeError):
    """The tool is not on this machine (the message says what is missing)."""


def find_tool() -> Path:
    """The tool's `setup.sh`: `CDB_REAL_APISERVER` (its folder), else `shared/tools/` in a
    parent folder of the checkout, else the workplace's shared one (`/work/shared`, where a
    clone elsewhere still finds it, as the container smoke finds its sandbox).

    Raises:
        ApiServerUnavailable: Not found.
    """
    named = os.environ.get("CDB_REAL_APISERVER")
    candidates = [Path(named)] if named else [
        parent / "shared" / "tools" / "real-apiserver" for parent in (*ROOT.parents, Path("/work"))]
    for folder in candidates:
        if (folder / "setup.sh").is_file():
            return folder / "setup.sh"
    raise ApiServerUnavailable(
        "no real-apiserver tool (shared/tools/real-apiserver/setup.sh next to the checkout, "
        "or CDB_REAL_APISERVER)")


def _free_port_block() -> tuple[int, int]:
    """(API port, etcd port): the API port plus the controller-manager's, etcd's two, free."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + KCM_PORT_OFFSET > 65000 or port < 20000:
            continue
        wanted = (port, port + KCM_PORT_OFFSET, port + 1, port + 2)
        if all(_is_free(p) for p in wanted):
            return port, port + 1
    raise RuntimeError("no free port block for the API server")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    """True while the process exists and is no zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class ApiServer:
    """etcd + kube-apiserver + kube-controller-manager of one test run.

    Attributes:
        state: The tool's state directory (`RK`): certificates, etcd data, logs, kubeconfig.
        port: The API server's port (HTTPS on 127.0.0.1).
    """

    def __init__(self, state: Path, tool: Path | None = None) -> None:
        self.tool = tool or find_tool()
        self.state = state
        self.port, self.etcd_port = _free_port_block()
        self.state.mkdir(parents=True, exist_ok=True)
        BIN_CACHE.mkdir(parents=True, exist_ok=True)
        link = self.state / "bin"
        if not link.exists():
            link.symlink_to(BIN_CACHE)

    @property
    def env(self) -> dict[str, str]:
        """Environment of the tool and of kubectl/helm: KUBECONFIG, PATH with the binaries."""
        env = dict(os.environ)
        env.update(RK=str(self.state), PORT=str(self.port), ETCD_PORT=str(self.etcd_port),
                   KUBECONFIG=str(self.kubeconfig),
                   PATH=f"{BIN_CACHE}{os.pathsep}{os.environ.get('PATH', '')}")
        return env

    @property
    def kubeconfig(self) -> Path:
        """The admin's kubeconfig (written by start)."""
        return self.state / "kubeconfig"

    @property
    def url(self) -> str:
        """The API server's URL."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        """The cluster's CA certificate."""
        return self.state / "pki" / "ca.crt"

    def binary(self, name: str) -> str:
        """Path of `kubectl`, `helm` or a control-plane binary."""
        return str(BIN_CACHE / name)

    def _tool(self, command: str, timeout: float) -> None:
        result = subprocess.run(["bash", str(self.tool), command], env=self.env,
                                capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"real-apiserver {command} failed ({result.returncode}):\n"
                               f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}\n"
                               f"{self.log_tail('apiserver')}")

    def start(self, timeout: float = 600) -> None:
        """Start etcd, the API server and the controller-manager; wait for the admin to list
        namespaces (the first start also unpacks the binaries and installs etcd).
        """
        if shutil.which("etcd") is None and os.geteuid() != 0:
            raise ApiServerUnavailable("etcd is not installed and installing it needs root")
        self._tool("start", timeout)
        self.wait_ready()

    def stop(self) -> None:
        """Stop what start started (controller-manager, API server, etcd), by their PIDs.

        The API server goes first, with a short grace (the tool waits 15 s for it).
        """
        pid_file = self.state / "apiserver.pid"
        if pid_file.exists():
            self._terminate(int(pid_file.read_text()), grace=5.0)
            pid_file.unlink()
        self._tool("stop", 120)

    @staticmethod
    def _terminate(pid: int, grace: float) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds (a v1.20 API server shutting down keeps
        its open watches until it is killed).
        """
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)

    def restart_apiserver(self, down_for: float = 3.0, grace: float = 5.0) -> None:
        """Stop the API server process (etcd and the controller-manager keep running), wait
        `down_for` seconds, start it again with the same command line, wait until it answers.
        SIGTERM first, SIGKILL after `grace` seconds.
        """
        pid_file = self.state / "apiserver.pid"
        pid = int(pid_file.read_text())
        command = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        self._terminate(pid, grace)
        time.sleep(down_for)
        # Through a shell that exits at once: the server is nobody's child (as the tool
        # starts it), so the tool's stop finds no zombie waiting for this process.
        log = self.state / "logs" / "apiserver.log"
        started = subprocess.run(
            ["sh", "-c", 'setsid "$@" >>"$LOG" 2>&1 < /dev/null & echo $!', "sh",
             *(c.decode() for c in command)],
            env={**os.environ, "LOG": str(log)}, capture_output=True, text=True, timeout=30,
            check=True)
        pid_file.write_text(started.stdout.strip() + "\n")
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until the admin lists namespaces."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            result = subprocess.run([self.binary("kubectl"), "get", "ns", "default"],
                                    env=self.env, capture_output=True, text=True, timeout=30,
                                    check=False)
            if result.returncode == 0:
                return
            last = result.stderr
            time.sleep(0.3)
        raise RuntimeError(f"the API server never answered: {last[-500:]}")

    def log_tail(self, component: str, size: int = 3000) -> str:
        """The end of a component's log (`apiserver`, `kcm`, `etcd`)."""
        path = self.state / "logs" / f"{component}.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else ""
