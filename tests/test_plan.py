from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import PlanError
from runner.markdown import parse
from runner.plan import capped, plan, third_party_imports
from tests.conftest import spec

ENVS = {
    "fastapi": spec("fastapi", "fastapi", "starlette", "pydantic", "uvicorn", "httpx", "joblib",
                    "scikit-learn", "numpy"),
    "sklearn": spec("sklearn", "scikit-learn", "joblib", "numpy", "pandas", "matplotlib"),
    "tensorflow": spec("tensorflow", "tensorflow-cpu", "keras", "numpy"),
}


def post(*blocks: str, front: str = "") -> str:
    head = f"---\n{front}\n---\n\n" if front else ""
    return head + "\n".join(f"```python{info}\n{code}\n```\n" for info, code in blocks)


def envs_of(text: str) -> list[tuple[str, list[int]]]:
    return [(s.env, [x.line for x in s.snippets]) for s in plan(parse("p.md", text), ENVS)]


def test_imports_pick_the_env_that_provides_them() -> None:
    text = post(("", "import sklearn.linear_model\nimport pandas"),
                ("", "import tensorflow as tf"),
                ("", "from fastapi import FastAPI"))
    assert envs_of(text) == [("sklearn", [1]), ("tensorflow", [6]), ("fastapi", [10])]


def test_import_name_differs_from_distribution() -> None:
    # `sklearn` is provided by scikit-learn; `tensorflow` by tensorflow-cpu
    assert third_party_imports("from sklearn import svm\nimport os\nimport tensorflow") == (
        "sklearn", "tensorflow")
    assert envs_of(post(("", "import tensorflow"))) == [("tensorflow", [1])]


def test_snippet_without_imports_stays_with_the_previous_one() -> None:
    text = post(("", "import tensorflow as tf"), ("", "print(tf.__version__)"),
                ("", "import os\nprint(os.sep)"))
    assert envs_of(text) == [("tensorflow", [1, 5, 9])]


def test_ambiguous_imports_prefer_the_previous_snippets_env() -> None:
    text = post(("", "import tensorflow"), ("", "import numpy"))
    assert envs_of(text) == [("tensorflow", [1, 5])]
    # with no previous snippet, the smallest env that provides them
    assert envs_of(post(("", "import numpy"))) == [("tensorflow", [1])]
    assert envs_of(post(("", "import sklearn"))) == [("sklearn", [1])]


def test_marker_and_front_matter_choose_the_env() -> None:
    text = post(("", "import numpy"), (" runner:env=sklearn", "import numpy"),
                front="runner:\n  env: tensorflow")
    assert envs_of(text) == [("tensorflow", [6]), ("sklearn", [10])]


def test_snippets_of_one_env_share_a_session_in_post_order() -> None:
    text = post(("", "import sklearn"), ("", "import tensorflow"), ("", "import pandas"))
    assert envs_of(text) == [("sklearn", [1, 9]), ("tensorflow", [5])]


def test_import_no_env_provides_fails_its_snippet_at_the_import_line() -> None:
    text = post(("", "x = 1"), ("", "import os\n\nimport torch"), ("", "print(x)"))
    [session] = plan(parse("posts/p.md", text), ENVS)
    assert [s.line for s in session.snippets] == [1, 5, 11]  # the snippets before it still run
    [(fence, kind, message, line)] = session.failures
    assert (fence, kind, line) == (5, "ModuleNotFoundError", 8)
    assert message.startswith("no environment provides 'torch' (known: fastapi, sklearn, "
                              "tensorflow): add its package to an env's requirements.in")


def test_a_typo_in_an_import_asks_did_you_mean() -> None:
    [session] = plan(parse("p.md", post(("", "from sklear import svm"))), ENVS)
    assert session.failures[0][2] == "no environment provides 'sklear': did you mean 'sklearn'?"


def test_one_env_runs_the_whole_post_when_one_provides_every_import() -> None:
    # numpy, then keras, then a name from the first snippet: the tensorflow env runs all three
    text = post(("", "import numpy as np\nx = np.arange(3)"), ("", "import keras"),
                ("", "print(x)"))
    [session] = plan(parse("p.md", text), ENVS)
    assert (session.env, len(session.snippets), session.split) == ("tensorflow", 3, "")


