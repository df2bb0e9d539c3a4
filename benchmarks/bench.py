"""The runner against its floor and against papermill, on generated posts (`nox -s bench`).

Three sets of posts are generated in a temporary folder: light ones (pure Python), ones that
import scikit-learn, ones that import TensorFlow. For each set, one run of each:

  floor       plain `python -c CODE` in the env, one process per post, one after another
  papermill   papermill executing the same notebooks (the runner's session notebooks), in turn
  cold/1      the runner, --no-cache --no-warm --jobs 1: a fresh kernel per session
  warm/1      the runner, --no-cache --jobs 1: kernels forked from the env's fork server
  warm/1 nosb the same with RUNNER_NO_SANDBOX=1: the difference is the sandbox's cost
  warm/2      the same with --jobs 2
  cached      the runner with its execution cache filled: no kernel at all

Times are wall-clock seconds of the whole command, start-up of the runner included. The
per-session overhead is (runner - floor) / sessions. Memory is the runner process's own peak
RSS (kernels and servers are other processes), sampled every 10 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runner import config, envs, markdown, notebooks, plan  # noqa: E402
from runner.execute import kernel_env  # noqa: E402

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
SETS = {"light": (LIGHT, "sklearn"), "sklearn": (SKLEARN, "sklearn"),
        "tensorflow": (TENSORFLOW, "tensorflow")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--light", type=int, default=20)
    parser.add_argument("--sklearn", type=int, default=6)
    parser.add_argument("--tensorflow", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    project = config.load(ROOT)
    figures = {}
    with tempfile.TemporaryDirectory(prefix="runner-bench-") as temp:
        base = Path(temp)
        for name, count in (("light", args.light), ("sklearn", args.sklearn),
                            ("tensorflow", args.tensorflow)):
            if count:
                figures[name] = bench_set(base, name, count, project)
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


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
    for label, extra, where in (("cold/1", ["--no-cache", "--no-warm", "--jobs", "1"], variables),
                                ("warm/1", ["--no-cache", "--jobs", "1"], variables),
                                ("warm/1 nosb", ["--no-cache", "--jobs", "1"], unsandboxed),
                                ("warm/2", ["--no-cache", "--jobs", "2"], variables),
                                ("cached", [], variables)):
        seconds, peak = run_measured([*runner, "verify", str(folder), *extra], where)
        out[label] = seconds
        out[f"{label} peak MB"] = peak
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
    started = time.perf_counter()
    process = psutil.Popen(command, cwd=ROOT, env=variables, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.01)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {process.returncode}")
    return seconds, peak / 2**20


def report(figures: dict[str, dict[str, float]]) -> None:
    columns = ["floor", "papermill", "cold/1", "warm/1", "warm/1 nosb", "warm/2", "cached"]
    print(f"\n{'set':<11}{'posts':>6}{'sess.':>6}" + "".join(f"{c:>11}" for c in columns))
    for name, row in figures.items():
        print(f"{name:<11}{row['posts']:>6.0f}{row['sessions']:>6.0f}"
              + "".join(f"{row[c]:>10.2f}s" for c in columns))
    print("\nper-session overhead over the floor (s), speedup of 2 jobs, papermill ratio, "
          "runner peak RSS:")
    for name, row in figures.items():
        n = row["sessions"]
        over = {c: (row[c] - row["floor"]) / n for c in ("cold/1", "warm/1", "warm/2")}
        peak = max(row[f"{c} peak MB"] for c in ("cold/1", "warm/1", "warm/2", "cached"))
        print(f"  {name:<11} cold/1 {over['cold/1']:+.3f}  warm/1 {over['warm/1']:+.3f}  "
              f"warm/2 {over['warm/2']:+.3f}   jobs 2 x{row['warm/1'] / row['warm/2']:.2f}   "
              f"papermill / warm/1 x{row['papermill'] / row['warm/1']:.2f}   {peak:.0f} MB   "
              f"sandbox {(row['warm/1'] - row['warm/1 nosb']) / n * 1000:+.0f} ms/session")
    if "light" in figures:
        light = figures["light"]
        per_session = (light["warm/1"] - light["floor"]) / light["sessions"]
        peak = max(row[f"{c} peak MB"] for row in figures.values()
                   for c in ("cold/1", "warm/1", "warm/2", "cached"))
        checks = [
            (f"{light['posts']:.0f} light posts, cached verify <= 1.5 s", light["cached"] <= 1.5,
             f"{light['cached']:.2f} s"),
            ("--jobs 2 >= 1.6x --jobs 1 (light)", light["warm/1"] / light["warm/2"] >= 1.6,
             f"x{light['warm/1'] / light['warm/2']:.2f}"),
            ("per-session overhead over python <= 0.35 s (light, jobs 1)", per_session <= 0.35,
             f"{per_session:.3f} s"),
            ("faster than papermill (light, jobs 1)", light["warm/1"] < light["papermill"],
             f"x{light['papermill'] / light['warm/1']:.2f}"),
            ("runner peak RSS <= 150 MB", peak <= 150, f"{peak:.0f} MB"),
            ("sandbox cost per session <= 30 ms (light, warm/1 vs RUNNER_NO_SANDBOX)",
             (light["warm/1"] - light["warm/1 nosb"]) / light["sessions"] <= 0.030,
             f"{(light['warm/1'] - light['warm/1 nosb']) / light['sessions'] * 1000:+.0f} ms"),
        ]
        print("\ntargets:")
        for text, ok, value in checks:
            print(f"  {'PASS' if ok else 'FAIL'}  {text}: {value}")


if __name__ == "__main__":
    main()
