"""Author notebooks and sync back; shards, merged reports and GitHub annotations."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import jupytext
import nbformat
import pytest

from runner.markdown import parse
from runner.model import ErrorInfo, Markers, Snippet, SnippetResult
from runner.notebooks import author_notebook, code_hash, linked_figures, recorded_outputs
from runner.plan import plan
from runner.report import PostOutcome, Run, github_annotations, merge, step_summary
from runner.run import shard
from runner.settle import Planned, check_determinism
from runner.sync import sync
from tests.conftest import FIXTURES, ROOT, in_process, run_cli
from tests.test_plan import ENVS

POST = ROOT / "posts" / "2024-01-08-my-machine-learning-journey.md"


def notebooks_for(post_path: Path, out: Path) -> dict[str, Path]:
    assert in_process("notebooks", post_path, "--out", out).returncode == 0
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
    done = in_process("sync", twin)
    assert done.returncode == 0, done.stderr
    after = post_path.read_text()
    assert after == before.replace('  print("in a list")', '  print("edited")')
    assert in_process("sync", twin).returncode == 0 and post_path.read_text() == after


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
    assert in_process("sync", book_path).returncode == 0
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
    done = in_process("sync", book_path)
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
    done = in_process("report", "merge", tmp_path / "r0.json", tmp_path / "r1.json",
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


# --- sync from any folder, twice in a row, the pair kept alike; rich outputs in notebooks ---


def project_copy(tmp_path: Path, post: Path = FIXTURES / "posts" / "roundtrip.md") -> Path:
    """A project of its own: [tool.runner], the envs' lock files, one post in posts/."""
    root = tmp_path / "blog"
    (root / "posts").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[tool.runner]\nposts = "posts"\nenvs = "envs"\n'
                                         'snippets = "snippets"\n')
    shutil.copytree(ROOT / "envs", root / "envs",
                    ignore=shutil.ignore_patterns(".*", "__pycache__"))
    shutil.copy(post, root / "posts" / "x.md")
    return root


def edit_code(path: Path, old: str, new: str) -> None:
    """An author's edit of one code cell, in the .ipynb (through nbformat) or the .py twin."""
    if path.suffix == ".py":
        assert old in path.read_text()
        path.write_text(path.read_text().replace(old, new))
        return
    book = nbformat.read(path, as_version=4)
    [cell] = [c for c in book.cells if c.cell_type == "code" and old in c.source]
    cell.source = cell.source.replace(old, new)
    nbformat.write(book, path)


def code_cells(path: Path) -> list[tuple[str, str]]:
    """Each code cell's code and the hash it records, as jupytext reads the file."""
    return [(c.source, c.metadata.runner.code) for c in jupytext.read(path).cells
            if c.cell_type == "code"]


def test_sync_finds_the_post_from_any_folder(tmp_path: Path) -> None:
    root = project_copy(tmp_path)
    done = in_process("notebooks", cwd=root / "posts")  # written from posts/: still root-relative
    assert done.returncode == 0, done.stderr
    book = root / "snippets" / "x.sklearn.ipynb"
    assert nbformat.read(book, as_version=4).metadata.runner.post == "posts/x.md"
    edit_code(book, "np.arange(3)", "np.arange(4)")
    done = in_process("sync", "x.sklearn.ipynb", cwd=root / "snippets")
    assert done.returncode == 0, done.stderr
    assert "print(np.arange(4).sum())" in (root / "posts" / "x.md").read_text()
    edit_code(book.with_suffix(".py"), 'print("in a list")', 'print("from /")')
    done = in_process("sync", book.with_suffix(".py"), cwd=Path("/"))
    assert done.returncode == 0, done.stderr
    shown = (root / "posts" / "x.md").relative_to("/")  # as seen from the current folder
    assert done.stdout == f"{shown}:17: code synced from the notebook\n"
    assert '  print("from /")\n' in (root / "posts" / "x.md").read_text()


def test_second_edit_of_a_cell_syncs_and_the_pair_stays_alike(tmp_path: Path) -> None:
    root = project_copy(tmp_path)
    assert in_process("notebooks", cwd=root).returncode == 0
    book = root / "snippets" / "x.sklearn.ipynb"
    twin = book.with_suffix(".py")
    post = root / "posts" / "x.md"
    for n, synced in enumerate([book, twin, book], 4):  # three edits of one cell, in turn
        edit_code(synced, f"np.arange({n - 1})", f"np.arange({n})")
        done = in_process("sync", synced, cwd=root)
        assert done.returncode == 0, done.stderr
        assert done.stdout == "posts/x.md:9: code synced from the notebook\n"
        assert f"print(np.arange({n}).sum())" in post.read_text()
        first = code_cells(book)[0]
        assert first == (f"import numpy as np\n\nprint(np.arange({n}).sum())",
                         code_hash(first[0]))  # the new code's hash, recorded
        assert code_cells(twin) == code_cells(book)  # the other file rewritten to match
    assert in_process("sync", book, cwd=root).stdout == (
        "nothing to sync: the notebooks match their posts\n")


