"""The run: post paths -> a `Run` of outcomes. The job behind `verify`, `update`, the pytest
plugin and any Python caller (`from runner import run_posts`).

It reads as its stages, each a small function passing its result on (nox's workflow):

    read_and_plan -> shard -> look_up_cache -> build_envs -> execute -> settle

A post that passed before, unchanged with all it was decided from, is replayed from its
verdict (`runner.verdicts`) in read_and_plan: it is never parsed, looked up, run or rendered.

Exceptions stay inside a stage: a post that cannot be read, an env that cannot be built, a
kernel that dies, each becomes a result with a status at the stage's edge. Only a wrong call
(`UsageError`: a missing path, a bad `--param`) propagates.
"""

from __future__ import annotations

import asyncio
import difflib
import heapq
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from runner import cache, compare, decides, envs, images, markdown, parameters, plan, posts, report
from runner import verdicts as verdict_store
from runner.beside import Beside, read_beside
from runner.config import Config, load
from runner.errors import EnvError, PostError, RunnerError, UsageError
from runner.markdown import split_lines
from runner.model import (
    EnvSpec,
    ErrorInfo,
    ErrorKind,
    Output,
    Post,
    Session,
    Snippet,
    SnippetResult,
)
from runner.portable import moved
from runner.report import PostOutcome, Run, post_key
from runner.visible import visible
from runner.writeback import (
    RenderOptions,
    figure_folder,
    output_block,
    snippet_figure_links,
    stamp,
    stamp_value,
)

if TYPE_CHECKING:
    from runner.warm import ForkServers

Mode = Literal["verify", "update"]
SESSION_START_S = 0.2  # a kernel's start and stop, in no snippet's duration (for shards)
POST_S = 0.01  # reading, planning and settling a post (for shards)
NO_SANDBOX = "RUNNER_NO_SANDBOX"  # set: kernels run with limits only (to measure the sandbox)
OnPostDone = Callable[[PostOutcome, int, int], None]  # (outcome, posts done, posts in the run)


@dataclass(frozen=True)
class Options:
    """How to run. The defaults are `python -m runner verify`'s."""

    mode: Mode = "verify"  # update: write the fresh output into posts that are stale
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)  # sessions at once
    timeout: float | None = None  # seconds per snippet; None: [tool.runner] timeout
    cache: bool = True  # read the execution cache (results are stored either way)
    warm: bool = True  # fork kernels from a warm server per env
    deadline: float | None = None  # seconds for the whole run
    params: tuple[tuple[str, str], ...] = ()  # parameter overrides, (NAME, python literal)
    shard: tuple[int, int] | None = None  # (K, N): run only the K-th of N slices
    durations: Path | None = None  # an earlier run's JSON report: shards balanced by time
    check_determinism: bool = False  # run every session twice; differing output fails
    passenv: tuple[str, ...] = ()  # more variables kernels may see, beyond [tool.runner]'s
    require_sandbox: bool = False  # no sandbox for kernels here: a UsageError, not a warning
    keep_going: bool = False  # a failing snippet does not stop its session
    ignore_stamp: bool = False  # verify: a post whose only difference is its `verified_by`
    # stamp (a re-lock changed a lock hash) passes, reported as `stamp_stale`


@dataclass(frozen=True)
class Planned:
    """A post read and planned: its sessions, or the error that stopped it."""

    path: Path
    post: Post | None = None
    sessions: tuple[Session, ...] = ()
    error: PostError | None = None
    replayed: PostOutcome | None = None  # its verdict: passed before, nothing changed since

    def runnable(self) -> list[tuple[str, Snippet]]:
        """(env, snippet) of each snippet that runs (not `runner:skip`), planned or replayed."""
        if self.replayed is not None:
            return [(r.env, r.snippet) for r in self.replayed.snippets
                    if r.snippet.markers.skip is None]
        return [(session.env, s) for session in self.sessions for s in session.snippets
                if s.markers.skip is None]

    @property
    def weight(self) -> int:
        """What a shard balances: the post's runnable snippets (and the post itself)."""
        return 1 + len(self.runnable())

    def seconds(self, durations: Mapping[tuple[str, int], float], average: float) -> float:
        """What a shard balances by time: each session's start, and each runnable snippet's
        duration in `durations` (keyed by `report.post_key` and fence line), else `average`."""
        key, runnable = post_key(self.path), self.runnable()
        return (POST_S + SESSION_START_S * len({env for env, _ in runnable})
                + sum(durations.get((key, s.line), average) for _, s in runnable))


