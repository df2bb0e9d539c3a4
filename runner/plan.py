"""Posts -> sessions: give every snippet an environment and group a post's snippets by it.

The choice, in order: the snippet's `runner:env=NAME`; the post's front matter `runner: {env:
NAME}`; else the smallest environment whose pinned distributions provide every module the
post's snippets import: one kernel runs the whole post, so a name one snippet defines is there
for the next. Only when no environment provides them all is the post split, snippet by snippet:
the environments that provide a snippet's imports, the previous snippet's first (code that goes
on from the snippet before stays in its kernel), then the smallest, then the first by name; each
session then says why (`Session.split`). A snippet that imports nothing outside the standard
library goes with the snippet before it.

Known failures are planned, not raised: an import no environment provides, or an install line
(`%pip install x`) the env's lock does not satisfy, fails its snippet at that line when it
would run (the snippets before it still run). Pure: no I/O.
"""

from __future__ import annotations

import ast
import difflib
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import replace

from runner.config import normalize_dist
from runner.errors import PlanError
from runner.markers import spec
from runner.model import EnvSpec, Post, Session, Snippet

# Import names whose distribution is named otherwise. Names not here are looked up as
# distributions of the same (normalized) name; [tool.runner.import-names] adds to this.
KNOWN_IMPORTS: dict[str, tuple[str, ...]] = {
    "sklearn": ("scikit-learn",),
    "skimage": ("scikit-image",),
    "PIL": ("pillow",),
    "cv2": ("opencv-python", "opencv-python-headless"),
    "yaml": ("pyyaml",),
    "bs4": ("beautifulsoup4",),
    "dateutil": ("python-dateutil",),
    "dotenv": ("python-dotenv",),
    "jwt": ("pyjwt",),
    "attr": ("attrs",),
    "google": ("protobuf",),
    "zmq": ("pyzmq",),
    "mpl_toolkits": ("matplotlib",),
    "IPython": ("ipython",),
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tf-nightly"),
    "tf_keras": ("tf-keras",),
}
_IMPORT_LINE = re.compile(r"^\s*(?:from|import)\s+([A-Za-z_][\w]*)", re.MULTILINE)


def check_network(post: Post, sessions: tuple[Session, ...], envs: Mapping[str, EnvSpec],
                  granted: bool) -> None:
    """A post that asks for the network (`network: true`) gets it only where the project
    grants it: the post (`granted`, [tool.runner] allow-network) or each env it runs in
    ([tool.runner.env.NAME] allow-network); else a PlanError at its front matter's line."""
    refused = [s.env for s in sessions if s.network and not (granted or envs[s.env].network)]
    if refused:
        raise PlanError(
            "front matter asks for network: true, which this project does not grant it "
            f"(env '{refused[0]}'): list the post in [tool.runner] allow-network, or set "
            f"[tool.runner.env.{refused[0]}] allow-network = true", post.path,
            _network_line(post.text))


def _network_line(text: str) -> int:
    """The front matter line that asks for the network (else its first line)."""
    lines = text.splitlines()
    for number, line in enumerate(lines[1:], 2):
        if line.strip() in ("---", "..."):
            break
        if "network" in line:
            return number
    return 1


def plan(post: Post, envs: Mapping[str, EnvSpec],
         import_names: Mapping[str, str] | None = None) -> tuple[Session, ...]:
    """Group the post's snippets into sessions, one per environment, in order of first use.
    One env runs the whole post when one provides every import of it (the smallest such);
    only when none does is the post split, snippet by snippet, and each session says why."""
    names = import_names or {}
    whole, needed = _one_env(post, envs, names)
    chosen: list[tuple[Snippet, str]] = []
    failures: dict[int, tuple[str, str, int]] = {}
    previous: str | None = None
    for snippet in post.snippets:
        env = choose_env(snippet, post.default_env, whole or previous, envs, names,
                         failures, strict=whole is not None)
        failures.update(_install_failures(snippet, envs[env]))
        chosen.append((snippet, env))
        previous = env
    order = list(dict.fromkeys(env for _, env in chosen))
    split = ("" if len(order) < 2 or whole else
             f"no one env provides every import of the post ({', '.join(needed)})")
    return tuple(Session(post.path, env, tuple(s for s, e in chosen if e == env), post.network,
                         keep_going=post.keep_going, split=split,
                         failures=tuple((line, *failures[line]) for s, e in chosen
                                        if e == env and (line := s.line) in failures))
                 for env in order)


