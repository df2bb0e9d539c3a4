"""The runner against its floor, against papermill and at blog scale (`nox -s bench`).

Three sets of posts are generated in a temporary folder: light ones (pure Python), ones that
import scikit-learn, ones that import TensorFlow. For each set, one run of each:

  floor       plain `python -c CODE` in the env, one process per post, one after another
  papermill   papermill executing the same notebooks (the runner's session notebooks), in turn
  cold/1      the runner, --no-cache --no-warm --jobs 1: a fresh kernel per session
  warm/1      the runner, --no-cache --jobs 1: kernels forked from the env's fork server
  warm/1 nosb the same with RUNNER_NO_SANDBOX=1: the difference is the sandbox's cost
  serial/1    the same with RUNNER_NO_PRESTART=1: no kernel readied while the cells before it
              run, so one job uses one core (warm/1 uses the second for the next kernel)
  warm/2      the same with --jobs 2
  cached      the runner with its execution cache filled: no kernel at all

Then, for issue 13 ("Blog scale"):

  start-up    `python -m runner --version` and `--help`, the median of 5 runs
  scale       50, 200 and 1000 light posts (`--scale`): cold (--no-cache --jobs 2, warm
              kernels) and cached verify (median of 3), the runner's peak RSS; 1 job
              against 2 at 200
  stages      each stage alone, in-process, at each size (read and plan, the same replayed
              from verdicts, shard, cache look-up, the whole cached run, the reports): time
              per post, which a quadratic step grows; the sizes are timed in turn, round
              after round, so a machine that slows meanwhile slows them alike
  shards      2-4 shards simulated from the largest run's report plus a 60 s TensorFlow post:
              the slowest shard against the fastest, by time (`--durations`) and by count

A cached verify replays each passed post's verdict (runner/verdicts.py): no post is parsed.

Times are wall-clock seconds of the whole command, start-up of the runner included. The
per-session overhead is (runner - floor) / sessions. Memory is the runner process's own peak
RSS (kernels and servers are other processes), sampled every 10 ms. The targets are printed
with PASS or MISS and the figure; a miss does not fail the bench (an error does). `--quick`
runs small sizes (a minute or two) to try the bench itself. The full bench takes 6 to 10
minutes on 2 cores. A fixed pure-Python loop, timed before and after, tells how fast the
machine ran: a shared machine's speed varies by a third from hour to hour.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runner import config, envs, markdown, notebooks, plan  # noqa: E402
from runner.envs import kernel_env  # noqa: E402

LIGHT = """\
```python
import math

primes = [n for n in range(2, 3000 + {i}) if all(n % d for d in range(2, math.isqrt(n) + 1))]
print(len(primes))
```

Then:

```python
print(sum(primes[-5:]))
```
"""
SKLEARN = """\
```python
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge
from sklearn.model_selection import cross_val_score

X, y = load_diabetes(return_X_y=True)
print(round(cross_val_score(Ridge(alpha={i}), X, y, cv=3).mean(), 4))
```
"""
TENSORFLOW = """\
```python
import tensorflow as tf

print(int(tf.reduce_sum(tf.range({i} + 10)).numpy()))
```
"""
SCALE_POST = """\
---
title: A light post
runner:
  env: sklearn
---

```python
import math

SEED = 0
primes = [n for n in range(2, 3000 + SEED % 7) if all(n % d for d in range(2, math.isqrt(n) + 1))]
print(len(primes) >= 430)
```

Then:

