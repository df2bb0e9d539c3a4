"""The second backend (`runner.remote.JupyterServer`): a real `jupyter server`, started here on
127.0.0.1 with a token, whose one kernelspec runs the project's built sklearn env."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner import decides, envs
from runner import run as run_module
from runner.backend import Backend
from runner.config import Config
from runner.model import ErrorInfo
from runner.remote import JupyterServer
from runner.report import Run
from runner.run import Options

from .conftest import FIXTURES

KERNEL = "runner-remote-sklearn"


@dataclass(frozen=True)
class Server:
    url: str
    token: str
    log: Path
    root: Path  # its root folder, where each session's folder is made

    def backend(self, timeout: float = 60) -> JupyterServer:
        return JupyterServer(self.url, self.token, {"sklearn": KERNEL}, timeout)

    def kernels_started(self) -> int:
        return self.log.read_text().count("Kernel started:")

    def kernels_running(self) -> int:
        request = urllib.request.Request(f"{self.url}/api/kernels",
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=5) as answer:
            return len(json.load(answer))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(url: str, token: str) -> bool:
    request = urllib.request.Request(f"{url}/api/kernelspecs",
                                     headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return KERNEL in json.load(answer)["kernelspecs"]
    except OSError:
        return False


@pytest.fixture
def server(tmp_path: Path, project: Config) -> Iterator[Server]:
    """A jupyter server in a temp folder whose kernelspec runs the sklearn env's python."""
    python = envs.build(project.envs["sklearn"]).python  # a no-op when built
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "runner: sklearn", "language": "python"}))
    root, port, token = tmp_path / "root", _free_port(), secrets.token_hex(16)
    root.mkdir()
    variables = {**os.environ, "JUPYTER_PATH": str(tmp_path / "jupyter"),
                 "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
                 "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    log = tmp_path / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
             f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False",
             f"--ServerApp.root_dir={root}", "--FileContentsManager.delete_to_trash=False",
             *(["--allow-root"] if os.geteuid() == 0 else [])],
            env=variables, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            if _answers(url, token) or process.poll() is not None:
                break
            time.sleep(0.5)
        assert _answers(url, token), log.read_text()[-2000:]
        yield Server(url, token, log, root)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_with(backend: Backend | None, post: Path, config: Config, options: Options) -> Run:
    """The post run through `backend` (None: the local one)."""
    return run_module.run_posts([post], config, options, backend=backend)


def _copy(name: str, to: Path) -> Path:
    shutil.copytree(FIXTURES / "remote" / name, to)
    return to / "post.md"


@pytest.mark.kernel
def test_a_post_run_on_the_server_writes_what_a_local_run_writes(
        server: Server, tmp_path: Path, project: Config) -> None:
    local = _copy("passing", tmp_path / "local")
    remote = _copy("passing", tmp_path / "remote")
    update = Options(mode="update", jobs=1)
    ran_here = run_with(None, local, project, update)
    assert [p.status for p in ran_here.posts] == ["passed"], ran_here.posts
    started = server.kernels_started()
    # the cache is on and holds the local run's results: the server's are keyed apart
    ran_there = run_with(server.backend(), remote, project, update)
    assert [p.status for p in ran_there.posts] == ["passed"], ran_there.posts
    assert [r.status for r in ran_there.snippets] == ["passed"] * 4 + ["skipped"]
    assert not any(r.cached for r in ran_there.snippets)
    assert server.kernels_started() == started + 1
    assert server.kernels_running() == 0
    # the session's folder and what was uploaded into it are gone (the server keeps its own
    # .ipynb_checkpoints)
    assert [p.name for p in server.root.iterdir()] in ([], [".ipynb_checkpoints"])
    assert remote.read_text() == local.read_text() != (FIXTURES / "remote/passing/post.md"
                                                      ).read_text()
    assert "read from beside the post" in remote.read_text()  # uploaded beside the kernel
    assert "ValueError: invalid literal for int()" in remote.read_text()
    assert "\n42\n" in remote.read_text()
    assert "\nhi there '' False\n" in remote.read_text()  # runner:env-var, on both backends
    spec = project.envs["sklearn"]
    assert server.backend().decides(spec) != decides.kernel_inputs(spec)
    again = run_with(server.backend(), remote, project, Options(jobs=1))
    assert [p.status for p in again.posts] == ["passed"]  # its own results replay, or its verdict
    assert server.kernels_started() == started + 1


@pytest.mark.kernel
def test_a_failing_snippet_on_the_server_names_its_type_and_line(
        server: Server, tmp_path: Path, project: Config) -> None:
    post = _copy("failing", tmp_path / "failing")
    before = post.read_text()
    ran = run_with(server.backend(), post, project, Options(mode="update", cache=False))
    assert [p.status for p in ran.posts] == ["failed"]
    first, failed, after = ran.snippets
    assert first.status == "passed" and first.output.stdout == "before\n"
    assert failed.status == "failed" and failed.error is not None
    assert (failed.error.type, failed.error.message) == ("ZeroDivisionError", "division by zero")
    assert failed.error.post_line == 9  # `return n / 0`, in the snippet before
    assert after.status == "skipped" and after.not_run_after == failed.snippet.line
    assert post.read_text() == before


@pytest.mark.kernel
def test_a_kernelspec_the_server_lacks_fails_its_sessions(
        server: Server, tmp_path: Path, project: Config) -> None:
    post = _copy("failing", tmp_path / "failing")
    backend = JupyterServer(server.url, server.token, {"sklearn": "no-such-kernel"})
    ran = run_with(backend, post, project, Options(cache=False))
    assert {r.error.type for r in ran.snippets if r.error} == {"EnvError"}
    assert "no-such-kernel" in str(ran.snippets[0].error)


def _stopped_by_first(server: Server, name: str, tmp_path: Path, project: Config) -> ErrorInfo:
    """The fixture post `name` run on the server: its first snippet failed, the second was
    not run for it, and no kernel is left; the first's error."""
    post = _copy(name, tmp_path / name)
    first, after = run_with(server.backend(), post, project, Options(cache=False)).snippets
    assert first.status == "failed" and first.error is not None
    assert after.status == "skipped" and after.not_run_after == first.snippet.line
    assert server.kernels_running() == 0
    return first.error


@pytest.mark.kernel
def test_a_snippet_past_its_timeout_is_interrupted_on_the_server(
        server: Server, tmp_path: Path, project: Config) -> None:
    error = _stopped_by_first(server, "slow", tmp_path, project)
    assert (error.type, error.message) == ("TimeoutError", "timed out after 2 s at line 11")
    assert error.post_line == 11  # `time.sleep(60)`, where the interrupt landed


@pytest.mark.kernel
def test_a_kernel_that_dies_on_the_server_fails_its_snippet(
        server: Server, tmp_path: Path, project: Config) -> None:
    error = _stopped_by_first(server, "dies", tmp_path, project)
    assert error.type == "DeadKernelError"
    assert "the kernel died while running this snippet" in error.message
