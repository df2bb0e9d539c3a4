"""The sandbox, attacked for real from inside snippets (each attack of issue 10): what the
snippet saw, and that the env, the cache, the posts and the process table are unchanged."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest

from runner import envs, sandbox
from runner.config import Config
from runner.report import to_json
from runner.run import Options, run_posts
from tests.conftest import FIXTURES, ROOT

T = TypeVar("T")

BWRAP = shutil.which("bwrap")
needs_sandbox = pytest.mark.skipif(
    BWRAP is None, reason="bubblewrap is not installed (apt-get install bubblewrap): the "
                          "sandbox cannot be tested here")


def snapshot(project: Config) -> dict[str, str]:
    """What no snippet may change: each env's fingerprint, the posts, the cache's files."""
    state = {name: envs.fingerprint(envs.env_path(spec)) for name, spec in project.envs.items()
             if envs.is_built(spec)}
    state["posts"] = "".join(p.read_text() for p in sorted((ROOT / "posts").glob("*.md")))
    state["cache"] = " ".join(f"{p}:{p.read_bytes()!r}" for p in  # entries of other posts
                              sorted(project.cache_dir.glob("ab/*.json")))
    return state


def processes() -> set[str]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                found.add((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
    return found


@pytest.mark.kernel
@needs_sandbox
def test_attacks_from_a_snippet_fail_and_change_nothing(
        tmp_path: Path, project: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    post = tmp_path / "attacks.md"
    shutil.copy(FIXTURES / "sandbox" / "attacks.md", post)
    project = replace(project, cache_dir=tmp_path / "cache")
    entry = project.cache_dir / "ab" / f"{'ab' * 32}.json"  # another post's entry
    entry.parent.mkdir(parents=True)
    entry.write_text('{"key": "' + "ab" * 32 + '", "snippets": []}')
    before, text = snapshot(project), post.read_text()
    paths = {"post": str(post), "project": str(ROOT), "git config": str(ROOT / ".git/config"),
             "cache": str(project.cache_dir), "uv cache": str(Path.home() / ".cache/uv"),
             "another env": str(envs.env_path(project.envs["tensorflow"])),
             "the env's fingerprint": str(envs.env_path(project.envs["sklearn"]))
             + ".fingerprint.json", "home": str(Path.home() / ".bashrc")}
    monkeypatch.setenv("ATTACK_PATHS", json.dumps(paths))
    monkeypatch.setenv("RUNNER_TEST_SECRET", "hunter2")
    run = run_posts([post], project, Options(cache=False, passenv=("ATTACK_PATHS",),
                                             require_sandbox=True))
    seen = "".join(r.output.stdout for r in run.snippets)
    assert all(r.status == "passed" for r in run.snippets), [
        r.error.traceback[-800:] for r in run.snippets if r.error]
    assert "DONE" not in seen, seen
    for attack in ("pth", "sitecustomize", "edit sklearn", "remove sklearn"):
        # a read-only file system, or (the kernel is not root) the env's files not its own
        assert re.search(rf"{attack}: refused \((OSError, errno 30|PermissionError, errno 13)\)",
                         seen), seen
    assert "pip module: True" in seen  # the env has no pip; the host's say why not:
    assert "install: 0" not in seen and "install: 1 False" not in seen
    assert "pids seen: True my pid: 2" in seen
    assert "secret in any environ: []" in seen and "runner visible: False" in seen
    for name in paths:
        assert f"{name} visible: False" in seen
    assert "append to the post: refused (FileNotFoundError, errno 2)" in seen
    assert "setns: -1 True" in seen and "capabilities: 0000000000000000" in seen
    assert "cgroup files tried: True" in seen and "leave the cgroup: refused" in seen
    assert re.search(r"write (/usr|<python>): refused \((OSError, errno 30|PermissionError, "
                     r"errno 13)\)", seen), seen  # read-only, or (as not root) not its own;
    # <python> where the base Python is the system's (/usr, made portable)
    assert "home: ~ ['.ipython']" in seen  # /tmp/home, recorded portably; IPython's own
    assert "tmp: ['home', 'runner-run-" in seen  # and the path to its session folder
    assert "run folder holds: ['runner-session-']" in seen, seen
    assert post.read_text() == text and snapshot(project) == before


@pytest.mark.kernel
@needs_sandbox
def test_a_later_run_prints_what_the_pinned_env_prints(tmp_path: Path, project: Config) -> None:
    lock = (ROOT / "envs" / "sklearn" / "requirements.lock").read_text()
    pinned = lock.split("scikit-learn==")[1].split()[0]
    post = tmp_path / "version.md"
    post.write_text("```python runner:env=sklearn\nimport sklearn, sys\n"
                    "print(sklearn.__version__, 'sitecustomize' in sys.modules)\n```\n")
    shutil.copy(FIXTURES / "sandbox" / "attacks.md", tmp_path / "attacks.md")
    run_posts([tmp_path / "attacks.md"], project, Options(cache=False))
    run = run_posts([post], project, Options(cache=False))
    assert run.snippets[0].output.stdout == f"{pinned} False\n"


@pytest.mark.kernel
@needs_sandbox
def test_nothing_a_snippet_starts_outlives_its_session(tmp_path: Path, project: Config) -> None:
    marker = f"{time.time_ns() % 10**6}.5"
    post = tmp_path / "daemons.md"
    post.write_text(
        "```python runner:env=sklearn\nimport os, subprocess\n"
        f"subprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n"
        "if os.fork() == 0:\n    os.setsid()\n"
        f"    if os.fork() == 0:\n        os.execvp('sleep', ['sleep', '{marker}1'])\n"
        "    os._exit(0)\n"
        "os.killpg = lambda *args: None\nprint('daemons started')\n```\n\n"
        "```python runner:timeout=2\nimport re\n"  # a C call that holds the GIL past it
        "re.match(r'(a*)*b', 'a' * 64)\n```\n")
    run = run_posts([post], project, Options(cache=False))
    started, held = run.snippets
    assert started.output.stdout == "daemons started\n"
    assert held.status == "failed" and held.error is not None
    assert held.error.type == "TimeoutError"
    time.sleep(1)
    assert not [p for p in processes() if f"sleep {marker}" in p]


@pytest.mark.kernel
@needs_sandbox
def test_sessions_forked_from_one_server_cannot_see_each_other(
        tmp_path: Path, project: Config) -> None:
    code = ("```python runner:env=sklearn\nimport os, glob, time\n"
            "open('mine', 'w').write('x')\ntime.sleep(1.5)\n"
            "print(sorted(os.listdir(os.path.dirname(os.path.dirname(os.getcwd())))))\n"
            "print(glob.glob('/tmp/**/kernel.json', recursive=True) == [])\n"
            "print(len(glob.glob(os.path.dirname(os.getcwd()) + '/ipc/kernel.json')))\n```\n")
    for n in range(2):
        (tmp_path / f"p{n}.md").write_text(code)
    run = run_posts([tmp_path], project, Options(cache=False, jobs=2, warm=True))
    for result in run.snippets:
        lines = result.output.stdout.splitlines()
        assert len(eval(lines[0])) == 1  # only its own session folder
        assert lines[1:] == ["False", "1"] or lines[1:] == ["True", "1"]


@pytest.mark.kernel
@needs_sandbox
def test_the_process_limit_is_each_kernels_own(tmp_path: Path, project: Config) -> None:
    """Two kernels of one env at once, each with 100 threads under a limit of 150: each
    kernel's own tree is counted (a pids cgroup of its own), not all of the env's kernels
    together (a shared cgroup, or RLIMIT_NPROC for a user other than root: it counts the
    user's threads in the env's sandbox); 200 threads in one kernel are past its limit."""
    if "pids cgroup" not in sandbox.limits_line():
        pytest.skip(f"no pids cgroup can be made here: {sandbox.limits_line()}")
    small = replace(project, envs={**project.envs,
                                   "sklearn": replace(project.envs["sklearn"], processes=150)})
    code = ("```python runner:env=sklearn\nimport threading, time\n"
            "threads = [threading.Thread(target=time.sleep, args=(3,)) for _ in range(100)]\n"
            "for thread in threads:\n    thread.start()\n"
            "print(threading.active_count() > 100)\n```\n")
    for n in range(2):
        (tmp_path / f"p{n}.md").write_text(code)
    run = run_posts([tmp_path], small, Options(cache=False, jobs=2))
    assert [r.output.stdout for r in run.snippets] == ["True\n", "True\n"], run.snippets
    bomb = tmp_path / "p0.md"
    bomb.write_text(code.replace("range(100)", "range(200)"))
    [over] = run_posts([bomb], small, Options(cache=False)).snippets
    assert over.status == "failed" and over.error is not None, over
    assert over.error.type == "RuntimeError"  # can't start new thread: past its own limit


@pytest.mark.kernel
@needs_sandbox
def test_shared_memory_counts_against_the_memory_limit(tmp_path: Path, project: Config) -> None:
    small = replace(project, envs={**project.envs,
                                   "sklearn": replace(project.envs["sklearn"], memory_mb=512)})
    post = tmp_path / "shm.md"
    post.write_text(
        "```python runner:env=sklearn\nimport mmap\n"
        "try:\n    with open('/dev/shm/big', 'wb') as out:\n"
        "        for _ in range(1024):\n            out.write(b'x' * 2**20)\n"
        "except OSError as exc:\n    print('dev/shm full:', exc.errno)\n```\n\n"
        "```python\nbig = mmap.mmap(-1, 1536 * 2**20, flags=mmap.MAP_SHARED)\n"
        "for offset in range(0, len(big), 4096):\n    big[offset] = 1\nprint('mapped')\n```\n")
    run = run_posts([post], small, Options(cache=False))
    shm, mapped = run.snippets
    assert shm.output.stdout == "dev/shm full: 28\n"  # ENOSPC: the tmpfs is capped
    if "memory cgroup" in sandbox.limits_line():
        assert mapped.status == "failed" and mapped.error is not None
        assert mapped.error.type == "DeadKernelError"  # the OOM killer, within the cgroup
    else:
        pytest.skip(f"no memory cgroup can be made here: {sandbox.limits_line()}")


@pytest.mark.kernel
def test_require_sandbox_without_bubblewrap_exits_2(tmp_path: Path) -> None:
    post = tmp_path / "p.md"
    post.write_text("```python runner:env=sklearn\nprint(1)\n```\n")
    env = {**os.environ, "PATH": "/nonexistent"}  # no bwrap on PATH
    done = subprocess.run([sys.executable, "-m", "runner", "verify", str(post),
                           "--no-cache", "--require-sandbox"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr
    assert "no sandbox for kernels: bubblewrap is not installed" in done.stderr


def _ended(call: Callable[[], T], seconds: float, unblock: Callable[[], None]) -> T:
    """`call()`'s result, failing the test if it has not returned within `seconds` (it hangs);
    `unblock` then lets the hung call go."""
    outcome: list[T] = []
    raised: list[BaseException] = []

    def work() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # raised again in the test's thread
            raised.append(exc)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        unblock()
        pytest.fail(f"still going after {seconds:g} s: it hangs")
    if raised:
        raise raised[0]
    return outcome[0]


@pytest.mark.kernel
@needs_sandbox
def test_links_beside_a_post_give_the_kernel_nothing_of_their_targets(
        tmp_path: Path, project: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20, item 1: a committed symlink beside a post (to /proc/self/environ, to a file
    outside the post's folder such as .git/config, to a FIFO), or a FIFO itself, is not data:
    nothing of its target reaches the kernel (nor the post, nor the report), and the run
    neither reads the FIFO nor waits on it."""
    blog, outside = tmp_path / "blog" / "posts", tmp_path / "outside"
    blog.mkdir(parents=True)
    outside.mkdir()
    post = blog / "p.md"
    shutil.copy(FIXTURES / "sandbox" / "beside-links.md", post)
    (blog / "data.csv").write_text("x,y\n1,2\n")
    (outside / "config").write_text("[http]\n\textraheader = AUTHORIZATION: hunter2-token\n")
    os.mkfifo(outside / "fifo")
    os.mkfifo(blog / "pipe.csv")
    (blog / "environ.txt").symlink_to("/proc/self/environ")
    (blog / "config.txt").symlink_to("../../outside/config")
    (blog / "id_ed25519").symlink_to(outside / "config")
    (blog / "stream.csv").symlink_to(outside / "fifo")
    monkeypatch.setenv("RUNNER_TEST_SECRET", "hunter2-environ")

    def unblock() -> None:
        for fifo in (outside / "fifo", blog / "pipe.csv"):
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    run = _ended(lambda: run_posts([post], replace(project, cache_dir=tmp_path / "cache"),
                                   Options(mode="update", require_sandbox=True)), 300, unblock)
    [result] = run.snippets
    assert result.status == "passed", result.error
    assert result.output.stdout == "data.csv b'x,y\\n1,2\\n'\n"  # the only file it sees
    everything = json.dumps(to_json(run)) + post.read_text()
    assert "hunter2" not in everything
    assert run.exit_code == 0


