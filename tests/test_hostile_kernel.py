"""A kernel is the post's: every message and file it can send or touch is hostile (issue 20,
items 4, 6 and 7), each attack caused for real. A hidden block cannot make failing code pass,
the runner's memory stays bounded whatever the kernel sends, and a crash file that is a FIFO
or a link to /dev/zero neither hangs nor floods the runner."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runner.config import Config
from runner.model import ErrorKind, SnippetResult
from runner.report import Run
from runner.run import Options, run_posts
from tests.conftest import ROOT

HOOKS = {
    "showtraceback": "get_ipython().showtraceback = lambda *a, **k: None",
    "_showtraceback": "get_ipython()._showtraceback = lambda *a, **k: None",
    "set_custom_exc": "get_ipython().set_custom_exc((BaseException,), lambda *a, **k: None)",
    "excepthook": "import sys\nsys.excepthook = lambda *a, **k: None",
    "showsyntaxerror": "get_ipython().showsyntaxerror = lambda *a, **k: None",
    "post_run_cell clears": "from IPython.display import clear_output\n"
                            "get_ipython().events.register('post_run_cell',\n"
                            "    lambda result: (clear_output(), print('all good')))",
}
HIDE_EVERYTHING = "\n".join(HOOKS.values())
# What still forges a pass: code that changes what ipykernel replies, in the kernel's own
# process (the post's). Kept as strict xfails: the README's table says so, and a fix shows.
KERNEL_FORGERIES = {
    "the ExecutionResult cleared": "get_ipython().events.register('post_run_cell',\n"
                                   "    lambda result: setattr(result, 'error_in_exec', None))",
    "the reply rewritten": (
        "k = get_ipython().kernel\nsend = k.session.send\n"
        "def forged(stream, kind, content=None, *args, **kwargs):\n"
        "    if kind == 'execute_reply':\n"
        "        content = {'status': 'ok', 'execution_count': 1, 'user_expressions': {}}\n"
        "    return send(stream, kind, content, *args, **kwargs)\n"
        "k.session.send = forged"),
}
FORGED = "the kernel's process is the post's: a snippet can forge ipykernel's reply"


def faked(hidden: str) -> str:
    """A post whose hidden block installs `hidden`, then visible snippets that fail."""
    return ("---\nrunner:\n  keep-going: true\n---\n\n"
            f"<!-- runner:hidden\n```python runner:env=sklearn\n{hidden}\n```\n-->\n\n"
            "```python\nraise ValueError('boom')\n```\n\n"
            "```python\nthis is not python\n```\n\n"  # a NameError: `this is (not python)`
            "```python\nx = = 1\n```\n\n"
            "```python\nimport json\njson.loads('{')\n```\n")


def ran(run: Run) -> list[SnippetResult]:
    return [r for r in run.snippets if not r.snippet.hidden]


@pytest.mark.kernel
@pytest.mark.parametrize("hook", [*HOOKS, "all at once", *(
    pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=FORGED))
    for name in KERNEL_FORGERIES)])
def test_a_hidden_hook_cannot_make_failing_code_pass(tmp_path: Path, project: Config,
                                                     hook: str) -> None:
    post = tmp_path / "faked.md"
    hidden = HOOKS.get(hook) or HIDE_EVERYTHING
    if hook in KERNEL_FORGERIES:
        hidden = f"{HIDE_EVERYTHING}\n{KERNEL_FORGERIES[hook]}"
    text = faked(hidden)
    post.write_text(text)
    for mode in ("verify", "update"):
        run = run_posts([post], project, Options(mode=mode, cache=False))
        assert [r.status for r in ran(run)] == ["failed"] * 4, [r.output for r in ran(run)]
        raised, name, syntax, decode = (r.error for r in ran(run))
        assert raised is not None and (raised.type, raised.message) == ("ValueError", "boom")
        # its one line, or unknown: a silenced traceback leaves no sys.last_traceback
        assert raised.post_line in (ran(run)[0].snippet.code_line, None)
        assert name is not None and name.type == "NameError"
        assert syntax is not None and syntax.type == "SyntaxError"
        assert decode is not None and decode.type == "JSONDecodeError"
        assert run.posts[0].status == "failed"
        assert post.read_text() == text  # update wrote nothing


@pytest.mark.kernel
def test_raises_markers_still_hold_behind_a_hidden_hook(tmp_path: Path,
                                                        project: Config) -> None:
    post = tmp_path / "raises.md"
    post.write_text("---\nrunner:\n  keep-going: true\n---\n\n"
                    f"<!-- runner:hidden\n```python runner:env=sklearn\n{HIDE_EVERYTHING}\n"
                    "```\n-->\n\n"
                    "```python runner:raises=ValueError\nraise ValueError('expected')\n```\n\n"
                    "```python runner:raises=KeyError\nraise ValueError('not a KeyError')\n"
                    "```\n\n```python runner:raises=KeyError\nx = 1\n```\n")
    expected, other, silent = ran(run_posts([post], project, Options(cache=False)))
    assert expected.status == "passed", expected.error
    assert expected.output.stdout.endswith("ValueError: expected\n")
    assert other.status == "failed" and other.error is not None
    assert other.error.type == "ValueError"
    assert silent.status == "failed" and silent.error is not None
    assert silent.error.type == ErrorKind.DID_NOT_RAISE


SEND = ("k = get_ipython().kernel\n"
        "k.session.send(k.iopub_socket, {kind!r}, {content}, parent=k.get_parent())\n")
# Each attack is a snippet of a post run by `measure` (in a process of its own, so that the
# peak is the runner's own): the kernel sends what it names.
ATTACKS = {
    "a 400 MB stream message": SEND.format(
        kind="stream", content="{'name': 'stdout', 'text': 'x' * 400_000_000}"),
    "a 400 MB display_data": SEND.format(
        kind="display_data", content="{'data': {'text/plain': 'x' * 400_000_000}, "
                                     "'metadata': {}}"),
    "four 150 MB PNGs": "from IPython.display import display\nfor _ in range(4):\n"
                        "    display({'image/png': 'AAAA' * 37_500_000}, raw=True)\n",
    "a 400 MB message on shell": (
        "k = get_ipython().kernel\n"
        "k.session.send(k.shell_stream, 'execute_reply', {'status': 'ok', 'x': 'x' * 400_000_000},"
        " parent=k.get_parent(), ident=k._parent_ident['shell'])\n"),
}
MEASURE = """\
import json, resource, sys
from pathlib import Path
from runner.config import load
from runner.run import Options, run_posts

