"""Real kernels in the real sklearn environment (built from its lock, or found in the cache)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from runner.markdown import parse
from runner.model import SnippetResult
from runner.plan import plan
from tests.conftest import FIXTURES


def run(built, project, text: str, timeout: float = 60, limits=None) -> list[SnippetResult]:  # type: ignore[no-untyped-def]
    from runner.execute import KernelSetup, OutputLimits, run_session

    post = parse("posts/t.md", text)
    sessions = plan(post, project.envs)
    results: list[SnippetResult] = []
    setup = KernelSetup(timeout, output=limits or OutputLimits())
    for session in sessions:
        results += asyncio.run(run_session(session, built(session.env), setup))
    return results


def fences(*codes: str, info: tuple[str, ...] = ()) -> str:
    """A post of `runner:env=sklearn` snippets, one after another."""
    infos = list(info) + [""] * (len(codes) - len(info))
    pairs = zip(infos, codes, strict=True)
    return "".join(f"```python runner:env=sklearn{i}\n{c}\n```\n" for i, c in pairs)


@pytest.mark.kernel
def test_a_sessions_notebook_is_valid_and_the_same_each_time(project) -> None:  # type: ignore[no-untyped-def]
    """Built without nbformat's per-cell validation, it still passes nbformat's schema, and
    its cell ids are the snippets' places (a skipped snippet has no cell)."""
    import nbformat

    from runner.notebooks import session_notebook

    text = ("```python runner:env=sklearn\nx = 1\n```\n\n```python runner:skip\nnope\n```\n\n"
            "```python runner:timeout=5\nprint(x)\n```\n")
    [session] = plan(parse("p.md", text), project.envs)
    book = session_notebook(session)
    nbformat.validate(book)
    assert [c.id for c in book.cells] == ["snippet-0", "snippet-2"]
    assert [c.metadata.runner.line for c in book.cells] == [1, 9]
    assert book.cells[1].metadata.runner.timeout == 5
    assert session_notebook(session) == book


def test_a_cells_line_is_after_the_blank_lines_ipython_drops(project) -> None:  # type: ignore[no-untyped-def]
    """A cell's `runner.line` (what its compiled line N is added to) counts the blank and
    whitespace-only lines IPython's `leading_empty_lines` drops; an indented first line, a
    blank-only cell and a form feed (no line to the compiler) move nothing."""
    from runner.notebooks import session_notebook

    codes = ["\n \t\nx = 1", "    y = 2\n    z = 3", "\n\n", "\x0c\nw = 4"]
    [session] = plan(parse("p.md", fences(*codes)), project.envs)
    fence_lines = [s.line for s in session.snippets]
    assert fence_lines == [1, 6, 10, 15]
    book = session_notebook(session)
    assert [c.metadata.runner.line for c in book.cells] == [1 + 2, 6, 10, 15 + 1]


