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

import os
import sys

# Run as a script, this file's folder (the runner package) would come first on the kernels'
# sys.path: `runner/bisect.py` would stand in for the standard library's bisect, and a snippet
# could import the runner's own modules. Gone before anything else is imported.
if __name__ == "__main__" and sys.path and (
        os.path.realpath(sys.path[0]) == os.path.dirname(os.path.realpath(__file__))):
    del sys.path[0]

import contextlib
import importlib
import json
import resource
import select
import signal
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

# What an IPython kernel imports while it starts: imported here, a forked kernel is ready in
# about 30 ms instead of about 0.7 s. Not matplotlib's inline backend: it hooks itself into the
# shell that exists when it is first imported, and only the forked kernel has one.
KERNEL_MODULES = (
    "ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell", "ipykernel.debugger",
    "IPython", "IPython.core.completer", "debugpy", "sqlite3", "tornado.ioloop", "psutil", "pdb",
    "pydoc", "IPython.core.completerlib", "IPython.core.debugger", "IPython.core.oinspect",
    "IPython.extensions.storemagic", "IPython.utils.wildcard", "tornado.platform.asyncio",
    "faulthandler",
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
        readable, _, _ = select.select([server, *waiting.values()], [], [],
                                       0 if pending else 0.05)
        if server in readable:
            connection, _ = server.accept()
            try:
                pid = _fork_kernel(server, connection, list(waiting.values()))
            except Exception as exc:  # a bad request ends that launcher, never the server
                print(f"forkserver: request refused: {exc!r}", file=sys.stderr)
                connection.close()
            else:
                waiting[pid] = connection
        elif pending and not readable:
            _preload(pending.pop(0))
        for pid, connection in waiting.items():
            if connection in readable:  # the launcher is gone (it sends nothing after its
                with contextlib.suppress(ProcessLookupError):  # request): so is its kernel,
                    os.killpg(pid, signal.SIGKILL)  # and all it started (its own session)
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
    # stdin, stdout, stderr of the launcher, then the cgroup.procs files it opened, if any
    _, fds, _, _ = socket.recv_fds(connection, 1, 3 + len(CGROUP_CONTROLLERS))
    try:
        request = json.loads(connection.makefile("rb").readline())  # then one JSON line
        limits = json.loads(request["env"].get("RUNNER_KERNEL_LIMITS", "{}"))
        connection.settimeout(None)
        pid, init = _fork_in_pid_namespace() if limits.get("sandbox") else (os.fork(), False)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    if pid:
        for fd in fds:
            os.close(fd)
        _send(connection, {"pid": pid})
        return pid
    for inherited in (server, connection, *others):  # other sessions' launchers are not ours
        inherited.close()
    try:
        _become_kernel(request, fds, init)
    finally:
        os._exit(1)


def apply_rlimits(limits: dict[str, Any], joined: Sequence[str]) -> None:
    """Memory as RLIMIT_DATA (heap and private mappings; a cgroup, where one was joined, counts
    shared memory and tmpfs too) and processes as RLIMIT_NPROC, unless a pids cgroup was
    `joined`: RLIMIT_NPROC counts every process and thread of the user in the env's sandbox,
    so it would bound all of the env's kernels together, not this one."""
    if limits.get("memory_mb"):
        size = int(limits["memory_mb"]) * 2**20
        resource.setrlimit(resource.RLIMIT_DATA, (size, size))
    # no file a kernel writes (its log and crash file on the run folder's disk among them)
    # grows past the scratch folder's size
    file_size = int(limits.get("scratch_mb") or DEFAULT_SCRATCH_MB) * 2**20
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
    if limits.get("processes") and "pids" not in joined:
        count = int(limits["processes"])
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NPROC, (count, count))


def apply_limits(limits: dict[str, Any]) -> None:
    """Without a sandbox, the limits the runner sets for every kernel (RUNNER_KERNEL_LIMITS,
    JSON): a network namespace of its own unless the post opts in, cgroups where they can be
    made (root does not obey RLIMIT_NPROC), and the rlimits."""
    if limits.get("network") is False:
        without_network()
    apply_rlimits(limits, join_cgroups(make_cgroups(limits)))


