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
import fcntl
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from runner import forkserver, sandbox
from runner.atomic import remove_tree
from runner.envs import BuiltEnv, write_kernelspec

FORKSERVER = Path(__file__).with_name("forkserver.py")
# A session's input history lives as long as its kernel: no SQLite file made in each
# kernel's HOME and no thread to save it (what nbclient asks of an ipykernel kernelspec).
HISTORY_IN_MEMORY = "--HistoryManager.hist_file=:memory:"
START_TIMEOUT = 120.0
RUN_PREFIX = "runner-run-"


class ForkServers:
    """A run's kernels: its folder (kernelspecs, servers' sockets, sessions), its fork servers,
    and with `bwrap`, the sandbox each env's kernels run in (see `sandbox.py`)."""

    def __init__(self, folder: Path, owner: int, bwrap: str | None = None) -> None:
        self.folder = folder
        self._owner = owner  # the open, locked `.owner` file of `folder`
        self.bwrap = bwrap
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
        command, fds = (forkserver.with_userns(sandbox.outer_args(self.bwrap, env, self.folder))
                        if self.bwrap else ([str(env.python), str(FORKSERVER)], []))
        try:
            self._servers[name] = subprocess.Popen(
                [*command, "serve", str(socket_path),
                 *(env.spec.preload if preload is None else preload)],
                env=dict(variables), cwd=self.folder, stdin=subprocess.DEVNULL, stdout=log,
                stderr=log, start_new_session=True, pass_fds=fds)
        finally:
            log.close()  # the server has its own
            for fd in fds:
                os.close(fd)
        self._kernelspec(env, ["launch", str(socket_path)], f"runner: {name} (warm)")

    def plain(self, env: BuiltEnv) -> None:
        """A kernelspec that starts each kernel from scratch, with the same limits."""
        self._kernelspec(env, ["plain"], f"runner: {env.spec.name}")

    def _kernelspec(self, env: BuiltEnv, command: list[str], display_name: str) -> None:
        sandboxed = []
        if self.bwrap:
            sandboxed = ["--sandbox", str(sandbox.write_args(self.bwrap, env, self.folder))]
        write_kernelspec(self.kernels_dir(env.spec.name) / env.kernel_name,
                         [str(env.python), str(FORKSERVER), *command, *sandboxed,
                          "-f", "{connection_file}", HISTORY_IN_MEMORY],
                         display_name, interrupt_mode="message" if self.bwrap else None)

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
        remove_tree(self.folder)  # a kernel shaped what is in it: see remove_tree
        os.close(self._owner)
        remove_empty_cgroups()


def open_servers(bwrap: str | None = None) -> ForkServers:
    """A new run's kernels: its folder made (earlier runs' stale ones removed first), no
    server started yet."""
    sweep_stale_runs()
    # All of the run's own files. Kernels' Unix sockets live in it, and a socket's path may
    # not be longer than 107 bytes: a long $TMPDIR gives way to /tmp.
    folder = Path(tempfile.mkdtemp(prefix=RUN_PREFIX, dir=run_folder_parent()))
    # Held while the run lives (the kernel drops it when the process goes, however it goes):
    # a later run removes a folder whose lock it can take.
    owner = os.open(folder / ".owner", os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(owner, fcntl.LOCK_EX)
    return ForkServers(folder, owner, bwrap)


def run_folder_parent() -> str:
    temp = tempfile.gettempdir()
    return "/tmp" if len(temp) > 40 and os.access("/tmp", os.W_OK) else temp


def sweep_stale_runs() -> None:
    """Remove the folders of earlier runs that were killed (SIGKILL leaves them): only those
    whose owner lock can be taken, so a run still going is never touched. Also the post lock
    files earlier runners left in the temp folder (one per post ever run)."""
    temp = Path(tempfile.gettempdir())
    for old in temp.glob("runner-post-*.lock"):
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > 3600:
                old.unlink()
    for folder in Path(run_folder_parent()).glob(f"{RUN_PREFIX}*"):
        try:
            owner = os.open(folder / ".owner", os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            continue  # not a run folder of this kind, or not ours to judge
        try:
            fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # a run takes its lock right after it makes the file: a file this old, unlocked,
            # belongs to a run that is gone
            stale = time.time() - os.fstat(owner).st_mtime > 10
        except OSError:
            continue  # its run is still going
        finally:
            os.close(owner)
        if stale:
            remove_tree(folder)


def network_isolation(python: Path) -> bool:
    """Whether kernels can be given a network namespace of their own here (Linux, and the
    privilege to make one), tried once in a throwaway process."""
    done = subprocess.run([str(python), str(FORKSERVER), "can-isolate"], capture_output=True)
    return done.returncode == 0


def remove_empty_cgroups() -> None:
    """The cgroups of kernels that have ended (this run's, or a crashed run's)."""
    found = [forkserver.cgroup_root(name) for name in forkserver.CGROUP_CONTROLLERS]
    for root in {Path(p) for p in found if p} | {Path("/sys/fs/cgroup/pids")}:
        for group in root.glob("runner-kernel-*"):
            with contextlib.suppress(OSError):
                group.rmdir()  # refused while a process is still in it
