"""Figures, tables, long output, the stamp, determinism and normalisation: through the CLI on
real kernels, and the pure helpers on their own."""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from runner.atomic import write_atomic
from runner.config import Config
from runner.images import same_picture
from runner.writeback import markdown_table
from tests.conftest import FIXTURES, ROOT, run_cli

runner = run_cli


def png(size: tuple[int, int] = (40, 30), color: tuple[int, int, int] = (255, 255, 255),
        dots: int = 0, level: int = 6) -> bytes:
    image = Image.new("RGB", size, color)
    for x in range(dots):
        image.putpixel((x % size[0], x // size[0]), (0, 0, 0))
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=level)
    return out.getvalue()


# --- pure helpers ----------------------------------------------------------------------------


def test_same_picture_compares_pixels_not_bytes() -> None:
    white = png()
    assert png(level=1) != white and same_picture(white, png(level=1))  # other bytes, same image
    assert same_picture(white, png(dots=5))  # 5 of 1200 pixels: within the 0.5 % tolerance
    assert not same_picture(white, png(dots=12))
    assert not same_picture(white, png(size=(40, 31)))
    assert not same_picture(white, png(color=(0, 0, 0)))
    assert not same_picture(white, b"not a png")


DATAFRAME = """<div><style scoped>.dataframe tbody tr th { vertical-align: top; }</style>
<table border="1" class="dataframe">
  <thead>
    <tr style="text-align: right;"><th></th><th>score</th><th>name</th></tr>
    <tr><th>id</th><th></th><th></th></tr>
  </thead>
  <tbody>
    <tr><th>7</th><td>0.5</td><td>a|b</td></tr>
    <tr><th>9</th><td>1.0</td><td>c</td></tr>
  </tbody>
</table></div>"""


def test_dataframe_html_becomes_a_markdown_table() -> None:
    assert markdown_table(DATAFRAME) == [
        "| id | score | name |",
        "| --- | --- | --- |",
        "| 7 | 0.5 | a\\|b |",
        "| 9 | 1.0 | c |",
    ]


def test_spanning_cells_fall_back_to_text() -> None:
    spanning = DATAFRAME.replace("<th>score</th>", '<th colspan="2">score</th>')
    assert markdown_table(spanning) == []


def test_atomic_write_crash_leaves_the_old_file(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash between writing and renaming cannot be caused for real in a test: os.replace is
    made to fail (a fake fault). The old post must stay whole and no temp file remain."""
    post = tmp_path / "p.md"
    post.write_bytes(b"old\r\n")
    post.chmod(0o640)

    def crash(*args: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_atomic(post, b"new\r\n")
    assert post.read_bytes() == b"old\r\n" and os.listdir(tmp_path) == ["p.md"]
    monkeypatch.undo()
    write_atomic(post, b"new\r\n")
    assert post.read_bytes() == b"new\r\n" and post.stat().st_mode & 0o777 == 0o640


# --- through the CLI, real kernels -----------------------------------------------------------


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rich")
    post = folder / "rich.md"
    shutil.copy(FIXTURES / "posts" / "rich.md", post)
    # --no-cache: this module's own kernel run, not results another test stored for the same
    # session (test_authors runs a copy of rich.md first), so a failure here is this run's
    done = runner("update", "--no-cache", post)
    assert done.returncode == 0, done.stdout + done.stderr
    return post


@pytest.mark.kernel
def test_figure_is_saved_beside_the_post_and_linked(rich: Path) -> None:
    figure = rich.parent / "rich" / "snippet-1-figure-1.png"
    width, height = Image.open(figure).size  # the inline backend crops to the drawing
    assert Image.open(figure).format == "PNG" and width > 300 and height > 200
    text = rich.read_text()  # on failure, every figure link (pytest elides the middle of text)
    assert "![squares](rich/snippet-1-figure-1.png)" in text, re.findall(r"!\[.*?\]\(.*?\)", text)


@pytest.mark.kernel
def test_figure_alt_text_is_its_title_else_its_place(rich: Path) -> None:
    """The suptitle before an axes title, brackets dropped; an untitled figure is named by its
    place (not by matplotlib's repr)."""
    text = rich.read_text()
    assert "![Two panels draft](rich/snippet-4-figure-1.png)" in text
    assert "![Figure 2 of snippet 4](rich/snippet-4-figure-2.png)" in text
    assert "Figure size" not in text


@pytest.mark.kernel
def test_dataframe_is_a_table_after_the_text_printed_before_it(rich: Path) -> None:
    text = rich.read_text()
    assert "```text runner:output\nbefore\n```\n\n|  | a | b\\|c |\n| --- | --- | --- |\n" in text
    assert "| 1 | 2 | y |" in text


@pytest.mark.kernel
def test_long_output_is_cut_with_a_marker(rich: Path) -> None:
    text = rich.read_text()
    assert "\n199\n... [50 more lines cut by the runner]\n```" in text
    assert "\n200\n" not in text


@pytest.mark.kernel
def test_rerun_is_byte_identical_and_stamped(rich: Path) -> None:
    figure = rich.parent / "rich" / "snippet-1-figure-1.png"
    before, picture = rich.read_bytes(), figure.read_bytes()
    assert b'\nverified_by: "runner ' in before and b" sklearn " in before
    assert runner("update", rich).returncode == 0
    assert rich.read_bytes() == before and figure.read_bytes() == picture
    assert runner("verify", rich).returncode == 0


@pytest.mark.kernel
def test_changed_figure_makes_the_post_stale(rich: Path) -> None:
    figure = rich.parent / "rich" / "snippet-1-figure-1.png"
    original = figure.read_bytes()
    try:
        Image.open(io.BytesIO(original)).save(figure, "PNG", compress_level=0)  # same pixels
        assert figure.read_bytes() != original
        assert runner("verify", rich).returncode == 0
        figure.write_bytes(png(size=Image.open(io.BytesIO(original)).size, color=(0, 0, 0)))
        changed = figure.read_bytes()
        stale = runner("verify", rich)
        assert stale.returncode == 1
        assert re.search(rf"figure {re.escape(str(figure))}: [\d.]+ % of pixels differ by more "
                         "than 16/255\n", stale.stdout), stale.stdout
        assert figure.read_bytes() == changed  # verify writes nothing
        figure.unlink()
        missing = runner("verify", rich)
        assert missing.returncode == 1 and f"figure {figure}: missing\n" in missing.stdout
    finally:
        figure.write_bytes(original)


@pytest.mark.kernel
def test_edited_stamp_is_stale_and_update_restores_it(rich: Path) -> None:
    original = rich.read_text()
    rich.write_text(original.replace('verified_by: "runner', 'verified_by: "hand'))
    assert runner("verify", rich).returncode == 1
    assert runner("update", rich).returncode == 0
    assert rich.read_text() == original


@pytest.mark.kernel
def test_check_determinism_fails_output_that_changes(tmp_path: Path, project: Config) -> None:
    from runner.run import Options, run_posts

    post = tmp_path / "random.md"
    post.write_text("```python runner:env=sklearn\nprint('same')\n```\n\n"
                    "```python\nimport random\nprint(random.random())\n```\n")
    run = run_posts([post], project, Options(check_determinism=True))
    assert run.exit_code == 1
    first, second = run.snippets
    assert first.status == "passed"
    assert second.status == "failed" and second.error is not None
    assert second.error.type == "Nondeterministic"
    assert "output differs between two runs" in second.error.message
    assert not any(r.cached for r in run.snippets)


@pytest.mark.kernel
def test_project_normalize_patterns(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.runner]\nenvs = "{ROOT / "envs"}"\n'
        '[[tool.runner.normalize]]\npattern = "\\\\d{4}-\\\\d{2}-\\\\d{2}"\nreplace = "DATE"\n')
    post = tmp_path / "today.md"
    post.write_text("```python runner:env=sklearn\nimport datetime\n"
                    "print('today is', datetime.date.today())\n```\n")
    assert runner("update", post, cwd=tmp_path).returncode == 0
    assert "today is DATE\n" in post.read_text()
    assert runner("verify", post, cwd=tmp_path).returncode == 0


def test_bad_normalize_pattern_exits_2(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.runner]\n[[tool.runner.normalize]]\npattern = "(unclosed"\n')
    done = runner("verify", cwd=tmp_path)
    assert done.returncode == 2 and "(unclosed" in done.stderr


VARYING = """# Varying output

```python runner:env=sklearn
loss = 0.12345678  # a CPU or BLAS of another kind: 0.12345679
print(loss, 2 ** 0.5)
```

*Verified output:*

```text runner:output
0.12345679 1.4142136
```

[//]: # (end of verified output)

```python runner:unordered
for word in ["b", "a"]:
    print(word)
```

*Verified output:*

```text runner:output
a
b
```

[//]: # (end of verified output)

```python runner:output=none
print("epoch 1: loss", 0.5)
```

Prose.
"""


@pytest.mark.kernel
def test_output_within_the_tolerance_leaves_the_post_byte_identical(tmp_path: Path,
                                                                    project: Config) -> None:
    """Printed: `0.12345678 1.4142135623730951`; recorded: the first different in its 8th
    digit (within 1e-6), the second with fewer digits (to which it rounds). With the project's
    tolerance the post verifies and update writes nothing; unordered lines and a snippet that
    records nothing change nothing either."""
    from dataclasses import replace

    from runner.run import Options, run_posts

    config = replace(project, tolerance=1e-6, cache_dir=tmp_path / "cache")
    post = tmp_path / "varying.md"
    post.write_bytes(VARYING.encode())
    verified = run_posts([post], config)
    assert verified.posts[0].status == "passed", (verified.posts[0].diff, verified.snippets)
    assert [r.output.stdout for r in verified.snippets] == [
        "0.12345678 1.4142135623730951\n", "b\na\n", "epoch 1: loss 0.5\n"]
    updated = run_posts([post], config, Options(mode="update"))
    assert updated.posts[0].status == "passed" and not updated.posts[0].written
    assert post.read_bytes() == VARYING.encode()
    exact = run_posts([post], replace(config, tolerance=0.0))  # the default: every digit
    assert exact.posts[0].status == "stale" and "+0.12345678 1.4142135623730951" in \
        exact.posts[0].diff


# --- figures: what differs, and determinism ----------------------------------------------------


def test_picture_difference_says_what_differs() -> None:
    from runner.images import difference

    white = png()
    assert difference(white, png(level=1)) is None and difference(white, png(dots=5)) is None
    assert difference(white, png(dots=150)) == "12.5 % of pixels differ by more than 16/255"
    assert difference(white, png(color=(0, 0, 0))) == "100 % of pixels differ by more than 16/255"
    assert difference(png(size=(640, 480)), png(size=(800, 600))) == "size 640x480 -> 800x600"
    assert difference(b"not a png", white) == "not a picture"


def test_stale_figure_notes_say_what_differs(tmp_path: Path) -> None:
    from runner.markdown import parse
    from runner.model import Output, Part
    from runner.posts import freshen
    from runner.writeback import RenderOptions

    path = tmp_path / "p.md"
    post = parse(str(path), "".join(f"```python\nprint({n})\n```\n\n" for n in range(4)))
    drawn = [png(), png(size=(800, 600)), png(dots=150), png(level=1)]
    on_disk = [None, png(size=(640, 480)), png(), png()]
    (tmp_path / "p").mkdir()
    for number, data in enumerate(on_disk, 1):
        if data is not None:
            (tmp_path / "p" / f"snippet-{number}-figure-1.png").write_bytes(data)
    outputs = {s.line: Output(parts=(Part("image", "<Figure>", png=picture),))
               for s, picture in zip(post.snippets, drawn, strict=True)}
    fresh = freshen(path, post, outputs, "", RenderOptions())
    figure = tmp_path / "p"
    assert fresh.notes() == (f"figure {figure}/snippet-1-figure-1.png: missing\n"
                             f"figure {figure}/snippet-2-figure-1.png: size 640x480 -> 800x600\n"
                             f"figure {figure}/snippet-3-figure-1.png: 12.5 % of pixels differ "
                             "by more than 16/255\n")


FIGURE = ("```python runner:env=sklearn\nimport matplotlib.pyplot as plt\nimport numpy as np\n\n"
          "plt.imshow({data})\nplt.show()\n```\n")


@pytest.mark.kernel
@pytest.mark.parametrize("update", [False, True], ids=["verify", "update"])
def test_check_determinism_with_a_figure(tmp_path: Path, project: Config, update: bool) -> None:
    # It crashed (StopIteration) on any figure: the two runs' blocks were drawn without links.
    from runner.run import Options, run_posts

    post = tmp_path / "figure post.md"
    post.write_text(FIGURE.format(data="np.arange(400).reshape(20, 20)"))
    options = Options(mode="update" if update else "verify", check_determinism=True)
    run = run_posts([post], project, options)
    [snippet] = run.snippets
    assert snippet.status == "passed", snippet.error
    figure = tmp_path / "figure post" / "snippet-1-figure-1.png"
    if update:
        assert run.exit_code == 0 and figure.is_file()
        assert "(figure%20post/snippet-1-figure-1.png)" in post.read_text()
        again = run_posts([post], project, Options(check_determinism=True))
        assert again.exit_code == 0
    else:
        assert run.posts[0].status == "stale" and not figure.exists()


@pytest.mark.kernel
def test_check_determinism_says_which_figure_differs(tmp_path: Path, project: Config) -> None:
    from runner.run import Options, run_posts

    post = tmp_path / "noise.md"
    post.write_text(FIGURE.format(data="np.random.rand(20, 20)"))
    run = run_posts([post], project, Options(check_determinism=True))
    [snippet] = run.snippets
    assert snippet.status == "failed" and snippet.error is not None
    assert snippet.error.type == "Nondeterministic"
    assert re.fullmatch(r"output differs between two runs: figure 1: [\d.]+ % of pixels differ "
                        r"by more than 16/255", snippet.error.message), snippet.error.message
