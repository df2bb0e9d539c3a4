"""Shared fixtures: the project's own configuration and its built environments."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import config, envs
from runner.model import EnvSpec

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def project() -> config.Config:
    return config.load(ROOT)


@pytest.fixture(scope="session")
def built(project: config.Config):  # type: ignore[no-untyped-def]
    """Build (or find, in the shared cache) a named environment of the project."""
    cache: dict[str, envs.BuiltEnv] = {}

    def get(name: str) -> envs.BuiltEnv:
        if name not in cache:
            cache[name] = envs.build(project.envs[name])
        return cache[name]

    return get


def spec(name: str, *dists: str) -> EnvSpec:
    """An environment as the planner sees it: a name and its pinned distributions."""
    return EnvSpec(name=name, folder=Path("envs") / name, lock_hash="0" * 64,
                   distributions=frozenset(dists))