def test_edits_in_both_files_of_the_pair_sync_together(tmp_path: Path) -> None:
    root = project_copy(tmp_path)
    assert in_process("notebooks", cwd=root).returncode == 0
    book = root / "snippets" / "x.sklearn.ipynb"
    edit_code(book, "np.arange(3)", "np.arange(5)")
    edit_code(book.with_suffix(".py"), "y = 1", "y = 2")
    done = in_process("sync", book.with_suffix(".py"), cwd=root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["posts/x.md:9: code synced from the notebook",
                                        "posts/x.md:30: code synced from the notebook"]
    text = (root / "posts" / "x.md").read_text()
    assert "np.arange(5)" in text and "y = 2\n" in text
    assert code_cells(book) == code_cells(book.with_suffix(".py"))
    edit_code(book, "y = 2", "y = 3")
    edit_code(book.with_suffix(".py"), "y = 2", "y = 4")
    done = in_process("sync", book, cwd=root)
    assert done.returncode == 1 and "edited differently in" in done.stderr
    assert "y = 2\n" in (root / "posts" / "x.md").read_text()


def test_recorded_table_and_figure_become_notebook_outputs(tmp_path: Path) -> None:
    """Pure: a post as `update` writes it (a fence, a figure link, a fence, a table)."""
    text = ("```python\nshow()\n```\n\n*Verified output:*\n\n```text runner:output\ndrawn\n```\n\n"
            "![Figure size 640x480 with 1 Axes](my%20post/snippet-1-figure-1.png)\n\n"
            "```text runner:output\nbefore\n```\n\n"
            "| id | a | b\\|c |\n| --- | --- | --- |\n| 7 | &lt;1&gt; | x\\\\y |\n\n"
            "[//]: # (end of verified output)\n")
    post = parse("my post.md", text)
    assert linked_figures(post) == ["my post/snippet-1-figure-1.png"]
    [snippet] = post.snippets
    outputs = recorded_outputs(post, snippet, {"my post/snippet-1-figure-1.png": b"\x89PNG"})
    assert [o.output_type for o in outputs] == ["stream", "display_data", "stream",
                                                "display_data"]
    assert outputs[0].text == "drawn\n" and outputs[2].text == "before\n"
    assert outputs[1].data == {"text/plain": "Figure size 640x480 with 1 Axes",
                               "image/png": "iVBORw=="}
    html = outputs[3].data["text/html"]
    assert "<th>id</th>" in html and "<th>b|c</th>" in html
    assert "<th>7</th>" in html and "<td>&lt;1&gt;</td>" in html and "<td>x\\y</td>" in html
    assert outputs[3].data["text/plain"] == "id    a  b|c\n7   <1>  x\\y"


def test_table_cells_read_back_as_the_dataframe_wrote_them() -> None:
    """What `writeback.markdown_table` escapes comes back exactly (but a newline: a space)."""
    from runner.notebooks import table_html
    from runner.writeback import markdown_table

    cells = ["a|b", "<script>", "&lt;", "\\|", "`x`", "[l](u)", "*e* _u_", "\\\\", "a\\b"]
    source = "<table><thead><tr><th></th>" + "".join(
        f"<th>{html_escape(c)}</th>" for c in cells) + "</tr></thead><tbody><tr><th>0</th>" + (
        "".join(f"<td>{html_escape(c)}</td>" for c in cells)) + "</tr></tbody></table>"
    block = "\n".join(markdown_table(source))
    post = parse("p.md", "```python\ndf\n```\n\n*Verified output:*\n\n" + block +
                 "\n\n[//]: # (end of verified output)\n")
    [table] = recorded_outputs(post, post.snippets[0], {})
    assert table.data["text/html"] == table_html([["", *cells], ["0", *cells]])
    assert "<th>&lt;script&gt;</th>" in table.data["text/html"]


def html_escape(text: str) -> str:
    import html

    return html.escape(text, quote=False)


@pytest.mark.kernel
def test_author_notebook_has_the_table_and_the_figure_of_the_last_run(tmp_path: Path) -> None:
    root = project_copy(tmp_path, FIXTURES / "posts" / "rich.md")
    done = run_cli("update", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert in_process("notebooks", cwd=root).returncode == 0
    book = nbformat.read(root / "snippets" / "x.sklearn.ipynb", as_version=4)
    nbformat.validate(book)
    figure, table, _, _ = [c.outputs for c in book.cells if c.cell_type == "code"]
    assert [o.output_type for o in figure] == ["stream", "display_data"]
    png = (root / "posts" / "x" / "snippet-1-figure-1.png").read_bytes()
    assert base64.b64decode(figure[1].data["image/png"]) == png
    assert [(o.output_type, o.get("text")) for o in table] == [("stream", "before\n"),
                                                               ("display_data", None)]
    assert "<th>b|c</th>" in table[1].data["text/html"]
    assert "<th>1</th>\n      <td>2</td>\n      <td>y</td>" in table[1].data["text/html"]
    assert table[1].data["text/plain"] == "   a  b|c\n0  1    x\n1  2    y"
    twin = (root / "snippets" / "x.sklearn.py").read_text()
    assert "image/png" not in twin  # the twin is code and prose only
