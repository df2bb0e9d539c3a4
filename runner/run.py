"""The run: post paths -> a `Run` of outcomes. The job behind `verify`, `update`, the pytest
plugin and any Python caller (`from runner import run_posts`).

It reads as its stages, each a small function passing its result on (nox's workflow):

    read_and_plan -> shard -> look_up_cache -> execute -> store -> by_post -> conclude

A post that passed before, unchanged with all it was decided from, is replayed from its
verdict (`runner.verdicts`) in read_and_plan: it is never parsed, looked up, run or rendered.
Where kernels run is the backend's business (`runner.backend`; `runner.local` by default):
the run only hands it sessions and gets results back.

Exceptions stay inside a stage: a post that cannot be read, an env that cannot be built, a
kernel that dies, each becomes a result with a status at the stage's edge. Only a wrong call
(`UsageError`: a missing path, a bad `--param`) propagates.
"""

from __future__ import annotations

import asyncio
import heapq
import os
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path

from runner import cache, decides, markdown, parameters, plan, posts, report
from runner import verdicts as verdict_store
from runner.atomic import Signature, seen
from runner.backend import Backend
from runner.beside import Beside, read_beside
from runner.config import Config, load
from runner.errors import PostError
from runner.local import LocalBackend
from runner.model import Session, SnippetResult
from runner.options import Mode, Options, passenv, snippet_timeout
from runner.progress import say
from runner.report import PostOutcome, Run
from runner.settle import Planned, check_determinism, explain_split, settle
from runner.writeback import RenderOptions, figure_folder

__all__ = ["Mode", "Options", "Planned", "async_run_posts", "run_posts", "say"]

OnPostDone = Callable[[PostOutcome, int, int], None]  # (outcome, posts done, posts in the run)


@dataclass(frozen=True)
class Job:
    """A session, the post it belongs to (its index in the run), its cache key and the files
    beside its post it was keyed by, and its results when the execution cache has them (then
    it is not run)."""

    post: int
    session: Session
    key: str
    beside: Beside
    hit: tuple[SnippetResult, ...] | None = None
    seen: Signature = None  # its cache entry as read (a hit) or as stored (for the verdict)
    stored: bool = False  # this run stored its results


Done = tuple[Job, tuple[SnippetResult, ...]]  # a job and the results of its session


@dataclass(frozen=True)
class Settling:
    """A post whose sessions have all ended: their jobs and results (by fence line)."""

    index: int
    jobs: tuple[Job, ...] = ()
    results: tuple[SnippetResult, ...] = ()


def run_posts(paths: Iterable[str | Path] = (), config: Config | None = None,
              options: Options | None = None, on_post_done: OnPostDone | None = None,
              backend: Backend | None = None) -> Run:
    """Run the posts (files, or folders of posts; none: the project's posts/) and return the
    outcome of each. `backend`: where kernels run (None: this machine, `local.LocalBackend`).
    In the main thread, SIGINT and SIGTERM stop a local run at once: its kernels and folders
    are removed and the process exits 128 + the signal (no post is half-written)."""
    return asyncio.run(async_run_posts(paths, config, options, on_post_done, backend))


async def async_run_posts(paths: Iterable[str | Path] = (), config: Config | None = None,
                          options: Options | None = None, on_post_done: OnPostDone | None = None,
                          backend: Backend | None = None) -> Run:
    """`run_posts` inside a running event loop."""
    started = time.monotonic()
    config = config or load(Path.cwd())
    options = options or Options()
    backend = backend or LocalBackend(config, options)
    inputs = run_inputs(config, options, backend)
    verdicts = open_verdicts(config, options, inputs)
    planned = shard(read_and_plan(post_paths(paths, config), config, options, verdicts),
                    options.shard, shard_durations(options))
    jobs = look_up_cache(planned, config, options, inputs)
    settling = by_post(planned, jobs, store(execute(jobs, backend), config, options))
    if options.check_determinism:
        settling = again(planned, jobs, backend, settling, render_options(config))
    outcomes: dict[int, PostOutcome] = {}
    ended: list[Job] = []
    async for post in settling:  # each as soon as its last session ends
        outcomes[post.index] = conclude(planned[post.index], post, config, options, verdicts)
        ended += post.jobs
        if on_post_done is not None:
            on_post_done(outcomes[post.index], len(outcomes), len(planned))
    if any(job.stored for job in ended):
        sweep_cache(config, verdicts, [cache.entry(config.cache_dir, job.key) for job in ended])
    return Run(tuple(outcomes[index] for index in range(len(planned))),
               time.monotonic() - started)