# --- the sandbox of one session (inside bubblewrap's; see runner/sandbox.py) ---------------------

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 4096, 8192, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 1, 4, 24
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 38, 47
CLONE_NEWUSER, MNT_DETACH = 0x10000000, 2
SESSION_HOME = "/tmp/home"
# Where the runner runs as root, a kernel is not: the env's sandbox is a user namespace in
# which the fork server is uid 0 (host root: it reads the env and the run's folder, and runs no
# user code) and `nobody` is mapped too; each kernel becomes `nobody` (host uid 65534) before
# any user code runs, so what the host lets root do (write /proc/sys, own root's files) is not
# the kernel's. A runner that is not root maps only its own uid: its kernels are that user.
KERNEL_UID = 65534
# Each kernel's private, size- and inode-capped file systems (tmpfs: memory, counted by the
# kernel's memory cgroup where there is one). The scratch folder is one too, with copies of
# the files beside the post: a snippet cannot fill the disk.
TMP_INODES, SHM_INODES, SCRATCH_INODES = 100_000, 10_000, 100_000
DEFAULT_SCRATCH_MB = 1024


def enter_session(limits: dict[str, Any], forked: bool = False) -> None:
    """Make this process a kernel of its own sandbox, inside the env's (bubblewrap's): new
    mount, pid, ipc and uts namespaces (and network, unless the post opts in). Returns in the
    kernel, pid 2 of the new pid namespace under a small init. The init is this process where
    the fork server `forked` it as pid 1 of a new pid namespace (`_fork_in_pid_namespace`);
    otherwise this process stays outside as the reaper and never returns: it exits with the
    kernel's status. Whatever the kernel starts, daemons included, dies with the namespace
    when the kernel or its init goes. The kernel sees only its session folder (its scratch and
    its connection files), a private size-capped /tmp (HOME is /tmp/home) and /dev/shm, and
    the env and system read-only; it has no capabilities and can gain none."""
    network = bool(limits.get("network"))
    cwd = os.getcwd()  # entered again once the view is made: the old one leads outside it
    outbound = _outbound() if network else None
    _check(_libc().unshare(CLONE_NEWNS | (0 if forked else CLONE_NEWPID) | CLONE_NEWIPC
                           | CLONE_NEWUTS | CLONE_NEWNET), "unshare")
    if outbound is not None:
        _attach(outbound)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    if not forked:
        init = os.fork()
        if init:
            _exit_like(init)  # the reaper
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    uid = KERNEL_UID if _mapped(KERNEL_UID) else None
    _session_view(limits, cwd, uid, outbound is not None)
    _loopback_up()
    _check(_libc().sethostname(b"runner", 6), "sethostname")
    _drop_capabilities(uid)
    os.chdir("/")
    kernel = os.fork()
    if kernel:
        _init(kernel)
    os.chdir(cwd)
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.environ.update(HOME=SESSION_HOME, TMPDIR="/tmp", PATH=_sandbox_path())
    # ipykernel would watch that pid, which this namespace cannot see (its parent is the
    # init above): the namespace ends the kernel when the runner goes.
    os.environ.pop("JPY_PARENT_PID", None)
    os.makedirs(SESSION_HOME, exist_ok=True)


SLIRP = ("/usr/bin/slirp4netns", "/bin/slirp4netns", "/usr/local/bin/slirp4netns")
SLIRP_DNS = "10.0.2.3"


def outbound_available() -> bool:
    """Whether a session granted the network can have it here: slirp4netns, a user-mode
    network stack (what rootless podman uses), gives its own network namespace a way out."""
    return _slirp() is not None


def _slirp() -> str | None:
    """slirp4netns, where it is installed and this user may open the tun device it needs."""
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        return None
    return next((path for path in SLIRP if os.access(path, os.X_OK)), None)


def _outbound() -> socket.socket | None:
    """Before the session's namespaces are made: a helper left in this one (the host's
    network) that becomes slirp4netns for the session's network namespace once `_attach`
    sends it. The session's network is then its own namespace with a route out through it,
    and `--disable-host-loopback`: never the host's loopback (its 127.0.0.1 services); slirp
    itself in a sandbox of its own (`--enable-sandbox`, `--enable-seccomp`). None
    where slirp4netns is not installed: the session has loopback only."""
    slirp = _slirp()
    if slirp is None:
        return None
    ours, theirs = socket.socketpair()
    if os.fork():
        theirs.close()
        return ours
    ours.close()
    try:
        _, fds, _, _ = socket.recv_fds(theirs, 1, 1)
        os.set_inheritable(fds[0], True)
        os.set_inheritable(theirs.fileno(), True)
        os.execv(slirp, [slirp, "--configure", "--mtu=65520", "--disable-host-loopback",
                         "--enable-sandbox", "--enable-seccomp",
                         f"--ready-fd={theirs.fileno()}", "--netns-type=path",
                         f"/proc/self/fd/{fds[0]}", "tap0"])
    finally:
        os._exit(1)