@dataclass(frozen=True)
class Job:
    """A session, the post it belongs to (its index in the run), its cache key, and its results
    when the execution cache has them (then it is not run)."""

    post: int
    session: Session
    key: str
    hit: tuple[SnippetResult, ...] | None = None
    beside: Beside | None = None  # the files beside the post its kernel gets copies of


def run_posts(paths: Iterable[str | Path] = (), config: Config | None = None,
              options: Options | None = None, on_post_done: OnPostDone | None = None) -> Run:
    """Run the posts (files, or folders of posts; none: the project's posts/) and return the
    outcome of each. In the main thread, SIGINT and SIGTERM stop the run at once: its kernels
    and folders are removed and the process exits 128 + the signal (no post is half-written)."""
    return asyncio.run(async_run_posts(paths, config, options, on_post_done))


async def async_run_posts(paths: Iterable[str | Path] = (), config: Config | None = None,
                          options: Options | None = None,
                          on_post_done: OnPostDone | None = None) -> Run:
    """`run_posts` inside a running event loop."""
    started = time.monotonic()
    config = config or load(Path.cwd())
    options = options or Options()
    verdicts = open_verdicts(config, options)
    planned = shard(read_and_plan(post_paths(paths, config), config, options, verdicts),
                    options.shard, shard_durations(options))
    jobs = look_up_cache(planned, config, options, verdicts)
    built = await build_envs(jobs, config)
    tally = _Tally(planned, jobs, config, options, on_post_done, verdicts)
    await execute(jobs, built, config, options, tally.session_done)
    if options.check_determinism:
        tally.second_pass()
        await execute(jobs, built, config, replace(options, cache=False), tally.session_done)
    if tally.stored:
        sweep_cache(config, verdicts, chain.from_iterable(tally.entries.values()))
    return Run(tally.outcomes(), time.monotonic() - started)


# --- the stages --------------------------------------------------------------------------------


def post_paths(paths: Iterable[str | Path], config: Config) -> list[Path]:
    """The posts named, and those under the folders named; none named: the project's posts."""
    given = [Path(p) for p in paths]
    return posts.find(given or [posts.relative(config.posts)])


def run_inputs(config: Config, options: Options) -> decides.Inputs:
    """What decides every session's results in this run, beyond each session's own."""
    passenv = _passenv(config, options)
    return decides.Inputs({name: decides.kernel_inputs(spec, passenv)
                           for name, spec in config.envs.items()}, _timeout(config, options))


def open_verdicts(config: Config, options: Options) -> verdict_store.Verdicts | None:
    """The run's verdicts (in the execution cache's folder), decided by the configuration and
    the options that change an outcome; None where a run neither replays nor keeps them
    (parameters given, `--check-determinism`)."""
    if options.params or options.check_determinism:
        return None
    outcome = [verdict_store.fingerprint(config), options.mode, options.keep_going,
               options.ignore_stamp]
    basis = decides.verdict_basis(run_inputs(config, options), outcome)
    return verdict_store.Verdicts(config.cache_dir / "verdicts", basis)


def read_and_plan(paths: Sequence[Path], config: Config, options: Options,
                  verdicts: verdict_store.Verdicts | None = None) -> list[Planned]:
    """Each post read and planned, or replayed from its verdict (with the cache on). The files
    beside a planned post are seen for its verdict now, before they are read."""
    overrides = parameters.parse_overrides([f"{k}={v}" for k, v in options.params])
    replay = verdicts if options.cache else None
    planned = [_plan_one(path, config, overrides, options, replay) for path in paths]
    for item in planned:
        if verdicts is not None and item.post is not None:
            verdicts.see_beside(item.path.parent)
    return planned


def _plan_one(path: Path, config: Config, overrides: dict[str, str], options: Options,
              verdicts: verdict_store.Verdicts | None = None) -> Planned:
    try:
        text = posts.read(path)
        replayed = verdicts.replay(path, text) if verdicts is not None else None
        if replayed is not None:
            return Planned(path, replayed=replayed)
        post = plan.capped(markdown.parse(str(path), text), _timeout(config, options))
        sessions = plan.plan(post, config.envs, config.import_names)
        plan.check_network(post, sessions, config.envs, config.grants_network(path))
    except PostError as exc:
        return Planned(path, error=exc)
    given = parameters.applicable(post, overrides)
    if given:
        sessions = tuple(replace(s, overrides=given) for s in sessions)
    if options.keep_going:
        sessions = tuple(replace(s, keep_going=True) for s in sessions)
    return Planned(path, post, sessions)


