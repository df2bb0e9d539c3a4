"""`bisect`: the first release that changes a post's outcome.

A post passes with its env's lock and fails with newer releases (or the other way round):

    the lock -> a fresh resolution of requirements.in -> each differing package alone
    (the others kept at their pins) -> that package's releases between the two, halved

Each candidate is a real env (a lock resolved by uv, built into the env cache, keyed by its
hash, so a second bisect reuses it) and a real run of the post. The outcome is the post's
status judged on its snippets and output, never on its `verified_by` stamp: passed, failed,
or stale (it runs, and prints other output). The bisection looks for the first release
whose outcome is the newer end's; a candidate that cannot be resolved or built (no wheel for
this Python) is skipped with its reason, and the search goes on around it (`git bisect skip`).

The pure parts (`changes`, `in_order`, `releases_between`, `next_probe`, `outcome_of`,
`answer`) decide; `Bisect` does the I/O (uv, env builds, runs) at the edges.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from packaging.version import InvalidVersion, Version

from runner import envs
from runner.config import Config, lock_pins, normalize_dist, with_lock
from runner.errors import EnvError, PostError, UsageError
from runner.model import EnvSpec, ErrorKind
from runner.plan import KNOWN_IMPORTS, third_party_imports
from runner.report import Bisected, PostOutcome, first_changed_line
from runner.run import Options, read_and_plan, run_posts, say

Outcome = Literal["passed", "failed", "stale"]
VERB: dict[str, str] = {"passed": "passes", "failed": "fails", "stale": "prints other output"}
DEFAULT_INDEX = "https://pypi.org/simple"


@dataclass(frozen=True)
class Trial:
    """The post run in one candidate env; `outcome` None: the candidate could not be made."""

    version: str  # of the package bisected ("" for the lock and the newest releases)
    outcome: Outcome | None
    detail: str = ""  # "posts/x.md:139 AttributeError: ...", or why it was skipped
    line: int | None = None  # the post line the detail names
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class Change:
    """A package whose version differs between the lock and a fresh resolution."""

    package: str
    before: str | None  # in the lock (None: not in it)
    after: str | None  # in the fresh resolution (None: not in it any more)


@dataclass(frozen=True)
class Limits:
    """How a bisect runs: per-snippet timeout, its whole time, the execution cache."""

    timeout: float | None = None  # seconds per snippet (None: the project's)
    seconds: float | None = None  # the whole bisect of one post; checked between candidates
    cache: bool = True  # results of a candidate env keyed on its lock hash: safe to reuse
    say: Callable[[str], None] = field(default=say)


class _OutOfTime(Exception):
    pass


# --- the pure parts ----------------------------------------------------------------------------


def changes(pinned: Mapping[str, str], fresh: Mapping[str, str]) -> list[Change]:
    """The packages whose versions differ, by name."""
    return [Change(name, pinned.get(name), fresh.get(name))
            for name in sorted(set(pinned) | set(fresh)) if pinned.get(name) != fresh.get(name)]


def in_order(found: Sequence[Change], first: Iterable[str]) -> list[Change]:
    """The changes to try, those of `first` (the packages the post imports) first, in order."""
    wanted = list(dict.fromkeys(first))
    ahead = sorted((c for c in found if c.package in wanted), key=lambda c: wanted.index(c.package))
    return ahead + [c for c in found if c.package not in wanted]


def releases_between(versions: Iterable[str], low: str, high: str) -> list[str]:
    """The final releases (pre-releases and dev releases left out) strictly between `low` and
    `high`, from `low`'s side to `high`'s (descending when `low` is the newer)."""
    a, b = Version(low), Version(high)
    inside = []
    for text in versions:
        try:
            v = Version(text)
        except InvalidVersion:
            continue
        if not (v.is_prerelease or v.is_devrelease) and min(a, b) < v < max(a, b):
            inside.append(v)
    return [str(v) for v in sorted(set(inside), reverse=a > b)]


def next_probe(low: int, high: int, skipped: Iterable[int]) -> int | None:
    """The candidate to try between the last index known to have the older outcome (`low`)
    and the first known to have the newer (`high`): the middle one, or the untried one
    nearest the middle; None when every one between is skipped (or there is none)."""
    gone = set(skipped)
    middle = (low + high) // 2
    between = [i for i in range(low + 1, high) if i not in gone]
    return min(between, key=lambda i: (abs(i - middle), i)) if between else None


def search(low: Trial, high: Trial, count: int,
           probe: Callable[[int], Trial]) -> tuple[int, int, dict[int, Trial], list[int]]:
    """Bisect `count` candidates whose ends are known (`low` at 0 has the older outcome,
    `high` at count - 1 the newer): `probe(i)` runs candidate i. The last index with the older
    outcome, the first with the newer, every trial by index, and the indexes skipped."""
    lo, hi = 0, count - 1
    trials, skipped = {lo: low, hi: high}, list[int]()
    while (index := next_probe(lo, hi, skipped)) is not None:
        trials[index] = probe(index)
        if trials[index].outcome is None:
            skipped.append(index)
        elif trials[index].outcome == high.outcome:
            hi = index
        else:
            lo = index
    return lo, hi, trials, sorted(skipped)


def outcome_of(post: PostOutcome) -> tuple[Outcome, str, int | None, dict[str, Any] | None]:
    """A post's outcome, a detail naming its line, the line, and the error of a failure."""
    if post.status == "error":
        raise PostError(post.error or "cannot be run", post.path, post.error_line)
    failed = [r for r in post.snippets if r.status == "failed" and r.error is not None]
    if failed and failed[0].error is not None:
        error = failed[0].error
        line = error.post_line or failed[0].snippet.line
        message = (error.message.splitlines() or [""])[0]
        return ("failed", f"{post.path}:{line} {error.type}: {message}", line,
                {"type": error.type, "message": error.message, "post_line": line})
    if post.status == "stale":
        line = first_changed_line(post.diff)
        body = post.diff.splitlines()[2:]  # below the ---/+++ header
        changed = next((t for t in body if t.startswith("+")), None) or next(
            (t for t in body if t.startswith("-")), "")
        return "stale", f"{post.path}:{line} output differs: {changed.strip()}", line, None
    return "passed", "", None, None


