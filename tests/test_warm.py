"""Warm kernels forked from a per-env server: fast, isolated, and gone when the run ends."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.envs import kernel_env
from runner.execute import KernelSetup, run_session
from runner.markdown import parse
from runner.model import SnippetResult
from runner.plan import plan
from runner.warm import ForkServers, open_servers


@pytest.fixture
def servers(built) -> Iterator[ForkServers]:  # type: ignore[no-untyped-def]
    pool = open_servers()
    env = built("sklearn")
    pool.start(env, kernel_env(env))
    yield pool
    pool.close()


def run(servers: ForkServers, built, project, *codes: str) -> list[list[SnippetResult]]:  # type: ignore[no-untyped-def]
    """Each code is its own post (own session), run one after another from the same server."""
    async def main() -> list[list[SnippetResult]]:
        await servers.ready("sklearn")
        out = []
        for code in codes:
            [session] = plan(parse("p.md", f"```python runner:env=sklearn\n{code}\n```\n"),
                             project.envs)
            out.append(list(await run_session(session, built("sklearn"),
                                              KernelSetup(30, servers.kernels_dir("sklearn")))))
        return out
    return asyncio.run(main())


@pytest.mark.kernel
def test_kernels_are_forked_from_the_server_in_the_env(servers, built, project) -> None:  # type: ignore[no-untyped-def]
    code = ("import os, sys\nprint(sys.prefix[::-1])\n"  # as it is, not recorded portably
            "print(open(f'/proc/{os.getppid()}/cmdline').read().split(chr(0))[2])")
    [[result]] = run(servers, built, project, code)
    assert result.status == "passed", result.error
    prefix, parent = result.output.stdout.splitlines()
    prefix = prefix[::-1]
    assert Path(prefix).resolve() == built("sklearn").prefix.resolve()
    assert parent == "serve"  # the kernel's parent is the fork server, not a fresh launcher


@pytest.mark.kernel
def test_sessions_share_no_state(servers, built, project) -> None:  # type: ignore[no-untyped-def]
    first, second = run(
        servers, built, project,
        "import json, numpy\njson.leaked = True\nprint(numpy.random.random())",
        "import json, numpy\nprint(hasattr(json, 'leaked'))\nprint(numpy.random.random())")
    assert second[0].output.stdout.splitlines()[0] == "False"
    assert first[0].output.stdout != second[0].output.stdout.splitlines()[1] + "\n"


@pytest.mark.kernel
def test_timeout_and_dead_kernel_in_a_forked_kernel(servers, built, project) -> None:  # type: ignore[no-untyped-def]
    async def main() -> list[SnippetResult]:
        await servers.ready("sklearn")
        text = ("```python runner:env=sklearn runner:timeout=2\nimport time\ntime.sleep(60)\n```\n"
                "\n```python\nprint('after')\n```\n")
        [session] = plan(parse("p.md", text), project.envs)
        slow = list(await run_session(session, built("sklearn"),
                                      KernelSetup(30, servers.kernels_dir("sklearn"))))
        dead = "```python runner:env=sklearn\nimport os\nos._exit(3)\n```\n"
        [session] = plan(parse("p.md", dead), project.envs)
        return slow + list(await run_session(session, built("sklearn"),
                                             KernelSetup(30, servers.kernels_dir("sklearn"))))
    slow, after, dead = asyncio.run(main())
    assert slow.error is not None and slow.error.message == "timed out after 2 s at line 3"
    assert after.status == "skipped"
    assert dead.error is not None and dead.error.type == "DeadKernelError"


@pytest.mark.kernel
def test_no_process_survives_the_run(built, project) -> None:  # type: ignore[no-untyped-def]
    pool = open_servers()
    env = built("sklearn")
    pool.start(env, kernel_env(env))
    code = ("import os, subprocess\n"
            "child = subprocess.Popen(['sleep', '300'])\n"
            "print(os.getpid(), child.pid)")
    [[result]] = run(pool, built, project, code)
    kernel, grandchild = map(int, result.output.stdout.split())
    server = pool._servers["sklearn"].pid
    pool.close()
    for pid in (kernel, grandchild, server):
        assert not _alive(pid), pid


@pytest.mark.kernel
def test_launcher_falls_back_to_a_plain_kernel_without_a_server(built, project) -> None:  # type: ignore[no-untyped-def]
    pool = open_servers()
    env = built("sklearn")
    pool.start(env, kernel_env(env))
    os.killpg(pool._servers["sklearn"].pid, 9)
    pool._servers["sklearn"].wait()
    [[result]] = run(pool, built, project, "print('still runs')\n" + HIDDEN_RUNNER)
    assert result.status == "passed" and result.output.stdout == "still runs\nTrue True\n"
    pool.close()


# The runner's own folder is not on a kernel's sys.path (forkserver.py runs as a script from
# it): the standard library's bisect is the one imported, and the runner's modules are not.
HIDDEN_RUNNER = ("import bisect, importlib.util, sys\n"
                 "print(bisect.__file__.startswith(sys.base_prefix), "
                 "importlib.util.find_spec('warm') is None)")


@pytest.mark.kernel
def test_a_forked_kernel_sees_the_standard_library_not_the_runner(servers, built,  # type: ignore[no-untyped-def]
                                                                   project) -> None:
    [[result]] = run(servers, built, project, HIDDEN_RUNNER)
    assert result.status == "passed" and result.output.stdout == "True True\n", result


def _alive(pid: int) -> bool:
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().split(") ")[1].startswith("Z"):
                    return False  # a zombie has exited
        except FileNotFoundError:
            return False
        time.sleep(0.1)
    return True


FORKS = """
import os, sys
sys.path.insert(0, {folder!r})
import forkserver
if {refused}:
    forkserver._NAMESPACE_FORKS.append(False)  # setns refused: a fake fault (root may)
