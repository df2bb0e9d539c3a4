"""The sandbox's holes of issue 20, caused for real from inside snippets: what the snippet saw,
and the host afterwards (its sysctls, the posts, the later sessions of the same env, the disk).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from runner import forkserver
from runner.config import Config
from runner.run import Options, run_posts
from tests.conftest import FIXTURES, ROOT
from tests.test_sandbox import needs_sandbox

HOLES = FIXTURES / "sandbox" / "holes"
AS_ROOT = os.geteuid() == 0


def copied(tmp_path: Path, *names: str) -> list[Path]:
    for name in ("data.csv", *names):
        shutil.copy(HOLES / name, tmp_path / name)
    return [tmp_path / name for name in names]


def stdout(run: object, post: Path) -> str:
    snippets = [r for r in run.snippets if r.snippet.path == str(post)]  # type: ignore[attr-defined]
    assert snippets and all(r.status == "passed" for r in snippets), [
        r.error for r in snippets if r.error]
    return "".join(r.output.stdout for r in snippets)


def sysctl(name: str) -> str:
    return Path(f"/proc/sys/kernel/{name}").read_text()


@pytest.mark.kernel
@needs_sandbox
@pytest.mark.parametrize("warm", [True, False])
def test_the_kernel_is_not_host_root_and_cannot_write_sysctls(
        tmp_path: Path, project: Config, warm: bool) -> None:
    (post,) = copied(tmp_path, "host-root.md")
    shutil.copy(post, tmp_path / "again.md")  # two sessions: the warm one forks its kernels
    before = {name: sysctl(name) for name in ("printk_ratelimit_burst", "core_pattern")}
    try:
        run = run_posts([post, tmp_path / "again.md"], project,
                        Options(cache=False, warm=warm, require_sandbox=True))
    finally:  # where the sandbox failed, the host's value is put back
        after = {name: sysctl(name) for name in before}
        if after["printk_ratelimit_burst"] != before["printk_ratelimit_burst"]:
            Path("/proc/sys/kernel/printk_ratelimit_burst").write_text(
                before["printk_ratelimit_burst"])
    seen = stdout(run, post)
    for name in ("printk_ratelimit_burst", "core_pattern", "hostname"):
        assert f"{name} refused" in seen, seen
    assert "WRITTEN" not in seen
    assert after == before
    if AS_ROOT:  # the runner is root: its kernels are not (nobody, no groups)
        assert f"uid {forkserver.KERNEL_UID} gid {forkserver.KERNEL_UID} groups []" in seen
        assert f"{forkserver.KERNEL_UID} {forkserver.KERNEL_UID} 1" in seen  # nobody is nobody
    else:
        assert f"uid {os.getuid()} " in seen


@pytest.mark.kernel
@needs_sandbox
def test_a_session_leaves_nothing_for_the_next_of_its_env(
        tmp_path: Path, project: Config) -> None:
    tamper, *later = copied(tmp_path, "a-tamper.md", "b-after.md", "c-after.md")
    run = run_posts([tamper, *later], project,
                    Options(cache=False, jobs=1, require_sandbox=True))
    attempts = stdout(run, tamper)
    assert "DONE" not in attempts, attempts
    assert attempts.count("refused") == 7
    for post in later:  # forked from the same server after the first: all as it was
        seen = stdout(run, post)
        assert seen.startswith("shell works\ndev stdout is ")
        assert seen.endswith("\nleft behind: []\nbin is usr/bin\n"), seen
        assert "/dev/null" not in seen


@pytest.mark.kernel
@needs_sandbox
def test_scratch_is_a_capped_file_system_and_the_disk_is_untouched(
        tmp_path: Path, project: Config) -> None:
    (post,) = copied(tmp_path, "fill-disk.md")
    free = shutil.disk_usage(tmp_path).free
    run = run_posts([post], project, Options(cache=False, require_sandbox=True))
    seen = stdout(run, post)
    assert (f"scratch cap {forkserver.DEFAULT_SCRATCH_MB} MB, {forkserver.SCRATCH_INODES} "
            "inodes") in seen
    assert "data beside the post: x,y" in seen  # the copies are in the capped scratch
    assert "fallocate 3 GiB: refused EFBIG" in seen, seen  # RLIMIT_FSIZE, a file at most
    assert "3 x 1000 MiB: refused ENOSPC after 1000 MiB" in seen, seen  # the tmpfs's size
    assert "files: refused ENOSPC after many" in seen, seen
    assert "<tmp> inodes capped: True" in seen  # /tmp, made portable
    assert "grow the crash file: refused EFBIG" in seen  # RLIMIT_FSIZE
    assert "blocks past its size: refused ENOTSUP" in seen, seen  # seccomp: mode 0 only (95)
    if AS_ROOT:  # the runner took the kernel's ipc folder back once the kernel was up
        for what in ("a file in ..", "a file in ../ipc", "a folder in ../ipc",
                     "a socket swapped"):
            assert f"{what} refused EACCES" in seen, seen
    # not 3 GiB gone (one-sided, with room: other work on the machine frees and fills too)
    assert free - shutil.disk_usage(tmp_path).free < 2**30


@pytest.mark.kernel
@needs_sandbox
def test_the_kernel_sees_neither_the_checkout_nor_the_runner_variables(
        tmp_path: Path, project: Config) -> None:
    (post,) = copied(tmp_path, "paths.md")
    paths = {"checkout": str(ROOT), "post folder": str(tmp_path),
             "execution cache": str(project.cache_dir)}
    (tmp_path / "paths.json").write_text(json.dumps(paths))
    seen = stdout(run_posts([post], project, Options(cache=False, require_sandbox=True)), post)
    for name in paths:
        assert f"{name} in mountinfo: False in environ: False" in seen, seen
    assert "runner variables: []" in seen


@pytest.fixture
def granted(tmp_path: Path) -> Path:
    """A project of its own (the same envs) that grants the network to posts/net-*.md."""
    shutil.copytree(ROOT / "envs", tmp_path / "envs")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.runner]\nallow-network = ["posts/net-*.md"]\n')
    (tmp_path / "posts").mkdir()
    return tmp_path


@pytest.mark.kernel
@needs_sandbox
@pytest.mark.skipif(not forkserver.outbound_available(), reason="slirp4netns is not installed "
                    "(apt-get install slirp4netns): a granted network cannot be tested here")
@pytest.mark.parametrize("warm", [True, False])
def test_a_granted_network_is_a_way_out_never_the_hosts_loopback(
        granted: Path, warm: bool) -> None:
    from http.server import HTTPServer, SimpleHTTPRequestHandler
    from threading import Thread

    from runner.config import load

    server = HTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)  # the host's own service
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        for name in ("net-granted.md", "net-again.md", "refused.md"):
            shutil.copy(HOLES / "network.md", granted / "posts" / name)
        (granted / "posts" / "port.txt").write_text(str(server.server_port))
        posts = sorted((granted / "posts").glob("*.md"))
        run = run_posts(posts, load(granted), Options(cache=False, warm=warm,
                                                       require_sandbox=True))
    finally:
        server.shutdown()
    outcomes = {Path(o.path).name: o for o in run.posts}
    assert outcomes["refused.md"].status == "error"  # not granted: asks in vain
    assert "does not grant it" in (outcomes["refused.md"].error or "")
    seen = stdout(run, granted / "posts" / "net-granted.md")
    assert "host loopback 127.0.0.1: refused" in seen  # its own loopback, not the host's
    assert "host loopback 10.0.2.2: refused" in seen, seen  # --disable-host-loopback
    assert "a route out: True" in seen
    if "registry:" in seen and "registry: reached" not in seen:
        pytest.skip(f"the registry cannot be reached from here ({seen})")


@pytest.mark.kernel
@needs_sandbox
def test_no_keyring_no_shared_ptys_no_new_user_namespace(tmp_path: Path, project: Config) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(250, 1, b"runner-test-ring") < 0:  # a session keyring of this test's own
        pytest.skip("no keyrings on this machine")
    try:
        assert libc.syscall(248, b"user", b"runner-test-secret", b"hunter2", 7, -3) > 0
        first, second = copied(tmp_path, "keys-ptys.md")[0], tmp_path / "again.md"
        shutil.copy(first, second)
        run = run_posts([first, second], project,  # side by side, forked from one server
                        Options(cache=False, jobs=2, require_sandbox=True))
        listed = Path("/proc/keys").read_text()
    finally:
        libc.syscall(250, 1, None)  # a fresh anonymous one again
    for post in (first, second):
        seen = stdout(run, post)
        assert "search the session keyring: -1 Operation not permitted" in seen, seen
        assert "add a key to nobody's keyring: -1 Operation not permitted" in seen
        assert "runner's key listed: False" in seen
        assert "new user namespace: -1 Operation not permitted" in seen
        assert "unshare --user: True" in seen
        assert "ptys seen: ['0', 'ptmx']" in seen  # its own instance: not the other's pty
    assert "left-by-a-kernel" not in listed
