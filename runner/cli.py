"""`python -m runner`: wires the stages, and is the one place that chooses an exit code.

verify/update: find posts -> parse -> plan sessions -> build envs -> execute -> render -> report.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jupytext

from runner import (
    __version__,
    cache,
    envs,
    markdown,
    notebooks,
    parameters,
    plan,
    posts,
    report,
)
from runner.config import Config, load
from runner.errors import EnvError, PostError, RunnerError, UsageError
from runner.execute import files_beside, kernel_env, run_session
from runner.images import same_picture
from runner.model import EnvSpec, ErrorInfo, Output, Post, Session, SnippetResult
from runner.progress import RunProgress
from runner.report import PostOutcome, Run
from runner.sync import sync
from runner.warm import ForkServers, network_isolation
from runner.writeback import RenderOptions, output_block, stamp_value

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "report":
            return _merge(args)  # needs no project: CI merges reports anywhere
        config = load(Path.cwd())
        if args.command in ("verify", "update"):
            return _run(args, config)
        if args.command == "notebooks":
            return _notebooks(args, config)
        if args.command == "sync":
            return _sync(args)
        if args.command == "kernels":
            return _kernels(args, config)
        return _envs(args, config)
    except UsageError as exc:
        print(f"runner: {exc}", file=sys.stderr)
        return EXIT_USAGE


# --- verify / update -------------------------------------------------------------------------


@dataclass
class _Work:
    """What the run knows about one post as it goes through the stages."""

    path: Path
    post: Post | None = None
    sessions: tuple[Session, ...] = ()
    error: RunnerError | None = None
    results: list[SnippetResult] = field(default_factory=list)


@dataclass(frozen=True)
class _Job:
    """A session to run, the post it belongs to, and its cache key."""

    item: _Work
    session: Session
    key: str


def _run(args: argparse.Namespace, config: Config) -> int:
    started = time.monotonic()
    work = [_Work(path) for path in _post_paths(args, config)]
    overrides = parameters.parse_overrides(args.param)
    for item in work:
        _parse_and_plan(item, config)
        if item.post is not None and overrides:
            given = parameters.applicable(item.post, overrides)
            item.sessions = tuple(replace(s, overrides=given) for s in item.sessions)
    work = shard(work, args.shard)
    timeout = args.timeout or config.timeout
    read_cache = not (args.no_cache or args.check_determinism)
    jobs = _cache_lookup(work, config, timeout, read_cache)
    built = _build_envs({job.session.env for job in jobs}, config)
    store = None if args.check_determinism else config.cache_dir
    progress = RunProgress(len(work))
    remaining = {id(item): sum(job.item is item for job in jobs) for item in work}
    for item in work:
        if not remaining[id(item)]:
            progress.post_done(str(item.path))

    def session_done(job: _Job) -> None:
        remaining[id(job.item)] -= 1
        if not remaining[id(job.item)]:
            progress.post_done(str(job.item.path))

    settings = _Settings(args.jobs, timeout, store, not args.no_warm, config.passenv,
                         started + args.deadline if args.deadline else None, args.deadline or 0)
    try:
        asyncio.run(_execute(jobs, built, settings, session_done))
    finally:
        progress.close()
    options = RenderOptions(config.patterns, config.max_output_lines)
    if args.check_determinism:
        first = {id(item): item.results for item in work}
        for item in work:
            item.results = []
        asyncio.run(_execute(jobs, built, replace(settings, store=None), lambda job: None))
        for item in work:
            item.results = _check_determinism(first[id(item)], item.results, options)
    for item in work:
        item.results.sort(key=lambda r: r.snippet.line)
    outcomes = tuple(_finish(item, args.command == "update", options, config) for item in work)
    run = Run(outcomes, tuple(r for item in work for r in item.results),
              time.monotonic() - started)
    sys.stdout.write(report.terminal(run))
    if os.environ.get("GITHUB_ACTIONS") == "true":
        sys.stdout.write(report.github_annotations(run))
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as summary:
            summary.write(report.step_summary(run))
    if args.report:
        report.write_json(run, Path(args.report))
    if args.junit_xml:
        report.write_junit(run.snippets, Path(args.junit_xml))
    return exit_code(run)


def _cache_lookup(work: list[_Work], config: Config, timeout: float,
                  read: bool) -> list[_Job]:
    """Results of cached sessions go straight to their post; the rest are jobs to run."""
    jobs = []
    beside: dict[Path, str] = {}
    for item in work:
        folder = item.path.parent
        if item.sessions and folder not in beside:
            beside[folder] = cache.digest(files_beside(folder))
        for session in item.sessions:
            key = cache.session_key(session, config.envs[session.env], timeout, beside[folder])
            hit = cache.load(config.cache_dir, key, session, _say) if read else None
            if hit is None:
                jobs.append(_Job(item, session, key))
            else:
                item.results += hit
    return jobs


def exit_code(run: Run) -> int:
    bad = any(p.status != "passed" for p in run.posts)
    return EXIT_FAILED if bad or any(r.status == "failed" for r in run.snippets) else EXIT_OK


def _post_paths(args: argparse.Namespace, config: Config) -> list[Path]:
    return posts.find([Path(p) for p in args.paths] or [_relative(config.posts)])


def shard(work: list[_Work], part: tuple[int, int] | None) -> list[_Work]:
    """Shard K/N: a deterministic, size-balanced slice. A post's sessions stay together (its
    staleness needs all of them); posts, heaviest first (runnable snippets, then path), each go
    to the lightest of N shards, so N machines of a CI matrix get about the same work."""
    if part is None:
        return work
    k, n = part
    loads = [0] * n
    chosen: dict[int, int] = {}
    for item in sorted(work, key=lambda i: (-_weight(i), str(i.path))):
        target = min(range(n), key=lambda index: (loads[index], index))
        loads[target] += _weight(item)
        chosen[id(item)] = target
    return [item for item in work if chosen[id(item)] == k - 1]


def _weight(item: _Work) -> int:
    return 1 + sum(s.markers.skip is None for session in item.sessions
                   for s in session.snippets)


def _parse_and_plan(item: _Work, config: Config) -> None:
    try:
        item.post = markdown.parse(str(item.path), posts.read(item.path))
        item.sessions = plan.plan(item.post, config.envs, config.import_names)
    except PostError as exc:
        item.error = exc


def _build_envs(names: set[str], config: Config) -> dict[str, envs.BuiltEnv | EnvError]:
    built: dict[str, envs.BuiltEnv | EnvError] = {}
    for name in sorted(names):
        try:
            built[name] = envs.build(config.envs[name], say=_say)
        except EnvError as exc:
            built[name] = exc
    return built


@dataclass(frozen=True)
class _Settings:
    """How the sessions of a run are executed."""

    jobs: int
    timeout: float
    store: Path | None  # the execution cache to fill, if any
    warm: bool
    passenv: tuple[str, ...] = ()
    deadline: float | None = None  # time.monotonic() by which the whole run must end
    deadline_s: float = 0.0


async def _execute(jobs: list[_Job], built: dict[str, envs.BuiltEnv | EnvError],
                   settings: _Settings, done: Callable[[_Job], None]) -> None:
    limit = asyncio.Semaphore(settings.jobs)
    servers = ForkServers()  # this run's kernelspecs, and with `warm` its fork servers
    ready = [env for env in built.values() if isinstance(env, envs.BuiltEnv)]
    if any(not job.session.network for job in jobs) and ready and not network_isolation(
            ready[0].python):
        _say("network for snippets cannot be turned off here (no network namespaces): "
             "snippets may reach the network")
    sessions = Counter(job.session.env for job in jobs)
    forked = {name for name, count in sessions.items() if settings.warm and count > 1}
    for env in ready:
        if env.spec.name in forked:
            servers.start(env, kernel_env(env, settings.passenv), _preload(env.spec, jobs))
        else:
            servers.plain(env)  # a single session gains nothing from a fork server

    async def one(job: _Job) -> None:
        session, env = job.session, built[job.session.env]
        if isinstance(env, EnvError):
            job.item.results += _all_failed(session, "EnvError", env.message)
            done(job)
            return
        async with limit:
            if settings.deadline is not None and time.monotonic() >= settings.deadline:
                results = _all_failed(session, "DeadlineError", f"the run's deadline of "
                                      f"{settings.deadline_s:g} s passed before this ran")
            else:
                if session.env in forked:
                    await servers.ready(session.env)
                deadline = (None if settings.deadline is None
                            else (settings.deadline, settings.deadline_s))
                results = await run_session(session, env, settings.timeout,
                                            servers.kernels_dir(session.env), cleanups,
                                            kernel_env(env, settings.passenv), deadline,
                                            servers.folder)
        job.item.results += results
        if settings.store is not None:
            cache.store(settings.store, job.key, results)
        done(job)

    def stop(signum: int) -> None:
        """Ctrl-C or SIGTERM: stop at once. Kernels and launchers see the runner go and end
        themselves and their children; fork servers are ended here. No post is half-written:
        posts are written only after all sessions, each in one rename."""
        servers.close()
        print(f"runner: stopped by {signal.Signals(signum).name}", file=sys.stderr, flush=True)
        os._exit(128 + signum)

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)
    cleanups: list[asyncio.Task[None]] = []  # kernels being stopped in the background
    try:
        await asyncio.gather(*(one(job) for job in jobs))
    finally:
        await asyncio.gather(*cleanups, return_exceptions=True)
        servers.close()


def _all_failed(session: Session, kind: str, message: str) -> tuple[SnippetResult, ...]:
    return tuple(SnippetResult(s, session.env, "failed", error=ErrorInfo(kind, message, s.line))
                 for s in session.snippets)


def _preload(spec: EnvSpec, jobs: list[_Job]) -> list[str]:
    """The env's preload modules that at least two of this run's sessions import: imported
    once for them all; no session waits for a module that at most one of them needs."""
    imports = Counter(name for job in jobs if job.session.env == spec.name
                      for name in {n for s in job.session.snippets
                                   for n in plan.third_party_imports(s.code)})
    return [module for module in spec.preload if imports[module.split(".")[0]] > 1]


def _finish(item: _Work, write: bool, options: RenderOptions, config: Config) -> PostOutcome:
    path = str(item.path)
    if item.error is not None or item.post is None:
        error = item.error or PostError("not parsed", path)
        return PostOutcome(path, "error", error.message, error.line)
    given = item.sessions[0].overrides if item.sessions else ()
    if any(r.status == "failed" for r in item.results):
        return PostOutcome(path, "failed", parameters=given)
    if given:  # a run with other parameters prints other output: neither compared nor written
        return PostOutcome(path, "passed", parameters=given)
    outputs: dict[int, Output] = {r.snippet.line: r.output for r in item.results
                                  if r.status == "passed"}
    fresh = posts.freshen(item.path, item.post, outputs,
                          stamp_value(item.sessions, config.envs), options)
    if not fresh.differs(item.post.text):
        return PostOutcome(path, "passed")
    if not write:
        return PostOutcome(path, "stale",
                           diff=_diff(path, item.post.text, fresh.text) + fresh.notes())
    try:
        posts.write_fresh(item.path, item.post.text, fresh)
    except PostError as exc:
        return PostOutcome(path, "error", exc.message, exc.line)
    except OSError as exc:
        return PostOutcome(path, "error", f"cannot write: {exc.strerror or exc}")
    return PostOutcome(path, "passed", written=True)


def _check_determinism(first: list[SnippetResult], second: list[SnippetResult],
                       options: RenderOptions) -> list[SnippetResult]:
    """A snippet whose output differs between two runs of the same code fails, with the lines."""
    checked = []
    def by_line(results: list[SnippetResult]) -> list[SnippetResult]:
        return sorted(results, key=lambda r: r.snippet.line)  # sessions end in any order

    for a, b in zip(by_line(first), by_line(second), strict=True):
        if a.status == b.status == "passed":
            old = "".join(output_block(a.snippet, a.output, "\n", options))
            new = "".join(output_block(b.snippet, b.output, "\n", options))
            pictures = zip(a.output.images(), b.output.images(), strict=False)
            if old != new or not all(same_picture(x, y) for x, y in pictures):
                lines = [f"{x!r} then {y!r}" for x, y in zip(old.splitlines(), new.splitlines(),
                                                                strict=False) if x != y]
                diff = _diff(a.snippet.path, old, new)
                message = ("output differs between two runs: "
                           + (lines[0] if lines else "a figure changed"))
                a = replace(a, status="failed",
                            error=ErrorInfo("Nondeterministic", message, a.snippet.line, diff))
        checked.append(a)
    return checked


def _diff(path: str, old: str, new: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(keepends=True),
                                        new.splitlines(keepends=True),
                                        f"{path} (recorded)", f"{path} (fresh run)"))


# --- notebooks / envs ------------------------------------------------------------------------


def _notebooks(args: argparse.Namespace, config: Config) -> int:
    out = Path(args.out) if args.out else _relative(config.snippets)
    status = EXIT_OK
    for path in _post_paths(args, config):
        try:
            post = markdown.parse(str(path), posts.read(path))
            sessions = plan.plan(post, config.envs, config.import_names)
        except PostError as exc:
            print(f"{exc}", file=sys.stderr)
            status = EXIT_FAILED
            continue
        for session in sessions:
            target = out / notebooks.author_notebook_name(session)
            for written in notebooks.write_author_notebook(
                    notebooks.author_notebook(post, session), target):
                print(written)
    return status


def _merge(args: argparse.Namespace) -> int:
    """`report merge A.json B.json --out all.json`: the shards' reports as one."""
    try:
        reports = [json.loads(Path(p).read_text(encoding="utf-8")) for p in args.reports]
        merged = report.merge(reports)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"cannot merge the reports: {exc}") from exc
    Path(args.out).write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")
    return EXIT_FAILED if merged["summary"]["failed"] or any(
        p["status"] != "passed" for p in merged["posts"]) else EXIT_OK


