"""What decides a session's result: its cache key."""

from __future__ import annotations

from dataclasses import replace

import pytest

from runner import envs
from runner.decides import Inputs, kernel_inputs, session_key
from runner.markdown import parse
from runner.model import EnvSpec, Session
from runner.plan import plan
from tests.conftest import spec

ENV = spec("sklearn", "numpy")
POST = "```python\nimport numpy\nprint(1)\n```\n\n```python\nprint(2)\n```\n"


def session(text: str = POST):  # type: ignore[no-untyped-def]
    return plan(parse("p.md", text), {"sklearn": ENV})[0]


def key(s: Session | None = None, env: EnvSpec = ENV, timeout: float = 60,
        passenv: tuple[str, ...] = ()) -> str:
    return session_key(s or session(), Inputs({env.name: kernel_inputs(env, passenv)}, timeout))


def test_key_follows_code_lock_timeout_and_kernel_env_not_line_numbers() -> None:
    first = key()
    assert key(session("Prose above.\n\n" + POST)) == first
    assert key(session(POST.replace("print(2)", "print(3)"))) != first
    assert key(env=replace(ENV, lock_hash="1" * 64)) != first
    assert key(timeout=61) != first
    assert key(env=replace(ENV, kernel_env=(("A", "1"),))) != first
    marked = POST.replace("```python\nprint(2)", "```python runner:timeout=5\nprint(2)")
    assert key(session(marked)) != first
    one, two = (key(session(POST.replace("```python\nprint(2)",
                                         f"```python runner:env-var=A={value}\nprint(2)")))
                for value in (1, 2))
    assert len({first, one, two}) == 3  # a post's own variables, with no change to decides.py


def test_key_follows_every_variable_the_kernel_gets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20, item 9: what the kernel's environment holds decides what it prints (TZ,
    LANG, a thread count, [tool.runner] passenv, the kernel-env table, the env's own path on
    PATH), so each is in the key; what no kernel gets is not."""
    first = key()
    for name, value in (("TZ", "Test/Zone-1"), ("LANG", "xx_XX.TEST"), ("LC_TIME", "xx_XX"),
                        ("OMP_NUM_THREADS", "77"), ("HOME", "/test/home"),
                        ("PATH", "/test/bin"), (envs.CACHE_VARIABLE, "/test/cache")):
        with monkeypatch.context() as changed:
            changed.setenv(name, value)
            assert key() != first, name
    monkeypatch.setenv("RUNNER_TEST_SECRET", "not for kernels")
    monkeypatch.setenv("MY_SETTING", "1")
    assert key() == first
    assert key(passenv=("MY_SETTING",)) != first
    passed = key(passenv=("MY_SETTING",))
    monkeypatch.setenv("MY_SETTING", "2")
    assert key(passenv=("MY_SETTING",)) != passed
    assert key(env=replace(ENV, kernel_env=(("TZ", "UTC"),))) != first
    with monkeypatch.context() as changed:  # results made without a sandbox are not its
        changed.setenv("RUNNER_NO_SANDBOX", "1")
        assert key() != first
    built = envs.BuiltEnv(ENV, envs.env_path(ENV))  # what a kernel of the env is given
    assert kernel_inputs(ENV, ("MY_SETTING",))["variables"] == envs.kernel_env(
        built, ("MY_SETTING",))