def _attach(helper: socket.socket) -> None:
    """Hand this process's new network namespace to the slirp4netns helper and wait until it
    has configured it (tap0 up, a default route, DNS at SLIRP_DNS)."""
    namespace = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        socket.send_fds(helper, [b"N"], [namespace])
    finally:
        os.close(namespace)
    helper.settimeout(10)
    try:
        if helper.recv(1) != b"1":
            raise OSError("sandbox: slirp4netns could not configure the session's network")
    finally:
        helper.close()


def _resolver() -> None:
    """Name lookups through slirp4netns's forwarder where the host's resolver is one of its
    own loopback addresses (127.0.0.53 of systemd-resolved), which this namespace's loopback
    is not: a resolv.conf of the session's own over the host's (through its link, if any)."""
    try:
        with open("/etc/resolv.conf") as current:
            loopback = any(line.split()[1:2] and line.split()[1].startswith("127.")
                           for line in current if line.startswith("nameserver"))
    except OSError:
        loopback = True  # none, or a link to a file the sandbox does not have
    if not loopback:
        return
    target = os.path.realpath("/etc/resolv.conf")
    if not os.path.isfile(target):  # a dangling link (to /run/systemd/...): its folder made
        os.makedirs(os.path.dirname(target), exist_ok=True)
        _mount("tmpfs", os.path.dirname(target), "tmpfs", MS_NOSUID | MS_NODEV, "size=64k")
        with open(target, "w") as out:
            out.write(f"nameserver {SLIRP_DNS}\n")
        return
    own = "/tmp/.resolv.conf"
    with open(own, "w") as out:
        out.write(f"nameserver {SLIRP_DNS}\n")
    _mount(own, target, None, MS_BIND)
    os.unlink(own)


SANDBOX_PATH = ("/usr/local/bin", "/usr/local/sbin", "/usr/bin", "/usr/sbin", "/bin", "/sbin")


def _sandbox_path() -> str:
    """PATH as the sandbox has it: the env's bin/ and the system's folders, in the order the
    runner gave; the rest of the runner's PATH (~/.cargo/bin, a checkout's .venv) is not in
    the sandbox, and names the host's folders."""
    own = os.path.join(sys.prefix, "bin")
    return os.pathsep.join(folder for folder in os.environ.get("PATH", "").split(os.pathsep)
                           if folder == own or folder in SANDBOX_PATH)


_NAMESPACE_FORKS: list[bool] = []  # whether this server may fork into new pid namespaces


def _fork_in_pid_namespace() -> tuple[int, bool]:
    """`os.fork`, the child made pid 1 of a new pid namespace (True): the session's init, with
    no reaper outside it that only waits (each a copy of the whole server to make, fault in
    and end: about 7 ms of CPU a session). `unshare` moves only the children to come into the
    new namespace, so the server takes its own back (`setns`) at once for its next child.
    Where it may not (tried once, before any child depends on it), a plain fork (False): the
    child makes its namespace itself, with a reaper."""
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if not _NAMESPACE_FORKS:  # tried in a throwaway child: where `unshare` works and
            # `setns` back does not (a bubblewrap not run as root), the server's children
            # would all be born in the one new namespace, pid 1 of it the first session's
            # init: its end would kill every later session
            probe = os.fork()
            if probe == 0:
                os._exit(0 if _libc().unshare(CLONE_NEWPID) == 0
                         and _libc().setns(own, CLONE_NEWPID) == 0 else 1)
            _NAMESPACE_FORKS.append(os.waitpid(probe, 0)[1] == 0)
        if not _NAMESPACE_FORKS[0]:
            return os.fork(), False
        _check(_libc().unshare(CLONE_NEWPID), "unshare")
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid:
                _check(_libc().setns(own, CLONE_NEWPID), "setns")
    finally:
        os.close(own)
    return pid, True