def shard_durations(options: Options) -> dict[tuple[str, int], float] | None:
    """The snippet durations of `options.durations` (an earlier run's JSON report) when this
    run is a shard; a file that cannot be read is one warning, and shards by snippet count."""
    if options.shard is None or options.durations is None:
        return None
    try:
        return report.read_durations(options.durations)
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        say(f"cannot read durations from {options.durations}: {why}; shards balanced by "
            "snippet count")
        return None


def shard(planned: list[Planned], part: tuple[int, int] | None,
          durations: Mapping[tuple[str, int], float] | None = None) -> list[Planned]:
    """Shard K/N: a deterministic, balanced slice. A post's sessions stay together (its
    staleness needs all of them); posts, heaviest first (then by path), each go to the
    lightest of N shards (longest processing time first, as pytest-split's least_duration), so
    N machines of a CI matrix get about the same work. Heavy means, with `durations` (an
    earlier run's, `report.read_durations`), the seconds its snippets took then, a snippet
    not in them taking the average of those that are (`Planned.seconds`); without, the number
    of its snippets (`Planned.weight`)."""
    if part is None:
        return planned
    k, n = part
    if durations is None:
        costs = [float(item.weight) for item in planned]
    else:
        average = sum(durations.values()) / len(durations) if durations else 1.0
        costs = [item.seconds(durations, average) for item in planned]
    loads = [(0.0, index) for index in range(n)]  # a heap: the lightest shard first
    chosen = [0] * len(planned)
    for i in sorted(range(len(planned)), key=lambda i: (-costs[i], str(planned[i].path), i)):
        load, target = heapq.heappop(loads)
        heapq.heappush(loads, (load + costs[i], target))
        chosen[i] = target
    return [item for item, target in zip(planned, chosen, strict=True) if target == k - 1]


def look_up_cache(planned: list[Planned], config: Config, options: Options,
                  verdicts: verdict_store.Verdicts | None = None) -> list[Job]:
    """Every session as a job with its cache key and, with the cache on (and no determinism
    check), the results stored for it: a hit builds no env and starts no kernel (its entry
    seen for the post's verdict before it is read)."""
    read = options.cache and not options.check_determinism
    jobs = []
    beside: dict[Path, Beside] = {}  # once per folder
    inputs = run_inputs(config, options)
    for index, item in enumerate(planned):
        folder = item.path.parent
        if item.sessions and folder not in beside:
            beside[folder] = read_beside(folder, say)
        for session in item.sessions:
            key = decides.session_key(session, inputs, beside[folder].digest)
            if verdicts is not None and read:
                verdicts.see(cache.entry(config.cache_dir, key), renamed=True)
            hit = cache.load(config.cache_dir, key, session, say) if read else None
            jobs.append(Job(index, session, key, hit, beside[folder]))
    return jobs


async def build_envs(jobs: Sequence[Job], config: Config) -> dict[str, envs.BuiltEnv | EnvError]:
    """Each env the jobs need, built (once, in a thread: uv does the work) or its error."""
    built: dict[str, envs.BuiltEnv | EnvError] = {}
    for name in sorted({job.session.env for job in jobs if job.hit is None}):
        try:
            built[name] = await asyncio.to_thread(envs.build, config.envs[name], say)
        except EnvError as exc:
            built[name] = exc
    return built


