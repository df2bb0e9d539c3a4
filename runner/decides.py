"""What decides a result: the one statement of every input a session's results depend on.

A session's results are decided by its own code and markers (not its line numbers: moving a
snippet down the post does not change what it prints), the files beside its post (their
bytes and modes: `beside.Beside.digest`), and the run's `Inputs`: for each env, what its
kernels are given (`kernel_inputs` for the local backend: the runner, the lock, the limits,
every variable of the kernel's environment, the sandbox) and the per-snippet timeout.

The execution cache keys a session by `session_key`; a verdict (`verdicts.Verdicts`) is
decided by `verdict_basis`, which holds all of `Inputs` and what decides how results become
a post's outcome. What is not here cannot change a cached result or a replayed verdict, so
a new input is added here once, and both see it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from runner import __version__
from runner.envs import env_path, kernel_variables
from runner.model import EnvSpec, Session

FORMAT = 2  # the shape of what is hashed: a new one makes every cache entry a miss


@dataclass(frozen=True)
class Inputs:
    """What decides every session's results in a run, beyond each session's own."""

    kernels: Mapping[str, Mapping[str, Any]]  # per env: what its kernels are given
    timeout: float  # seconds per snippet (a snippet's runner:timeout is capped by it)


def kernel_inputs(env: EnvSpec, passenv: Sequence[str] = ()) -> dict[str, Any]:
    """Every input of a local kernel of `env` that decides what a session prints, apart from
    the session's own: the runner, the env's lock and limits, and the kernel's environment as
    the kernel will get it (`envs.kernel_variables`: the allowed part of this process's
    environment, `passenv`, the env's kernel-env table, the env's own bin/ on PATH): change
    TZ, and neither the cache nor a verdict replays what was made under the old one.

    Nothing is left out of the variables, though some differ from machine to machine (HOME,
    USER, the env's path, in VIRTUAL_ENV and PATH, under the machine's cache folder): an
    entry made on one machine is then a miss on another, which runs it again. The cache is
    the machine's own; a miss costs a run, never a result."""
    return {"format": FORMAT, "runner": __version__, "env": env.name, "lock": env.lock_hash,
            "limits": [env.memory_mb, env.processes],
            "variables": kernel_variables(env, env_path(env), passenv, os.environ),
            # the sandbox the kernel will be in, as far as it is known before any is made
            # (bubblewrap there, not turned off) and as whom it runs (as root: `nobody`)
            "sandbox": [shutil.which("bwrap") is not None
                        and not os.environ.get("RUNNER_NO_SANDBOX"), os.geteuid() == 0]}


def session_recipe(session: Session, inputs: Inputs, beside: str = "") -> dict[str, Any]:
    """Everything a session's results depend on, as plain data. `beside`: the
    `Beside.digest` of the files beside the post."""
    return {
        "kernel": inputs.kernels[session.env], "beside": beside, "timeout": inputs.timeout,
        "network": session.network, "overrides": session.overrides,
        "keep_going": session.keep_going,
        "snippets": [[s.code, s.hidden, asdict(s.markers)] for s in session.snippets],
    }


def session_key(session: Session, inputs: Inputs, beside: str = "") -> str:
    """The cache key of a session: the sha256 of its `session_recipe`."""
    recipe = json.dumps(session_recipe(session, inputs, beside), sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()


def verdict_basis(inputs: Inputs, outcome: Sequence[Any]) -> list[Any]:
    """What a run's verdicts are decided by: all of `inputs` (every env's, since a verdict is
    replayed before its post is planned) and `outcome`, what decides how results become a
    post's outcome (the configuration, the mode, the options that change a status)."""
    return [sorted([name, kernel] for name, kernel in inputs.kernels.items()), inputs.timeout,
            list(outcome)]