seen = []
for _ in range(2):  # the second child too: the server took its own namespace back
    read, write = os.pipe()
    pid, init = forkserver._fork_in_pid_namespace()
    if pid == 0:
        os.write(write, str(os.getpid()).encode())
        os._exit(0)
    os.close(write)
    seen.append((int(os.read(read, 20)), init))
    os.waitpid(pid, 0)
print(seen, os.readlink("/proc/self/ns/pid_for_children") == os.readlink("/proc/self/ns/pid"))
"""


@pytest.mark.parametrize("refused", [False, True])
def test_the_server_forks_each_init_into_a_new_pid_namespace_or_falls_back(
        tmp_path: Path, refused: bool) -> None:
    """Each sandboxed session's init is pid 1 of a namespace of its own, forked by the server
    (no reaper); where the server may not take its own namespace back, plain forks."""
    import ast
    import subprocess
    import sys

    import runner.forkserver

    if os.geteuid() != 0:
        pytest.skip("unshare(CLONE_NEWPID) outside a sandbox needs root here")
    folder = str(Path(runner.forkserver.__file__).parent)
    done = subprocess.run([sys.executable, "-c", FORKS.format(folder=folder, refused=refused)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    seen, same_namespace = done.stdout.rsplit(" ", 1)
    if refused:
        assert all(pid != 1 and not init for pid, init in ast.literal_eval(seen))
    else:
        assert ast.literal_eval(seen) == [(1, True), (1, True)]
    assert same_namespace.strip() == "True"  # its next child is made in its own again


def test_a_stale_run_whose_folder_holds_a_tree_3000_deep_is_swept(
        deep: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20, item 5: a killed run left a tree too deep to recurse into; the next run's sweep
    removes it (a RecursionError there stopped every later run on the machine)."""
    from runner import warm
    from tests.conftest import deep_tree

    monkeypatch.setattr(warm, "run_folder_parent", lambda: str(deep))
    stale = deep / f"{warm.RUN_PREFIX}killed"
    deep_tree(stale / "runner-session-x" / "scratch", 3000)
    (stale / ".owner").touch()
    os.utime(stale / ".owner", (0, 0))  # no run holds its lock, made long ago
    warm.sweep_stale_runs()
    assert not os.path.lexists(stale)


def test_a_run_whose_folder_holds_a_tree_3000_deep_closes(
        deep: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runner import warm
    from tests.conftest import deep_tree

    monkeypatch.setattr(warm, "run_folder_parent", lambda: str(deep))
    pool = open_servers()
    deep_tree(pool.folder / "runner-session-x", 3000)
    pool.close()
    assert not os.path.lexists(pool.folder)