async def execute(jobs: Sequence[Job], built: dict[str, envs.BuiltEnv | EnvError],
                  config: Config, options: Options,
                  done: Callable[[Job, tuple[SnippetResult, ...]], None]) -> None:
    """Run the jobs that are not cache hits, `options.jobs` at a time, each in a kernel of its
    env (forked from the env's warm server where two or more sessions share the env); `done`
    gets each job's results as it ends (and stores them: `_Tally.session_done`)."""
    jobs = [job for job in jobs if job.hit is None]
    if not jobs:  # all cached (or nothing to run): no run folder, no servers, no sandbox probe
        return
    servers = _start_servers(jobs, built, config, options)  # they import ipykernel meanwhile
    # Kernels are imported only now (jupyter_client, nbclient, zmq: a fifth of a second), so a
    # run that the cache answers whole stays instant.
    try:
        from runner.execute import Deadline, KernelSetup, OutputLimits, kernels_stopped
        from runner.execute import run_session as _run_session
    except BaseException:
        servers.close()
        raise

    # `jobs` kernels run cells; one more gets ready meanwhile (launch, handshake), so a
    # session's start overlaps the cells before it (RUNNER_NO_PRESTART=1: not, for the bench).
    ahead = 0 if os.environ.get("RUNNER_NO_PRESTART") else 1
    alive, turn = asyncio.Semaphore(options.jobs + ahead), asyncio.Semaphore(options.jobs)
    deadline = (Deadline(time.monotonic() + options.deadline, options.deadline)
                if options.deadline else None)
    setups = {name: KernelSetup(_timeout(config, options), servers.kernels_dir(name),
                                tuple(envs.kernel_env(env, _passenv(config, options)).items()),
                                servers.folder, stop_in_background=True,
                                sandbox=servers.bwrap is not None,
                                output=OutputLimits(config.max_output_bytes,
                                                    config.max_line_chars))
              for name, env in built.items() if isinstance(env, envs.BuiltEnv)}

    async def one(job: Job) -> None:
        env = built[job.session.env]
        if isinstance(env, EnvError):
            done(job, _all_failed(job.session, ErrorKind.ENV, env.message))
            return
        async with alive:
            if deadline is not None and time.monotonic() >= deadline.at:
                results = _all_failed(job.session, ErrorKind.DEADLINE, f"the run's deadline of "
                                      f"{deadline.seconds:g} s passed before this ran")
            else:
                await servers.ready(job.session.env)
                results = await _run_session(job.session, env, setups[env.spec.name], deadline,
                                             turn, job.beside)
        done(job, results)

    with _SignalStop(servers):
        try:
            await asyncio.gather(*(one(job) for job in jobs))
        finally:
            await kernels_stopped()
            servers.close()


def sweep_cache(config: Config, verdicts: verdict_store.Verdicts | None,
                entries: Iterable[Path]) -> None:
    """A run that stored results sweeps the execution cache, once a day at most: what no run
    has used for `cache.MAX_AGE_S` goes, except this run's cache `entries` and verdicts and
    the entries a remaining verdict names."""
    now = time.time()
    if not cache.sweep_due(config.cache_dir, now):
        return
    used = {os.path.abspath(entry) for entry in entries}
    if verdicts is not None:
        used |= verdicts.used | verdicts.named
    named = verdict_store.sweep(config.cache_dir / "verdicts", used, now)
    cache.sweep(config.cache_dir, used | named, now)


# --- settling each post ------------------------------------------------------------------------


