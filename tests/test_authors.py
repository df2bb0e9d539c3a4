"""Author notebooks and sync back; shards, merged reports and GitHub annotations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jupytext
import nbformat

from runner.markdown import parse
from runner.model import ErrorInfo, Markers, Snippet, SnippetResult
from runner.notebooks import author_notebook, code_hash
from runner.plan import plan
from runner.report import PostOutcome, Run, github_annotations, merge, step_summary
from runner.run import Planned, check_determinism, shard
from runner.sync import sync
from tests.conftest import FIXTURES, ROOT, run_cli
from tests.test_plan import ENVS

POST = ROOT / "posts" / "2024-01-08-my-machine-learning-journey.md"


def notebooks_for(post_path: Path, out: Path) -> dict[str, Path]:
    assert run_cli("notebooks", post_path, "--out", out).returncode == 0
    return {p.name.split(".")[-2]: p for p in out.glob("*.ipynb")}


def test_author_notebook_has_prose_code_and_recorded_output() -> None:
    post = parse(str(POST), POST.read_text())
    sessions = plan(post, ENVS)
    [sklearn] = [s for s in sessions if s.env == "sklearn"]
    book = author_notebook(post, sklearn)
    nbformat.validate(book)
    kinds = [c.cell_type for c in book.cells]
    assert kinds.count("code") == 1 and kinds.count("markdown") > 5
    prose = "".join(c.source for c in book.cells if c.cell_type == "markdown")
    assert "## Key Projects and Learning Milestones" in prose
    assert "Verified output" not in prose and "title:" not in prose  # no blocks, no front matter
    [code] = [c for c in book.cells if c.cell_type == "code"]
    assert code.outputs[0].text == "Test MSE: 2900.19\n"
    assert code.metadata.runner.line == 33 and code.metadata.runner.snippet == 1


def test_code_edited_in_the_twin_syncs_into_exactly_that_fence(tmp_path: Path) -> None:
    post_path = tmp_path / "post.md"
    shutil.copy(FIXTURES / "posts" / "roundtrip.md", post_path)
    before = post_path.read_text()
    books = notebooks_for(post_path, tmp_path / "snippets")
    twin = books["sklearn"].with_suffix(".py")
    twin.write_text(twin.read_text().replace('print("in a list")', 'print("edited")'))
    done = run_cli("sync", twin)
    assert done.returncode == 0, done.stderr
    after = post_path.read_text()
    assert after == before.replace('  print("in a list")', '  print("edited")')
    assert run_cli("sync", twin).returncode == 0 and post_path.read_text() == after


def test_prose_is_never_taken_from_a_notebook(tmp_path: Path) -> None:
    post_path = tmp_path / "post.md"
    shutil.copy(FIXTURES / "posts" / "roundtrip.md", post_path)
    before = post_path.read_text()
    book_path = notebooks_for(post_path, tmp_path / "snippets")["sklearn"]
    book = nbformat.read(book_path, as_version=4)
    for cell in book.cells:
        if cell.cell_type == "markdown":
            cell.source = "rewritten in the notebook"
    nbformat.write(book, book_path)
    assert run_cli("sync", book_path).returncode == 0
    assert post_path.read_text() == before


def test_conflicting_edits_are_refused(tmp_path: Path) -> None:
    post_path = tmp_path / "post.md"
    shutil.copy(FIXTURES / "posts" / "roundtrip.md", post_path)
    book_path = notebooks_for(post_path, tmp_path / "snippets")["sklearn"]
    post_path.write_text(post_path.read_text().replace("print(np.arange(3).sum())",
                                                       "print(np.arange(4).sum())"))
    edited = post_path.read_text()
    book = jupytext.read(book_path)
    book.cells[[c.cell_type for c in book.cells].index("code")].source += "\nprint('more')"
    jupytext.write(book, book_path)
    done = run_cli("sync", book_path)
    assert done.returncode == 1
    assert "changed in the post and in the notebook" in done.stderr
    assert f"{post_path}:9:" in done.stderr
    assert post_path.read_text() == edited


def test_sync_is_pure_and_keeps_line_endings() -> None:
    text = "a\r\n\r\n```python\r\nx = 1\r\n```\r\n"
    post = parse("p.md", text)
    cell = {"cell_type": "code", "source": "x = 2\ny = 3",
            "metadata": {"runner": {"post": "p.md", "line": 3, "snippet": 1,
                                    "code": code_hash("x = 1\n")}}}
    new, changed = sync(post, [cell])
    assert new == "a\r\n\r\n```python\r\nx = 2\r\ny = 3\r\n```\r\n" and changed == [3]


def work(weights: dict[str, int]) -> list[Planned]:
    items = []
    for name, count in weights.items():
        code = "".join(f"```python runner:env=sklearn\nprint({n})\n```\n\n" for n in range(count))
        post = parse(name, code)
        items.append(Planned(Path(name), post, plan(post, ENVS)))
    return items


def test_shards_are_disjoint_cover_everything_and_balance() -> None:
    items = work({f"p{n}.md": n % 5 + 1 for n in range(17)})
    slices = [shard(items, (k, 3)) for k in (1, 2, 3)]
    names = [str(i.path) for part in slices for i in part]
    assert sorted(names) == sorted(str(i.path) for i in items) and len(set(names)) == len(names)
    loads = [sum(1 + sum(len(s.snippets) for s in i.sessions) for i in part) for part in slices]
    assert max(loads) - min(loads) <= 6
    assert [str(i.path) for i in shard(items, (2, 3))] == [str(i.path) for i in slices[1]]


def test_merged_report_adds_up(tmp_path: Path) -> None:
    parts = []
    for n in (1, 2):
        parts.append({"summary": {"passed": n, "failed": 0, "skipped": 1, "stale": 0,
                                  "cached": 0},
                      "posts": [{"path": f"posts/{n}.md", "status": "passed", "error": None,
                                 "error_line": None}],
                      "snippets": [{"post": f"posts/{n}.md", "line": 1, "env": "sklearn",
                                    "status": "passed"}]})
    merged = merge(parts[::-1])
    assert merged["summary"]["passed"] == 3 and merged["summary"]["skipped"] == 2
    assert merged["summary"]["posts"] == {"passed": 2, "failed": 0, "stale": 0, "error": 0}
    assert [p["path"] for p in merged["posts"]] == ["posts/1.md", "posts/2.md"]
    for n, part in enumerate(parts):
        (tmp_path / f"r{n}.json").write_text(json.dumps(part))
    done = run_cli("report", "merge", tmp_path / "r0.json", tmp_path / "r1.json",
                   "--out", tmp_path / "all.json", cwd=tmp_path)
    assert done.returncode == 0
    assert json.loads((tmp_path / "all.json").read_text()) == merged


def test_annotations_and_summary_name_the_post_line() -> None:
    snippet = Snippet("posts/x.md", 125, "x\n", Markers())
    failed = SnippetResult(snippet, "fastapi", "failed",
                           error=ErrorInfo("NameError", "name 'List' is not defined", 135))
    run = Run((PostOutcome("posts/x.md", "failed", snippets=(failed,)),
               PostOutcome("posts/y.md", "error", "invalid YAML front matter", 3)))
    lines = github_annotations(run).splitlines()
    assert lines == ["::error file=posts/x.md,line=135::NameError: name 'List' is not defined",
                     "::error file=posts/y.md,line=3::invalid YAML front matter"]
    summary = step_summary(run)
    assert "| `posts/y.md` | error | invalid YAML front matter |" in summary
    assert "posts/x.md:135: NameError" in summary


def test_two_edits_in_one_notebook_land_in_their_own_fences() -> None:
    text = "```python\na = 1\n```\n\ntext\n\n```python\nb = 2\n```\n"
    post = parse("p.md", text)
    cells = [{"cell_type": "code", "source": source,
              "metadata": {"runner": {"post": "p.md", "line": s.line, "snippet": n,
                                      "code": code_hash(s.code)}}}
             for n, (s, source) in enumerate(zip(post.snippets, ["a = 1\nprint(a)\nprint(a * 2)",
                                                                  "b = 3"], strict=True), 1)]
    new, changed = sync(post, cells)
    assert new == ("```python\na = 1\nprint(a)\nprint(a * 2)\n```\n\ntext\n\n"
                   "```python\nb = 3\n```\n")
    assert changed == [1, 7]


def test_code_that_would_close_the_fence_is_refused() -> None:
    post = parse("p.md", "```python\na = 1\n```\n")
    [snippet] = post.snippets
    cell = {"cell_type": "code", "source": "a = 2\n```\nprose?",
            "metadata": {"runner": {"post": "p.md", "line": 1, "snippet": 1,
                                    "code": code_hash(snippet.code)}}}
    try:
        sync(post, [cell])
    except Exception as exc:
        assert "fence line" in str(exc) and str(exc).startswith("p.md:1:")
    else:
        raise AssertionError("a fence line must not be synced into the post")


def test_determinism_check_pairs_snippets_by_line_not_by_finish_order() -> None:
    from runner.model import Output
    from runner.writeback import RenderOptions

    post = parse("p.md", "```python\nprint(1)\n```\n\n```python\nprint(2)\n```\n")
    one, two = (SnippetResult(s, "sklearn", "passed", Output(f"{n}\n"))
                for n, s in enumerate(post.snippets, 1))
    checked = check_determinism(post, [one, two], [two, one], RenderOptions())
    assert [r.status for r in checked] == ["passed", "passed"]


def test_author_notebooks_are_reproducible() -> None:
    post = parse(str(POST), POST.read_text())
    [session] = [s for s in plan(post, ENVS) if s.env == "fastapi"]
    first, second = (nbformat.writes(author_notebook(post, session)) for _ in range(2))
    assert first == second