def _session_view(limits: dict[str, Any], scratch: str, uid: int | None,
                  outbound: bool = False) -> None:
    """Mounts: a fresh /proc (its /proc/sys read-only); the session folder kept, every other
    file of the run (other sessions, the fork server's socket) hidden; private /tmp and
    /dev/shm; the scratch folder a capped tmpfs of its own holding the runner's copies. What
    the fresh mounts would hide but the kernel needs (the session folder; the env and its base
    Python where they live under /tmp) is set aside first and put back after, the env
    read-only. Then the session folder is handed to the kernel's `uid`, and the root and /dev
    (bubblewrap's, shared by the env's sessions) are made read-only in this session's view:
    no session can leave anything there for the next one."""
    session, workspace = limits["session"], limits["workspace"]
    memory = int(limits.get("memory_mb") or 4096)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _read_only("/proc/sys")
    _read_only("/proc/sysrq-trigger")
    for masked in ("/proc/keys", "/proc/key-users"):  # every key of its user, by name (as
        if os.path.exists(masked):  # Docker masks them): what keyctl is refused gives away
            _mount("/dev/null", masked, None, MS_BIND)
    hidden = ("/tmp", "/dev/shm", workspace)
    kept = [(session, False)] + [
        (path, True) for path in {os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}
        if any(_inside(path, folder) for folder in hidden)]
    for number, (path, _) in enumerate(kept):
        os.makedirs(f"/run/runner-kept/{number}", exist_ok=True)
        _mount(path, f"/run/runner-kept/{number}", None, MS_BIND | MS_REC)
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={memory}m,nr_inodes={TMP_INODES},mode=1777")
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={min(memory // 2, 512)}m,nr_inodes={SHM_INODES},mode=1777")
    if os.path.exists(workspace):  # a run folder outside /tmp ($TMPDIR elsewhere)
        _mount("tmpfs", workspace, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for number, (path, read_only) in enumerate(kept):
        os.makedirs(path, exist_ok=True)
        _mount(f"/run/runner-kept/{number}", path, None, MS_MOVE)
        if read_only:
            _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_REC)
    if _inside(scratch, session) and scratch != session:
        _scratch_tmpfs(scratch, int(limits.get("scratch_mb") or DEFAULT_SCRATCH_MB), uid)
    if uid is not None:
        _hand_over(session, scratch, uid)
    if outbound:
        _resolver()
    if os.path.isdir("/dev/pts"):  # a pty instance of its own (bubblewrap's is the env's)
        _mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
               "newinstance,ptmxmode=0666,mode=620")
    for path in ("/", "/dev"):
        _remount_read_only(path, MS_NOSUID)


def _read_only(path: str) -> None:
    """A bind of `path` onto itself, read-only (the mount's flags, not the file system's);
    nothing where this kernel has no such file."""
    if not os.path.exists(path):
        return
    _mount(path, path, None, MS_BIND | MS_REC)
    _remount_read_only(path, MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _remount_read_only(path: str, more: int = 0) -> None:
    """The mount at `path` made read-only, keeping the flags it has: in a user namespace that
    did not make it (a bubblewrap not run as root), nosuid, nodev, noexec and the atime flags
    are locked, and a remount that drops one is refused (as bubblewrap's --remount-ro)."""
    flags = os.statvfs(path).f_flag  # ST_* : the MS_* values, but for ST_RELATIME
    kept = flags & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)
    if flags & os.ST_RELATIME:
        kept |= MS_RELATIME
    _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept | more)


def _scratch_tmpfs(scratch: str, size_mb: int, uid: int | None) -> None:
    """The scratch folder becomes a tmpfs of `size_mb` and SCRATCH_INODES, owned by the
    kernel's `uid`, with the runner's copies of the files beside the post in it (read through
    a descriptor of the folder the tmpfs now covers; only regular files, never followed)."""
    old = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        owner = f",uid={uid},gid={uid}" if uid is not None else ""
        _mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV,
               f"size={size_mb}m,nr_inodes={SCRATCH_INODES},mode=700{owner}")
        new = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for entry in os.scandir(old):
                if entry.is_file(follow_symlinks=False):
                    _copy_at(old, new, entry.name, uid)
        finally:
            os.close(new)
    finally:
        os.close(old)


def _copy_at(source: int, target: int, name: str, uid: int | None) -> None:
    import shutil

    read = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                   dir_fd=source)
    try:
        stat = os.fstat(read)
        write = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                        | os.O_CLOEXEC, stat.st_mode & 0o777, dir_fd=target)
        with open(read, "rb", closefd=False) as src, open(write, "wb") as dst:
            shutil.copyfileobj(src, dst)
            os.utime(dst.fileno(), ns=(stat.st_atime_ns, stat.st_mtime_ns))
            if uid is not None:
                os.fchown(dst.fileno(), uid, uid)
    finally:
        os.close(read)


