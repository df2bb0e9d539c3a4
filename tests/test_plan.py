from __future__ import annotations

import pytest

from runner.errors import PlanError
from runner.markdown import parse
from runner.plan import plan, third_party_imports
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


def test_import_no_env_provides_names_its_post_line() -> None:
    text = post(("", "import os\n\nimport torch"))
    with pytest.raises(PlanError) as caught:
        plan(parse("posts/p.md", text), ENVS)
    assert caught.value.line == 4 and caught.value.path == "posts/p.md"
    assert "no environment provides 'torch'" in str(caught.value)
    assert str(caught.value).startswith("posts/p.md:4: ")


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
