"""Hostile snippets and broken posts, every fault caused for real: each is reported, nothing is
lost, nothing escapes, and the other posts still run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner import markdown, posts
from runner.errors import PostError, RunnerError
from tests.conftest import FIXTURES, ROOT, run_cli

HOSTILE = FIXTURES / "hostile"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """All hostile posts, and one good one, verified in one run."""
    folder = tmp_path_factory.mktemp("hostile") / "posts"
    shutil.copytree(HOSTILE, folder)
    (folder / "zz-good.md").write_text("```python runner:env=sklearn\nprint('fine')\n```\n")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    report = folder.parent / "report.json"
    env = {**os.environ, "RUNNER_TEST_SECRET_TOKEN": "hunter2"}
    done = subprocess.run([sys.executable, "-m", "runner", "verify", str(folder), "--no-cache",
                           "--report", str(report)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert after == before  # verify wrote nothing, and no snippet wrote here
    return folder, json.loads(report.read_text()), done.stdout


def snippets(data: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [s for s in data["snippets"] if Path(s["post"]).name == name]


@pytest.mark.kernel
def test_hang_times_out_and_the_rest_is_not_run(hostile) -> None:  # type: ignore[no-untyped-def]
    _, data, stdout = hostile
    hang, after = snippets(data, "hang.md")
    assert hang["status"] == "failed" and hang["error"]["type"] == "TimeoutError"
    assert hang["error"]["message"] == "timed out after 2 s at line 11"  # the statement running
    assert after["status"] == "skipped" and after["reason"].startswith("not run")
    assert "hang.md:11: TimeoutError: timed out after 2 s at line 11" in stdout


@pytest.mark.kernel
def test_dead_kernels_name_the_exit(hostile) -> None:  # type: ignore[no-untyped-def]
    _, data, _ = hostile
    [dead] = snippets(data, "dead-kernel.md")
    assert dead["error"]["type"] == "DeadKernelError"
    assert dead["error"]["message"].endswith("(exit status 3)")
    [segv] = snippets(data, "segfault.md")
    assert segv["error"]["type"] == "DeadKernelError"
    assert "SIGSEGV" in segv["error"]["message"]


@pytest.mark.kernel
def test_memory_bomb_fails_cleanly(hostile) -> None:  # type: ignore[no-untyped-def]
    _, data, _ = hostile
    [bomb] = snippets(data, "memory-bomb.md")
    assert bomb["status"] == "failed" and bomb["error"]["type"] == "MemoryError"
    assert bomb["error"]["post_line"] == 10


@pytest.mark.kernel
def test_fork_bomb_is_bounded(hostile) -> None:  # type: ignore[no-untyped-def]
    folder, data, _ = hostile
    [bomb] = snippets(data, "fork-bomb.md")
    assert bomb["status"] == "passed"  # the snippet caught the refusal itself
    done = run_cli("update", folder / "fork-bomb.md", "--no-cache")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{folder / 'fork-bomb.md'}: passed (output written)" in done.stdout
    [output] = recorded((folder / "fork-bomb.md").read_text())
    refused = int(output.split("fork refused after ")[1].split()[0])
    assert 0 < refused < 256  # the per-kernel process limit, far below 5000


@pytest.mark.kernel
def test_writes_stay_in_the_scratch_folder(hostile) -> None:  # type: ignore[no-untyped-def]
    folder, data, _ = hostile
    [writes] = snippets(data, "writes-files.md")
    assert writes["status"] == "passed"
    assert (folder / "data.csv").read_text() == "x,y\n1,2\n"  # the original, untouched
    assert not (folder / "results.txt").exists() and not (folder / "sub").exists()


@pytest.mark.kernel
def test_secrets_do_not_reach_kernels(hostile) -> None:  # type: ignore[no-untyped-def]
    folder, _, _ = hostile
    env = {**os.environ, "RUNNER_TEST_SECRET_TOKEN": "hunter2"}
    subprocess.run([sys.executable, "-m", "runner", "update", str(folder / "reads-secrets.md")],
                   cwd=ROOT, env=env, capture_output=True, check=True, timeout=300)
    text = (folder / "reads-secrets.md").read_text()
    assert "hunter2" not in text
    assert "```text runner:output\nNone\n[]\n```" in text


@pytest.mark.kernel
def test_forgotten_server_and_child_are_stopped(hostile) -> None:  # type: ignore[no-untyped-def]
    folder, _, _ = hostile
    assert run_cli("update", folder / "forgotten-server.md", "--no-cache").returncode == 0
    port, _child = map(int, recorded((folder / "forgotten-server.md").read_text()))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    # The pid the snippet printed is its own pid namespace's (in the sandbox): look for the
    # process itself instead.
    deadline = time.monotonic() + 5
    while [p for p in descendants(1) if "sleep 300.125" in cmdline(p)]:
        assert time.monotonic() < deadline, "the snippet's child outlived its session"
        time.sleep(0.1)


@pytest.mark.kernel
def test_network_is_off_unless_the_post_opts_in(hostile, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder, _, stdout = hostile
    if "cannot be turned off here" in stdout:
        pytest.skip("this machine cannot make network namespaces (the run said so)")
    run_cli("update", folder / "network.md", "--no-cache")
    assert "no network: gaierror" in (folder / "network.md").read_text()
    opted = tmp_path / "opted-in.md"
    text = (folder / "network.md").read_text().replace("  env: sklearn\n",
                                                       "  env: sklearn\n  network: true\n")
    opted.write_text(text)
    done = run_cli("update", opted, "--no-cache")  # a post cannot grant itself the network
    assert done.returncode == 1 and opted.read_text() == text
    assert f"{opted}:5: error: front matter asks for network: true, which this project does " \
           "not grant it" in done.stdout + done.stderr
    # granted by the project: tests/test_sandbox_holes.py


@pytest.mark.kernel
def test_other_posts_still_run(hostile) -> None:  # type: ignore[no-untyped-def]
    _, data, _ = hostile
    [good] = snippets(data, "zz-good.md")
    assert good["status"] == "passed"


@pytest.mark.kernel
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("warm", [True, False])
def test_no_process_outlives_the_runner(tmp_path: Path, how: int, warm: bool) -> None:
    """The runner itself is killed mid-run: its kernels, their children and its fork servers
    must all be gone soon after."""
    sleeper = f"sleep {300 + time.time_ns() % 1000 / 1000}"  # known by its command line
    for n in range(2):  # two sessions in one env: a fork server with warm kernels
        (tmp_path / f"p{n}.md").write_text(
            "```python runner:env=sklearn\nimport subprocess, time\n"
            f"subprocess.Popen({sleeper.split()!r})\ntime.sleep(300)\n```\n")
    command = [sys.executable, "-m", "runner", "verify", str(tmp_path), "--no-cache",
               *([] if warm else ["--no-warm"])]
    runner = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len([p for p in descendants(runner.pid) if cmdline(p).strip() == sleeper]) < 2:
        assert time.monotonic() < deadline, "the snippets never started"
        time.sleep(0.1)
    family = descendants(runner.pid)
    assert len(family) >= 4  # two kernels and their two `sleep` children at least
    runner.send_signal(how)
    runner.wait(timeout=30)
    survivors = [pid for pid in family if alive(pid, wait=10)]
    assert not survivors, [cmdline(pid) for pid in survivors]


@pytest.mark.kernel
def test_broken_posts_are_errors_and_lose_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "posts"
    folder.mkdir()
    cases = {
        "bad-utf8.md": b"# Title\n\nCaf\xe9\n",
        "bad-yaml.md": b"---\ntitle: [unclosed\n---\n\ntext\n",
        "unclosed-fence.md": b"text\n\n```python\nprint(1)\n",
        "empty.md": b"",
    }
    for name, data in cases.items():
        (folder / name).write_bytes(data)
    (folder / "folder.md").mkdir()
    (folder / "loop.md").symlink_to("loop.md")
    (folder / "huge.md").write_bytes(b"# big\n" + b"word " * (2 * 2**20))
    (folder / "zz-good.md").write_text("```python runner:env=sklearn\nprint(1)\n```\n")
    done = run_cli("update", folder, "--report", tmp_path / "r.json")
    assert done.returncode == 1
    report = {Path(p["path"]).name: p for p in json.loads((tmp_path / "r.json").read_text())
              ["posts"]}
    expected_lines = {"bad-utf8.md": 3, "bad-yaml.md": 2, "unclosed-fence.md": 3,
                      "empty.md": 1, "folder.md": None, "loop.md": None, "huge.md": None}
    for name, line in expected_lines.items():
        assert report[name]["status"] == "error", name
        assert report[name]["error_line"] == line, name
        where = f"{folder / name}:{line}" if line else str(folder / name)
        assert f"{where}: error: " in done.stdout, name
    for name, data in cases.items():
        assert (folder / name).read_bytes() == data  # nothing lost
    assert report["zz-good.md"]["status"] == "passed"  # it ran, and was written


def test_a_post_that_vanishes_before_its_write_is_an_error(tmp_path: Path) -> None:
    post = tmp_path / "gone.md"
    post.write_text("text\n")
    post.unlink()  # as if deleted while its snippets ran
    with pytest.raises(PostError) as caught:
        posts.replace(post, "text\n", "text\nmore\n")
    assert str(caught.value).startswith(f"{post}: cannot read")


@pytest.mark.parametrize("table, message", [
    ("[tool.runner]\n[tool.runner.env.nope]\n", "[tool.runner.env.nope] names no folder"),
    ("[tool.runner]\ntimeout = \"soon\"\n", "timeout must be a positive number"),
    ("[tool.runner]\ntimeout = inf\n", "timeout must be a positive number of seconds (finite)"),
    ("[tool.runner]\nenvs = 3\n", "envs must be a string"),
    ("[tool.runner\n", "cannot read"),
])
def test_bad_configuration_exits_2_with_one_line(tmp_path: Path, table: str, message: str) -> None:
    (tmp_path / "pyproject.toml").write_text(table)
    done = run_cli("verify", cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_env_without_a_lock_exits_2(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.runner]\n")
    (tmp_path / "envs" / "half").mkdir(parents=True)
    done = run_cli("verify", cwd=tmp_path)
    assert done.returncode == 2 and "has no requirements.lock" in done.stderr


@pytest.mark.kernel
def test_two_updates_at_once_never_corrupt_a_post(tmp_path: Path) -> None:
    post = tmp_path / "p.md"
    post.write_text("---\ntitle: t\n---\n\n```python runner:env=sklearn\nprint(42)\n```\n")
    command = [sys.executable, "-m", "runner", "update", str(post), "--no-cache"]
    both = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
            for _ in range(2)]
    codes = [p.wait(timeout=120) for p in both]
    assert 0 in codes
    text = post.read_text()
    assert text.count("*Verified output:*") == 1 and "\n42\n" in text
    assert run_cli("verify", post).returncode == 0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes_read_as_a_post_raise_only_post_errors(data: bytes) -> None:
    """The way a post comes in: bytes on disk, decoded by posts.read (not UTF-8 is a
    PostError at the line of the bad byte), then parsed."""
    path = Path(tempfile.mkdtemp()) / "fuzz.md"
    path.write_bytes(data)
    try:
        markdown.parse("fuzz.md", posts.read(path))
    except RunnerError as exc:
        assert exc.path in ("fuzz.md", str(path)) and (exc.line is None or exc.line >= 1)
    finally:
        shutil.rmtree(path.parent)


MARKDOWN_BITS = st.sampled_from([
    "```python\n", "```\n", "~~~py\n", "````\n", "---\n", "key: [\n", "> ", "- ", "  ",
    "<!-- runner:hidden\n", "-->\n", "{/* runner:hidden\n", "*/}\n", "*Verified output:*\n",
    "```text runner:output\n", "[//]: # (end of verified output)\n", "print(1)\n",
    "runner:timeout=0 ", "runner:bogus ", "\r\n", "\n", "\ufeff", "x = 1\n", "<details>\n",
])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(MARKDOWN_BITS, MARKDOWN_BITS, st.text(max_size=12)), max_size=30))
def test_random_markdown_raises_only_runner_errors(bits: list[str]) -> None:
    """Markdown's own pieces mixed with any text (every Unicode character, lone \r,
    NUL): the parser returns a post whose snippets lie inside it, or a RunnerError."""
    text = "".join(bits)
    try:
        post = markdown.parse("fuzz.md", text)
    except RunnerError as exc:
        assert exc.path == "fuzz.md" and (exc.line is None or exc.line >= 1)
        return
    for snippet in post.snippets:
        assert 1 <= snippet.line <= len(markdown.split_lines(text))


def recorded(text: str) -> list[str]:
    """The contents of the post's `runner:output` fences."""
    return [part.split("\n```")[0] for part in text.split("```text runner:output\n")[1:]]


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [root]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def alive(pid: int, wait: float = 5) -> bool:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        if state == "Z":
            return False
        time.sleep(0.1)
    return True


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return "?"


@pytest.mark.kernel
@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_cache_entry_that_is_not_a_file_neither_stops_nor_hangs_runs(tmp_path: Path,
                                                                       kind: str) -> None:
    """Once a folder here crashed every later run, and a FIFO hung it."""
    post = tmp_path / "p.md"
    post.write_text("```python runner:env=sklearn\nprint('hi')\n```\n")
    env = {**os.environ, "RUNNER_EXECUTION_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "runner", "verify", str(post)]
    first = subprocess.run([*command[:3], "update", str(post)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    [entry] = (tmp_path / "cache").rglob("*.json")
    entry.unlink()
    if kind == "fifo":
        os.mkfifo(entry)
    else:
        (entry / "inside").mkdir(parents=True)
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stderr.count(f"discarding a corrupt cache entry {entry}") == 1
    assert entry.is_file()  # stored again by the run
    hit = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert hit.returncode == 0 and "discarding" not in hit.stderr
