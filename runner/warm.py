"""Warm kernels for a run: one fork server per environment (see `forkserver.py`).

Each server starts with the run, in the env's own Python and kernel environment, and imports the
env's `preload` modules once while other work goes on; every session of that env then gets a
kernel forked from it in milliseconds instead of a fresh interpreter that imports everything
again. The kernelspec handed to nbclient runs the fork server's launcher, which falls back to a
plain `ipykernel_launcher` when the server is not there, so a kernel always starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from runner.envs import BuiltEnv, write_kernelspec

FORKSERVER = Path(__file__).with_name("forkserver.py")
START_TIMEOUT = 120.0


class ForkServers:
    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="runner-run-"))  # all of the run's own files
        self._servers: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, env: BuiltEnv, variables: Mapping[str, str],
              preload: Sequence[str] | None = None) -> None:
        """Start the env's server (it preloads in the background) and write its kernelspec.
        `preload` defaults to all the env's preload modules."""
        name = env.spec.name
        if name in self._servers:
            return
        socket_path = self.folder / f"{name}.sock"
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 (the server keeps it)
        self._servers[name] = subprocess.Popen(
            [str(env.python), str(FORKSERVER), "serve", str(socket_path),
             *(env.spec.preload if preload is None else preload)],
            env=dict(variables), cwd=self.folder, stdin=subprocess.DEVNULL, stdout=log,
            stderr=log, start_new_session=True)
        log.close()  # the server has its own
        write_kernelspec(self.kernels_dir(name) / env.kernel_name,
                         [str(env.python), str(FORKSERVER), "launch", str(socket_path),
                          "-f", "{connection_file}"],
                         f"runner: {name} (warm)")

    def plain(self, env: BuiltEnv) -> None:
        """A kernelspec that starts each kernel from scratch, with the same limits."""
        write_kernelspec(self.kernels_dir(env.spec.name) / env.kernel_name,
                         [str(env.python), str(FORKSERVER), "plain", "-f", "{connection_file}"],
                         f"runner: {env.spec.name}")

    def kernels_dir(self, name: str) -> Path:
        return self.folder / name / "kernels"

    async def ready(self, name: str) -> None:
        """Wait until the env's server accepts (it has imported what every kernel needs; the
        heavy modules follow between requests), or give up on it."""
        deadline = time.monotonic() + START_TIMEOUT
        socket_path = self.folder / f"{name}.sock"
        server = self._servers.get(name)
        if server is None:  # a plain kernelspec: nothing to wait for
            return
        while not socket_path.exists() and server.poll() is None:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)

    def close(self) -> None:
        for server in self._servers.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
        remove_empty_cgroups()


def network_isolation(python: Path) -> bool:
    """Whether kernels can be given a network namespace of their own here (Linux, and the
    privilege to make one), tried once in a throwaway process."""
    done = subprocess.run([str(python), str(FORKSERVER), "can-isolate"], capture_output=True)
    return done.returncode == 0


def remove_empty_cgroups() -> None:
    """The pids cgroups of kernels that have ended (this run's, or a crashed run's)."""
    for root in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        for group in root.glob("runner-kernel-*"):
            with contextlib.suppress(OSError):
                group.rmdir()  # refused while a process is still in it