class _Tally:
    """Results as sessions end; a post is settled (compared, written in update mode) as soon
    as its last session has ended in the run's last pass."""

    def __init__(self, planned: list[Planned], jobs: Sequence[Job], config: Config,
                 options: Options, on_post_done: OnPostDone | None,
                 verdicts: verdict_store.Verdicts | None = None) -> None:
        self.planned, self.jobs, self.config, self.options = planned, jobs, config, options
        self.on_post_done, self.verdicts = on_post_done, verdicts
        self.entries: dict[int, list[Path]] = {}  # each post's sessions' cache entries
        for job in jobs:
            self.entries.setdefault(job.post, []).append(cache.entry(config.cache_dir, job.key))
        self.results: list[list[SnippetResult]] = [[] for _ in planned]
        self.first: list[list[SnippetResult]] = []  # the first pass, with --check-determinism
        self.settled: dict[int, PostOutcome] = {}
        self.final = not options.check_determinism
        self.stored = 0  # sessions whose results this run stored
        self._count_sessions()

    def _count_sessions(self) -> None:
        self.remaining = Counter(job.post for job in self.jobs)
        for job in self.jobs:
            if job.hit is not None and self.final:
                self.session_done(job, job.hit)
        if self.final:
            for index in range(len(self.planned)):
                if index not in self.settled and not self.remaining[index]:
                    self._settle(index)

    def second_pass(self) -> None:
        self.first, self.results = self.results, [[] for _ in self.planned]
        self.final = True
        self._count_sessions()

    def session_done(self, job: Job, results: tuple[SnippetResult, ...]) -> None:
        """A session's results: stored in the cache when it ran (not with a determinism
        check), and the post settled once all its sessions are in."""
        if job.hit is None and not self.options.check_determinism:
            stored = cache.store(self.config.cache_dir, job.key, results, say)
            self.stored += stored
            if self.verdicts is not None:
                entry = cache.entry(self.config.cache_dir, job.key)
                if stored:
                    self.verdicts.see(entry, renamed=True)
                else:  # not this run's results: the post's verdict is not kept
                    self.verdicts.unseen(entry)
        self.results[job.post] += results
        self.remaining[job.post] -= 1
        if self.final and not self.remaining[job.post]:
            self._settle(job.post)

    def _settle(self, index: int) -> None:
        item = self.planned[index]
        if item.replayed is not None:
            self._done(index, item.replayed)
            return
        results = sorted(self.results[index], key=lambda r: r.snippet.line)
        post = item.post
        if self.first and post is not None:
            results = check_determinism(post, self.first[index], results,
                                        self._render_options())
        if post is not None:
            results = [explain_split(post, item.sessions, r) for r in results]
        if self.verdicts is not None and post is not None:
            self.verdicts.see_figures(self._figures(item.path))  # before they are compared
        outcome = settle(item, tuple(results), self.config, self.options.mode,
                         self._render_options(), ignore_stamp=self.options.ignore_stamp)
        self._keep_verdict(index, outcome)
        self._done(index, outcome)

    def _keep_verdict(self, index: int, outcome: PostOutcome) -> None:
        """A passed post's verdict, with the cache entries of its sessions' results; any other
        outcome forgets the post's verdict."""
        item = self.planned[index]
        if self.verdicts is None or item.post is None:
            return
        if outcome.status != "passed" or outcome.written or outcome.fresh is None:
            self.verdicts.forget(item.path)
            return
        self.verdicts.keep(item.path, item.post.text, outcome, self.entries.get(index, []),
                           self._figures(item.path))

    def _figures(self, post: Path) -> Path:
        return post.parent / figure_folder(str(post), self.config.figures)

    def _done(self, index: int, outcome: PostOutcome) -> None:
        self.settled[index] = outcome
        if self.on_post_done is not None:
            self.on_post_done(outcome, len(self.settled), len(self.planned))

    def _render_options(self) -> RenderOptions:
        return RenderOptions(self.config.patterns, self.config.max_output_lines,
                             self.config.tolerance, self.config.figures)

    def outcomes(self) -> tuple[PostOutcome, ...]:
        return tuple(self.settled[index] for index in range(len(self.planned)))


def settle(item: Planned, results: tuple[SnippetResult, ...], config: Config, mode: Mode,
           options: RenderOptions, ignore_stamp: bool = False) -> PostOutcome:
    """A post's outcome from its results: failed, or compared with a fresh rendering (verify)
    and written when it differs (update). A post whose bytes on disk are no longer those
    parsed at the start is an error, never passed nor stale: its results may not be its
    own (update: `posts.replace` refuses to write it, under its lock). `ignore_stamp` (verify):
    the recorded post is compared as if it had the fresh stamp; a stamp that differs is
    `stamp_stale`, not stale."""
    path = str(item.path)
    if item.error is not None or item.post is None:
        error = item.error or PostError("not parsed", path)
        return PostOutcome(path, "error", error.message, error.line)
    given = item.sessions[0].overrides if item.sessions else ()
    if any(r.status == "failed" for r in results):
        return PostOutcome(path, "failed", parameters=given, snippets=results)
    if given:  # a run with other parameters prints other output: neither compared nor written
        return (_changed_on_disk(item.path, item.post.text, results)
                or PostOutcome(path, "passed", parameters=given, snippets=results))
    outputs: dict[int, Output] = {r.snippet.line: r.output for r in results
                                  if r.status == "passed"}
    verified_by = stamp_value(item.sessions, config.envs)
    stamped = stamp(item.post.text, verified_by)
    forged = _stamp_misread(path, stamped, verified_by)
    if forged is not None:
        return PostOutcome(path, "error", forged[0], forged[1], snippets=results)
    gained = len(split_lines(stamped)) - len(split_lines(item.post.text))
    if gained:  # a first stamp: every snippet moves down, and the lines its output names
        outputs = {line: moved(output, item.sessions[0].post, gained)
                   for line, output in outputs.items()}
    try:
        fresh = posts.freshen(item.path, item.post, outputs, verified_by, options)
    except PostError as exc:  # a figure folder or figure that is a symlink
        return PostOutcome(path, "error", exc.message, exc.line, snippets=results)
    recorded = item.post.text
    if ignore_stamp and mode == "verify":
        recorded = stamp(item.post.text, verified_by)  # as if it had the fresh stamp
    done = PostOutcome(path, "passed", snippets=results, fresh=fresh,
                       stamp_stale=recorded != item.post.text)
    if not fresh.differs(recorded):
        return _changed_on_disk(item.path, item.post.text, results) or done
    if mode == "verify":
        stale = replace(done, status="stale",
                        diff=unified_diff(path, recorded, fresh.text) + fresh.notes())
        return _changed_on_disk(item.path, item.post.text, results) or stale
    try:
        posts.write_fresh(item.path, item.post.text, fresh)
    except RunnerError as exc:
        return replace(done, status="error", error=exc.message, error_line=exc.line)
    except OSError as exc:
        return replace(done, status="error", error=f"cannot write: {exc.strerror or exc}")
    return replace(done, written=True)


