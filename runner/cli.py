"""`python -m runner`: argv -> options -> the library -> reports -> exit code, nothing else.

`main` is the one place that turns errors into exit codes: a `UsageError` is 2, any other
`RunnerError` or `OSError` is 1, each as one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from runner import __version__
from runner.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, RunnerError, UsageError

if TYPE_CHECKING:  # imported where used: `--version` and `--help` import little
    from datetime import date

    from runner.config import Config
    from runner.model import EnvSpec
    from runner.run import Options

Command = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parse(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already said in one line
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        command: Command = args.command_function
        return command(args)
    except UsageError as exc:
        return _fail(exc, EXIT_USAGE)
    except RunnerError as exc:
        return _fail(exc, EXIT_FAILED)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}", EXIT_FAILED)


def _out(text: str) -> None:
    """Report text on stdout; what its encoding cannot show (a lone surrogate a kernel sent,
    `⏎` on an ASCII terminal) as backslash escapes, never a crash before the reports."""
    encoding = sys.stdout.encoding or "utf-8"
    sys.stdout.write(text.encode(encoding, "backslashreplace").decode(encoding))


def _fail(error: object, code: int) -> int:
    from runner.report import inert, one_line

    print(inert(f"runner: {one_line(str(error))}"), file=sys.stderr)
    return code


# --- the commands ------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    """verify / update: the run, then what people and CI read."""
    from runner import report
    from runner.progress import RunProgress
    from runner.run import run_posts

    options = _options(args, args.command)
    progress = RunProgress()
    try:
        run = run_posts(args.paths, _config(), options, progress.post_done)
    finally:
        progress.close()
    _out(report.terminal(run))
    if os.environ.get("GITHUB_ACTIONS") == "true":
        _out(report.github_annotations(run))
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8",
                  errors="backslashreplace") as summary:
            summary.write(report.step_summary(run))
    if args.report:
        report.write_json(run, Path(args.report))
    if args.junit_xml:
        report.write_junit(run, Path(args.junit_xml))
    return run.exit_code


def _watch(args: argparse.Namespace) -> int:
    """watch: run the posts, then each again when saved; Ctrl-C while waiting ends it (0)."""
    from runner import report
    from runner.watch import watch

    if args.shard:
        raise UsageError("watch runs each post that is saved: --shard does not apply")
    options = _options(args, "update" if args.update else "verify")

    def show(run: report.Run) -> None:
        _out(report.terminal(run))
        sys.stdout.flush()
        if args.report:
            report.write_json(run, Path(args.report))
        if args.junit_xml:
            report.write_junit(run, Path(args.junit_xml))

    print("runner: watching; Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        watch(args.paths, _config(), options, show)
    except KeyboardInterrupt:
        print("runner: stopped watching", file=sys.stderr)
    return EXIT_OK


def _options(args: argparse.Namespace, mode: str) -> Options:
    """The run options the flags of `verify`, `update` and `watch` set."""
    from runner import parameters
    from runner.run import Options

    return Options(
        mode="update" if mode == "update" else "verify", jobs=args.jobs, timeout=args.timeout,
        cache=not args.no_cache, warm=not args.no_warm, deadline=args.deadline,
        shard=getattr(args, "shard", None),
        durations=Path(args.durations) if getattr(args, "durations", None) else None,
        params=tuple(parameters.parse_overrides(args.param).items()),
        check_determinism=args.check_determinism, require_sandbox=args.require_sandbox,
        keep_going=args.keep_going, ignore_stamp=getattr(args, "ignore_stamps", False))


def _notebooks(args: argparse.Namespace) -> int:
    from runner.notebooks import write_for_posts
    from runner.posts import relative

    config = _config()
    out = Path(args.out) if args.out else relative(config.snippets)
    return _each(write_for_posts(args.paths, config, out), "{}")


def _sync(args: argparse.Namespace) -> int:
    from runner.sync import NOTHING_TO_SYNC, sync_notebooks

    done = sync_notebooks(args.notebooks)
    if not done:
        print(NOTHING_TO_SYNC)
    return _each(done, "{}: code synced from the notebook")


def _kernels(args: argparse.Namespace) -> int:
    from runner.envs import install_kernelspecs

    for name, where in install_kernelspecs(_specs(_config(), args.names)):
        print(f"{name}: {where}")
    return EXIT_OK


def _report_merge(args: argparse.Namespace) -> int:
    from runner import report

    merged = report.merge_files([Path(p) for p in args.reports])
    Path(args.out).write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")
    return report.merged_exit_code(merged)


def _envs(args: argparse.Namespace) -> int:
    from runner import envs
    from runner.run import say

    if args.action == "new":
        return _envs_new(args)
    if args.source or (args.as_of and args.action != "lock"):
        raise UsageError("--from is for `envs new`, --as-of for `envs lock` and `envs new`")
    specs = _specs(_config(locked=args.action != "lock"), args.names)
    if args.action == "lock":
        for spec in specs:
            changed = envs.compile_lock(spec.folder, upgrade=args.upgrade, as_of=args.as_of)
            dated = f" as of {args.as_of}" if args.as_of else ""
            print(f"{spec.name}: {spec.lock} " + (f"updated{dated}: a new lock hash, the env is "
                  "built again and posts stamped with the old one are stale" if changed else
                  f"unchanged{dated}"))
        return EXIT_OK
    status = EXIT_OK
    for spec in specs:
        if args.action == "build":
            try:
                envs.build(spec, say=say)
            except RunnerError as exc:
                status = _fail(exc, EXIT_FAILED)
        state = "built" if envs.is_built(spec) else "not built"
        print(f"{spec.name:12} lock {spec.lock_hash[:12]}  {state:9}  {envs.env_path(spec)}")
    return status


def _envs_new(args: argparse.Namespace) -> int:
    """envs new NEW --from NAME [--as-of DATE]: a new env folder made from NAME's."""
    from runner import envs

    if len(args.names) != 1 or not args.source:
        raise UsageError("envs new takes one new name and --from NAME (envs new NEW --from "
                         "NAME [--as-of YYYY-MM-DD])")
    [source] = _specs(_config(), [args.source])
    folder = envs.new_env(source, args.names[0], args.as_of)
    made = f"locked as of {args.as_of}" if args.as_of else f"with {source.name}'s lock"
    print(f"{args.names[0]}: {folder} made from {source.name}, {made}; a post names it with "
          f"`runner: {{env: {args.names[0]}}}` in its front matter")
    return EXIT_OK