@pytest.mark.kernel
@needs_sandbox
def test_a_tree_too_deep_to_recurse_into_is_removed_and_the_run_ends(
        tmp_path: Path, project: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20, item 5: 3000 nested folders (one of them mode 000) in a session's scratch
    folder: the run ends as usual, not in a RecursionError, and its folders are gone. The
    run's folder is made in a folder of the test's own, so that a tree left behind would
    stop no other run on the machine (their sweep of stale runs)."""
    from runner import warm

    runs = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))  # short: sockets' paths
    monkeypatch.setattr(warm, "run_folder_parent", lambda: str(runs))
    try:
        _deep_tree_run(tmp_path, project)
        assert os.listdir(runs) == []
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(runs)], check=False)


def _deep_tree_run(tmp_path: Path, project: Config) -> None:
    post = tmp_path / "deep.md"
    shutil.copy(FIXTURES / "sandbox" / "deep-tree.md", post)
    run = _ended(lambda: run_posts([post], project, Options(mode="update", cache=False,
                                                            require_sandbox=True)),
                 300, lambda: None)
    [result] = run.snippets
    assert result.status == "passed", result.error
    assert run.exit_code == 0 and run.posts[0].written
    session = Path(bytes.fromhex(result.output.stdout.strip()).decode())
    assert session.name.startswith("runner-session-")
    assert not os.path.lexists(session) and not os.path.lexists(session.parent)


@pytest.mark.kernel
@needs_sandbox
@pytest.mark.parametrize("warm", [True, False], ids=["forked", "from scratch"])
def test_a_posts_environment_variables_are_set_inside_the_sandbox_only(
        tmp_path: Path, project: Config, warm: bool) -> None:
    """runner:env-var names what the post likes: PYTHONPATH=. would, in the launcher's or
    bubblewrap's environment (outside the sandbox, in the session's folder), import the
    `sitecustomize.py` beside the post there; RUNNER_KERNEL_LIMITS would be the sandbox's
    own settings. Only the kernel, in its sandbox, gets them."""
    escaped = tmp_path / "escaped"
    (tmp_path / "sitecustomize.py").write_text(
        f"open({str(escaped)!r}, 'w').write('ran outside the sandbox')\n")
    limits = json.dumps({"sandbox": False, "network": True}).replace('"', '\\"')
    post = tmp_path / "variables.md"
    post.write_text(
        "```python runner:env=sklearn runner:env-var=PYTHONPATH=. "
        f'runner:env-var="RUNNER_KERNEL_LIMITS={limits}" runner:env-var=GREETING=hi\n'
        "import os, socket\n"
        "print(os.environ['GREETING'], os.environ['PYTHONPATH'], os.path.exists("
        f"{str(tmp_path)!r}))\n"
        "print(len(socket.if_nameindex()))\n```\n")
    run = run_posts([post], project, Options(cache=False, warm=warm))
    [result] = run.snippets
    assert result.status == "passed", result.error
    assert result.output.stdout == "hi . False\n1\n"  # loopback alone: no network granted
    assert not escaped.exists()