```python
print(primes[:3])
```
"""
FAILED: list[str] = []  # the runs that exited non-zero
STAGES = ("read+plan", "replay", "shard", "cache look-up", "cached run", "reports")
SETS = {"light": (LIGHT, "sklearn"), "sklearn": (SKLEARN, "sklearn"),
        "tensorflow": (TENSORFLOW, "tensorflow")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--light", type=int, help="light posts in the sets table (20)")
    parser.add_argument("--sklearn", type=int, help="scikit-learn posts (6)")
    parser.add_argument("--tensorflow", type=int, help="TensorFlow posts (3)")
    parser.add_argument("--scale", type=_sizes, help="light posts per row of the scale table "
                        "(50,200,1000)")
    parser.add_argument("--repeat", type=int, help="runs of --version and --help (5)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, to try the bench itself (a minute or two)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    quick = args.quick
    sizes = {"light": _given(args.light, 6 if quick else 20),
             "sklearn": _given(args.sklearn, 0 if quick else 6),
             "tensorflow": _given(args.tensorflow, 0 if quick else 3)}
    scale = args.scale or ([10, 20, 40] if quick else [50, 200, 1000])
    project = config.load(ROOT)
    figures: dict[str, Any] = {"sets": {}, "speed": {"start": machine_speed()}}
    figures["startup"] = startup(_given(args.repeat, 3 if quick else 5))
    with tempfile.TemporaryDirectory(prefix="runner-bench-") as temp:
        base = Path(temp)
        for name, count in sizes.items():
            if count:
                figures["sets"][name] = bench_set(base, name, count, project)
        figures |= bench_scale(base, scale, project)
    figures["speed"]["end"] = machine_speed()
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if FAILED:
        raise SystemExit(f"bench: {len(FAILED)} runs failed (their figures are nan): "
                         + "; ".join(FAILED))


def machine_speed() -> float:
    """Seconds for a fixed pure-Python loop (the best of 5): the same code runs slower on a
    slower (or busier) machine, so the figures of two runs compare only next to this."""

    def loop() -> None:
        total = 0
        for i in range(2_000_000):
            total += i

    return min(timed(loop) for _ in range(5))


def _given(value: int | None, default: int) -> int:
    return default if value is None else value


def _sizes(text: str) -> list[int]:
    sizes = sorted({int(n) for n in text.split(",")})
    if len(sizes) < 2 or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"two or more sizes of 1 or more, not {text!r}")
    return sizes


def bench_set(base: Path, name: str, count: int, project: config.Config) -> dict[str, float]:
    template, env_name = SETS[name]
    folder = base / name
    folder.mkdir()
    for i in range(count):
        (folder / f"{name}-{i:02d}.md").write_text(
            f"---\ntitle: {name} {i}\nrunner:\n  env: {env_name}\n---\n\n"
            + template.replace("{i}", str(i + 1)))
    env = envs.build(project.envs[env_name])
    cache = base / f"cache-{name}"
    variables = {**os.environ, "RUNNER_EXECUTION_CACHE": str(cache)}
    runner = [sys.executable, "-m", "runner"]
    subprocess.run([*runner, "update", str(folder), "--no-cache"], cwd=ROOT, env=variables,
                   check=True, capture_output=True)  # record outputs: verify now exits 0
    posts = [markdown.parse(str(p), p.read_text()) for p in sorted(folder.glob("*.md"))]
    sessions = [s for p in posts for s in plan.plan(p, project.envs)]
    out: dict[str, float] = {"posts": count, "sessions": len(sessions)}
    out["floor"] = timed(lambda: [subprocess.run(
        [str(env.python), "-c", "\n".join(s.code for s in session.snippets)],
        cwd=base, check=True, capture_output=True) for session in sessions])
    out["papermill"] = papermill(base / f"nb-{name}", sessions, env)
    unsandboxed = {**variables, "RUNNER_NO_SANDBOX": "1"}
    profile = base / f"profile-{name}.jsonl"
    profiled = {**variables, "RUNNER_PROFILE": str(profile)}
    serial = {**variables, "RUNNER_NO_PRESTART": "1"}
    for label, extra, where in (("cold/1", ["--no-cache", "--no-warm", "--jobs", "1"], variables),
                                ("warm/1", ["--no-cache", "--jobs", "1"], profiled),
                                ("serial/1", ["--no-cache", "--jobs", "1"], serial),
                                ("warm/1 nosb", ["--no-cache", "--jobs", "1"], unsandboxed),
                                ("warm/2", ["--no-cache", "--jobs", "2"], variables),
                                ("cached", [], variables)):
        seconds, peak = run_measured([*runner, "verify", str(folder), *extra], where)
        out[label] = seconds
        out[f"{label} peak MB"] = peak
    laps = [json.loads(line) for line in profile.read_text().splitlines()]
    for phase in laps[0] if laps else {}:
        if phase not in ("post", "env"):
            out[f"profile {phase}"] = statistics.mean(lap.get(phase, 0.0) for lap in laps)
    return out


def papermill(folder: Path, sessions: list, env: envs.BuiltEnv) -> float:  # type: ignore[type-arg]
    import nbformat
    import papermill as pm

    folder.mkdir()
    paths = []
    for index, session in enumerate(sessions):
        path = folder / f"{index}.ipynb"
        nbformat.write(notebooks.session_notebook(session), path)
        paths.append(path)
    os.environ.update(kernel_env(env))  # the same kernel environment the runner gives
    os.environ["JUPYTER_PATH"] = str(env.prefix / "share" / "jupyter")
    return timed(lambda: [pm.execute_notebook(str(p), str(p.with_suffix(".out.ipynb")),
                                              kernel_name=env.kernel_name, cwd=str(folder),
                                              progress_bar=False, log_output=False)
                          for p in paths])


def timed(work) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def run_measured(command: list[str], variables: dict[str, str]) -> tuple[float, float]:
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        process = psutil.Popen(command, cwd=ROOT, env=variables, stdout=log, stderr=log)
        peak = 0
        while process.poll() is None:
            try:
                peak = max(peak, process.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        if process.returncode != 0:  # an error, not a miss: said now, the rest goes on
            log.seek(0)
            tail = log.read().decode(errors="replace").splitlines()[-12:]
            FAILED.append(" ".join(command))
            print(f"bench: {' '.join(command)} exited {process.returncode}:", *tail,
                  sep="\n  ", file=sys.stderr)
            return math.nan, peak / 2**20
    return seconds, peak / 2**20


# --- start-up ----------------------------------------------------------------------------------


def startup(repeat: int) -> dict[str, float]:
    """Median wall-clock seconds of `python -m runner --version` and `--help`."""
    def once(flag: str) -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "runner", flag], cwd=ROOT, check=True,
                       capture_output=True)
        return time.perf_counter() - started

    return {flag: statistics.median(once(flag) for _ in range(repeat))
            for flag in ("--version", "--help")}


# --- blog scale --------------------------------------------------------------------------------


def bench_scale(base: Path, sizes: list[int], project: config.Config) -> dict[str, Any]:
    """The scale table: for each size, that many light posts verified cold (warm kernels,
    --jobs 2) and cached, the runner's peak RSS, then the stages alone in-process; 1 job
    against 2 at the size nearest 200; shards simulated from the largest run's report."""
    text = scale_post(base, project)
    rows: dict[int, dict[str, float]] = {}
    works: dict[int, dict[str, Callable[[], object]]] = {}
    jobs: dict[str, float] = {}
    at = min(sizes, key=lambda n: (abs(n - 200), n))
    for n in sizes:
        folder = base / f"scale-{n}"
        folder.mkdir()
        for i in range(n):
            (folder / f"post-{i:04d}.md").write_text(text.replace("SEED = 0", f"SEED = {i}"))
        variables = {**os.environ, "RUNNER_EXECUTION_CACHE": str(base / f"cache-scale-{n}")}
        verify = [sys.executable, "-m", "runner", "verify", str(folder)]
        cold = base / f"scale-{n}.json"
        row = rows[n] = {"posts": n}
        row["cold/2"], row["cold/2 MB"] = run_measured(
            [*verify, "--no-cache", "--jobs", "2", "--report", str(cold)], variables)
        cached = [run_measured(verify, variables) for _ in range(3)]  # a second or so each
        row["cached"] = statistics.median(seconds for seconds, _ in cached)
        row["cached MB"] = max(peak for _, peak in cached)
        if n == at:
            jobs = {"posts": n, "warm/2": row["cold/2"]}
            jobs["warm/1"], row["warm/1 MB"] = run_measured(
                [*verify, "--no-cache", "--jobs", "1"], variables)
        if not math.isnan(row["cold/2"]):
            works[n] = stages(folder, replace(project, cache_dir=base / f"cache-scale-{n}"),
                              cold, base / f"reports-{n}")
    samples = interleaved(works)
    stage_rows = {n: ({name: min(times) for name, times in samples[n].items()} if n in samples
                      else dict.fromkeys(STAGES, math.nan)) for n in sizes}
    return {"scale": rows, "stages": stage_rows, "stage samples": samples, "jobs": jobs,
            "shards": shard_balance(base, project, max(sizes))}