def _kernels(args: argparse.Namespace, config: Config) -> int:
    """`kernels install`: each env, built if needed, as a Jupyter kernel of the user's
    ("runner: sklearn"), so JupyterLab and VS Code open the snippets/ notebooks in it."""
    from jupyter_client.kernelspec import KernelSpecManager

    manager = KernelSpecManager()
    for name in args.names or sorted(config.envs):
        if name not in config.envs:
            raise UsageError(f"unknown environment '{name}'")
        built = envs.build(config.envs[name], say=_say)
        where = manager.install_kernel_spec(str(built.kernels_dir / built.kernel_name),
                                            kernel_name=built.kernel_name, user=True)
        print(f"{built.kernel_name}: {where}")
    return EXIT_OK


def _sync(args: argparse.Namespace) -> int:
    """Code edited in author notebooks -> the fences it came from."""
    status = EXIT_OK
    by_post: dict[str, list[Any]] = {}
    for path in args.notebooks:
        try:
            book = jupytext.read(path)
        except Exception as exc:
            raise UsageError(f"cannot read the notebook: {exc}", path) from exc
        for cell in book.cells:
            post = cell.get("metadata", {}).get("runner", {}).get("post")
            if cell.cell_type == "code" and post:
                by_post.setdefault(post, []).append(cell)
    for post_path, cells in by_post.items():
        path = Path(post_path)
        try:
            post = markdown.parse(post_path, posts.read(path))
            text, changed = sync(post, cells)
            if changed:
                posts.replace(path, post.text, text)
        except PostError as exc:
            print(f"{exc}", file=sys.stderr)
            status = EXIT_FAILED
            continue
        for line in changed:
            print(f"{post_path}:{line}: code synced from the notebook")
    return status