def _hand_over(session: str, scratch: str, uid: int) -> None:
    """What the kernel's uid may do in its session folder, on the run folder's disk: pass
    through it (0711) and read its connection file, and make its sockets (and crash file) in
    its ipc folder, the one folder it is given (the runner takes it back once the kernel is
    up: `take_back`). The scratch tmpfs is the kernel's already."""
    os.chmod(session, 0o711)
    ipc = os.path.join(session, "ipc")
    os.chown(ipc, uid, uid, follow_symlinks=False)
    with os.scandir(ipc) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                os.chmod(entry.path, 0o644, follow_symlinks=False)


def take_back(ipc: int) -> None:
    """Outside, as root, once a kernel has made its sockets (`ipc`: its folder, open): the
    folder is the runner's again, so nothing more of the kernel's is made on the run folder's
    disk (what it has made there is each bounded by RLIMIT_FSIZE), and no socket the runner
    connects to can be swapped for a link to another."""
    if os.geteuid() == 0:
        with contextlib.suppress(OSError):
            os.fchown(ipc, 0, 0)
            os.fchmod(ipc, 0o755)


def _mapped(uid: int) -> bool:
    """Whether `uid` is mapped in this user namespace besides the process's own (the
    runner ran as root and mapped `nobody` for the kernels: `mapped_userns`)."""
    try:
        with open("/proc/self/uid_map") as ranges:
            return os.getuid() == 0 and any(
                int(first) <= uid < int(first) + int(count) and int(first) != os.getuid()
                for first, _, count in (line.split() for line in ranges))
    except (OSError, ValueError):
        return False