def scale_post(base: Path, project: config.Config) -> str:
    """A light post (the light set's work) whose output is the same for every SEED, updated
    once by the runner: its text with SEED = i is then a verified post for any i, each with
    code of its own (so a cache entry of its own)."""
    folder = base / "scale-template"
    folder.mkdir()
    post = folder / "post.md"
    post.write_text(SCALE_POST)
    variables = {**os.environ, "RUNNER_EXECUTION_CACHE": str(base / "cache-template")}
    subprocess.run([sys.executable, "-m", "runner", "update", str(post), "--no-cache"],
                   cwd=ROOT, env=variables, check=True, capture_output=True)
    text = post.read_text()
    assert text.count("SEED = 0") == 1 and "runner:output" in text, text
    return text


def stages(folder: Path, project: config.Config, cold: Path,
           out: Path) -> dict[str, Callable[[], object]]:
    """Each stage alone, in-process, on the posts (cache filled), as work to time: read and
    plan (every post parsed), replay (each post's verdict instead), shard (2 shards, by the
    cold run's durations), cache look-up, the whole cached run (replayed), and the reports
    (JSON, JUnit XML, terminal) of that run."""
    from runner import report as reports
    from runner.run import (
        Options,
        look_up_cache,
        open_verdicts,
        post_paths,
        read_and_plan,
        run_posts,
        shard,
    )

    out.mkdir()
    options = Options()
    planned = read_and_plan(post_paths([folder], project), project, options)
    durations = reports.read_durations(cold)
    done = run_posts([folder], project, options)

    def write_reports() -> None:
        reports.write_json(done, out / "report.json")
        reports.write_junit(done, out / "junit.xml")
        reports.terminal(done)

    work: dict[str, Callable[[], object]] = {
        "read+plan": lambda: read_and_plan(post_paths([folder], project), project, options),
        "replay": lambda: read_and_plan(post_paths([folder], project), project, options,
                                        open_verdicts(project, options)),
        "shard": lambda: [shard(planned, (k, 2), durations) for k in (1, 2)],
        "cache look-up": lambda: look_up_cache(planned, project, options),
        "cached run": lambda: run_posts([folder], project, options),
        "reports": write_reports,
    }
    return {name: work[name] for name in STAGES}