def _bisect(args: argparse.Namespace) -> int:
    """bisect POST | --from-report FILE: which release changes each post's outcome."""
    from runner import bisect, report

    if bool(args.post) == bool(args.from_report):
        raise UsageError("bisect takes one POST, or --from-report FILE (a verify report)")
    config = _config()
    limits = bisect.Limits(timeout=args.timeout, seconds=args.time_limit,
                           cache=not args.no_cache)
    source: dict[str, object] = {}
    if args.from_report:
        source = bisect.read_report(Path(args.from_report))
        results = bisect.bisect_failing(source, config, limits, args.total_time_limit)
        if not results:
            print(f"runner: no failed or stale post in {args.from_report}: nothing to bisect")
    else:
        results = [bisect.bisect_post(args.post, config, args.env, args.package, limits)]
    for found in results:
        _out(report.inert(report.one_line(found.answer)) + "\n")
        _out(report.inert(report.one_line(f"bisect: {found.post}: {report.bisect_cost(found)}"))
             + "\n")
    if os.environ.get("GITHUB_ACTIONS") == "true":
        _out(report.bisect_annotations(results))
    if os.environ.get("GITHUB_STEP_SUMMARY") and results:
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8",
                  errors="backslashreplace") as summary:
            summary.write(report.bisect_summary(results))
    if args.report:
        Path(args.report).write_text(json.dumps(
            {**source, "bisect": report.bisect_json(results)}, indent=2) + "\n",
            encoding="utf-8")
    return EXIT_OK if all(found.found for found in results) else EXIT_FAILED


# --- helpers -----------------------------------------------------------------------------------