def _envs(args: argparse.Namespace, config: Config) -> int:
    names = args.names or sorted(config.envs)
    unknown = [n for n in names if n not in config.envs]
    if unknown:
        raise UsageError(f"unknown environment '{unknown[0]}' (known: {', '.join(config.envs)})")
    if args.action == "lock":
        for name in names:
            envs.compile_lock(config.envs[name].folder, upgrade=args.upgrade)
            print(f"{name}: {config.envs[name].folder / 'requirements.lock'}")
        return EXIT_OK
    status = EXIT_OK
    for name in names:
        spec = config.envs[name]
        if args.action == "build":
            try:
                envs.build(spec, say=_say)
            except EnvError as exc:
                print(f"runner: {exc}", file=sys.stderr)
                status = EXIT_FAILED
        state = "built" if envs.is_built(spec) else "not built"
        print(f"{name:12} lock {spec.lock_hash[:12]}  {state:9}  {envs.env_path(spec)}")
    return status


# --- arguments -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runner", description=__doc__)
    parser.add_argument("--version", action="version", version=f"runner {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("verify", "run the posts and compare with their recorded output"),
                       ("update", "run the posts and write the verified output into them")):
        _run_options(commands.add_parser(name, help=text, description=text))
    books = commands.add_parser("notebooks", help="write notebooks for authors")
    books.add_argument("paths", nargs="*", metavar="PATH")
    books.add_argument("--out", metavar="DIR", help="folder for the notebooks (default snippets/)")
    back = commands.add_parser("sync", help="bring code edited in author notebooks back into "
                                            "the posts")
    back.add_argument("notebooks", nargs="+", metavar="NOTEBOOK",
                      help="snippets/*.ipynb, or their py:percent twins")
    merge = commands.add_parser("report", help="merge the JSON reports of shards")
    merge.add_argument("action", choices=("merge",))
    merge.add_argument("reports", nargs="+", metavar="REPORT")
    merge.add_argument("--out", required=True, metavar="FILE")
    kernels = commands.add_parser("kernels", help="register the envs as Jupyter kernels")
    kernels.add_argument("action", choices=("install",))
    kernels.add_argument("names", nargs="*", metavar="NAME")
    env = commands.add_parser("envs", help="list, build or lock the pinned environments")
    env.add_argument("action", nargs="?", choices=("list", "build", "lock"), default="list")
    env.add_argument("names", nargs="*", metavar="NAME")
    env.add_argument("--upgrade", action="store_true", help="lock: take the newest releases")
    return parser


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH", help="post files or folders (posts/)")
    parser.add_argument("--jobs", type=_positive_int, default=os.cpu_count() or 1,
                        help="sessions run at once (default: the number of cores)")
    parser.add_argument("--timeout", type=_positive_float, default=None,
                        help="seconds per snippet (default: [tool.runner] timeout, else 300)")
    parser.add_argument("--no-cache", action="store_true",
                        help="run every session; do not read the execution cache")
    parser.add_argument("--report", metavar="FILE", help="write the JSON report here")
    parser.add_argument("--junit-xml", metavar="FILE", help="write a JUnit XML report here")
    parser.add_argument("--shard", type=_shard_arg, metavar="K/N",
                        help="run only the K-th of N slices of the posts")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="override a parameter a post declares (runner:parameters); "
                             "the post's output is then not compared or written")
    parser.add_argument("--deadline", type=_positive_float, metavar="SECONDS",
                        help="the whole run's limit: sessions still running then fail")
    parser.add_argument("--no-warm", action="store_true",
                        help="start every kernel from scratch instead of forking a warm one")
    parser.add_argument("--check-determinism", action="store_true",
                        help="run every snippet twice; output that differs fails the snippet")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _shard_arg(text: str) -> tuple[int, int]:
    k, _, n = text.partition("/")
    try:
        shard = int(k), int(n)
    except ValueError:
        raise argparse.ArgumentTypeError("must look like 2/4") from None
    if not 1 <= shard[0] <= shard[1]:
        raise argparse.ArgumentTypeError("K/N needs 1 <= K <= N")
    return shard


def _relative(path: Path) -> Path:
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def _say(text: str) -> None:
    print(f"runner: {text}", file=sys.stderr, flush=True)