def shard_balance(base: Path, project: config.Config, n: int) -> dict[str, Any]:
    """Shards simulated with the runner's own cost model: the largest scale run's report (its
    real snippet durations) plus a TensorFlow post of 60 s, through `--durations`' reader;
    max/min shard seconds for 2, 3 and 4 shards, by time and by snippet count."""
    from runner.markdown import parse
    from runner.plan import plan as plan_post
    from runner.report import read_durations
    from runner.run import Options, Planned, post_paths, read_and_plan, shard

    heavy_path = base / "simulated" / "tensorflow.md"
    heavy_post = parse(str(heavy_path), TENSORFLOW.replace("{i}", "1"))
    heavy = Planned(heavy_path, heavy_post,
                    plan_post(heavy_post, project.envs, project.import_names))
    cold = base / f"scale-{n}.json"
    data = json.loads(cold.read_text()) if cold.exists() else {"snippets": []}
    data["snippets"].append({"post": str(heavy_path), "line": 1, "status": "passed",
                             "duration_s": 60.0})
    (base / "durations.json").write_text(json.dumps(data))
    durations = read_durations(base / "durations.json")
    average = sum(durations.values()) / len(durations)  # as `shard` takes it
    blog = [heavy, *read_and_plan(post_paths([base / f"scale-{n}"], project), project,
                                  Options())]
    out: dict[str, Any] = {"posts": len(blog), "time": {}, "count": {}}
    for shards in (2, 3, 4):
        for how, given in (("time", durations), ("count", None)):
            seconds = [sum(item.seconds(durations, average)
                           for item in shard(blog, (k, shards), given))
                       for k in range(1, shards + 1)]
            out[how][shards] = max(seconds) / min(seconds)
    return out