def capped(post: Post, timeout: float) -> Post:
    """The post with each `runner:timeout` at most the run's `timeout`: a marker may lower
    the run's limit for its snippet, never raise it (a post cannot lift CI's limit)."""
    def cap(snippet: Snippet) -> Snippet:
        wanted = snippet.markers.timeout
        if wanted is None or wanted <= timeout:
            return snippet
        return replace(snippet, markers=replace(snippet.markers, timeout=float(timeout)))

    return replace(post, snippets=tuple(cap(s) for s in post.snippets))


def _one_env(post: Post, envs: Mapping[str, EnvSpec],
             names: Mapping[str, str]) -> tuple[str | None, tuple[str, ...]]:
    """The smallest env that provides every import of the snippets that name no env (imports
    no env provides left aside: they fail where they are), and those imports."""
    if post.default_env is not None:
        return None, ()
    needed = tuple(dict.fromkeys(
        module for s in post.snippets if s.markers.env is None and s.markers.skip is None
        for module in third_party_imports(s.code)
        if any(_provides(env, module, names) for env in envs.values())))
    covering = _covering(envs, needed, names)
    return (covering[0] if needed and covering else None), needed


def _covering(envs: Mapping[str, EnvSpec], needed: tuple[str, ...],
              names: Mapping[str, str]) -> list[str]:
    """The envs that provide all of `needed`, smallest first (fewest pinned distributions)."""
    return sorted((name for name, env in envs.items()
                   if all(_provides(env, module, names) for module in needed)),
                  key=lambda name: (len(envs[name].distributions), name))


def choose_env(snippet: Snippet, default: str | None, previous: str | None,
               envs: Mapping[str, EnvSpec], import_names: Mapping[str, str],
               failures: dict[int, tuple[str, str, int]] | None = None,
               strict: bool = False) -> str:
    """The snippet's env: its marker's, the post's default, else one that provides its
    imports (`previous` first: with `strict`, always `previous`, the post's one env). An import
    no env provides is recorded in `failures` (the snippet fails at that line when it would
    run; the snippets before it still run) and the snippet stays with `previous`."""
    named = snippet.markers.env or default
    if named is not None:
        if named not in envs:
            raise PlanError(f"unknown environment '{named}' (known: {', '.join(sorted(envs))})",
                            snippet.path, snippet.line)
        return named
    needed = third_party_imports(snippet.code)
    missing = [m for m in needed if not any(_provides(e, m, import_names) for e in envs.values())]
    if missing and snippet.markers.skip is None:
        if failures is None:
            raise PlanError(_no_env_message(missing[0], envs, import_names), snippet.path,
                            snippet.code_line + _import_line(snippet.code, missing[0]))
        failures[snippet.line] = ("ModuleNotFoundError",
                                  _no_env_message(missing[0], envs, import_names),
                                  snippet.code_line + _import_line(snippet.code, missing[0]))
    covering = _covering(envs, tuple(m for m in needed if m not in missing), import_names)
    if strict and previous is not None:
        return previous
    if previous in covering and (len(covering) > 1 or not needed or missing):
        return previous
    return covering[0] if covering else (previous or sorted(envs)[0])


def _no_env_message(module: str, envs: Mapping[str, EnvSpec],
                    import_names: Mapping[str, str]) -> str:
    known = {*KNOWN_IMPORTS, *import_names,
             *(dist.replace("-", "_") for env in envs.values() for dist in env.distributions)}
    close = difflib.get_close_matches(module, sorted(known), n=1, cutoff=0.75)
    if close:
        return f"no environment provides '{module}': did you mean '{close[0]}'?"
    return (f"no environment provides '{module}' (known: {', '.join(sorted(envs)) or 'none'}):"
            " add its package to an env's requirements.in and lock it, or name an env with "
            f"{spec('env').usage}")


# --- install lines (`%pip install x`, `!pip install x`, ...): declarations, never run ---------

INSTALL_LINE = re.compile(
    r"^(?P<indent>\s*)[%!]\s*(?:\S*python3?(?:\.\d+)?\s+-m\s+)?"
    r"(?:pip3?|uv\s+pip|conda|mamba|micromamba)\s+install\b(?P<args>.*)$")
