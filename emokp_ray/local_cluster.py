"""A real two-node Ray cluster on this machine, for the tests and benchmarks that need more than one
raylet (tests/test_cluster.py, benchmarks/label_scale.py): `ray start --head` and `ray start
--address` on loopback, in a private temporary folder, on free ports, with its own auth token
(RAY_AUTH_MODE=token). Each node has `cpus_per_node` logical CPUs and its own custom resource
(node_a, node_b). `stop()` kills exactly the processes the cluster started (never `ray stop`, which
would stop every Ray of this user on the machine); it finds them in /proc, so Linux only.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, command line) of every process we can read."""
    table: dict[int, tuple[int, int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp session ...
        table[int(entry.name)] = (int(fields[1]), int(fields[3]), cmdline)
    return table


class TwoNodeCluster:
    """`ray start --head` and `ray start --address` on loopback; `stop()` kills what they started."""

    def __init__(self, cpus_per_node: int = 3) -> None:
        self.cpus_per_node = cpus_per_node
        # Short, private: Ray's Unix sockets live under it (the socket path limit is 107 bytes).
        self.root = Path(tempfile.mkdtemp(prefix="emokp-rc-", dir="/tmp"))
        self.token = secrets.token_hex(32)
        (self.root / "auth_token").write_text(self.token)
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.sessions: list[int] = []  # session ids of our `ray start` runs: their daemons keep them
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
        self.env = {
            **env,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.root / "auth_token"),
            "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"}

    def _ray_start(self, *args: str) -> None:
        ports = [
            "--node-manager-port",
            "--object-manager-port",
            "--dashboard-agent-grpc-port",
            "--dashboard-agent-listen-port",
            "--runtime-env-agent-port",
            "--metrics-export-port",
        ]
        command = [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={self.cpus_per_node}",
            "--num-gpus=0",
            f"--temp-dir={self.root}",
            "--object-store-memory=200000000",
            "--disable-usage-stats",
            *[f"{flag}={free_port()}" for flag in ports],
            *args,
        ]
        proc = subprocess.Popen(
            command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self.sessions.append(proc.pid)
        output, _ = proc.communicate(timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{output[-3000:]}")

    def start(self) -> None:
        self._ray_start(
            "--head",
            f"--port={self.gcs_port}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}",
            '--resources={"node_a": 1}',
        )
        self._ray_start(f"--address=127.0.0.1:{self.gcs_port}", '--resources={"node_b": 1}')

    def our_processes(self) -> set[int]:
        """Processes of our sessions or naming our folder, and all their descendants."""
        table = _processes()
        ours = {pid for pid, (_, sid, cmd) in table.items() if sid in self.sessions or str(self.root) in cmd}
        grew = True
        while grew:
            children = {pid for pid, (ppid, _, _) in table.items() if ppid in ours} - ours
            ours |= children
            grew = bool(children)
        return ours - {os.getpid()}

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM our processes, SIGKILL what is left after `grace_s`; then remove the folder."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            pids = self.our_processes()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait_s
            while self.our_processes() and time.monotonic() < deadline:
                time.sleep(0.25)
        shutil.rmtree(self.root, ignore_errors=True)