def interleaved(
        works: dict[int, dict[str, Callable[[], object]]]) -> dict[int, dict[str, list[float]]]:
    """The seconds of each call of each stage at each size, in rounds that each time every
    stage at every size once (round k of one size next to round k of another: the same
    machine, however its speed drifts): 5 rounds, or as many as fill about half a second of
    each stage (a stage of a millisecond is timed a hundred times), each call after a garbage
    collection. The best of a stage's calls is the figure least disturbed by other work."""
    times: dict[int, dict[str, list[float]]] = {
        n: {name: [] for name in work} for n, work in works.items()}

    def wanted(samples: list[float]) -> bool:
        return len(samples) < 5 or (sum(samples) < 0.5 and len(samples) < 200)

    while any(wanted(samples) for stage in times.values() for samples in stage.values()):
        for n, work in works.items():
            for name, call in work.items():
                if wanted(times[n][name]):
                    gc.collect()
                    times[n][name].append(timed(call))
    return times


SET_COLUMNS = ["floor", "papermill", "cold/1", "warm/1", "serial/1", "warm/1 nosb", "warm/2",
               "cached"]
RUNS = ("cold/1", "warm/1", "serial/1", "warm/1 nosb", "warm/2", "cached")


def report(figures: dict[str, Any]) -> None:
    sets, rows = figures["sets"], figures["scale"]
    if sets:
        report_sets(sets)
    up = figures["startup"]
    print(f"\nstart-up (median wall clock): --version {up['--version']:.3f} s, "
          f"--help {up['--help']:.3f} s")
    print("\nscale: light posts, 2 snippets each; cold = --no-cache --jobs 2 (warm kernels), "
          "cached = verify with the cache filled (median of 3); peak RSS of the runner process")
    print(f"{'posts':>6}{'cold/2':>10}{'s/post':>9}{'cached':>9}{'ms/post':>9}"
          f"{'cold MB':>9}{'cached MB':>11}")
    for n, row in rows.items():
        print(f"{n:>6}{row['cold/2']:>9.2f}s{row['cold/2'] / n:>9.3f}{row['cached']:>8.2f}s"
              f"{row['cached'] / n * 1000:>9.2f}{row['cold/2 MB']:>9.0f}"
              f"{row['cached MB']:>11.0f}")
    stage_rows = figures["stages"]
    sizes = sorted(stage_rows)
    print("\nstages alone, in-process (best of 5 or more, the sizes timed in turn), "
          "microseconds per post; ratio: largest size against smallest, round by round:")
    print(f"{'stage':<15}" + "".join(f"{n:>10}" for n in sizes) + f"{'ratio':>9}")
    growth = linearity(figures)
    for stage in stage_rows[sizes[0]]:
        per = [stage_rows[n][stage] / n * 1e6 for n in sizes]
        print(f"{stage:<15}" + "".join(f"{p:>10.0f}" for p in per) + f"{growth[stage]:>8.2f}x")
    worst, why = max((ratio, name) for name, ratio in linearity(figures).items())
    print(f"linearity: worst growth of the time per post, {sizes[-1]} posts against "
          f"{sizes[0]}: x{worst:.2f} ({why})")
    jobs = figures["jobs"]
    print(f"jobs: 2 jobs x{jobs['warm/1'] / jobs['warm/2']:.2f} faster than 1 on "
          f"{jobs['posts']} light posts ({jobs['warm/1']:.1f} s against {jobs['warm/2']:.1f} s)"
          + (f", x{sets['light']['warm/1'] / sets['light']['warm/2']:.2f} on "
             f"{sets['light']['posts']:.0f}" if "light" in sets else ""))
    shards = figures["shards"]
    print(f"shards ({shards['posts']} posts: the {shards['posts'] - 1} light ones as measured and "
          "a TensorFlow post of 60 s), slowest/fastest shard: by time "
          + ", ".join(f"{n} shards x{r:.2f}" for n, r in shards["time"].items())
          + "; by snippet count "
          + ", ".join(f"{n} shards x{r:.2f}" for n, r in shards["count"].items()))
    speed = figures["speed"]
    print(f"machine speed: a fixed pure-Python loop took {speed['start']:.3f} s before the "
          f"bench and {speed['end']:.3f} s after it (compare runs next to these)")
    print("\ntargets (issue 13):")
    for text, ok, value in targets(figures):
        print(f"  {'----' if ok is None else 'PASS' if ok else 'MISS'}  {text}: {value}")


