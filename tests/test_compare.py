"""runner.compare, and output that varies for good reasons: `runner:tolerance=`, `[tool.runner]
tolerance`, `runner:unordered` and `runner:output=none` through `render`, without kernels."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import config
from runner.compare import blocks_match, matches
from runner.errors import UsageError
from runner.markdown import parse
from runner.model import Output, Part
from runner.writeback import RenderOptions, render

# --- matches: numbers ------------------------------------------------------------------------


@pytest.mark.parametrize(("recorded", "fresh", "tolerance", "expected"), [
    # exact by default: tolerance 0 is today's comparison, number for number as written
    ("loss 0.5", "loss 0.5", 0.0, True),
    ("loss 0.5", "loss 0.5000001", 0.0, False),
    ("loss 1.0", "loss 1.00", 0.0, False),
    # relative: the difference against the larger of the two, the limit included
    ("loss 1.000000", "loss 1.000001", 1e-6, True),
    ("loss 1.000000", "loss 1.0000011", 1e-6, False),
    ("loss 0.12345679", "loss 0.12345678", 1e-6, True),  # the 8th digit
    ("mean 2900.19", "mean 2900.1900029", 1e-6, True),
    ("mean 2900.19", "mean 2900.18", 1e-6, False),
    ("mean 2900.19", "mean 2900.18", 1e-3, True),
    # an absolute floor near 0: rounding noise around zero matches, a real value does not
    ("bias 1e-17", "bias -2.3e-17", 1e-6, True),
    ("bias 2e-13", "bias -4e-13", 1e-6, True),
    ("bias 1e-10", "bias 3e-10", 1e-6, False),
    # negative numbers: the sign is the number's
    ("delta -0.5", "delta -0.5000001", 1e-6, True),
    ("delta -0.5", "delta 0.5", 1e-6, False),
    ("[-1.25, 3.5]", "[-1.2500001, 3.5000002]", 1e-6, True),
    # exponents, as numpy and Python print them
    ("lr 1e-05", "lr 1.0000001e-05", 1e-6, True),
    ("lr 1e-05", "lr 1e-06", 1e-6, False),
    ("n 1.5e+10", "n 1.5000001e+10", 1e-6, True),
    ("n 1.5E+10", "n 1.5000001E+10", 1e-6, True),
    ("huge 1e999999999", "huge 2e999999999", 1e-6, False),  # past Decimal's range: no match
    # integers are counts: equal or not, and never equal to a float
    ("Epoch 3/10", "Epoch 4/10", 0.5, False),
    ("params 23587712", "params 23587713", 1e-6, False),
    ("n=1", "n=1.0", 1e-6, False),
    ("n=1.0", "n=1", 1e-6, False),
    # the text between numbers is compared exactly, and the count of numbers too
    ("loss 0.5", "Loss 0.5", 1e-6, False),
    ("loss 0.5", "loss  0.5", 1e-6, False),
    ("x 1.0", "x 1.0 2.0", 1e-6, False),
    ("dtype float64", "dtype float32", 0.5, False),  # digits glued to a word are text
    ("v1.2.3", "v1.2.4", 0.5, False),
])
def test_numbers_within_the_tolerance(recorded: str, fresh: str, tolerance: float,
                                      expected: bool) -> None:
    assert matches(recorded, fresh, tolerance, unordered=False) is expected


@pytest.mark.parametrize(("recorded", "fresh", "expected"), [
    ("pi 3.14", "pi 3.14159", True),  # fewer digits recorded: the fresh one rounds to them
    ("pi 3.14", "pi 3.1449", True),
    ("pi 3.14", "pi 3.146", False),  # rounds to 3.15
    ("pi 3.14", "pi 3.135", True),  # a tie rounds either way
    ("pi 3.14", "pi 3.1349", False),
    ("pi 3.14159", "pi 3.14", False),  # more digits recorded: the tolerance only
    ("lr 1.2e-05", "lr 1.24e-05", True),  # the last digit's place, exponent included
    ("lr 1.2e-05", "lr 1.26e-05", False),
    ("total 3", "total 3.1", False),  # an integer is not a rounded float
    # Python prints a float's shortest form, and that form is a precision too: a recorded 0.75
    # takes 0.7543; print a fixed number of digits (f"{x:.6f}") to hold more of them
    ("acc 0.75", "acc 0.7543", True),
    ("acc 0.750000", "acc 0.754300", False),
])
def test_fewer_digits_recorded_match_by_rounding(recorded: str, fresh: str,
                                                 expected: bool) -> None:
    assert matches(recorded, fresh, 1e-6, unordered=False) is expected


def test_several_numbers_on_several_lines() -> None:
    recorded = "Epoch 1/2 - loss: 0.6931 - acc: 0.5000\nEpoch 2/2 - loss: 0.4055 - acc: 0.7500"
    fresh = "Epoch 1/2 - loss: 0.69314 - acc: 0.5\nEpoch 2/2 - loss: 0.405465 - acc: 0.75"
    assert matches(recorded, fresh, 1e-6, unordered=False)  # 0.5000 and 0.5: the same value
    assert not matches(recorded, fresh.replace("0.405465", "0.4049"), 1e-6, unordered=False)


# --- matches: unordered ----------------------------------------------------------------------


@pytest.mark.parametrize(("recorded", "fresh", "tolerance", "expected"), [
    ("a\nb\nc", "c\na\nb", 0.0, True),
    ("a\na\nb", "b\na\na", 0.0, True),  # duplicates counted
    ("a\na\nb", "a\nb\nb", 0.0, False),
    ("a\nb", "a\nb\nb", 0.0, False),
    ("a\nb", "a\nc", 0.0, False),
    ("x 1.0\nx 1.00", "x 1.00\nx 1.0", 0.0, True),  # same value, other digits: by text
    ("w 0.1000001\nw 0.2", "w 0.2000001\nw 0.1", 1e-5, True),  # and within the tolerance
    ("w 0.1000\nw 0.2000", "w 0.2000\nw 0.1003", 1e-5, False),
    ("w 0.1\nw 0.1\nw 0.2", "w 0.2\nw 0.1000001\nw 0.1", 1e-5, True),
    ("w 0.1\nw 0.1\nw 0.2", "w 0.2\nw 0.2000001\nw 0.1", 1e-5, False),
    ("epoch 1 0.5\nepoch 2 0.25", "epoch 2 0.2500001\nepoch 1 0.5", 1e-5, True),
    ("epoch 1 0.5\nepoch 2 0.25", "epoch 1 0.25\nepoch 2 0.5", 1e-5, False),  # ints pair lines
])
def test_unordered_lines_are_a_multiset(recorded: str, fresh: str, tolerance: float,
                                        expected: bool) -> None:
    assert matches(recorded, fresh, tolerance, unordered=True) is expected
    assert not matches(recorded, fresh, tolerance, unordered=False) or recorded == fresh


# --- blocks_match ----------------------------------------------------------------------------


def block(*parts: str, prefix: str = "", end: str = "\n") -> list[str]:
    lines = ["", "*Verified output:*"]
    for part in parts:
        lines += ["", *part.split("\n")]
    lines += ["", "[//]: # (end of verified output)"]
    return [(prefix + line).rstrip() + end for line in lines]


FENCE = "```text runner:output\n{}\n```"
TABLE = "| | score |\n| --- | --- |\n| 7 | {} |"


def test_blocks_match_in_their_fences_only() -> None:
    recorded = block(FENCE.format("0.12345679"), TABLE.format("0.5"))
    assert blocks_match(recorded, block(FENCE.format("0.12345678"), TABLE.format("0.5")),
                        1e-6, False)
    # tables (and figure links) keep today's rule: the same text
    assert not blocks_match(recorded, block(FENCE.format("0.12345679"), TABLE.format("0.5000001")),
                            1e-6, False)
    assert not blocks_match(recorded, block(FENCE.format("0.12345678")), 1e-6, False)
    stderr = "```text runner:stderr\n{}\n```"
    assert not blocks_match(block(FENCE.format("1.0")), block(stderr.format("1.0")), 1e-6, False)


def test_blocks_match_in_containers_and_with_any_line_ending() -> None:
    recorded = block(FENCE.format("b 0.1\n\na 0.2"), prefix="> ", end="\r\n")
    fresh = block(FENCE.format("a 0.2000001\n\nb 0.1"), prefix="> ", end="\n")
    assert blocks_match(recorded, fresh, 1e-6, True)
    assert not blocks_match(recorded, fresh, 1e-6, False)
    assert not blocks_match(recorded, [line.lstrip("> ") for line in fresh], 1e-6, True)


def test_an_unclosed_fence_matches_nothing_closed() -> None:
    recorded = block(FENCE.format("0.5"))
    assert not blocks_match(recorded[:-4] + recorded[-2:], recorded, 1e-6, False)


# --- render: the recorded block stays when it matches ----------------------------------------


POST = """# Training