@pytest.mark.kernel
def test_kernel_runs_in_the_env_even_with_a_user_kernelspec_named_alike(
        built, project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    # A user-level kernelspec with the same name, pointing at another Python, must not win.
    spec = tmp_path / "kernels" / "runner-sklearn"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps(
        {"argv": ["/usr/bin/false"], "display_name": "hijack", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path))
    # Paths printed as they are, not as output records them (portably: `<env>`, `.`).
    code = "import sys, os\nprint(sys.prefix[::-1])\nprint(os.getcwd()[::-1])"
    [result] = run(built, project, fences(code))
    assert result.status == "passed", result.error
    prefix, cwd = (line[::-1] for line in result.output.stdout.splitlines())
    assert Path(prefix).resolve() == built("sklearn").prefix.resolve()
    assert Path(cwd).name.startswith("runner-sklearn-") and not Path(cwd).exists()


@pytest.mark.kernel
def test_stdout_results_and_stderr_kept_apart(built, project) -> None:  # type: ignore[no-untyped-def]
    code = "import sys\nprint('out')\nprint('warn', file=sys.stderr)\n6 * 7"
    [result] = run(built, project, fences(code))
    assert result.output.stdout == "out\n42\n"
    assert result.output.stderr == "warn\n"


@pytest.mark.kernel
def test_snippets_share_one_kernel_in_post_order(built, project) -> None:  # type: ignore[no-untyped-def]
    results = run(built, project, fences("x = 20", "x += 1", "print(x * 2)"))
    assert [r.status for r in results] == ["passed"] * 3
    assert results[2].output.stdout == "42\n"


@pytest.mark.kernel
def test_error_is_mapped_to_the_post_line_of_the_raising_statement(built, project) -> None:  # type: ignore[no-untyped-def]
    text = fences("def f():\n    return 1 / 0", "y = 1\nf()", "print('never')")
    # fence 1 at line 1 (code on 2-3), fence 2 at line 5 (code 6-7), fence 3 at line 9
    first, second, third = run(built, project, text)
    assert first.status == "passed"
    assert second.status == "failed" and second.error is not None
    assert (second.error.type, second.error.post_line) == ("ZeroDivisionError", 3)
    assert "ZeroDivisionError" in second.error.traceback
    assert third.status == "skipped" and third.reason == "not run: the snippet at line 5 failed"


@pytest.mark.kernel
def test_name_error_and_syntax_error_lines(built, project) -> None:  # type: ignore[no-untyped-def]
    [name] = run(built, project, fences("a = 1\n\nprint(undefined_name)"))
    assert name.error is not None
    assert (name.error.type, name.error.post_line) == ("NameError", 4)
    assert name.error.message == "name 'undefined_name' is not defined"
    [syntax] = run(built, project, fences("a = 1\nb = (\nc = 2 +"))
    assert syntax.error is not None and syntax.error.type == "SyntaxError"
    assert syntax.error.post_line in (3, 4)


@pytest.mark.kernel
def test_raises_marker(built, project) -> None:  # type: ignore[no-untyped-def]
    text = fences("print('before')\nraise KeyError('k')", "x = 1",
                  info=(" runner:raises=KeyError", " runner:raises=ValueError"))
    raised, silent = run(built, project, text)
    assert raised.status == "passed" and raised.output.stdout == "before\nKeyError: 'k'\n"
    assert silent.status == "failed" and silent.error is not None
    assert silent.error.type == "DidNotRaise"


@pytest.mark.kernel
def test_skip_marker_does_not_run(built, project) -> None:  # type: ignore[no-untyped-def]
    text = fences("raise SystemExit('must not run')", "print('ran')",
                  info=(' runner:skip="needs network"',))
    skipped, ran = run(built, project, text)
    assert (skipped.status, skipped.reason) == ("skipped", "needs network")
    assert ran.status == "passed" and ran.output.stdout == "ran\n"


@pytest.mark.kernel
def test_timeout_fails_the_snippet_and_stops_the_session(built, project) -> None:  # type: ignore[no-untyped-def]
    text = fences("import time\ntime.sleep(60)", "print('after')",
                  info=(" runner:timeout=2",))
    slow, after = run(built, project, text)
    assert slow.status == "failed" and slow.error is not None
    assert slow.error.type == "TimeoutError"
    assert slow.error.message == "timed out after 2 s at line 3"
    assert slow.duration_s < 30
    assert after.status == "skipped"


@pytest.mark.kernel
def test_dead_kernel_fails_the_snippet(built, project) -> None:  # type: ignore[no-untyped-def]
    dead, after = run(built, project, fences("import os\nos._exit(3)", "print('after')"))
    assert dead.status == "failed" and dead.error is not None
    assert dead.error.type == "DeadKernelError"
    assert after.status == "skipped"


@pytest.mark.kernel
def test_session_results_come_back_for_every_snippet(built, project) -> None:  # type: ignore[no-untyped-def]
    text = fences("print(1)", "print(2)", "print(3)", info=("", ' runner:skip="why"'))
    [session] = plan(parse("posts/t.md", text), project.envs)
    results = run(built, project, text)
    assert [r.snippet.line for r in results] == [s.line for s in session.snippets] == [1, 4, 7]
    assert [(r.status, r.output.stdout) for r in results] == [
        ("passed", "1\n"), ("skipped", ""), ("passed", "3\n")]
    assert results[1].reason == "why" and results[1].skipped_on_purpose


FORGOTTEN_SERVER = """\
import socket, threading, time
import uvicorn
from fastapi import FastAPI

app = FastAPI()
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
while not server.started:
    time.sleep(0.05)
print(sock.getsockname()[1])
"""


@pytest.mark.slow
def test_a_server_left_running_stops_with_the_session(built, project) -> None:  # type: ignore[no-untyped-def]
    import socket

    text = f"```python runner:env=fastapi\n{FORGOTTEN_SERVER}```\n"
    [result] = run(built, project, text)
    assert result.status == "passed", result.error
    port = int(result.output.stdout)
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port),
                                                                          timeout=5):
        pass