def answer(post: str, package: str, good: Trial, bad: Trial, lock: Trial,
           skipped: Sequence[tuple[str, str]] = ()) -> str:
    """`posts/x.md: passes with numpy 1.23.5, fails from numpy 1.24.0 (posts/x.md:139
    AttributeError: module 'numpy' has no attribute 'int')`."""
    assert good.outcome is not None and bad.outcome is not None
    text = (f"{post}: {VERB[good.outcome]} with {package} {good.version}, "
            f"{VERB[bad.outcome]} from {package} {bad.version}"
            + (f" ({bad.detail})" if bad.detail else ""))
    if lock.outcome is not None and lock.outcome != good.outcome:
        text += f"; {VERB[lock.outcome]} with the lock's {package} {lock.version}"
    if skipped:
        text += "; not tried between them: " + ", ".join(f"{package} {v} ({why})"
                                                          for v, why in skipped)
    return text


def distributions_imported(codes: Iterable[str], import_names: Mapping[str, str]) -> list[str]:
    """The distributions the code imports, as far as names tell (`sklearn` -> scikit-learn)."""
    found: list[str] = []
    for code in codes:
        for module in third_party_imports(code):
            if module in import_names:
                found.append(import_names[module])
            else:
                found += KNOWN_IMPORTS.get(module, (normalize_dist(module),))
    return list(dict.fromkeys(found))


# --- the registry ------------------------------------------------------------------------------


def index_url() -> str:
    """The index uv resolves from: `UV_DEFAULT_INDEX` or `UV_INDEX_URL`, else PyPI."""
    return (os.environ.get("UV_DEFAULT_INDEX") or os.environ.get("UV_INDEX_URL")
            or DEFAULT_INDEX).rstrip("/")