def report_sets(sets: dict[str, dict[str, float]]) -> None:
    print(f"\n{'set':<11}{'posts':>6}{'sess.':>6}" + "".join(f"{c:>12}" for c in SET_COLUMNS))
    for name, row in sets.items():
        print(f"{name:<11}{row['posts']:>6.0f}{row['sessions']:>6.0f}"
              + "".join(f"{row[c]:>11.2f}s" for c in SET_COLUMNS))
    print("\nper-session overhead over the floor (s), speedup of 2 jobs, papermill ratio, "
          "runner peak RSS, sandbox cost:")
    for name, row in sets.items():
        n = row["sessions"]
        over = {c: (row[c] - row["floor"]) / n for c in ("cold/1", "warm/1", "warm/2")}
        peak = max(row[f"{c} peak MB"] for c in RUNS)
        print(f"  {name:<11} cold/1 {over['cold/1']:+.3f}  warm/1 {over['warm/1']:+.3f}  "
              f"warm/2 {over['warm/2']:+.3f}   jobs 2 x{row['warm/1'] / row['warm/2']:.2f}   "
              f"papermill / warm/1 x{row['papermill'] / row['warm/1']:.2f}   {peak:.0f} MB   "
              f"sandbox {(row['warm/1'] - row['warm/1 nosb']) / n * 1000:+.0f} ms/session")
    print("\nwhere a session's time goes (warm/1, RUNNER_PROFILE; ms, mean per session; the "
          "next kernel's launch and handshake overlap the cells before it):")
    for name, row in sets.items():
        phases = {k.removeprefix("profile "): v for k, v in row.items()
                  if k.startswith("profile ")}
        print(f"  {name:<11} " + "  ".join(f"{k} {v * 1000:.1f}" for k, v in phases.items()))