```python runner:tolerance=1e-6
print(loss)
```

*Verified output:*

```text runner:output
loss 0.12345679
```

[//]: # (end of verified output)

Prose after.
"""


def test_render_keeps_the_recorded_block_within_the_tolerance() -> None:
    post = parse("p.md", POST)
    assert render(post, {3: Output("loss 0.12345678\n")}) == POST
    assert render(post, {3: Output("loss 0.123457\n")}) == POST.replace("0.12345679",
                                                                        "0.123457")


def test_render_replaces_the_block_when_text_or_shape_changed() -> None:
    post = parse("p.md", POST)
    assert render(post, {3: Output("loss 0.12345\n")}) == POST.replace("0.12345679", "0.12345")
    assert render(post, {3: Output("Loss 0.12345679\n")}) == POST.replace("loss 0", "Loss 0")
    gained = render(post, {3: Output("loss 0.12345678\n", "warning\n")})
    assert "loss 0.12345678\n" in gained and "```text runner:stderr\nwarning\n```" in gained
    html = "<table><tr><th>a</th></tr><tr><td>1</td></tr></table>"
    table = Output(parts=(Part("text", "loss 0.12345678\n"), Part("table", "0", html)))
    assert "| a |" in render(post, {3: table})


def test_project_tolerance_and_the_marker_that_overrides_it() -> None:
    text = POST.replace(" runner:tolerance=1e-6", "")
    fresh = {3: Output("loss 0.12345678\n")}
    changed = text.replace("0.12345679", "0.12345678")
    assert render(parse("p.md", text), fresh) == changed  # default: exact
    assert render(parse("p.md", text), fresh, RenderOptions(tolerance=1e-6)) == text
    exact = parse("p.md", POST.replace("1e-6", "0"))
    assert render(exact, fresh, RenderOptions(tolerance=1e-6)) == \
        changed.replace("```python", "```python runner:tolerance=0")
    looser = parse("p.md", POST.replace("1e-6", "1e-3"))
    assert render(looser, {3: Output("loss 0.1235\n")}, RenderOptions(tolerance=1e-9)) == \
        POST.replace("1e-6", "1e-3")


UNORDERED = """```python runner:unordered
print(set(words))
```

*Verified output:*

```text runner:output
{'b', 'a', 'c'}
b
a
```

[//]: # (end of verified output)
"""


def test_render_keeps_unordered_lines() -> None:
    post = parse("p.md", UNORDERED)
    assert render(post, {1: Output("a\n{'b', 'a', 'c'}\nb\n")}) == UNORDERED
    # lines are the unit: an order inside a line is the line's text
    moved = render(post, {1: Output("{'a', 'b', 'c'}\nb\na\n")})
    assert moved == UNORDERED.replace("{'b', 'a', 'c'}", "{'a', 'b', 'c'}")
    assert render(post, {1: Output("b\na\n")}) == UNORDERED.replace("{'b', 'a', 'c'}\n", "")


NO_OUTPUT = """```python runner:output=none
for epoch in range(3):
    print(epoch, loss())
```

*Verified output:*

```text runner:output
0 0.9
```

[//]: # (end of verified output)

After.
"""


def test_output_none_records_nothing_and_removes_a_block() -> None:
    post = parse("p.md", NO_OUTPUT)
    bare = NO_OUTPUT.split("\n*Verified")[0] + "\nAfter.\n"
    assert render(post, {1: Output("0 0.8\n1 0.5\n", "warn\n")}) == bare  # update removes it
    assert render(parse("p.md", bare), {1: Output("0 0.8\n")}) == bare  # and writes none
    figure = Output(parts=(Part("image", "<Figure>", png=b"png"),))
    assert render(parse("p.md", bare), {1: figure}) == bare


@pytest.mark.parametrize("text", [POST, UNORDERED, NO_OUTPUT, POST.replace("\n", "\r\n"),
                                  "> " + POST.replace("\n", "\n> ")])
def test_update_is_idempotent_with_these_markers(text: str) -> None:
    post = parse("p.md", text)
    first = {s.line: Output("c 0.3\nb 0.20000001\na 0.1\n") for s in post.snippets}
    again = {s.line: Output("c 0.30000001\nb 0.2\na 0.1\n") for s in post.snippets}
    options = RenderOptions(tolerance=1e-6)
    once = render(post, first, options)
    assert render(parse("p.md", once), first, options) == once
    assert render(parse("p.md", once), again, options) == once  # a run within the rules


# --- the project setting ---------------------------------------------------------------------


def project(tmp_path: Path, setting: str) -> Path:
    (tmp_path / "pyproject.toml").write_text(f"[tool.runner]\n{setting}\n")
    return tmp_path


def test_project_tolerance(tmp_path: Path) -> None:
    assert config.load(project(tmp_path, "")).tolerance == 0.0
    assert config.load(project(tmp_path, "tolerance = 1e-6")).tolerance == 1e-6
    assert config.load(project(tmp_path, "tolerance = 0")).tolerance == 0.0


@pytest.mark.parametrize("value", ["-1e-6", "1", "2.5", "true", '"1e-6"', "nan", "inf"])
def test_bad_project_tolerance(tmp_path: Path, value: str) -> None:
    with pytest.raises(UsageError, match="tolerance must be a relative tolerance"):
        config.load(project(tmp_path, f"tolerance = {value}"))


def test_kept_in_crlf_posts_and_at_the_end_of_a_post_without_newline() -> None:
    fresh = {3: Output("loss 0.12345678\n")}
    crlf = POST.replace("\n", "\r\n")
    assert render(parse("p.md", crlf), fresh) == crlf
    last = POST.split("\nProse after.")[0].rstrip("\n")
    assert render(parse("p.md", last), fresh) == last
