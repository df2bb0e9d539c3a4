"""The runner's side of a fork server (`forkserver.py`): jupyter_client's provisioner asks the
env's server for each kernel itself, without a launcher process (a Python start and its imports:
about 35 ms of CPU a kernel). Only a run that starts kernels imports this (jupyter_client)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jupyter_client.provisioning.local_provisioner import LocalProvisioner

from runner import forkserver


class ForkProvisioner(LocalProvisioner):
    """jupyter_client's local provisioner, but a warm kernelspec's kernel is asked of the fork
    server by the runner itself: no launcher process per kernel (a Python start and its
    imports: about 35 ms of CPU each). The runner does what `forkserver.launch` does: makes the
    kernel's cgroups, hands over the kernel's stdin, stdout and stderr, and keeps the
    connection, on which the server says the kernel's exit status; closing it (or the runner
    going, however it goes) makes the server end the kernel and all it started. Any other
    kernelspec, or no server answering, starts as the local provisioner starts it."""

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        if cmd[2:3] != ["launch"]:
            return await super().launch_kernel(cmd, **kwargs)
        socket_path, (sandbox_file, argv) = cmd[3], forkserver._sandbox_option(cmd[4:])
        env = kwargs.get("env") or dict(os.environ)
        limits = json.loads(env.get("RUNNER_KERNEL_LIMITS", "{}"))
        cgroups = (forkserver.make_cgroups(limits, f"{os.getpid()}-{next(_KERNELS)}")
                   if sandbox_file is not None else {})
        try:
            kernel = await _ask_server(socket_path, kwargs, env, argv, cgroups,
                                       sandboxed=sandbox_file is not None)
        except (OSError, ValueError, KeyError):  # no server: a kernel from scratch
            plain = [*cmd[:2], "plain", *(["--sandbox", sandbox_file] if sandbox_file else []),
                     *argv]
            return await super().launch_kernel(plain, **kwargs)
        finally:
            for fd in cgroups.values():
                os.close(fd)
        self.process = kernel  # type: ignore[assignment]  # Popen-like, see ForkedKernel
        self.pid, self.pgid = kernel.pid, None
        self.cwd = kwargs.get("cwd", Path.cwd())
        return self.connection_info

    async def wait(self) -> int | None:
        """The kernel's exit status as the server sends it (the local provisioner polls every
        0.1 s: a tenth of a second at the end of every run)."""
        kernel = self.process
        if not isinstance(kernel, ForkedKernel):
            return await super().wait()
        status = await kernel.ended()
        self.process = None
        return status


_KERNELS = itertools.count(1)


async def _ask_server(socket_path: str, kwargs: Mapping[str, Any], env: Mapping[str, str],
                      argv: list[str], cgroups: dict[str, int],
                      sandboxed: bool) -> ForkedKernel:
    loop = asyncio.get_running_loop()
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.setblocking(False)
    try:
        await loop.sock_connect(connection, socket_path)
        with open(os.devnull, "rb") as stdin:
            fds = [stdin.fileno(), *(_fd(kwargs.get(name)) for name in ("stdout", "stderr"))]
            socket.send_fds(connection, [b"R"], [*fds, *cgroups.values()])
        request = {"cwd": str(kwargs.get("cwd") or os.getcwd()), "env": dict(env),
                   "argv": argv, "launcher": os.getpid(), "cgroups": list(cgroups)}
        await loop.sock_sendall(connection, json.dumps(request).encode() + b"\n")
        kernel = ForkedKernel(connection, sandboxed)
        while kernel.pid is None:
            data = await loop.sock_recv(connection, 4096)
            if not data:
                raise ValueError("the fork server closed the connection")
            kernel.take(data)
        return kernel
    except BaseException:
        connection.close()
        raise


def _fd(stream: Any) -> int:
    """A kernel's output stream as a descriptor: a file's, a descriptor, or the runner's
    stderr."""
    if isinstance(stream, int) and stream >= 0:
        return stream
    return stream.fileno() if hasattr(stream, "fileno") else 2


class ForkedKernel:
    """A forked kernel as the provisioner sees a Popen: `poll`, `send_signal`, `kill` (and
    `ended` for its wait).
    Its status comes on the connection to the fork server. In the sandbox its pid is the
    server's namespace's, so it is never signalled from here: interrupts come as messages, and
    ending the kernel is closing the connection's sending side (the server then kills the
    kernel's whole session and says its status)."""

    stdin = stdout = stderr = None

    def __init__(self, connection: socket.socket, sandboxed: bool) -> None:
        self.connection, self.sandboxed = connection, sandboxed
        self.pid: int | None = None
        self.returncode: int | None = None
        self._buffer = b""

    def take(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            message = json.loads(line)
            if "pid" in message:
                self.pid = int(message["pid"])
            if "status" in message:
                self.returncode = int(message["status"])
                self.connection.close()

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                self._got(self.connection.recv(4096))
            except BlockingIOError:  # nothing yet: the kernel runs
                pass
            except OSError:  # closed: the server is gone, and the kernel with it
                self._got(b"")
        return self.returncode

    async def ended(self) -> int:
        """Wait, without blocking the event loop, for the status the server sends (what a
        Popen's `wait` is to jupyter_client: `ForkProvisioner.wait` and `_async_wait`)."""
        loop = asyncio.get_running_loop()
        while self.returncode is None:
            try:
                self._got(await loop.sock_recv(self.connection, 4096))
            except OSError:
                self._got(b"")
        return self.returncode

    def _got(self, data: bytes) -> None:
        """What came on the connection (non-blocking from the start); nothing: it closed."""
        if data:
            self.take(data)
        else:  # the server went without a status: so did the kernel
            self.returncode = -signal.SIGKILL
            self.connection.close()

    def send_signal(self, signum: int) -> None:
        if signum in (signal.SIGKILL, signal.SIGTERM):
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_WR)  # the server ends its session
        if self.sandboxed or self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            if signum == signal.SIGINT:
                os.kill(self.pid, signum)  # an interrupt is for the kernel alone
            else:
                os.killpg(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)