def test_the_private_parts_of_nbclient_and_jupyter_client_we_use_are_still_there() -> None:
    """execute._Client replaces nbclient's `async_setup_kernel` (less its signal handlers) and
    calls private methods of nbclient and jupyter_client. pyproject pins the minor versions this
    was tested with; this fails when an upgrade changes what the runner relies on."""
    import hashlib
    import inspect

    from jupyter_client.client import KernelClient
    from nbclient import NotebookClient

    assert list(inspect.signature(NotebookClient._async_cleanup_kernel).parameters) == ["self"]
    assert list(inspect.signature(KernelClient._handle_kernel_info_reply).parameters) == [
        "self", "msg"]
    from jupyter_client.manager import AsyncKernelManager

    assert list(inspect.signature(AsyncKernelManager._async_wait).parameters) == [
        "self", "pollinterval"]
    for name in ("async_start_new_kernel", "async_start_new_kernel_client",
                 "create_kernel_manager", "async_execute_cell", "async_wait_for_reply"):
        assert inspect.iscoroutinefunction(getattr(NotebookClient, name)) or name == (
            "create_kernel_manager"), name
    from nbformat.v4 import new_notebook

    assert NotebookClient(new_notebook()).owns_km is True  # set in __init__: no km was given
    # The method the runner's client replaces: a change to it must be looked at, and the
    # override brought up to date (then update this digest).
    source = inspect.getsource(NotebookClient.async_setup_kernel)
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == "189461fd8c55187b"


@pytest.mark.kernel
def test_a_timeout_says_which_statement_was_running(built, project) -> None:  # type: ignore[no-untyped-def]
    text = fences("import time\nx = 1\ntime.sleep(60)\nprint('never')",
                  info=(" runner:timeout=2",))
    [result] = run(built, project, text)
    assert result.error is not None and result.error.type == "TimeoutError"
    assert result.error.message == "timed out after 2 s at line 4"  # the fence is line 1
    assert result.error.post_line == 4


@pytest.mark.kernel
def test_a_crash_says_which_statement_was_running(built, project) -> None:  # type: ignore[no-untyped-def]
    [result] = run(built, project, fences("import ctypes\n\nctypes.string_at(0)"))
    assert result.error is not None and result.error.type == "DeadKernelError"
    assert "SIGSEGV" in result.error.message and result.error.message.endswith("at line 4")
    assert result.error.post_line == 4
    [exited] = run(built, project, fences("import os\nos._exit(3)"))
    assert exited.error is not None and exited.error.post_line == 2  # not known: the first line


@pytest.mark.kernel
@pytest.mark.slow
def test_a_flood_of_displays_is_recorded_whole_every_time(built, project) -> None:  # type: ignore[no-untyped-def]
    # ten times iopub's high-water mark (1,000 messages): nothing dropped, in order, each run
    text = fences("from IPython.display import display\nfor i in range(10000):\n    display(i)")
    first, second = (run(built, project, text)[0] for _ in range(2))
    assert first.status == second.status == "passed"
    assert first.output.stdout == second.output.stdout
    assert first.output.stdout.splitlines() == [str(i) for i in range(10000)]


@pytest.mark.kernel
def test_output_is_bounded_while_it_streams_in(built, project) -> None:  # type: ignore[no-untyped-def]
    from runner.execute import OutputLimits

    text = fences("print('x' * 50_000)\nfor _ in range(3000):\n    print('y' * 999)\n"
                  "print('the end')")
    limits = OutputLimits(max_bytes=100_000, max_line=1000)
    [result] = run(built, project, text, limits=limits)
    lines = result.output.stdout.splitlines()
    assert lines[0] == "x" * 1000 + " ... [49,000 more characters cut by the runner: " \
        "max-line-chars is 1,000]"
    assert lines[-1] == ("... [2,950,009 more bytes of output cut by the runner: "
                         "max-output-bytes is 100,000]")
    assert len(result.output.stdout) < 110_000 and "the end" not in result.output.stdout


@pytest.mark.kernel
def test_pip_magics_say_why_not_wherever_they_are(built, project) -> None:  # type: ignore[no-untyped-def]
    [result] = run(built, project, fences('get_ipython().run_line_magic("pip", "install idna")'))
    assert result.error is not None and result.error.type == "RuntimeError"
    assert result.error.message.startswith("installing is not done at run time: the env is "
                                           "pinned")


@pytest.mark.kernel
@pytest.mark.parametrize(("name", "raising", "warning"), [("leading-blank-lines.md", 10, 9),
                                                          ("leading-indent.md", 6, 5)])
def test_lines_are_the_posts_when_ipython_drops_a_cells_leading_blank_lines(
        built, project, name: str, raising: int, warning: int) -> None:  # type: ignore[no-untyped-def]
    """IPython compiles a cell without its leading blank (or blank-looking) lines; the error's
    post line and a warning's `file:line` still name the post's own lines. A first line
    indented (IPython dedents the cell) moves nothing."""
    text = (FIXTURES / "execute" / name).read_text()
    assert text.splitlines()[raising - 1].lstrip().startswith("raise ValueError")
    [result] = run(built, project, text)
    assert result.error is not None and result.error.type == "ValueError"
    assert result.error.post_line == raising
    assert f"posts/t.md:{warning}: UserWarning: look here" in result.output.stderr


