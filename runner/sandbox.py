"""Each kernel's sandbox: bubblewrap outside, a namespace per session inside.

Why bubblewrap (`bwrap`, Debian/Ubuntu package `bubblewrap`): it is the sandbox Flatpak runs
every desktop app in, small (one C file's worth of setup, no daemon, no setuid needed where
user namespaces are allowed), packaged everywhere, and it builds a mount tree from nothing, so
what a kernel sees is an allow-list, not a deny-list. firejail is setuid and large; nsjail and
minijail are not packaged in Debian stable; docker and podman need a daemon or an image.

The layers, from the outside in:
1. `outer_args`: one bubblewrap sandbox per env and run, for the env's fork server (or a kernel
   started from scratch): a user namespace (capabilities only inside it), its own pid, ipc and
   uts namespaces, `--die-with-parent`, `--new-session` (no TIOCSTI into the runner's
   terminal). Mounted: the system (`/usr`, `/etc`, ...) and the env and its base Python
   read-only (the base Python's own site-packages hidden), a fresh /proc and /dev, /sys
   read-only, and the run's folder. Not mounted at all: the project, the posts, the execution
   cache, the uv cache, HOME and every other user file.
2. `forkserver.enter_session`, in each kernel (forked or not): new mount, pid, ipc, uts and
   (unless the post opts in) network namespaces; only its own session folder of the run's
   folder kept (scratch and connection files); private size-capped /tmp and /dev/shm (HOME is
   /tmp/home); all capabilities dropped, no_new_privs. The kernel runs as pid 2 under a small
   init (a forked kernel's init is forked by the server straight into the new pid namespace;
   one started from scratch has a reaper outside); when the kernel, its init (or reaper) or
   the runner goes, the namespace and all in it goes.
3. Cgroups (memory, pids) made by the kernel's launcher outside the sandbox where the machine
   allows, joined by an open `cgroup.procs`; otherwise rlimits only (`limits_line`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from runner import forkserver
from runner.envs import BuiltEnv

FORKSERVER = Path(forkserver.__file__)
INSIDE = "/run/runner/forkserver.py"  # where the sandbox sees the fork server's script
SYSTEM = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc")
OUTER_TMP_MB = 64  # the fork server's own /tmp; each kernel gets its own
SYSTEM_PATH = forkserver.SANDBOX_PATH  # the system's own PATH folders
INSTALLERS = ("pip", "pip3", "pip3.*", "uv", "uvx", "conda", "mamba", "micromamba", "pipx")
NO_INSTALL = Path(__file__).with_name("no-install.sh")


@dataclass(frozen=True)
class Sandbox:
    """Whether kernels can be sandboxed here, and if not, why."""

    bwrap: str | None
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.bwrap is not None


def outer_args(bwrap: str, env: BuiltEnv, workspace: Path) -> list[str]:
    """bubblewrap's command line for the env's sandbox, up to the command (the env's Python
    and the fork server's script, as the sandbox sees them). Run as root, its `--unshare-user`
    is to become `--userns FD` (`forkserver.with_userns`: the kernels are not host root). The
    script is the run's copy (`run_copy`): a bind's source shows in /proc/self/mountinfo, and
    the checkout's path is nothing a snippet needs."""
    args = [bwrap, "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--die-with-parent", "--new-session", "--cap-add", "ALL",
            # first: the binds below may lie under /tmp (an env cache in a temp folder)
            "--size", str(OUTER_TMP_MB * 2**20), "--tmpfs", "/tmp"]
    base = base_prefix(env)
    args += _traversable([base, env.prefix, workspace, Path(INSIDE)])
    for name in SYSTEM:
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    if not any(base.is_relative_to(Path("/") / name) for name in SYSTEM):
        args += ["--ro-bind", str(base), str(base)]
    for site in sorted(base.glob("lib/python3*/site-packages")):  # the host's packages
        args += ["--tmpfs", str(site)]
    for tool in installers(base):  # the host's installers: there, but they only say why not
        args += ["--ro-bind", str(run_copy(workspace, NO_INSTALL)), str(tool)]
    args += ["--ro-bind", str(env.prefix), str(env.prefix),
             "--proc", "/proc", "--dev", "/dev", "--ro-bind", "/sys", "/sys",
             # for slirp4netns, the way out of a session granted the network (no kernel can
             # make a device of it: that takes CAP_NET_ADMIN)
             "--dev-bind-try", "/dev/net/tun", "/dev/net/tun",
             "--bind", str(workspace), str(workspace),
             "--ro-bind", str(run_copy(workspace, FORKSERVER)), INSIDE,
             "--", str(env.python), INSIDE]
    return args


def _traversable(paths: list[Path]) -> list[str]:
    """The folders bubblewrap makes on the way to its binds (copying a host folder's mode, as
    /root's 0700), made 0755 first: a kernel that is not root must reach the env and its
    session folder. They hold nothing but the binds."""
    above = {parent for path in paths for parent in path.parents
             if parent not in (Path("/"), Path("/tmp"))
             and not any(parent.is_relative_to(Path("/") / name) for name in SYSTEM)}
    args = []
    for folder in sorted(above, key=lambda p: (len(p.parts), str(p))):
        args += ["--perms", "0755", "--dir", str(folder)]
    return args


def run_copy(workspace: Path, source: Path) -> Path:
    """A file of the runner's (the fork server's script, the installers' stand-in), copied
    into the run's folder once, mode kept: binds show their source in /proc/self/mountinfo."""
    copy = workspace / source.name
    if not copy.exists():
        shutil.copy(source, copy)
    return copy


def installers(base: Path) -> list[Path]:
    """pip, uv and the like in the system's own PATH folders and the base Python's bin/ (the
    env has none of its own)."""
    found: set[Path] = set()
    for folder in (*SYSTEM_PATH, str(base / "bin")):
        if Path(folder).is_symlink():  # /bin -> usr/bin: seen there
            continue
        for pattern in INSTALLERS:  # a link is covered by covering what it points to
            found |= {p.resolve() for p in Path(folder).glob(pattern) if p.resolve().is_file()}
    return sorted(found)


def base_prefix(env: BuiltEnv) -> Path:
    """The Python installation the env's interpreter belongs to (pyvenv.cfg's `home`)."""
    with open(env.prefix / "pyvenv.cfg", encoding="utf-8") as config:
        for line in config:
            key, _, value = line.partition("=")
            if key.strip() == "home":
                return Path(value.strip()).parent
    return Path(sys.base_prefix)


def probe(env: BuiltEnv, workspace: Path) -> Sandbox:
    """Try it once (per env and run): a sandbox in which a session's namespaces can be made."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return Sandbox(None, "bubblewrap is not installed (apt-get install bubblewrap)")
    args, fds = forkserver.with_userns(outer_args(bwrap, env, workspace))
    try:
        done = subprocess.run([*args, "can-sandbox"], capture_output=True, text=True,
                              timeout=60, pass_fds=fds)
    finally:
        for fd in fds:
            os.close(fd)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return Sandbox(None, f"bubblewrap cannot make a sandbox here ({why})")
    return Sandbox(bwrap)


def write_args(bwrap: str, env: BuiltEnv, workspace: Path) -> Path:
    """The env's bubblewrap command line in a file of the run's, for its kernels' launcher."""
    path = workspace / f"{env.spec.name}.sandbox.json"
    path.write_text(json.dumps(outer_args(bwrap, env, workspace)), encoding="utf-8")
    return path


def limits_line() -> str:
    """How memory and processes are bounded on this machine."""
    kinds = [f"{name} cgroup" if forkserver.cgroup_root(name) else
             {"memory": "RLIMIT_DATA (shared memory and tmpfs not counted)",
              "pids": "RLIMIT_NPROC (not obeyed by root)"}[name]
             for name in forkserver.CGROUP_CONTROLLERS]
    return "kernel limits: memory by " + kinds[0] + ", processes by " + kinds[1]