_VALUED = {"-r", "--requirement", "-c", "--constraint", "-i", "--index-url", "--extra-index-url",
           "-f", "--find-links", "--channel", "-n", "--name", "-p", "--prefix", "--python",
           "--target", "-t"}


def install_requirements(line: str) -> list[str] | None:
    """The requirements an install line names (`%pip install -q "numpy<2" pandas`), or None
    when the line is not one."""
    found = INSTALL_LINE.match(line)
    if found is None:
        return None
    try:
        words = shlex.split(found["args"], comments=True)
    except ValueError:
        words = found["args"].split()
    wanted, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word.startswith("-"):
            skip = word in _VALUED
        else:
            wanted.append(word)
    return wanted


def _install_failures(snippet: Snippet, env: EnvSpec) -> dict[int, tuple[str, str, int]]:
    """Install lines whose requirements the env's lock does not satisfy: each fails its
    snippet at that line, naming the env and its requirements.in."""
    pins = dict(env.pins)
    for index, line in enumerate(snippet.code.split("\n")):
        for wanted in install_requirements(line) or []:
            problem = _unsatisfied(wanted, pins, env)
            if problem:
                return {snippet.line: ("NotInEnv", problem, snippet.code_line + index)}
    return {}


def _unsatisfied(wanted: str, pins: Mapping[str, str], env: EnvSpec) -> str | None:
    from packaging.requirements import InvalidRequirement, Requirement  # install lines only

    where = f"{env.folder / 'requirements.in'}"
    try:
        requirement = Requirement(wanted)
    except InvalidRequirement:
        return f"'{wanted}' is not a requirement the runner can check against env '{env.name}'"
    name = normalize_dist(requirement.name)
    if name not in pins:
        return (f"{requirement.name} is not in env '{env.name}': add it to {where} and lock "
                f"it (python -m runner envs lock {env.name}); install lines are not run")
    if requirement.specifier and not requirement.specifier.contains(pins[name],
                                                                    prereleases=True):
        return (f"{wanted} is not what env '{env.name}' pins ({name} {pins[name]}): change "
                f"{where} and lock it; install lines are not run")
    return None


def neutralized(code: str) -> str:
    """The code with its install lines made `pass` (same lines, same indentation): the runner
    checks them against the env's lock instead of running them."""
    return "\n".join(f"{found['indent']}pass  # {line.strip()}"
                     if (found := INSTALL_LINE.match(line)) else line
                     for line in code.split("\n"))


def defined_elsewhere(post: Post, sessions: tuple[Session, ...], name: str,
                      before: int) -> tuple[int, str] | None:
    """Where a split post defines `name` before line `before`, in another session: its fence
    line and env (a NameError after a split names it)."""
    for session in sessions:
        for snippet in session.snippets:
            if snippet.line < before and name in _top_level_names(snippet.code):
                return snippet.line, session.env
    return None


def _top_level_names(code: str) -> set[str]:
    try:
        tree = ast.parse(_without_magics(code))
    except SyntaxError:
        return set()
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            found |= {(a.asname or a.name).split(".")[0] for a in node.names}
        else:
            found |= {n.id for n in ast.walk(node)
                      if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return found


def third_party_imports(code: str) -> tuple[str, ...]:
    """Top-level modules the code imports that are not in the standard library, in order."""
    try:
        tree = ast.parse(_without_magics(code))
    except SyntaxError:
        names = _IMPORT_LINE.findall(code)
    else:
        names = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names += [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.append(node.module.split(".")[0])
    stdlib = sys.stdlib_module_names | {"__future__"}
    return tuple(dict.fromkeys(n for n in names if n not in stdlib))


def _provides(env: EnvSpec, module: str, import_names: Mapping[str, str]) -> bool:
    if module in import_names:
        return import_names[module] in env.distributions
    candidates = KNOWN_IMPORTS.get(module, (normalize_dist(module),))
    return any(dist in env.distributions for dist in candidates)


def _without_magics(code: str) -> str:
    """IPython magics and shell escapes blanked, so the rest parses as Python."""
    return re.sub(r"(?m)^(\s*)[%!].*$", r"\1pass", code)


def _import_line(code: str, module: str) -> int:
    """0-based line within the code of the first import of `module`."""
    pattern = re.compile(rf"^\s*(?:from|import)\s+.*\b{re.escape(module)}\b")
    for index, line in enumerate(code.splitlines()):
        if pattern.match(line):
            return index
    return 0