@pytest.mark.kernel
def test_a_crash_after_leading_blank_lines_names_its_line(built, project) -> None:  # type: ignore[no-untyped-def]
    [result] = run(built, project, fences("\n\nimport ctypes\nctypes.string_at(0)"))
    assert result.error is not None and result.error.type == "DeadKernelError"
    assert result.error.message.endswith("at line 5") and result.error.post_line == 5


def test_the_nbclient_methods_the_client_replaces_are_still_called() -> None:
    """execute._Client keeps each cell's execute_reply (`_check_raise_for_error`), makes a
    refused message a gone kernel (`_async_check_alive`), and makes display updates and
    comm messages its own way: nbclient must still call them where the runner expects."""
    import inspect

    from nbclient import NotebookClient

    signatures = {"_check_raise_for_error": ["self", "cell", "cell_index", "exec_reply"],
                  "_async_check_alive": ["self"], "_update_display_id": ["self", "display_id",
                                                                        "msg"],
                  "handle_comm_msg": ["self", "outs", "msg", "cell_index"]}
    for name, parameters in signatures.items():
        assert list(inspect.signature(getattr(NotebookClient, name)).parameters) == parameters
    calls = {"async_execute_cell": "await self._check_raise_for_error(cell, cell_index, "
                                   "exec_reply)",
             "_async_poll_kernel_alive": "await self._async_check_alive()",
             "process_message": "self._update_display_id(display_id, msg)"}
    for name, call in calls.items():
        assert call in inspect.getsource(getattr(NotebookClient, name)), name
    assert "self.handle_comm_msg(" in inspect.getsource(NotebookClient.process_message)


def test_the_execute_reply_decides_what_a_cell_raised() -> None:
    from nbformat.v4 import new_output

    from runner.execute import _Raised, _raised
    from runner.model import ErrorKind

    shown = new_output("error", ename="ValueError", evalue="shown", traceback=["tb"])
    error = {"content": {"status": "error", "ename": "KeyError", "evalue": "'k'",
                         "traceback": []}}
    assert _raised(None, []) is None  # a blank cell: nothing ran
    assert _raised({"content": {"status": "ok"}}, []) is None
    assert _raised(error, []) == _Raised("KeyError", "'k'", (), True)  # no error output came
    assert _raised(error, [shown]) == _Raised("KeyError", "'k'", ("tb",), True)
    assert _raised({"content": {"status": "ok"}}, [shown]) == _Raised(
        "ValueError", "shown", ("tb",), False)  # shown, but the reply does not say so
    display_error = {"content": {"status": "error", "ename": "NoneType", "evalue": "None"}}
    assert _raised(display_error, [shown]) == _Raised("ValueError", "shown", ("tb",), True)
    aborted = _raised({"content": {"status": "aborted"}}, [])
    assert aborted is not None and aborted.ename == ErrorKind.ABORTED
    assert _raised({"content": ["not", "a", "dict"]}, []) is not None


def test_only_a_png_within_its_limits_is_a_figure() -> None:
    import base64
    import io

    from PIL import Image

    from runner.execute import OutputLimits, _Budget, _node

    def png(size: tuple[int, int], mode: str = "RGB") -> str:
        data = io.BytesIO()
        Image.new(mode, size).save(data, "png")
        return base64.b64encode(data.getvalue()).decode()

    def shown(value: str, budget: _Budget) -> str:
        node = _node({"msg_type": "display_data", "content": {
            "data": {"image/png": value, "text/plain": "alt", "image/jpeg": "x" * 9},
            "metadata": {"big": "x" * 99}}}, budget)
        assert node is not None and node.metadata == {} and "image/jpeg" not in node.data
        return "kept" if "image/png" in node.data else node.data["text/plain"]

    assert shown(png((12_000, 12_000), "1"), _Budget(OutputLimits())) == (  # 18 kB of 144 Mpx
        "[image/png dropped by the runner: 12000x12000 pixels, over the 40,000,000 a figure "
        "may have]")
    budget = _Budget(OutputLimits(max_image=2000, max_images_bytes=2500))
    assert shown(png((8, 8)), budget) == "kept"
    assert shown("iVBORw0KGgo" + "A" * 40, budget) == "[image/png dropped by the runner: not a PNG]"
    assert shown("A" * 4000, budget).endswith(
        "3,000 bytes, over the 0.00191 MiB a figure may have]")
    raw = base64.b64decode(png((8, 8)))
    broken = raw[:-8] + bytes(8)  # IEND's CRC and more zeroed
    assert shown(base64.b64encode(broken).decode(), budget).endswith("not a PNG]")
    budget.image_bytes = 2490
    assert shown(png((8, 8)), budget).endswith(
        "over the 0.00238 MiB a snippet's figures may have]")