project = load(Path(sys.argv[1]))
warm_up, attack = sys.argv[2:4]
run_posts([warm_up], project, Options(cache=False))  # imports, a kernel, its output
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run = run_posts([attack], project, Options(mode=sys.argv[4], cache=False))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_mb": (after - before) / 1024, "peak_mb": after / 1024,
                  "results": [[r.status, r.error.type if r.error else None,
                               r.error.message if r.error else None, r.output.stdout]
                              for r in run.snippets]}))
"""


def measure(folder: Path, code: str, mode: str = "verify") -> dict[str, object]:
    """The runner's peak memory growth (MB) over a run of a post of `code`, then an ordinary
    snippet, and the results."""
    warm_up, attack = folder / "warm-up.md", folder / "attack.md"
    warm_up.write_text("```python runner:env=sklearn\nprint('warm')\n```\n")
    attack.write_text(f"```python runner:env=sklearn\n{code}\nprint('sent')\n```\n\n"
                      "```python\nprint('after')\n```\n")
    done = subprocess.run([sys.executable, "-c", MEASURE, str(ROOT), str(warm_up),
                           str(attack), mode], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{code[:60]!r}: peak RSS growth {found['growth_mb']:.0f} MB", file=sys.stderr)
    return found


@pytest.mark.kernel
@pytest.mark.parametrize("attack", ATTACKS)
def test_a_huge_message_is_refused_before_it_is_held(tmp_path: Path, attack: str) -> None:
    found = measure(tmp_path, ATTACKS[attack], mode="update")
    assert found["growth_mb"] < 300  # type: ignore[operator]
    (status, kind, message, _), after = found["results"]  # type: ignore[misc]
    assert (status, kind) == ("failed", ErrorKind.OUTPUT_LOST), found["results"]
    assert "refused" in message and "MiB" in message, message
    assert after[0] == "skipped"  # the session could not go on
    assert not list(tmp_path.rglob("*.png"))  # nothing written beside the post
    assert "*Verified output:*" not in (tmp_path / "attack.md").read_text()


NOT_RECORDED = """\
from IPython.display import display
k, junk = get_ipython().kernel, 'x' * 12_000_000  # two in a message: under 32 MiB
for n in range(15):  # widget state, which nbclient would keep for the session
    k.session.send(k.iopub_socket, 'comm_open', {'comm_id': str(n), 'target_name':
                   'jupyter.widget', 'data': {'state': {'value': junk}}}, parent=k.get_parent())