# --- the stages --------------------------------------------------------------------------------


def post_paths(paths: Iterable[str | Path], config: Config) -> list[Path]:
    """The posts named, and those under the folders named; none named: the project's posts."""
    given = [Path(p) for p in paths]
    return posts.find(given or [posts.relative(config.posts)])


def run_inputs(config: Config, options: Options,
               backend: Backend | None = None) -> decides.Inputs:
    """What decides every session's results in this run, beyond each session's own: what
    the backend's kernels of each env are given (default: the local backend's), the timeout."""
    kernels = backend.decides if backend is not None else (
        lambda spec: decides.kernel_inputs(spec, passenv(config, options)))
    return decides.Inputs({name: kernels(spec) for name, spec in config.envs.items()},
                          snippet_timeout(config, options))


def open_verdicts(config: Config, options: Options,
                  inputs: decides.Inputs | None = None) -> verdict_store.Verdicts | None:
    """The run's verdicts (in the execution cache's folder), decided by all that decides its
    sessions (`inputs`), the configuration and the options that change an outcome; None where
    a run neither replays nor keeps them (parameters given, `--check-determinism`)."""
    if options.params or options.check_determinism:
        return None
    outcome = [verdict_store.fingerprint(config), options.mode, options.keep_going,
               options.ignore_stamp]
    basis = decides.verdict_basis(inputs or run_inputs(config, options), outcome)
    return verdict_store.Verdicts(config.cache_dir / "verdicts", basis)


def read_and_plan(paths: Sequence[Path], config: Config, options: Options,
                  verdicts: verdict_store.Verdicts | None = None) -> list[Planned]:
    """Each post read and planned, or replayed from its verdict (with the cache on)."""
    overrides = parameters.parse_overrides([f"{k}={v}" for k, v in options.params])
    replay = verdicts if options.cache else None
    return [_plan_one(path, config, overrides, options, replay) for path in paths]


def _plan_one(path: Path, config: Config, overrides: dict[str, str], options: Options,
              verdicts: verdict_store.Verdicts | None = None) -> Planned:
    try:
        text = posts.read(path)
        replayed = verdicts.replay(path, text) if verdicts is not None else None
        if replayed is not None:
            return Planned(path, replayed=replayed)
        post = plan.capped(markdown.parse(str(path), text), snippet_timeout(config, options))
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
                  inputs: decides.Inputs | None = None) -> list[Job]:
    """Every session as a job with its cache key (`decides.session_key`, from the files
    beside its post as read now) and, with the cache on (and no determinism check), the
    results stored for it: a hit builds no env and starts no kernel. Its entry is seen before
    it is read (`atomic.seen`: what the post's verdict vouches by)."""
    read = options.cache and not options.check_determinism
    inputs = inputs or run_inputs(config, options)
    beside: dict[Path, Beside] = {}  # once per folder
    jobs = []
    for index, item in enumerate(planned):
        folder = item.path.parent
        if item.sessions and folder not in beside:
            beside[folder] = read_beside(folder, say)
        for session in item.sessions:
            key = decides.session_key(session, inputs, beside[folder].digest)
            entry = seen(cache.entry(config.cache_dir, key), renamed=True) if read else None
            hit = cache.load(config.cache_dir, key, session, say) if read else None
            jobs.append(Job(index, session, key, beside[folder], hit, entry))
    return jobs


