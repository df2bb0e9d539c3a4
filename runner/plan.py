"""Posts -> sessions: give every snippet an environment and group a post's snippets by it.

The choice, in order: the snippet's `runner:env=NAME`; the post's front matter `runner: {env:
NAME}`; else the environments whose pinned distributions provide every module the snippet
imports. When several do, the previous snippet's environment wins if it is one of them (code
that goes on from the snippet before stays in its kernel), then the smallest (fewest pinned
distributions: the least that does the job), then the first by name. A snippet that imports
nothing outside the standard library goes with the snippet before it. Pure: no I/O.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Mapping

from runner.config import normalize_dist
from runner.errors import PlanError
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


def plan(post: Post, envs: Mapping[str, EnvSpec],
         import_names: Mapping[str, str] | None = None) -> tuple[Session, ...]:
    """Group the post's snippets into sessions, one per environment, in order of first use."""
    chosen: list[tuple[Snippet, str]] = []
    previous: str | None = None
    for snippet in post.snippets:
        env = choose_env(snippet, post.default_env, previous, envs, import_names or {})
        chosen.append((snippet, env))
        previous = env
    order = list(dict.fromkeys(env for _, env in chosen))
    return tuple(Session(post.path, env, tuple(s for s, e in chosen if e == env), post.network)
                 for env in order)


def choose_env(snippet: Snippet, default: str | None, previous: str | None,
               envs: Mapping[str, EnvSpec], import_names: Mapping[str, str]) -> str:
    named = snippet.markers.env or default
    if named is not None:
        if named not in envs:
            raise PlanError(f"unknown environment '{named}' (known: {', '.join(sorted(envs))})",
                            snippet.path, snippet.line)
        return named
    needed = third_party_imports(snippet.code)
    covering = sorted((name for name, env in envs.items()
                       if all(_provides(env, module, import_names) for module in needed)),
                      key=lambda name: (len(envs[name].distributions), name))
    if not covering:
        missing = next(m for m in needed
                       if not any(_provides(e, m, import_names) for e in envs.values()))
        raise PlanError(f"no environment provides '{missing}' "
                        f"(known: {', '.join(sorted(envs)) or 'none'}); name one with "
                        "runner:env=NAME or add it to an env's requirements.in",
                        snippet.path, snippet.code_line + _import_line(snippet.code, missing))
    if previous in covering and (len(covering) > 1 or not needed):
        return previous
    return covering[0]


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