def release_versions(package: str) -> list[str]:
    """Every version the index lists for the package (PEP 691's JSON simple API)."""
    url = f"{index_url()}/{normalize_dist(package)}/"
    request = urllib.request.Request(url, headers={
        "Accept": "application/vnd.pypi.simple.v1+json", "User-Agent": "runner-bisect"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            data = json.load(response)
    except (OSError, ValueError) as exc:
        raise EnvError(f"cannot list the releases of {package} from {url}: {exc}") from exc
    versions = data.get("versions") if isinstance(data, dict) else None
    if not isinstance(versions, list):
        raise EnvError(f"{url} does not list versions (PEP 700): cannot bisect {package}")
    return [str(v) for v in versions]


# --- the I/O: candidate envs and runs ----------------------------------------------------------


class Bisect:
    """One post's bisect in one env; `run()` gives the `Bisected`."""

    def __init__(self, post: Path, config: Config, env: str, limits: Limits) -> None:
        self.post, self.config, self.limits = post, config, limits
        self.spec = config.envs[env]
        self.started = time.monotonic()
        self.built = self.reused = 0
        self.folder = Path(tempfile.mkdtemp(prefix="runner-bisect-"))
        options = envs.lock_options(self.spec.lock.read_bytes()) or []
        self.python = envs.option_value(options, "--python-version") or envs.running_python()

    def result(self, answer_text: str, **found: Any) -> Bisected:
        return Bisected(str(self.post), self.spec.name, answer_text, envs_built=self.built,
                        envs_reused=self.reused, seconds=time.monotonic() - self.started,
                        **found)

    def run(self, packages: Sequence[str] = ()) -> Bisected:
        try:
            return self._run(packages)
        except _OutOfTime:
            return self.result(f"{self.post}: gave up after {self.limits.seconds:g} s "
                               "(the time limit) before a culprit was found")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, packages: Sequence[str]) -> Bisected:
        lock = self.trial(self.spec, "", "the lock")
        if lock.outcome is None:
            raise EnvError(f"environment '{self.spec.name}': {lock.detail}", self.spec.folder)
        before: Outcome = lock.outcome
        fresh = self.resolve(None)
        if isinstance(fresh, str):
            raise EnvError(f"environment '{self.spec.name}' cannot be resolved afresh: {fresh}")
        differ = changes(dict(self.spec.pins), lock_pins(fresh.lock.read_text()))
        if packages:
            differ = self._named(differ, packages)
        elif not differ:
            return self.result(f"{self.post}: env '{self.spec.name}' already pins the newest "
                               "releases: nothing to bisect")
        else:
            newest = self.trial(fresh, "", "the newest releases")
            if newest.outcome == lock.outcome:
                return self.result(
                    f"{self.post}: {VERB[before]} with the lock and with the newest "
                    f"releases ({len(differ)} packages newer): no release changes its outcome")
        codes = [s.code for s in self._snippets()]
        order = in_order(differ, distributions_imported(codes, self.config.import_names))
        for change in order:
            if change.before is None or change.after is None:
                continue  # added or dropped by the resolution: no pin to move
            high = self.candidate(change.package, change.after)
            if high.outcome is not None and high.outcome != before:
                low = replace(lock, version=change.before)
                return self.between(change, low, high, low)
        tried = ", ".join(c.package for c in order if c.before and c.after)
        return self.result(f"{self.post}: {VERB[before]} with the lock; no single newer "
                           f"release changes that (tried {tried or 'none'}): it takes several "
                           "together")

    def between(self, change: Change, low: Trial, high: Trial, lock: Trial) -> Bisected:
        """Halve the releases between the lock's version and the newer one."""
        assert change.before is not None and change.after is not None
        middle = releases_between(release_versions(change.package), change.before, change.after)
        names = [change.before, *middle, change.after]
        lo, hi, trials, skipped = search(
            low, high, len(names), lambda i: self.candidate(change.package, names[i]))
        good, bad = trials[lo], trials[hi]
        passed_over = [(names[i], trials[i].detail) for i in skipped if lo < i < hi]
        return self.result(
            answer(str(self.post), change.package, good, bad, lock, passed_over), found=True,
            package=change.package, good=good.version, bad=bad.version,
            good_outcome=good.outcome, bad_outcome=bad.outcome, error=bad.error,
            line=bad.line or self._first_line(),
            skipped=tuple((f"{change.package} {names[i]}", trials[i].detail) for i in skipped))

    def candidate(self, package: str, version: str) -> Trial:
        """The post run with the lock, `package` moved to `version` (others kept where they
        fit); skipped, with uv's reason in one phrase, when no such env can be made."""
        spec = self.resolve(f"{package}=={version}")
        if isinstance(spec, str):
            return Trial(version, None, spec)
        return self.trial(spec, version, f"{package} {version}")

    def resolve(self, pin: str | None) -> EnvSpec | str:
        """A candidate env's spec (its lock resolved by uv), or why it cannot be had."""
        self._check_time()
        folder = self.folder / (pin or "newest").replace("==", "-")
        try:
            envs.resolve_candidate(folder, self.spec, pin)
        except EnvError as exc:
            return _reason(exc.message, self.python)
        return with_lock(self.spec, folder)

    def trial(self, spec: EnvSpec, version: str, label: str) -> Trial:
        """Build the env (or find it built) and run the post in it."""
        self._check_time()
        was_built = envs.is_built(spec)
        try:
            envs.build(spec, say=self.limits.say)
        except EnvError as exc:
            return Trial(version, None, _reason(exc.message, self.python))
        self.built += not was_built
        self.reused += was_built
        config = replace(self.config, envs={**self.config.envs, spec.name: spec})
        options = Options(mode="verify", jobs=1, timeout=self.limits.timeout,
                          cache=self.limits.cache, ignore_stamp=True, deadline=self._left())
        post = run_posts([self.post], config, options).posts[0]
        if any(r.error is not None and r.error.type == ErrorKind.DEADLINE for r in post.snippets):
            raise _OutOfTime
        outcome, detail, line, error = outcome_of(post)
        self.limits.say(f"bisect: {self.post} {VERB[outcome]} with {label}"
                        + (f" ({detail})" if detail else ""))
        return Trial(version, outcome, detail, line, error)

    def _named(self, differ: list[Change], packages: Sequence[str]) -> list[Change]:
        wanted = [normalize_dist(p) for p in packages]
        pins = dict(self.spec.pins)
        for name in wanted:
            if name not in pins:
                raise UsageError(f"{name} is not pinned in env '{self.spec.name}' "
                                 f"({self.spec.lock})")
        chosen = [c for c in differ if c.package in wanted]
        if not chosen:
            raise UsageError(f"{', '.join(wanted)}: env '{self.spec.name}' already pins the "
                             "newest release that resolves: nothing to bisect")
        return in_order(chosen, wanted)

    def _snippets(self) -> list[Any]:
        planned = read_and_plan([self.post], self.config, Options())[0]
        return [s for session in planned.sessions for s in session.snippets]

    def _first_line(self) -> int:
        return min((s.line for s in self._snippets()), default=1)

    def _left(self) -> float | None:
        if self.limits.seconds is None:
            return None
        return max(self.limits.seconds - (time.monotonic() - self.started), 1.0)

    def _check_time(self) -> None:
        if self.limits.seconds is not None and \
                time.monotonic() - self.started >= self.limits.seconds:
            raise _OutOfTime


def _reason(message: str, python: str) -> str:
    """uv's refusal as one phrase: a missing wheel said plainly, else uv's last line."""
    if "wheel" in message:
        return envs.no_wheel_message(message, python).split(" (only")[0]
    return re.sub(r"\s+", " ", message.split(" / ")[-1]).strip()


# --- the entry points --------------------------------------------------------------------------


def post_env(post: Path, config: Config, env: str | None) -> str:
    """The env to bisect the post in: `env`, or the one env its snippets run in."""
    if env is not None:
        if env not in config.envs:
            raise UsageError(f"unknown environment '{env}' (known: {', '.join(config.envs)})")
        return env
    planned = read_and_plan([post], config, Options())[0]
    if planned.error is not None:
        raise planned.error
    used = sorted({s.env for s in planned.sessions})
    if len(used) != 1:
        raise UsageError(f"{post} runs in envs {', '.join(used) or '(none)'}: name one with "
                         "--env" if used else f"{post} has no snippet to run")
    return used[0]


def bisect_post(post: str | Path, config: Config, env: str | None = None,
                packages: Sequence[str] = (), limits: Limits | None = None) -> Bisected:
    """Which release changes the post's outcome from the one it has with its env's lock."""
    path = Path(post)
    if not path.is_file():
        raise UsageError(f"{post}: no such post")
    return Bisect(path, config, post_env(path, config, env), limits or Limits()).run(packages)


def failing_posts(report: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """From a JSON report: each post that failed or is stale, and the env of its first failed
    snippet (None: let the post's env decide)."""
    envs_of: dict[str, str] = {}
    for snippet in report.get("snippets", []):
        if snippet.get("status") == "failed":
            envs_of.setdefault(snippet["post"], snippet["env"])
    return [(p["path"], envs_of.get(p["path"])) for p in report.get("posts", [])
            if p.get("status") in ("failed", "stale")]


def read_report(path: Path) -> dict[str, Any]:
    """A JSON report of `verify` (the canary's); a missing or malformed one is a UsageError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the report: {exc}", path) from exc
    if not isinstance(data, dict) or not isinstance(data.get("posts"), list):
        raise UsageError("not a JSON report of the runner (no `posts`)", path)
    return data


def bisect_failing(report: Mapping[str, Any], config: Config, limits: Limits,
                   total: float | None = None) -> list[Bisected]:
    """The canary's step: each failed or stale post of a report bisected, within `limits`
    each and `total` seconds for all; a post the time left no longer allows says so."""
    started = time.monotonic()
    results = []
    for post, env in failing_posts(report):
        left = None if total is None else total - (time.monotonic() - started)
        if left is not None and left < 1:
            results.append(Bisected(post, env or "", f"{post}: not bisected: the time limit "
                                    f"of {total:g} s for all posts had passed"))
            continue
        seconds = min(s for s in (limits.seconds, left) if s is not None) \
            if limits.seconds is not None or left is not None else None
        try:
            results.append(bisect_post(post, config, env, (), replace(limits, seconds=seconds)))
        except (UsageError, PostError, EnvError) as exc:
            results.append(Bisected(post, env or "", f"{post}: not bisected: {exc.message}"))
    return results
