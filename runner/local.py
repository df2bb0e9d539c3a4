"""The local backend: kernels on this machine, in the project's pinned envs (`runner.backend`).

`prepare` builds the envs the sessions need (uv, in a thread), opens the run's folder, finds
the sandbox (bubblewrap) and starts a fork server per env that two or more sessions share;
`run` gives a session a kernel of its env (forked from the server, each in a sandbox of its
own) once one of `jobs` turns is free; `close` waits for every kernel to end and removes the
servers and the run's folder. Ctrl-C or SIGTERM in between ends them at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from runner import decides, envs, plan
from runner.beside import Beside
from runner.config import Config
from runner.errors import EnvError, UsageError
from runner.model import EnvSpec, ErrorKind, Session, SnippetResult
from runner.options import Options, passenv, snippet_timeout
from runner.progress import say

if TYPE_CHECKING:
    from runner.execute import Deadline, KernelSetup
    from runner.warm import ForkServers

NO_SANDBOX = "RUNNER_NO_SANDBOX"  # set: kernels run with limits only (to measure the sandbox)


class LocalBackend:
    """Kernels of this machine's envs. Made with the run's configuration and options; nothing
    is built, started or written before `prepare`."""

    def __init__(self, config: Config, options: Options) -> None:
        self.config, self.options = config, options
        self.built: dict[str, envs.BuiltEnv | EnvError] = {}
        self.servers: ForkServers | None = None
        self.setups: dict[str, KernelSetup] = {}
        self.deadline: Deadline | None = None
        self._signals: _SignalStop | None = None
        # `jobs` kernels run cells; one more gets ready meanwhile (launch, handshake), so a
        # session's start overlaps the cells before it (RUNNER_NO_PRESTART=1: not, for the bench)
        ahead = 0 if os.environ.get("RUNNER_NO_PRESTART") else 1
        self.alive = asyncio.Semaphore(options.jobs + ahead)
        self.turn = asyncio.Semaphore(options.jobs)

    def decides(self, env: EnvSpec) -> Mapping[str, Any]:
        return decides.kernel_inputs(env, passenv(self.config, self.options))

    async def prepare(self, sessions: Sequence[Session]) -> None:
        self.built = await build_envs(sessions, self.config)
        self.servers = _start_servers(sessions, self.built, self.config, self.options)
        # Kernels are imported only now (jupyter_client, nbclient, zmq: a fifth of a second),
        # so a run that the cache answers whole stays instant.
        from runner.execute import Deadline

        if self.options.deadline:
            self.deadline = Deadline(time.monotonic() + self.options.deadline,
                                     self.options.deadline)
        self.setups = {name: self._setup(env) for name, env in self.built.items()
                       if isinstance(env, envs.BuiltEnv)}
        self._signals = _SignalStop(self.servers)
        self._signals.install()

    def _setup(self, env: envs.BuiltEnv) -> KernelSetup:
        from runner.execute import KernelSetup, OutputLimits

        assert self.servers is not None
        config, options = self.config, self.options
        return KernelSetup(snippet_timeout(config, options),
                           self.servers.kernels_dir(env.spec.name),
                           tuple(envs.kernel_env(env, passenv(config, options)).items()),
                           self.servers.folder, stop_in_background=True,
                           sandbox=self.servers.bwrap is not None,
                           output=OutputLimits(config.max_output_bytes, config.max_line_chars))

    async def run(self, session: Session, beside: Beside) -> tuple[SnippetResult, ...]:
        from runner.execute import run_session

        env = self.built[session.env]
        if isinstance(env, EnvError):
            return failed_session(session, ErrorKind.ENV, env.message)
        async with self.alive:
            deadline = self.deadline
            if deadline is not None and time.monotonic() >= deadline.at:
                return failed_session(session, ErrorKind.DEADLINE, "the run's deadline of "
                                      f"{deadline.seconds:g} s passed before this ran")
            assert self.servers is not None
            await self.servers.ready(session.env)
            return await run_session(session, env, self.setups[session.env], deadline,
                                     self.turn, beside)

    async def close(self) -> None:
        try:
            if "runner.execute" in sys.modules:
                from runner.execute import kernels_stopped

                await kernels_stopped()
        finally:
            if self._signals is not None:
                self._signals.remove()
            if self.servers is not None:
                self.servers.close()


async def build_envs(sessions: Sequence[Session],
                     config: Config) -> dict[str, envs.BuiltEnv | EnvError]:
    """Each env the sessions need, built (once, in a thread: uv does the work) or its error."""
    built: dict[str, envs.BuiltEnv | EnvError] = {}
    for name in sorted({session.env for session in sessions}):
        try:
            built[name] = await asyncio.to_thread(envs.build, config.envs[name], say)
        except EnvError as exc:
            built[name] = exc
    return built


def failed_session(session: Session, kind: str, message: str) -> tuple[SnippetResult, ...]:
    """Every snippet of the session failed, for one reason (its env, the deadline)."""
    return tuple(SnippetResult.failed(s, session.env, kind, message, s.line)
                 for s in session.snippets)


def _start_servers(sessions: Sequence[Session], built: dict[str, envs.BuiltEnv | EnvError],
                   config: Config, options: Options) -> ForkServers:
    """This run's kernelspecs; with `warm`, a fork server for each env that two or more
    sessions use (a single session gains nothing from one)."""
    from runner.warm import open_servers

    servers = open_servers()
    ready = [env for env in built.values() if isinstance(env, envs.BuiltEnv)]
    if ready:
        servers.bwrap = _sandbox(ready[0], servers, options)
        _say_network(sessions, ready[0], servers)
    count = Counter(session.env for session in sessions)
    for env in ready:
        if options.warm and count[env.spec.name] > 1:
            servers.start(env, envs.kernel_env(env, passenv(config, options)),
                          _preload(env.spec, sessions))
        else:
            servers.plain(env)
    return servers


def _say_network(sessions: Sequence[Session], env: envs.BuiltEnv, servers: ForkServers) -> None:
    """One line where the network cannot be as the sessions ask: not off (no network
    namespaces), or not on beyond loopback (no slirp4netns)."""
    from runner.forkserver import outbound_available
    from runner.warm import network_isolation

    if (any(not s.network for s in sessions) and servers.bwrap is None
            and not network_isolation(env.python)):
        say("network for snippets cannot be turned off here (no network namespaces): "
            "snippets may reach the network")
    if servers.bwrap is not None and any(s.network for s in sessions) and not outbound_available():
        say("posts granted the network get loopback only: slirp4netns, their way out of the "
            "sandbox, is not installed (apt-get install slirp4netns), or /dev/net/tun is not "
            "this user's to open")


def _sandbox(env: envs.BuiltEnv, servers: ForkServers, options: Options) -> str | None:
    """bubblewrap, where a sandbox can be made here; else one line saying so (or, with
    `require_sandbox`, a UsageError)."""
    from runner import sandbox

    found = (sandbox.Sandbox(None, f"{NO_SANDBOX} is set") if os.environ.get(NO_SANDBOX)
             else sandbox.probe(env, servers.folder))
    if found.bwrap is None:
        if options.require_sandbox:
            servers.close()
            raise UsageError(f"no sandbox for kernels: {found.reason} (--require-sandbox)")
        say(f"no sandbox for kernels: {found.reason}; they run with limits only")
        return None
    line = sandbox.limits_line()
    if "RLIMIT" in line:
        say(line)
    return found.bwrap


def _preload(spec: EnvSpec, sessions: Sequence[Session]) -> list[str]:
    """The env's preload modules that at least two of this run's sessions import: imported
    once for them all; no session waits for a module that at most one of them needs."""
    imports = Counter(name for session in sessions if session.env == spec.name
                      for name in {n for s in session.snippets
                                   for n in plan.third_party_imports(s.code)})
    return [module for module in spec.preload if imports[module.split(".")[0]] > 1]


class _SignalStop:
    """Ctrl-C or SIGTERM (main thread only): stop at once. Kernels and launchers see the
    runner go and end themselves and their children; fork servers and the run's folder are
    removed here. No post is half-written: each is written in one rename."""

    def __init__(self, servers: ForkServers) -> None:
        self.servers = servers
        self.signals = (signal.SIGINT, signal.SIGTERM)
        self.installed = threading.current_thread() is threading.main_thread()

    def install(self) -> None:
        if self.installed:
            loop = asyncio.get_running_loop()
            for signum in self.signals:
                loop.add_signal_handler(signum, self._stop, signum)

    def remove(self) -> None:
        if self.installed:
            loop = asyncio.get_running_loop()
            for signum in self.signals:
                loop.remove_signal_handler(signum)

    def _stop(self, signum: int) -> None:
        self.servers.close()
        print(f"runner: stopped by {signal.Signals(signum).name}", file=sys.stderr, flush=True)
        os._exit(128 + signum)