for n in range(15):  # data of a kind the runner does not record, and metadata
    display({'application/x-junk': junk, 'text/plain': str(n)}, metadata={'m': junk}, raw=True)
shown = display('shown', display_id=True)
for _ in range(15):
    shown.update({'text/plain': 'updated', 'application/x-junk': junk}, raw=True)
"""


@pytest.mark.kernel
def test_what_the_runner_does_not_record_is_not_held(tmp_path: Path) -> None:
    found = measure(tmp_path, NOT_RECORDED)
    assert found["growth_mb"] < 200  # type: ignore[operator]
    (status, _, _, stdout), after = found["results"]  # type: ignore[misc]
    assert status == "passed" and after[0] == "passed"
    assert stdout == "".join(f"{n}\n" for n in range(15)) + "updated\nsent\n"


@pytest.mark.kernel
def test_what_is_not_a_png_is_never_a_figure(tmp_path: Path, project: Config) -> None:
    """Under the per-message cap: base64 that is no PNG, a PNG's signature on junk, an image
    over the per-image cap, and more than the snippet's total. Each is dropped with a note;
    a real figure is kept."""
    post = tmp_path / "junk.md"
    post.write_text(
        "```python runner:env=sklearn\nimport base64, io\nfrom IPython.display import display\n"
        "from PIL import Image\nimport numpy as np\n"
        "def png(side, seed):\n"
        "    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), 'uint8')\n"
        "    data = io.BytesIO()\n    Image.fromarray(pixels).save(data, 'png')\n"
        "    return base64.b64encode(data.getvalue()).decode()\n"
        "display({'image/png': 'AAAA' * 1_000_000}, raw=True)\n"
        "display('updated below', display_id=True).update({'image/png': 'AAAA'}, raw=True)\n"
        "display({'image/png': base64.b64encode(b'\\x89PNG\\r\\n\\x1a\\n' + b'x' * 1000)"
        ".decode()}, raw=True)\n"
        "display({'image/png': png(2100, 0)}, raw=True)\n"  # 13 MB of noise: over 10 MiB
        "display({'image/png': png(16, 1), 'text/plain': 'a real one'}, raw=True)\n"
        "for seed in range(8):\n"  # 8 MB each: past the snippet's 50 MiB after six
        "    display({'image/png': png(1640, seed)}, raw=True)\n"
        "print('done')\n```\n")
    [result] = run_posts([post], project, Options(mode="update", cache=False)).snippets
    assert result.status == "passed", result.error
    notes = [line for line in result.output.stdout.splitlines() if "dropped by the runner" in line]
    assert notes[:3] == ["[image/png dropped by the runner: not a PNG]"] * 3, notes
    assert re.fullmatch(r"\[image/png dropped by the runner: 13,2\d\d,\d\d\d bytes, over the "
                        r"10 MiB a figure may have\]", notes[3]), notes
    assert len(notes) == 6 and notes[4].endswith("over the 50 MiB a snippet's figures may "
                                                 "have]"), notes
    images = result.output.images()
    assert len(images) == 7 and images[0].startswith(b"\x89PNG")
    assert len(list(tmp_path.rglob("*.png"))) == 7  # what update wrote: the real ones only


CRASH_FILE = {
    "fifo": "os.remove('../ipc/crash')\nos.mkfifo('../ipc/crash')",
    "/dev/zero": "os.remove('../ipc/crash')\nos.symlink('/dev/zero', '../ipc/crash')",
    "a folder": "os.remove('../ipc/crash')\nos.mkdir('../ipc/crash')",
    "moved": "os.rename('../ipc', '../gone')\nos.mkdir('../ipc')\nos.mkfifo('../ipc/crash')",
    "huge": "os.truncate('../ipc/crash', 900 * 2**20)",  # its own file: never read whole
}
# Where the runner is root, it takes the kernel's ipc folder back once the kernel is up: the
# swaps are refused there (the file stays the kernel's own crash file, which is read bounded).
SWAP = "try:\n    {}\nexcept PermissionError:\n    pass\n"


@pytest.mark.kernel
@pytest.mark.parametrize("what", CRASH_FILE)
@pytest.mark.parametrize("death", ["os.kill(os.getpid(), 9)", "os._exit(3)"])
def test_a_crash_file_swapped_by_the_kernel_neither_hangs_nor_floods(
        tmp_path: Path, project: Config, what: str, death: str) -> None:
    post = tmp_path / "crash.md"
    swap = SWAP.format(CRASH_FILE[what].replace("\n", "\n    "))
    post.write_text(f"```python runner:env=sklearn\nimport os\n{swap}{death}\n"
                    "```\n\n```python\nprint('after')\n```\n")
    outcome: list[Run] = []
    started = time.monotonic()
    runner = threading.Thread(target=lambda: outcome.append(run_posts(
        [post], project, Options(cache=False, timeout=20, deadline=30))), daemon=True)
    runner.start()
    runner.join(60)
    assert not runner.is_alive(), f"the run hangs on a crash file that is {what}"
    assert time.monotonic() - started < 45
    dead, after = outcome[0].snippets
    assert dead.status == "failed" and dead.error is not None
    assert dead.error.type == ErrorKind.DEAD_KERNEL
    assert dead.error.message.startswith("the kernel died while running this snippet (")
    assert dead.error.post_line == 2  # the fence's first line: the crash file says nothing
    assert after.status == "skipped"


@pytest.mark.kernel
def test_the_deadline_bounds_the_wait_for_output_after_a_reply(
        tmp_path: Path, project: Config) -> None:
    """A kernel that never says it is idle again: its output is waited for 60 s after the
    reply, which --deadline must bound too."""
    post = tmp_path / "no-idle.md"
    post.write_text(
        "```python runner:env=sklearn\nk = get_ipython().kernel\nsend = k.session.send\n"
        "def no_idle(stream, kind, content=None, *args, **kwargs):\n"
        "    if kind == 'status' and (content or {}).get('execution_state') == 'idle':\n"
        "        return None\n"
        "    return send(stream, kind, content, *args, **kwargs)\n"
        "k.session.send = no_idle\n```\n")
    outcome: list[Run] = []
    runner = threading.Thread(target=lambda: outcome.append(run_posts(
        [post], project, Options(cache=False, timeout=5, deadline=8))), daemon=True)
    runner.start()
    runner.join(40)  # 60 s and more before
    assert not runner.is_alive(), "the output wait outlived the run's deadline"
    [result] = outcome[0].snippets
    assert result.status == "failed" and result.error is not None
    assert result.error.type == ErrorKind.OUTPUT_LOST