def mapped_userns() -> int:
    """As root, outside every sandbox: a user namespace in which uid and gid 0 are the host's
    root (the fork server's setup reads root's files) and KERNEL_UID is the host's `nobody`
    (the kernels), as an open descriptor for bubblewrap's `--userns`. bubblewrap's own
    `--unshare-user` maps only the caller: run as root, a kernel would be host root."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    unshare = _libc().unshare  # resolved before the fork: the child calls nothing else
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(done_w)
            os.write(ready_w, b"1" if unshare(CLONE_NEWUSER) == 0 else b"0")
            os.read(done_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise OSError("sandbox: cannot make a user namespace")
        ranges = f"0 0 1\n{KERNEL_UID} {KERNEL_UID} 1\n"
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{name}", "w") as out:
                out.write(ranges)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(done_w)
        os.waitpid(pid, 0)


def with_userns(args: list[str]) -> tuple[list[str], list[int]]:
    """bubblewrap's arguments as `sandbox.outer_args` writes them, and the descriptors to pass
    it: run as root, its `--unshare-user` becomes `--userns FD` of `mapped_userns`."""
    if os.geteuid() != 0 or "--unshare-user" not in args:
        return args, []
    fd = mapped_userns()
    os.set_inheritable(fd, True)
    at = args.index("--unshare-user")
    return [*args[:at], "--userns", str(fd), *args[at + 1:]], [fd]


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _init(kernel: int) -> None:
    """Pid 1 of the session: reaps orphans; when the kernel ends, ends with its status (and
    with it, the namespace and everything left in it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        pid, status = os.wait()
        if pid == kernel:
            _exit_as(status)


def _exit_like(child: int) -> None:
    """The reaper: wait for the session's init, exit with its status."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_as(os.waitpid(child, 0)[1])


def _exit_as(status: int) -> None:
    """Exit with a child's wait status: its exit code, or 128 + the signal that killed it."""
    code = os.waitstatus_to_exitcode(status)
    os._exit(128 - code if code < 0 else code)


def _drop_capabilities(uid: int | None = None) -> None:
    """No capability left, in any set, and none to gain by exec (no_new_privs); with `uid`,
    this process becomes that user and group, with no supplementary groups (root's would
    stay otherwise) first."""
    import ctypes

    libc = _libc()
    with open("/proc/sys/kernel/cap_last_cap") as last:
        for cap in range(int(last.read()) + 1):
            libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    libc.prctl(PR_CAP_AMBIENT, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        # a changed uid leaves the process undumpable: its /proc/self (fd/, environ, and so
        # /dev/stdout) would be root's. It is no more than any process of this uid now.
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    _check(libc.capset(ctypes.byref(Header(0x20080522, 0)), (Data * 2)()), "capset")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no dump to a host's core_pattern pipe
    _seccomp()


# Syscalls a kernel may not make (Docker's default profile refuses them too): the keyring
# calls (keyrings are not namespaced: the runner's session keyring, and every `nobody`
# process's user keyring, would be a kernel's to read and to leave keys in) and new user
# namespaces (in which a process has every capability again: the kernel's attack surface for
# local privilege escalation). Numbers by architecture: (AUDIT_ARCH, add_key, request_key,
# keyctl, unshare, clone, clone3, fallocate). Every other ABI's calls (i386's int 0x80, x32)
# are refused. fallocate only with mode 0: FALLOC_FL_KEEP_SIZE allocates blocks past a
# file's size, which RLIMIT_FSIZE does not bound (the kernel's log and crash file are on the
# run folder's disk).
_SECCOMP_ARCHES = {
    "x86_64": (0xC000003E, 248, 249, 250, 272, 56, 435, 285),
    "aarch64": (0xC00000B7, 217, 218, 219, 97, 220, 435, 47),
}
CLONE_NEWUSER_FLAG = 0x10000000


def _seccomp() -> None:
    """Install the filter (`_SECCOMP_ARCHES`), after a fresh anonymous session keyring is
    joined (the runner's is left behind). Nothing where the machine is of another arch."""
    import ctypes

    found = _SECCOMP_ARCHES.get(os.uname().machine)
    if found is None:
        return
    arch, add_key, request_key, keyctl, unshare, clone, clone3, fallocate = found
    libc = _libc()
    libc.syscall(keyctl, 1, None)  # KEYCTL_JOIN_SESSION_KEYRING, anonymous: a fresh one
    allow, refuse, absent = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38  # EPERM, ENOSYS
    unsupported = 0x00050000 | 95  # EOPNOTSUPP
    program = [
        (0x20, "", "", 4),  # the arch
        (0x15, "", "absent", arch),  # another ABI: no syscall at all
        (0x20, "", "", 0),  # the syscall's number
        (0x35, "absent", "", 0x40000000),  # x32's
        (0x15, "refuse", "", add_key), (0x15, "refuse", "", request_key),
        (0x15, "refuse", "", keyctl), (0x15, "absent", "", clone3),  # glibc falls back to clone
        (0x15, "flags", "", unshare), (0x15, "flags", "", clone),
        (0x15, "mode", "", fallocate),
        (0x06, "", "", allow),
        ("mode", 0x20, "", "", 24),  # its second argument's low word: the mode
        (0x15, "", "unsupported", 0),
        (0x06, "", "", allow),
        ("flags", 0x20, "", "", 16),  # its first argument's low word: the flags
        (0x45, "refuse", "", CLONE_NEWUSER_FLAG),
        (0x06, "", "", allow),
        ("refuse", 0x06, "", "", refuse),
        ("absent", 0x06, "", "", absent),
        ("unsupported", 0x06, "", "", unsupported),
    ]
    labels = {item[0]: at for at, item in enumerate(program) if isinstance(item[0], str)}
    steps = [item[1:] if isinstance(item[0], str) else item for item in program]

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                    ("k", ctypes.c_uint32)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    def jump(at: int, label: object) -> int:
        return labels[str(label)] - at - 1 if label else 0

    filters = (Filter * len(steps))(*(Filter(int(code), jump(at, jt), jump(at, jf), int(k))
                                      for at, (code, jt, jf, k) in enumerate(steps)))
    _check(libc.prctl(22, 2, ctypes.byref(Program(len(steps), filters)), 0, 0),
           "seccomp")  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER


def _mount(source: str | None, target: str, kind: str | None, flags: int,
           data: str | None = None) -> None:
    import ctypes

    def encoded(text: str | None) -> bytes | None:
        return None if text is None else text.encode()

    _check(_libc().mount(encoded(source), target.encode(), encoded(kind), ctypes.c_ulong(flags),
                         encoded(data)), f"mount {target}")


def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        import ctypes

        error = ctypes.get_errno()
        raise OSError(error, f"sandbox: {what}: {os.strerror(error)}")


CGROUP_CONTROLLERS = ("memory", "pids")


def make_cgroups(limits: dict[str, Any], name: str | None = None) -> dict[str, int]:
    """Outside the sandbox (the launcher, or the runner): a memory and a pids cgroup for this
    kernel where they can be made (cgroup v1 hierarchies, or v2 with the controller enabled),
    each as an open `cgroup.procs` for the kernel's side to join. Memory counts shared mappings
    and tmpfs. `name` tells the kernel apart (default: this process's pid)."""
    fds = {}
    for controller, key, files in (
            ("memory", "memory_mb", ("memory.max", "memory.limit_in_bytes")),
            ("pids", "processes", ("pids.max",))):
        value = int(limits.get(key) or 0)
        root = cgroup_root(controller)
        if not value or root is None:
            continue
        group = os.path.join(root, f"runner-kernel-{name or os.getpid()}")
        with contextlib.suppress(OSError):
            os.makedirs(group, exist_ok=True)
            written = False
            for setting in files:
                with contextlib.suppress(OSError), open(os.path.join(group, setting),
                                                        "w") as out:
                    out.write(str(value * 2**20 if controller == "memory" else value))
                    written = True
            if written:
                fds[controller] = os.open(os.path.join(group, "cgroup.procs"), os.O_WRONLY)
    return fds


def join_cgroups(fds: dict[str, int]) -> list[str]:
    """Move this process (and so all it starts) into the cgroups opened outside (controller ->
    its open `cgroup.procs`); the controllers joined."""
    joined = []
    for controller, fd in fds.items():
        with contextlib.suppress(OSError):
            os.write(fd, b"0")
            joined.append(controller)
        os.close(fd)
    return joined


def cgroup_root(controller: str) -> str | None:
    """Where this process may make a child cgroup with `controller`: its own v1 cgroup of that
    hierarchy, or the v2 root with the controller enabled."""
    with contextlib.suppress(OSError):
        with open("/proc/self/cgroup") as own:
            for line in own:
                _, names, path = line.rstrip("\n").split(":", 2)
                if controller in names.split(","):
                    folder = os.path.join("/sys/fs/cgroup", controller, path.lstrip("/"))
                    if os.access(folder, os.W_OK):
                        return folder
        with open("/sys/fs/cgroup/cgroup.subtree_control") as controls:
            if controller in controls.read().split() and os.access("/sys/fs/cgroup", os.W_OK):
                return "/sys/fs/cgroup"
    return None


def without_network() -> bool:
    """Move this process into a network namespace of its own with only loopback, up: it can
    serve and call 127.0.0.1, and reach nothing else. False where that is not permitted."""
    if _libc().unshare(CLONE_NEWNET) != 0:
        return False
    _loopback_up()
    return True


def _loopback_up() -> None:
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        flags = 0x1 | 0x8 | 0x40  # IFF_UP | IFF_LOOPBACK | IFF_RUNNING
        fcntl.ioctl(probe, 0x8914, struct.pack("16sH14x", b"lo", flags))  # SIOCSIFFLAGS


def plain(argv: list[str], sandbox: str | None = None) -> None:
    """A kernel started from scratch, with the same limits as a forked one. In the sandbox:
    this process joins the kernel's cgroups and becomes bubblewrap (its arguments are in the
    file `sandbox`), which runs `session` inside. Without: it ends its process group (itself
    and whatever it started) when the runner is gone."""
    if sandbox is not None:
        limits = json.loads(os.environ.get("RUNNER_KERNEL_LIMITS", "{}"))
        # `session`, inside, applies the rlimits: it learns which cgroups were joined here
        joined = join_cgroups(make_cgroups(limits))
        os.environ["RUNNER_KERNEL_LIMITS"] = json.dumps({**limits, "joined": joined})
        with open(sandbox) as args_file:
            args, _ = with_userns(json.load(args_file))  # its descriptor is inherited
        os.execv(args[0], [*args, "session", *argv])
    limits = json.loads(os.environ.pop("RUNNER_KERNEL_LIMITS", "{}"))
    apply_limits(limits)
    threading.Thread(target=_watch, args=(os.getppid(),), daemon=True).start()
    _run_kernel(argv, limits)


def session(argv: list[str]) -> None:
    """Inside bubblewrap, for a kernel started from scratch: its own sandbox, then the kernel."""
    limits = json.loads(os.environ.pop("RUNNER_KERNEL_LIMITS", "{}"))
    enter_session(limits)
    apply_rlimits(limits, limits.get("joined", []))
    _run_kernel(argv, limits)


def _become_kernel(request: dict[str, Any], fds: list[int], init: bool) -> None:
    """This child becomes the session's kernel (`init`: it is pid 1 of a new pid namespace
    already, and forks the kernel as pid 2)."""
    os.setsid()
    for target, fd in zip((0, 1, 2), fds[:3], strict=True):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    limits = json.loads(os.environ.pop("RUNNER_KERNEL_LIMITS", "{}"))  # the runner's, not the
    # snippets': it names the run's folders
    if limits.get("sandbox"):
        joined = join_cgroups(dict(zip(request.get("cgroups", []), fds[3:], strict=False)))
        enter_session(limits, forked=init)  # returns in the kernel, pid 2
        apply_rlimits(limits, joined)
    else:  # no sandbox here: the limits of old, and a watch on the launcher
        apply_limits(limits)
        threading.Thread(target=_watch, args=(request["launcher"],), daemon=True).start()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    _run_kernel(request["argv"], limits)
    os._exit(0)


def _run_kernel(argv: list[str], limits: dict[str, Any]) -> None:
    """Become the kernel, its environment given the post's own variables (runner:env-var):
    only here, in the sandbox, past every limit, where nothing of the runner reads them."""
    os.environ.update(limits.get("variables", {}))
    sys.argv = ["ipykernel_launcher", *argv]
    from ipykernel.kernelapp import IPKernelApp  # type: ignore[import-not-found]

    config = _kernel_config(argv)
    if config is None:
        IPKernelApp.launch_instance()
        return
    # traitlets' command-line parser is built from every configurable trait of every class
    # (a third of a kernel's start); the arguments a kernel gets are read here instead, each
    # value converted by its trait as the parser's would be (DeferredConfigString).
    app = IPKernelApp.instance(config=config)
    app.parse_command_line = lambda argv=None: None
    app.initialize([])
    app.start()


def _kernel_config(argv: list[str]) -> Any:
    """`-f FILE` and `--Class.trait=value` as a traitlets Config; None for anything else."""
    from traitlets.config import Config
    from traitlets.config.loader import DeferredConfigString

    config, rest = Config(), list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "-f" and rest:
            config.IPKernelApp.connection_file = DeferredConfigString(rest.pop(0))
            continue
        name, equals, value = arg.removeprefix("--").partition("=")
        owner, dot, trait = name.partition(".")
        if not (arg.startswith("--") and equals and dot and owner.isidentifier()
                and trait.isidentifier()):
            return None
        config[owner][trait] = DeferredConfigString(value)
    return config


def _watch(parent: int) -> None:
    """End this kernel and its process group when the process that stands for it (the
    launcher, or the runner itself) is gone."""
    while True:
        time.sleep(0.2)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os.killpg(0, signal.SIGKILL)


def launch(path: str, argv: list[str], sandbox: str | None = None) -> None:
    limits = json.loads(os.environ.get("RUNNER_KERNEL_LIMITS", "{}"))
    cgroups = make_cgroups(limits) if sandbox is not None else {}
    try:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(path)
        request = {"cwd": os.getcwd(), "env": dict(os.environ), "argv": argv,
                   "launcher": os.getpid(), "cgroups": list(cgroups)}
        socket.send_fds(client, [b"R"], [0, 1, 2, *cgroups.values()])
        client.sendall(json.dumps(request).encode() + b"\n")
        reader = client.makefile("r")
        pid = json.loads(reader.readline())["pid"]
    except (OSError, ValueError, KeyError):  # no server: a kernel from scratch, same limits
        for fd in cgroups.values():
            os.close(fd)
        plain(argv, sandbox)
        return
    for fd in cgroups.values():
        os.close(fd)
    if sandbox is None:  # in the sandbox, interrupts come as messages; the server sees us go
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(signum, lambda s, _frame: _forward(pid, s))
    threading.Thread(target=_orphaned, args=(None if sandbox else pid, os.getppid()),
                     daemon=True).start()
    line = reader.readline()
    status = json.loads(line)["status"] if line else 1
    sys.exit(status if status >= 0 else 128 - status)


def _orphaned(pid: int | None, parent: int) -> None:
    """The runner died without stopping this kernel (SIGKILL, a crash): stop it here (in the
    sandbox, the server stops it when this launcher is gone)."""
    while os.getppid() == parent:
        time.sleep(0.2)
    if pid is not None:
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


def _sandbox_option(args: list[str]) -> tuple[str | None, list[str]]:
    """`--sandbox FILE` (bubblewrap's arguments) ahead of the kernel's own arguments."""
    if args[:1] == ["--sandbox"]:
        return args[1], args[2:]
    return None, args


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "can-isolate":
        sys.exit(0 if without_network() else 1)
    if command == "can-sandbox":  # run inside bubblewrap: can a session's namespaces be made?
        _check(_libc().unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
                               | CLONE_NEWNET), "unshare")
        sys.exit(0)
    if command == "serve":
        serve(sys.argv[2], sys.argv[3:])
    elif command == "plain":
        plain(*reversed(_sandbox_option(sys.argv[2:])))  # type: ignore[arg-type]
    elif command == "session":
        session(sys.argv[2:])
    else:
        sandbox_file, rest = _sandbox_option(sys.argv[3:])
        launch(sys.argv[2], rest, sandbox_file)
