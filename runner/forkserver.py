"""Warm kernels: a fork server run by an environment's own Python (never imported by the runner).

`serve SOCKET MODULE...` imports ipykernel, IPython and the env's heavy modules once, then forks
one child per request; each child becomes an ordinary IPython kernel for one session.
`launch SOCKET -f CONNECTION_FILE` is what the kernelspec runs in place of `ipykernel_launcher`:
it asks the server for a kernel, hands over its stdin/stdout/stderr, forwards the signals
jupyter_client sends it and exits with the kernel's status. When no server answers it becomes
a plain `ipykernel_launcher`, so a kernel always starts.

Why sessions cannot see each other: each kernel is a fresh fork of a server in which no user code
ever ran; what one session does to modules, globals, files it opens or the RNG lives in its own
copy-on-write process and ends with it. The server stays single-threaded, so no lock is held by a
thread that does not exist in the child. Python's `random` reseeds itself in each child; numpy's
global RNG, seeded once at import, is reseeded here too. The child starts its own session (its
own process group), and a watchdog ends it and everything it started when the launcher dies,
however it dies.
"""

import contextlib
import importlib
import json
import os
import resource
import select
import signal
import socket
import sys
import threading
import time
from typing import Any

# What an IPython kernel imports while it starts: imported here, a forked kernel is ready in
# about 30 ms instead of about 0.7 s. Not matplotlib's inline backend: it hooks itself into the
# shell that exists when it is first imported, and only the forked kernel has one.
KERNEL_MODULES = (
    "ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell", "ipykernel.debugger",
    "IPython", "IPython.core.completer", "debugpy", "sqlite3", "tornado.ioloop", "psutil", "pdb",
    "pydoc",
)


def serve(path: str, modules: list[str]) -> None:
    """Import what every kernel needs, then accept; the env's heavy modules are imported one by
    one whenever no request waits, so light sessions need not wait for them."""
    # ipykernel sets this before any user import; pyplot preloaded here must see it too.
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    for name in KERNEL_MODULES:
        _preload(name)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path + ".tmp")
    server.listen(16)
    os.rename(path + ".tmp", path)  # the socket appears only once it accepts
    pending = list(modules)
    runner = os.getppid()
    waiting: dict[int, socket.socket] = {}  # child pid -> the launcher's connection
    while True:
        readable, _, _ = select.select([server], [], [], 0 if pending else 0.05)
        if readable:
            connection, _ = server.accept()
            try:
                pid = _fork_kernel(server, connection, list(waiting.values()))
            except Exception as exc:  # a bad request ends that launcher, never the server
                print(f"forkserver: request refused: {exc!r}", file=sys.stderr)
                connection.close()
            else:
                waiting[pid] = connection
        elif pending:
            _preload(pending.pop(0))
        for pid in list(waiting):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                connection = waiting.pop(pid)
                _send(connection, {"status": os.waitstatus_to_exitcode(status)})
                connection.close()
        if os.getppid() != runner:  # the runner is gone, however it went
            return


def _preload(name: str) -> None:
    try:
        importlib.import_module(name)
    except Exception as exc:  # a module that fails here fails visibly in the session
        print(f"forkserver: preloading {name} failed: {exc}", file=sys.stderr)


def _fork_kernel(server: socket.socket, connection: socket.socket,
                 others: list[socket.socket]) -> int:
    connection.settimeout(10)
    _, fds, _, _ = socket.recv_fds(connection, 1, 3)  # stdin, stdout, stderr of the launcher
    try:
        request = json.loads(connection.makefile("rb").readline())  # then one JSON line
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    connection.settimeout(None)
    pid = os.fork()
    if pid:
        for fd in fds:
            os.close(fd)
        _send(connection, {"pid": pid})
        return pid
    for inherited in (server, connection, *others):  # other sessions' launchers are not ours
        inherited.close()
    try:
        _become_kernel(request, fds)
    finally:
        os._exit(1)