def linearity(figures: dict[str, Any]) -> dict[str, float]:
    """How much the time per post grows from the smallest size to the largest, per measure:
    the cold run by the slope of its last step against its first (the runner's start-up and
    the fork server's are paid once), every stage by its time per post (the median over
    rounds of the largest size's against the smallest's, each pair timed in the same round)."""
    rows, stage_rows = figures["scale"], figures["stages"]
    sizes = sorted(n for n in rows if not math.isnan(rows[n]["cold/2"]))  # runs that failed: out
    if len(sizes) < 2:
        return {"fewer than two sizes measured": math.nan}
    cold = [rows[n]["cold/2"] for n in sizes]
    if len(sizes) >= 3:
        first = (cold[1] - cold[0]) / (sizes[1] - sizes[0])
        last = (cold[-1] - cold[-2]) / (sizes[-1] - sizes[-2])
        ratios = {"cold/2, s per added post": last / first if first > 0 else math.inf}
    else:
        ratios = {"cold/2, s per post": cold[-1] / sizes[-1] / (cold[0] / sizes[0])}
    samples = figures.get("stage samples", {})
    for stage in stage_rows[sizes[0]]:
        small, large = (samples.get(n, {}).get(stage, []) for n in (sizes[0], sizes[-1]))
        # round by round (the same machine), the median: a speed change between two rounds
        # is no growth
        ratios[stage] = statistics.median(
            [b / sizes[-1] / (a / sizes[0]) for a, b in zip(small, large, strict=False)]
            or [stage_rows[sizes[-1]][stage] / sizes[-1] / (stage_rows[sizes[0]][stage]
                                                           / sizes[0])])
    ratios["cached verify"] = rows[sizes[-1]]["cached"] / sizes[-1] / (
        rows[sizes[0]]["cached"] / sizes[0])
    return ratios


def targets(figures: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """Each of issue 13's targets: met (True), missed (False) or not measured (None)."""
    sets, rows, jobs = figures["sets"], figures["scale"], figures["jobs"]
    light = sets.get("light")
    near = min(rows, key=lambda n: (abs(n - 200), n))
    top = max(rows)
    out: list[tuple[str, bool | None, str]] = []
    if light:
        over = (light["warm/1"] - light["floor"]) / light["sessions"]
        out.append(("per-session overhead over plain python <= 0.1 s (light, warm, 1 job)",
                    over <= 0.1, f"{over:.3f} s"))
        speed = light["warm/1"] / light["warm/2"]
        out.append((f"2 jobs >= x1.8 faster than 1 job on {light['posts']:.0f} light posts",
                    speed >= 1.8, f"x{speed:.2f}"))
        serial = light["serial/1"] / light["warm/2"]
        out.append((f"2 jobs against 1 job using one core (RUNNER_NO_PRESTART) on "
                    f"{light['posts']:.0f} light posts", None, f"x{serial:.2f}"))
    else:
        out.append(("per-session overhead <= 0.1 s", None, "no light set (--light 0)"))
    speed = jobs["warm/1"] / jobs["warm/2"]
    out.append((f"2 jobs >= x1.8 faster than 1 job on {jobs['posts']} light posts",
                speed >= 1.8, f"x{speed:.2f}"))
    out.append((f"cached verify of {near} posts <= 0.3 s", rows[near]["cached"] <= 0.3,
                f"{rows[near]['cached']:.2f} s"))
    for flag in ("--version", "--help"):
        seconds = figures["startup"][flag]
        out.append((f"`python -m runner {flag}` <= 0.15 s", seconds <= 0.15, f"{seconds:.3f} s"))
    out.append((f"{top} light posts cold, 2 jobs <= 60 s", rows[top]["cold/2"] <= 60,
                f"{rows[top]['cold/2']:.1f} s"))
    out.append((f"{top} light posts cached <= 1 s", rows[top]["cached"] <= 1,
                f"{rows[top]['cached']:.2f} s"))
    peak = max([row[k] for row in rows.values() for k in row if k.endswith("MB")]
               + [row[f"{c} peak MB"] for row in sets.values() for c in RUNS])
    out.append(("runner peak RSS <= 150 MB", peak <= 150, f"{peak:.0f} MB"))
    worst, why = max((ratio, name) for name, ratio in linearity(figures).items())
    out.append((f"linear: time per post at {top} posts <= x1.5 that at {min(rows)}",
                worst <= 1.5, f"worst x{worst:.2f} ({why})"))
    balance = max(figures["shards"]["time"].values())
    out.append(("shards balanced by time: slowest <= 1.2 x fastest (2-4 shards)",
                balance <= 1.2, f"x{balance:.2f}"))
    return out


if __name__ == "__main__":
    main()
