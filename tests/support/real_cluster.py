"""A real single-node Kubernetes cluster for tests: the shared `real-cluster` tool.

The tool (`shared/tools/real-cluster/setup.sh`, next to the project checkout or named by
`CDB_REAL_CLUSTER`) runs the real-apiserver control plane (etcd, kube-apiserver,
kube-controller-manager v1.20.2) plus kube-scheduler, kubelet and kube-proxy on containerd with
CNI, cluster DNS and a default StorageClass, so pods really run. One cluster per machine: it
owns fixed ports (6443, 10250, ...), the bridge `rc0` and the node's cgroups; its state lives
in `RK` (the tool's default, `/tmp/real-cluster`). Images come from podman (`load-image`).

`RealCluster.stop()` stops only a cluster that `start()` started, and `leftovers()` lists what a
stopped cluster left on the machine (processes, mounts, the bridge, iptables chains), so a
test session can prove it cleaned up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PIDS = ("etcd", "apiserver", "kcm", "scheduler", "containerd", "dnsmasq", "apiproxy", "agent",
        "proxy", "kubelet")
"""The processes the tool records in `$RK/<name>.pid`."""
BRIDGE = "rc0"


class ClusterUnavailable(RuntimeError):
    """The tool or what it needs is not on this machine (the message says what)."""


def find_tool() -> Path:
    """The tool's `setup.sh`: `CDB_REAL_CLUSTER` (its folder), else `shared/tools/real-cluster`
    in a parent folder of the checkout, else under `/work/shared`.

    Raises:
        ClusterUnavailable: Not found.
    """
    named = os.environ.get("CDB_REAL_CLUSTER")
    candidates = [Path(named)] if named else [
        parent / "shared" / "tools" / "real-cluster" for parent in (*ROOT.parents, Path("/work"))]
    for folder in candidates:
        if (folder / "setup.sh").is_file():
            return folder / "setup.sh"
    raise ClusterUnavailable(
        "no real-cluster tool (shared/tools/real-cluster/setup.sh next to the checkout, or "
        "CDB_REAL_CLUSTER)")


def _alive(pid: int) -> bool:
    """True while the process exists and is no zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class RealCluster:
    """The machine's real cluster, driven through the tool.

    Attributes:
        tool: The tool's `setup.sh`.
        state: Its state directory (`RK`).
        started: True when `start()` started it (a cluster found running is left running).
        timings: Seconds taken by `start`, `stop` and each `load-image`, for the report.
    """

    def __init__(self, tool: Path | None = None) -> None:
        self.tool = tool or find_tool()
        self.state = Path(os.environ.get("RK") or
                          Path(os.environ.get("TMPDIR") or "/tmp") / "real-cluster")
        self.started = False
        self.timings: dict[str, float] = {}
        self._netns_before: set[Path] = set()

    @staticmethod
    def _netns() -> set[Path]:
        """The pods' network namespaces (CNI's) on this machine."""
        return set(Path("/run/netns").glob("cni-*"))

    @property
    def env(self) -> dict[str, str]:
        """Environment of the tool, kubectl and helm: RK, KUBECONFIG, PATH with its binaries."""
        env = dict(os.environ)
        env.update(RK=str(self.state), KUBECONFIG=str(self.kubeconfig),
                   PATH=f"{self.state / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
        return env

    @property
    def kubeconfig(self) -> Path:
        """The admin's kubeconfig."""
        return self.state / "kubeconfig"

    def binary(self, name: str) -> str:
        """Path of `kubectl`, `helm` or another binary of the tool."""
        return str(self.state / "bin" / name)

    def _tool(self, *args: str, timeout: float) -> str:
        result = subprocess.run(["bash", str(self.tool), *args], env=self.env,
                                capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"real-cluster {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
        return result.stdout + result.stderr

    def running(self) -> bool:
        """True when this state directory's API server and kubelet are running."""
        return all(self._pid_alive(name) for name in ("apiserver", "kubelet"))

    def _pid_alive(self, name: str) -> bool:
        path = self.state / f"{name}.pid"
        try:
            return _alive(int(path.read_text().strip()))
        except (OSError, ValueError):
            return False

    def check_machine(self) -> None:
        """Raise `ClusterUnavailable` when this machine cannot run the cluster."""
        if os.geteuid() != 0:
            raise ClusterUnavailable("the real cluster needs root (kubelet, containerd, CNI)")
        if shutil.which("apt-get") is None and shutil.which("containerd") is None:
            raise ClusterUnavailable("containerd is not installed and there is no apt-get")

    def start(self, timeout: float = 900) -> None:
        """Start the cluster (the first start installs what is missing) and wait for the node
        Ready; a cluster already running in this state directory is used as it is."""
        if self.running():
            return
        started = time.monotonic()
        self._netns_before = self._netns()  # not ours to account for
        self._tool("start", timeout=timeout)
        self.started = True
        self.timings["start"] = time.monotonic() - started

    def stop(self) -> None:
        """Stop the cluster if `start()` started it (pods through the CRI, then every process)."""
        if not self.started:
            return
        started = time.monotonic()
        self._tool("stop", timeout=300)
        self.started = False
        self.timings["stop"] = time.monotonic() - started

    def leftovers(self) -> list[str]:
        """What a stopped cluster left behind: live recorded processes, mounts under the state
        directory, the pods' network namespaces, the bridge, kube-proxy's and the kubelet's
        iptables chains."""
        found = [f"process {name}" for name in PIDS if self._pid_alive(name)]
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        root = str(self.state)
        found += [f"mount {m.split()[1]}" for m in mounts
                  if m.split()[1] == root or m.split()[1].startswith(root + "/")]
        found += [f"network namespace {p}" for p in sorted(self._netns() - self._netns_before)]
        if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True,
                          check=False).returncode == 0:
            found.append(f"bridge {BRIDGE}")
        for table in ("filter", "nat", "mangle"):
            listed = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True,
                                    text=True, check=False).stdout
            found += [f"iptables {table}: {line}" for line in listed.splitlines()
                      if line.startswith("-N KUBE-")]
        return found

    # -- images ------------------------------------------------------------------------------

    def node_images(self) -> dict[str, str]:
        """The images containerd holds for the node: name -> 12-digit image id."""
        socket = "/run/real-cluster/containerd.sock"
        out = subprocess.run([self.binary("rc-cri"), socket, "images"], capture_output=True,
                             text=True, timeout=60, check=False).stdout
        images: dict[str, str] = {}
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0].startswith("sha256:") and "[" in line:
                names = line[line.index("[") + 1:line.rindex("]")].split()
                for name in names:
                    images[name.strip(",")] = parts[0].removeprefix("sha256:")[:12]
        return images

    def load_images(self, *images: str) -> list[str]:
        """Load podman images into the node (those it holds already, by id, are skipped).

        Returns:
            The images loaded now.
        """
        held = self.node_images()
        wanted = []
        for image in images:
            image_id = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", image],
                                      capture_output=True, text=True, timeout=60,
                                      check=True).stdout.strip()[:12]
            if held.get(image) != image_id:
                wanted.append(image)
        if wanted:
            started = time.monotonic()
            self._tool("load-image", *wanted, timeout=900)
            self.timings["load-image"] = time.monotonic() - started
        return wanted

    # -- kubectl and helm --------------------------------------------------------------------

    def run(self, *args: str, check: bool = True, timeout: float = 180,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command with the cluster's environment."""
        result = subprocess.run(list(args), env=self.env, input=stdin, capture_output=True,
                                text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def kubectl(self, *args: str, check: bool = True, timeout: float = 180,
                stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the tool's kubectl as the admin."""
        return self.run(self.binary("kubectl"), *args, check=check, timeout=timeout,
                        stdin=stdin)

    def kubectl_json(self, *args: str) -> Any:
        """kubectl ... -o json, parsed."""
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def helm(self, *args: str, check: bool = True,
             timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run the tool's helm (v4)."""
        return self.run(self.binary("helm"), *args, check=check, timeout=timeout)