async def execute(jobs: Sequence[Job], backend: Backend) -> AsyncIterator[Done]:
    """Each job with its results as it ends: the cache's hits first, then the others, all
    handed to the backend at once (it bounds how many run together). The backend is
    prepared only when something runs, and closed however the run ends."""
    for job in jobs:
        if job.hit is not None:
            yield job, job.hit
    misses = [job for job in jobs if job.hit is None]
    if not misses:  # all cached (or nothing to run): no env, no process, no folder
        return

    async def run(job: Job) -> Done:
        return job, await backend.run(job.session, job.beside)

    try:
        await backend.prepare([job.session for job in misses])
        for finished in asyncio.as_completed([run(job) for job in misses]):
            yield await finished
    finally:
        await backend.close()


async def store(finished: AsyncIterator[Done], config: Config,
                options: Options) -> AsyncIterator[Done]:
    """The results of each session that ran, kept in the execution cache when they passed
    (not with a determinism check); the job then holds its entry as stored."""
    async for job, results in finished:
        if job.hit is None and not options.check_determinism:
            stored = cache.store(config.cache_dir, job.key, results, say)
            entry = cache.entry(config.cache_dir, job.key)
            job = replace(job, stored=stored, seen=seen(entry, renamed=True) if stored else None)
        yield job, results


async def by_post(planned: Sequence[Planned], jobs: Sequence[Job],
                  finished: AsyncIterator[Done]) -> AsyncIterator[Settling]:
    """Each post as soon as its last session has ended; a post with none (replayed, not
    readable, nothing to run) at once."""
    left = Counter(job.post for job in jobs)
    for index in range(len(planned)):
        if not left[index]:
            yield Settling(index)
    done: dict[int, list[Done]] = defaultdict(list)
    async for job, results in finished:
        done[job.post].append((job, results))
        left[job.post] -= 1
        if not left[job.post]:
            ended = done.pop(job.post)
            yield Settling(job.post, tuple(j for j, _ in ended),
                           tuple(sorted(chain.from_iterable(r for _, r in ended),
                                        key=lambda r: r.snippet.line)))


async def again(planned: Sequence[Planned], jobs: Sequence[Job], backend: Backend,
                first: AsyncIterator[Settling],
                options: RenderOptions) -> AsyncIterator[Settling]:
    """`--check-determinism`: once every session has run, each runs again; a snippet whose
    output differs between the two runs fails (`settle.check_determinism`, by fence line)."""
    before = {post.index: post async for post in first}
    async for post in by_post(planned, jobs, execute(jobs, backend)):
        item = planned[post.index]
        if item.post is None:
            yield post
            continue
        results = check_determinism(item.post, before[post.index].results, post.results,
                                    options)
        yield replace(post, results=tuple(results))


def conclude(item: Planned, post: Settling, config: Config, options: Options,
             verdicts: verdict_store.Verdicts | None) -> PostOutcome:
    """A post's outcome (`settle.settle`: compared with a fresh rendering, written in update
    mode), and its verdict kept when it passed (else forgotten)."""
    if item.replayed is not None:
        return item.replayed
    results = post.results
    if item.post is not None:
        results = tuple(explain_split(item.post, item.sessions, r) for r in results)
    figures = item.path.parent / figure_folder(str(item.path), config.figures)
    drawn = verdict_store.figures_seen(figures)  # before they are compared
    outcome = settle(item, results, config, options.mode, render_options(config),
                     ignore_stamp=options.ignore_stamp)
    if verdicts is None or item.post is None:
        return outcome
    if outcome.status != "passed" or outcome.written or outcome.fresh is None:
        verdicts.forget(item.path)
    else:
        entries = [(cache.entry(config.cache_dir, job.key), job.seen) for job in post.jobs]
        verdicts.keep(item.path, item.post.text, outcome, entries,
                      post.jobs[0].beside if post.jobs else None, drawn)
    return outcome


def render_options(config: Config) -> RenderOptions:
    return RenderOptions(config.patterns, config.max_output_lines, config.tolerance,
                         config.figures)


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