def _stamp_misread(path: str, stamped: str, value: str) -> tuple[str, int | None] | None:
    """Why the stamp, written where `stamp` writes it (the first line that starts with
    `verified_by:`), is not what YAML reads as the post's `verified_by` (such a line inside a
    multi-line value, and the key itself further down: a site would show that one), with the
    line; None when it is (or the post has no front matter: no stamp is written)."""
    if not value or not markdown.body_start(split_lines(stamped)):
        return None
    try:
        read = markdown.front_matter(path, stamped).get("verified_by")
    except PostError as exc:
        return f"front matter: the verified_by stamp breaks it: {exc.message}", exc.line
    if read == value:
        return None
    line = next((number for number, text in enumerate(split_lines(stamped), 1)
                 if text.startswith("verified_by:")), None)
    return ("front matter: YAML does not read the verified_by stamp where the runner writes it "
            "(a line starting `verified_by:` inside another value?): make `verified_by` a "
            "top-level key of its own line"), line


def _changed_on_disk(path: Path, parsed: str,
                     results: tuple[SnippetResult, ...]) -> PostOutcome | None:
    """An error outcome when the post on disk is no longer the text parsed at the start (or
    can no longer be read); None when it is unchanged."""
    try:
        unchanged = posts.read(path) == parsed
    except PostError as exc:
        return PostOutcome(str(path), "error", exc.message, exc.line, snippets=results)
    if unchanged:
        return None
    return PostOutcome(str(path), "error", "changed on disk during the run: run again",
                       snippets=results)


def explain_split(post: Post, sessions: tuple[Session, ...],
                  result: SnippetResult) -> SnippetResult:
    """A NameError in a post split over envs names where the name was defined, and why the
    post was split: the name lives in another kernel."""
    error = result.error
    found = re.match(r"name '(\w+)' is not defined", error.message) if error else None
    if error is None or found is None or not any(s.split for s in sessions):
        return result
    place = plan.defined_elsewhere(post, sessions, found[1], result.snippet.line)
    if place is None:
        return result
    split = next(s.split for s in sessions if s.split)
    message = (f"{error.message} here; it is defined at line {place[0]}, which runs in env "
               f"'{place[1]}': {split}")
    return replace(result, error=replace(error, message=message))


def check_determinism(post: Post, first: Sequence[SnippetResult],
                      second: Sequence[SnippetResult],
                      options: RenderOptions) -> list[SnippetResult]:
    """A snippet whose output differs between two runs of the same code fails, with the lines
    (the blocks as the post would record them, figure links included) or, where only pixels
    differ, what differs in which figure. Results are paired by fence line (sessions end in
    any order)."""
    again = {r.snippet.line: r for r in second}
    return [_compare_runs(post, a, again[a.snippet.line], options) for a in
            sorted(first, key=lambda r: r.snippet.line)]


def _compare_runs(post: Post, a: SnippetResult, b: SnippetResult,
                  options: RenderOptions) -> SnippetResult:
    markers = a.snippet.markers
    if not a.status == b.status == "passed" or not markers.record_output:
        return a  # runner:output=none: nothing recorded, nothing to compare
    old, new = ("".join(output_block(a.snippet, r.output, "\n", options,
                                     snippet_figure_links(post, a.snippet, r.output)))
                for r in (a, b))
    drawn = zip(a.output.images(), b.output.images(), strict=False)
    pictures = [f"figure {n}: {why}" for n, (x, y) in enumerate(drawn, 1)
                if (why := images.difference(x, y))]
    tolerance = options.tolerance if markers.tolerance is None else markers.tolerance
    if not pictures and (old == new or compare.blocks_match(
            old.splitlines(), new.splitlines(), tolerance, markers.unordered)):
        return a  # the same, or within the snippet's rules (runner:tolerance, unordered)
    lines = [f"{x!r} then {y!r}" for x, y in zip(old.splitlines(), new.splitlines(),
                                                 strict=False) if x != y]
    message = "output differs between two runs: " + (lines or pictures)[0]
    diff = unified_diff(a.snippet.path, old, new) + "".join(f"{p}\n" for p in pictures)
    return replace(a, status="failed",
                   error=ErrorInfo(ErrorKind.NONDETERMINISTIC, message, a.snippet.line, diff))