def test_a_split_post_says_why_and_a_name_error_says_where() -> None:
    from runner.model import ErrorInfo, SnippetResult
    from runner.settle import explain_split

    text = post(("", "import pandas\nx = 1"), ("", "import tensorflow"), ("", "print(x)"))
    parsed = parse("p.md", text)
    sessions = plan(parsed, ENVS)
    assert [(s.env, [x.line for x in s.snippets]) for s in sessions] == [
        ("sklearn", [1]), ("tensorflow", [6, 10])]
    assert all(s.split == "no one env provides every import of the post (pandas, tensorflow)"
               for s in sessions)
    failed = SnippetResult(parsed.snippets[2], "tensorflow", "failed",
                           error=ErrorInfo("NameError", "name 'x' is not defined", 11))
    explained = explain_split(parsed, sessions, failed)
    assert explained.error is not None and explained.error.message == (
        "name 'x' is not defined here; it is defined at line 1, which runs in env 'sklearn': "
        "no one env provides every import of the post (pandas, tensorflow)")


PINNED = {"sklearn": spec("sklearn", "scikit-learn", "numpy", "pandas",
                          pins=(("numpy", "2.1.3"), ("pandas", "2.2.3"),
                                ("scikit-learn", "1.5.2")))}


@pytest.mark.parametrize(("line", "problem"), [
    ("%pip install numpy pandas", None),
    ("!pip install -q 'numpy>=2,<3' scikit-learn==1.5.2", None),
    ("!uv pip install -U pandas", None),
    ("!python -m pip install --quiet -r requirements.txt numpy", None),
    ("%conda install -c conda-forge numpy", None),
    ("!pip install torch", "torch is not in env 'sklearn': add it to envs/sklearn/requirements.in"),
    ("%pip install 'numpy<2'", "numpy<2 is not what env 'sklearn' pins (numpy 2.1.3)"),
])
def test_install_lines_are_checked_against_the_lock(line: str, problem: str | None) -> None:
    [session] = plan(parse("p.md", post(("", f"import numpy\n{line}\nprint(1)"))), PINNED)
    if problem is None:
        assert session.failures == ()
    else:
        [(fence, kind, message, at)] = session.failures
        assert (fence, kind, at) == (1, "NotInEnv", 3) and message.startswith(problem)


def test_install_lines_become_pass_in_the_cell() -> None:
    from runner.plan import neutralized

    code = "import numpy\n  %pip install numpy\n!pip list\nx = 1"
    assert neutralized(code) == "import numpy\n  pass  # %pip install numpy\n!pip list\nx = 1"


def test_unknown_env_marker_is_an_error_at_the_fence() -> None:
    with pytest.raises(PlanError) as caught:
        plan(parse("p.md", "text\n\n```python runner:env=nope\nx = 1\n```\n"), ENVS)
    assert caught.value.line == 3 and "unknown environment 'nope'" in caught.value.message


def test_import_names_from_config_override_the_table() -> None:
    envs = {"a": spec("a", "my-dist")}
    assert [s.env for s in plan(parse("p.md", post(("", "import mymod"))), envs,
                                {"mymod": "my-dist"})] == ["a"]


def test_magics_do_not_hide_imports() -> None:
    assert third_party_imports("%matplotlib inline\nimport pandas as pd\n!pip list") == ("pandas",)


def test_a_timeout_marker_lowers_the_runs_timeout_never_raises_it() -> None:
    text = post((" runner:timeout=1e300", "a = 1"), (" runner:timeout=5", "b = 2"), ("", "c = 3"),
                (" runner:timeout=60", "d = 4"))
    parsed = parse("p.md", text)
    timeouts = [s.markers.timeout for s in capped(parsed, 60.0).snippets]
    assert timeouts == [60.0, 5.0, None, 60.0]  # the run's 60 s, or less; no marker: the run's
    assert capped(parsed, 60.0).snippets[1] == parsed.snippets[1]
    [session] = plan(capped(parsed, 60.0), ENVS)
    assert [s.markers.timeout for s in session.snippets] == timeouts


@pytest.mark.parametrize(("glob", "path", "granted"), [
    ("posts/net*.md", "posts/net-a.md", True),
    ("posts/net*.md", "posts/net-sub/deeper/evil.md", False),  # `*` never crosses a `/`
    ("posts/*/x.md", "posts/a/b/x.md", False),
    ("posts/?.md", "posts/ab.md", False),
    ("posts/**/x.md", "posts/a/b/x.md", True),
    ("posts/**/x.md", "posts/x.md", True),
    ("posts/a.md", "posts/a.md", True),
])
def test_a_network_grant_matches_paths_part_by_part(tmp_path: Path, glob: str, path: str,
                                                    granted: bool) -> None:
    from runner.config import Config

    config = Config(root=tmp_path, posts=tmp_path / "posts", snippets=tmp_path, envs={},
                    import_names={}, timeout=1, network_posts=(glob,))
    assert config.grants_network(tmp_path / path) is granted