def _each(done: Sequence[object | RunnerError], template: str) -> int:
    """Print each item done, each error as its one line; 1 if any failed. What they name (a
    post, a notebook) is shown as it is (`runner.visible`)."""
    from runner.report import one_line

    status = EXIT_OK
    for item in done:
        if isinstance(item, RunnerError):
            print(one_line(str(item)), file=sys.stderr)
            status = EXIT_FAILED
        else:
            print(one_line(template.format(item)))
    return status


def _config(locked: bool = True) -> Config:
    from runner.config import load

    return load(Path.cwd(), locked)


def _specs(config: Config, names: list[str]) -> list[EnvSpec]:
    unknown = [n for n in names if n not in config.envs]
    if unknown:
        raise UsageError(f"unknown environment '{unknown[0]}' (known: {', '.join(config.envs)})")
    return [config.envs[name] for name in names or sorted(config.envs)]


# --- arguments ---------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that says where help is: no usage block."""

    def error(self, message: str) -> NoReturn:
        _usage_error(self.prog, message)


def _usage_error(prog: str, message: str) -> NoReturn:
    message = message.removeprefix("argument ")  # `--jobs: ...`, not `argument --jobs: ...`
    print(f"runner: {message} ({prog} --help)", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments; an option the command does not know is named with that command's help."""
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _usage_error(f"{parser.prog} {args.command}",
                     f"unrecognized arguments: {' '.join(unknown)}")
    return args


def _prog() -> str:
    """The name the user typed: the console script's, else `python -m runner`."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name == "blog-runner" else "python -m runner"


_ABOUT = ("Run the Python snippets of Markdown posts in real Jupyter kernels, in pinned "
          "environments, and keep the output the posts record true.")
_EXIT_CODES = ("exit codes: 0 all passed and nothing stale; 1 a snippet failed, a post could not "
               "be read, or a post is stale; 2 the command or the configuration is wrong")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=_prog(), description=_ABOUT, epilog=_EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"runner {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (("verify", "run the posts and compare with their recorded output"),
                       ("update", "run the posts and write the verified output into them")):
        _run_options(commands.add_parser(name, help=text, description=text))
    text = "run the posts, then each again when it is saved (writes nothing unless --update)"
    watching = commands.add_parser("watch", help=text, description=text)
    _run_options(watching)
    watching.set_defaults(command_function=_watch)
    watching.add_argument("--update", action="store_true", help="write the verified output")
    books = _command(commands, "notebooks", _notebooks, "write notebooks for authors")
    books.add_argument("paths", nargs="*", metavar="PATH")
    books.add_argument("--out", metavar="DIR", help="folder for the notebooks (default snippets/)")
    back = _command(commands, "sync", _sync,
                    "bring code edited in author notebooks back into the posts")
    back.add_argument("notebooks", nargs="+", metavar="NOTEBOOK",
                      help="snippets/*.ipynb, or their py:percent twins")
    merge = _command(commands, "report", _report_merge, "merge the JSON reports of shards")
    merge.add_argument("action", choices=("merge",), metavar="merge")
    merge.add_argument("reports", nargs="+", metavar="REPORT")
    merge.add_argument("--out", required=True, metavar="FILE")
    kernels = _command(commands, "kernels", _kernels, "register the envs as Jupyter kernels")
    kernels.add_argument("action", choices=("install",), metavar="install")
    kernels.add_argument("names", nargs="*", metavar="NAME")
    env = _command(commands, "envs", _envs, "list, build or lock the pinned environments")
    env.add_argument("action", nargs="?", choices=("list", "build", "lock", "new"),
                     default="list", metavar="list|build|lock|new")
    env.add_argument("names", nargs="*", metavar="NAME")
    env.add_argument("--upgrade", action="store_true", help="lock: take the newest releases")
    env.add_argument("--as-of", type=_date_arg, metavar="YYYY-MM-DD",
                     help="lock, new: only the releases that existed that day (UTC)")
    env.add_argument("--from", dest="source", metavar="NAME",
                     help="new: the env whose requirements.in the new env starts from")
    _bisect_options(_command(commands, "bisect", _bisect,
                             "find the release that changes a post's outcome"))
    return parser


def _bisect_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("post", nargs="?", metavar="POST", help="the post to bisect")
    parser.add_argument("--env", metavar="NAME",
                        help="the env to bisect (default: the one the post runs in)")
    parser.add_argument("--package", action="append", default=[], metavar="NAME",
                        help="bisect this package's releases only (repeatable; default: every "
                             "package a fresh resolution moves, one at a time)")
    parser.add_argument("--from-report", metavar="FILE",
                        help="bisect each failed or stale post of this JSON report (the canary)")
    parser.add_argument("--time-limit", type=_positive(float), metavar="SECONDS",
                        help="per post: stop trying candidates after this long")
    parser.add_argument("--total-time-limit", type=_positive(float), metavar="SECONDS",
                        help="with --from-report: for all the posts together")
    _timeout_and_cache(parser, "candidate")
    parser.add_argument("--report", metavar="FILE",
                        help="write the JSON report here (with --from-report: that report, "
                             "and a `bisect` entry added)")


def _command(commands: argparse._SubParsersAction,  # type: ignore[type-arg]
             name: str, function: Command, text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(name, help=text, description=text)
    parser.set_defaults(command_function=function)
    return parser


def _timeout_and_cache(parser: argparse.ArgumentParser, each: str) -> None:
    """--timeout and --no-cache, for a run of sessions or of bisect's candidates."""
    parser.add_argument("--timeout", type=_positive(float), default=None, metavar="SECONDS",
                        help="seconds per snippet (default: [tool.runner] timeout, else 300)")
    parser.add_argument("--no-cache", action="store_true",
                        help=f"run every {each}; do not read the execution cache")


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(command_function=_run)
    parser.add_argument("paths", nargs="*", metavar="PATH", help="post files or folders (posts/)")
    parser.add_argument("--jobs", type=_positive(int), default=os.cpu_count() or 1, metavar="N",
                        help="sessions run at once (default: the number of cores)")
    _timeout_and_cache(parser, "session")
    parser.add_argument("--report", metavar="FILE", help="write the JSON report here")
    parser.add_argument("--junit-xml", metavar="FILE", help="write a JUnit XML report here")
    parser.add_argument("--shard", type=_shard_arg, metavar="K/N",
                        help="run only the K-th of N slices of the posts")
    parser.add_argument("--durations", metavar="FILE",
                        help="with --shard: balance the slices by the snippet durations in "
                             "this JSON report of an earlier run (--report, report merge)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="override a parameter a post declares (runner:parameters); "
                             "the post's output is then not compared or written")
    parser.add_argument("--deadline", type=_positive(float), metavar="SECONDS",
                        help="the whole run's limit: sessions still running then fail")
    parser.add_argument("--no-warm", action="store_true",
                        help="start every kernel from scratch instead of forking a warm one")
    parser.add_argument("--check-determinism", action="store_true",
                        help="run every snippet twice; output that differs fails the snippet")
    parser.add_argument("--require-sandbox", action="store_true",
                        help="exit 2 where kernels cannot be sandboxed (bubblewrap), instead "
                             "of running them with limits only")
    parser.add_argument("--ignore-stamps", action="store_true",
                        help="verify: judge snippets and output only; a post whose only "
                             "difference is its verified_by stamp (after a re-lock) passes, "
                             "reported apart")
    parser.add_argument("--keep-going", action="store_true",
                        help="a failing snippet does not stop the rest of its post: every "
                             "failure is reported at its line")


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    """A type for argparse whose error says what is wanted and what was given."""
    wanted = ("a whole number of 1 or more" if kind is int
              else "a number of seconds more than 0 (finite)")

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be {wanted}, not {text!r}")
        return value

    return parse


def _date_arg(text: str) -> date:
    from datetime import date as day

    try:
        if len(text) == 10 and text[4] == text[7] == "-":
            return day.fromisoformat(text)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"must be a date like 2022-12-01, not {text!r}")


def _shard_arg(text: str) -> tuple[int, int]:
    k, _, n = text.partition("/")
    try:
        shard = int(k), int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must look like 2/4, not {text!r}") from None
    if not 1 <= shard[0] <= shard[1]:
        raise argparse.ArgumentTypeError(f"K/N needs 1 <= K <= N, not {text!r}")
    return shard