def unified_diff(path: str, old: str, new: str) -> str:
    diff = "".join(difflib.unified_diff(old.splitlines(keepends=True),
                                        new.splitlines(keepends=True),
                                        f"{path} (recorded)", f"{path} (fresh run)"))
    if old != new and not diff:  # e.g. only a missing final newline
        return "(the post's text differs from a fresh rendering)\n"
    return diff


# --- helpers -----------------------------------------------------------------------------------


def _start_servers(jobs: Sequence[Job], built: dict[str, envs.BuiltEnv | EnvError],
                   config: Config, options: Options) -> ForkServers:
    """This run's kernelspecs; with `warm`, a fork server for each env that two or more
    sessions use (a single session gains nothing from one)."""
    from runner.forkserver import outbound_available
    from runner.warm import ForkServers, network_isolation

    servers = ForkServers()
    ready = [env for env in built.values() if isinstance(env, envs.BuiltEnv)]
    if ready:
        servers.bwrap = _sandbox(ready[0], servers, options)
    if (any(not job.session.network for job in jobs) and ready and servers.bwrap is None
            and not network_isolation(ready[0].python)):
        say("network for snippets cannot be turned off here (no network namespaces): "
            "snippets may reach the network")
    if (servers.bwrap is not None and any(job.session.network for job in jobs)
            and not outbound_available()):
        say("posts granted the network get loopback only: slirp4netns, their way out of the "
            "sandbox, is not installed (apt-get install slirp4netns), or /dev/net/tun is not "
            "this user's to open")
    sessions = Counter(job.session.env for job in jobs)
    for env in ready:
        if options.warm and sessions[env.spec.name] > 1:
            servers.start(env, envs.kernel_env(env, _passenv(config, options)),
                          _preload(env.spec, jobs))
        else:
            servers.plain(env)
    return servers


def _sandbox(env: envs.BuiltEnv, servers: ForkServers, options: Options) -> str | None:
    """bubblewrap, where a sandbox can be made here; else one line saying so (or, with
    `require_sandbox`, a UsageError)."""
    from runner import sandbox

    found = (sandbox.Sandbox(None, "RUNNER_NO_SANDBOX is set") if os.environ.get(NO_SANDBOX)
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


def _preload(spec: EnvSpec, jobs: Sequence[Job]) -> list[str]:
    """The env's preload modules that at least two of this run's sessions import: imported
    once for them all; no session waits for a module that at most one of them needs."""
    imports = Counter(name for job in jobs if job.session.env == spec.name
                      for name in {n for s in job.session.snippets
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

    def __enter__(self) -> None:
        if self.installed:
            loop = asyncio.get_running_loop()
            for signum in self.signals:
                loop.add_signal_handler(signum, self._stop, signum)

    def __exit__(self, *exc: object) -> None:
        if self.installed:
            loop = asyncio.get_running_loop()
            for signum in self.signals:
                loop.remove_signal_handler(signum)

    def _stop(self, signum: int) -> None:
        self.servers.close()
        print(f"runner: stopped by {signal.Signals(signum).name}", file=sys.stderr, flush=True)
        os._exit(128 + signum)


def _all_failed(session: Session, kind: str, message: str) -> tuple[SnippetResult, ...]:
    return tuple(SnippetResult.failed(s, session.env, kind, message, s.line)
                 for s in session.snippets)


def _timeout(config: Config, options: Options) -> float:
    return options.timeout or config.timeout


def _passenv(config: Config, options: Options) -> tuple[str, ...]:
    return (*config.passenv, *options.passenv)


def say(text: str) -> None:
    """A line on stderr; what it names (a post, a file, an error) shown as it is."""
    print(f"runner: {visible(text)}", file=sys.stderr, flush=True)