def apply_limits() -> None:
    """The limits the runner sets for every kernel (RUNNER_KERNEL_LIMITS, JSON): memory as
    RLIMIT_DATA (heap and private mappings: numpy's big arrays included), processes as
    RLIMIT_NPROC and, where the pids cgroup is writable (root does not obey RLIMIT_NPROC), as a
    cgroup of this kernel's own that its whole process tree counts against."""
    limits = json.loads(os.environ.get("RUNNER_KERNEL_LIMITS", "{}"))
    if limits.get("network") is False:
        without_network()
    if limits.get("memory_mb"):
        size = int(limits["memory_mb"]) * 2**20
        resource.setrlimit(resource.RLIMIT_DATA, (size, size))
    if limits.get("processes"):
        count = int(limits["processes"])
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NPROC, (count, count))
        root = _pids_cgroup_root()
        if root is not None:
            group = os.path.join(root, f"runner-kernel-{os.getpid()}")
            with contextlib.suppress(OSError):
                os.mkdir(group)
                with open(os.path.join(group, "pids.max"), "w") as out:
                    out.write(str(count))
                with open(os.path.join(group, "cgroup.procs"), "w") as out:
                    out.write(str(os.getpid()))


def without_network() -> bool:
    """Move this process into a network namespace of its own with only loopback, up: it can
    serve and call 127.0.0.1, and reach nothing else. False where that is not permitted."""
    import ctypes
    import fcntl
    import struct

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        flags = 0x1 | 0x8 | 0x40  # IFF_UP | IFF_LOOPBACK | IFF_RUNNING
        fcntl.ioctl(probe, 0x8914, struct.pack("16sH14x", b"lo", flags))  # SIOCSIFFLAGS
    return True


def _pids_cgroup_root() -> str | None:
    """Where a pids cgroup can be made: cgroup v1's pids hierarchy, or v2 with pids enabled."""
    if os.path.isdir("/sys/fs/cgroup/pids"):
        return "/sys/fs/cgroup/pids"
    with contextlib.suppress(OSError), open("/sys/fs/cgroup/cgroup.subtree_control") as controls:
        if "pids" in controls.read().split():
            return "/sys/fs/cgroup"
    return None


def plain(argv: list[str]) -> None:
    """A kernel started from scratch, with the same limits as a forked one, that ends its
    process group (itself and whatever it started) when the runner is gone."""
    apply_limits()
    threading.Thread(target=_watch, args=(os.getppid(),), daemon=True).start()
    _run_kernel(argv)


def _become_kernel(request: dict[str, Any], fds: list[int]) -> None:
    os.setsid()
    for target, fd in zip((0, 1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    apply_limits()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    threading.Thread(target=_watch, args=(request["launcher"],), daemon=True).start()
    _run_kernel(request["argv"])
    os._exit(0)


def _run_kernel(argv: list[str]) -> None:
    sys.argv = ["ipykernel_launcher", *argv]
    from ipykernel.kernelapp import IPKernelApp  # type: ignore[import-not-found]

    IPKernelApp.launch_instance()


def _watch(parent: int) -> None:
    """End this kernel and its process group when the process that stands for it (the
    launcher, or the runner itself) is gone."""
    while True:
        time.sleep(0.2)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os.killpg(0, signal.SIGKILL)


def launch(path: str, argv: list[str]) -> None:
    try:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(path)
        request = {"cwd": os.getcwd(), "env": dict(os.environ), "argv": argv,
                   "launcher": os.getpid()}
        socket.send_fds(client, [b"R"], [0, 1, 2])
        client.sendall(json.dumps(request).encode() + b"\n")
        reader = client.makefile("r")
        pid = json.loads(reader.readline())["pid"]
    except (OSError, ValueError, KeyError):  # no server: a kernel from scratch, same limits
        plain(argv)
        return
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, lambda s, _frame: _forward(pid, s))
    threading.Thread(target=_orphaned, args=(pid, os.getppid()), daemon=True).start()
    line = reader.readline()
    status = json.loads(line)["status"] if line else 1
    sys.exit(status if status >= 0 else 128 - status)


def _orphaned(pid: int, parent: int) -> None:
    """The runner died without stopping this kernel (SIGKILL, a crash): stop it here."""
    while os.getppid() == parent:
        time.sleep(0.2)
    _forward(pid, signal.SIGKILL)
    os._exit(1)


def _forward(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        if signum == signal.SIGINT:
            os.kill(pid, signum)  # an interrupt is for the kernel alone
        else:
            os.killpg(pid, signum)


def _send(connection: socket.socket, message: dict[str, int]) -> None:
    with contextlib.suppress(OSError):
        connection.sendall((json.dumps(message) + "\n").encode())


if __name__ == "__main__":
    if sys.argv[1] == "can-isolate":
        sys.exit(0 if without_network() else 1)
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "plain":
        plain(sys.argv[2:])
    else:
        launch(sys.argv[2], sys.argv[3:])
