"""Environments built for real with uv, in a private cache folder."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from runner import config, envs
from tests.conftest import ROOT


@pytest.fixture
def small_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project with one small env: ipykernel alone, locked by uv pip compile."""
    monkeypatch.setenv(envs.CACHE_VARIABLE, str(tmp_path / "cache"))
    (tmp_path / "pyproject.toml").write_text("[tool.runner]\n")
    env = tmp_path / "envs" / "small"
    env.mkdir(parents=True)
    (env / "requirements.in").write_text("ipykernel\n")
    envs.compile_lock(env)
    return tmp_path


def test_build_then_reuse_without_uv(small_project: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    spec = config.load(small_project).envs["small"]
    assert not envs.is_built(spec)
    built = envs.build(spec, say=lambda _: None)
    assert envs.is_built(spec)
    kernel = built.kernels_dir / "runner-small" / "kernel.json"
    assert str(built.python) in kernel.read_text()
    version = subprocess.run([built.python, "-c", "import ipykernel; print('ok')"],
                             capture_output=True, text=True)
    assert version.stdout == "ok\n"

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError("an unchanged lock must not run uv")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    assert envs.build(spec).prefix == built.prefix


def test_changed_lock_builds_a_new_env(small_project: Path) -> None:
    before = config.load(small_project).envs["small"]
    lock = small_project / "envs" / "small" / "requirements.lock"
    lock.write_text(lock.read_text() + "\n# edited\n")
    after = config.load(small_project).envs["small"]
    assert after.lock_hash != before.lock_hash
    assert envs.env_path(after) != envs.env_path(before)
    assert not envs.is_built(after)


def test_half_built_env_is_built_again(small_project: Path) -> None:
    spec = config.load(small_project).envs["small"]
    path = envs.env_path(spec)
    path.mkdir(parents=True)
    (path / "junk").write_text("left by a build that was cut off")
    built = envs.build(spec, say=lambda _: None)
    assert envs.is_built(spec) and not (built.prefix / "junk").exists()


def test_broken_lock_is_an_env_error(small_project: Path) -> None:
    lock = small_project / "envs" / "small" / "requirements.lock"
    lock.write_text("no-such-distribution-for-runner-tests==0.0.1 --hash=sha256:" + "0" * 64)
    spec = config.load(small_project).envs["small"]
    with pytest.raises(envs.EnvError) as caught:
        envs.build(spec, say=lambda _: None)
    assert "environment 'small'" in str(caught.value)
    assert not envs.is_built(spec)


def test_project_locks_pin_exact_versions_with_hashes() -> None:
    project = config.load(ROOT)
    assert sorted(project.envs) == ["fastapi", "sklearn", "tensorflow"]
    for spec in project.envs.values():
        text = spec.lock.read_text()
        pins = [line for line in text.splitlines() if line and line[0].isalnum()]
        assert pins and all("==" in line for line in pins)
        assert text.count("--hash=sha256:") >= len(pins)
        assert "ipykernel" in spec.distributions
    assert "tensorflow-cpu" in project.envs["tensorflow"].distributions
    assert {"uvicorn", "httpx", "joblib", "scikit-learn"} <= project.envs["fastapi"].distributions

