"""The project: `[tool.runner]` in pyproject.toml, found from a folder upwards, and its envs/."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import sys
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runner.errors import UsageError
from runner.markers import TIMEOUT, TOLERANCE
from runner.model import EnvSpec

DEFAULT_TIMEOUT = 300.0
CACHE_VARIABLE = "RUNNER_EXECUTION_CACHE"  # overrides [tool.runner] cache-dir (for CI caches)
DEFAULT_MEMORY_MB = 4096  # per kernel, RLIMIT_DATA
DEFAULT_PROCESSES = 256  # per kernel: its whole process tree
DEFAULT_MAX_BYTES = 1 << 20  # max-output-bytes: text output past it is cut as it streams in
DEFAULT_MAX_LINE_CHARS = 10_000  # max-line-chars: a longer line is cut, with a note
DEFAULT_MAX_LINES = 200  # max-output-lines: longer text output is cut, with a marker line
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


@dataclass(frozen=True)
class Figures:
    """[tool.runner] figures = { folder = "assets/figures", link = "/assets/figures" }: a
    post's figures go in a subfolder of `folder` named after its path from `posts`, linked
    with the `link` prefix (Jekyll's assets/, Hugo's static/)."""

    folder: Path  # absolute: the project root / folder
    link: str  # the site path that serves `folder`: "/assets/figures"
    posts: Path  # absolute: the posts folder (a post's subfolder is its path from there)


@dataclass(frozen=True)
class Config:
    root: Path
    posts: Path
    snippets: Path
    envs: dict[str, EnvSpec]
    import_names: dict[str, str]  # import name -> distribution, beyond the built-in table
    timeout: float
    patterns: tuple[tuple[re.Pattern[str], str], ...] = ()  # [[tool.runner.normalize]]
    max_output_lines: int = DEFAULT_MAX_LINES
    max_output_bytes: int = DEFAULT_MAX_BYTES  # text a snippet may record, in bytes
    max_line_chars: int = DEFAULT_MAX_LINE_CHARS  # characters a line of output may have
    cache_dir: Path = Path(".runner-cache")  # the execution cache
    passenv: tuple[str, ...] = ()  # more variables (or patterns) kernels may see
    tolerance: float = 0.0  # relative, for numbers in text output (0: exact); runner:tolerance=
    figures: Figures | None = None  # [tool.runner] figures; None: beside each post
    network_posts: tuple[str, ...] = ()  # [tool.runner] allow-network: globs of posts (from
    # the project's folder) that may ask for the network (front matter `network: true`)

    def grants_network(self, post: Path) -> bool:
        """Whether the project lets this post ask for the network (its env may, too:
        `EnvSpec.network`). A post cannot grant itself the network: a guest post's front
        matter is the guest's."""
        try:
            relative = post.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return False
        return any(_glob_matches(glob, relative) for glob in self.network_posts)


def _glob_matches(glob: str, path: str) -> bool:
    """A path glob, part by part: `*` and `?` never cross a `/` (fnmatch's do: `posts/net*.md`
    would grant `posts/net-x/any/post.md`); `**` as a whole part stands for any parts."""
    return _parts_match(glob.strip("/").split("/"), path.split("/"))


def _parts_match(parts: list[str], names: list[str]) -> bool:
    if "**" not in parts:
        return len(parts) == len(names) and all(
            fnmatch.fnmatchcase(name, part) for part, name in zip(parts, names, strict=True))
    at = parts.index("**")
    head, tail = parts[:at], parts[at + 1:]
    return len(names) >= len(head) and _parts_match(head, names[:at]) and any(
        _parts_match(tail, names[start:]) for start in range(at, len(names) + 1))


def normalize_dist(name: str) -> str:
    """PEP 503 normalization: `Scikit_Learn` -> `scikit-learn`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(text: str) -> dict[str, str]:
    """A lock's pins: normalized distribution name -> version."""
    return {normalize_dist(name): version for name, version in _PIN.findall(text)}


def find_root(start: Path) -> Path:
    """The nearest folder at or above `start` whose pyproject.toml has a [tool.runner] table."""
    for folder in (start.resolve(), *start.resolve().parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file() and "runner" in _read_toml(candidate).get("tool", {}):
            return folder
    raise UsageError(f"no pyproject.toml with [tool.runner] in {start} or above")


def load(start: Path, locked: bool = True) -> Config:
    """The project's configuration. Every env needs its lock, except with `locked` False
    (`envs lock`, which makes a first lock): an env without one then has no pins."""
    root = find_root(start)
    table = _read_toml(root / "pyproject.toml")["tool"]["runner"]
    if not isinstance(table, dict):
        raise UsageError("[tool.runner] must be a table", root / "pyproject.toml")
    pyproject = root / "pyproject.toml"
    envs_dir = root / _str(table, "envs", "envs", pyproject)
    env_settings = table.get("env", {})
    if not isinstance(env_settings, dict):
        raise UsageError("[tool.runner.env] must be a table of environments", pyproject)
    folders = sorted(f for f in envs_dir.iterdir() if f.is_dir()) if envs_dir.is_dir() else []
    envs = {f.name: _env_spec(f, env_settings.get(f.name, {}), table, pyproject, locked)
            for f in folders}
    unknown = sorted(set(env_settings) - set(envs))
    if unknown:
        raise UsageError(f"[tool.runner.env.{unknown[0]}] names no folder in {envs_dir}", pyproject)
    import_names = table.get("import-names", {})
    if not isinstance(import_names, dict) or not all(
            isinstance(v, str) for v in import_names.values()):
        raise UsageError("[tool.runner.import-names] must map import names to distributions",
                         pyproject)
    timeout = table.get("timeout", DEFAULT_TIMEOUT)
    if not isinstance(timeout, int | float) or not TIMEOUT.holds(timeout):
        raise UsageError(f"[tool.runner] timeout must be {TIMEOUT.meaning}", pyproject)
    posts = root / _str(table, "posts", "posts", pyproject)
    return Config(
        figures=_figures(table, root, posts, pyproject),
        max_output_bytes=_positive(table, "max-output-bytes", DEFAULT_MAX_BYTES, pyproject),
        max_line_chars=_positive(table, "max-line-chars", DEFAULT_MAX_LINE_CHARS, pyproject),
        tolerance=_tolerance(table, pyproject),
        patterns=_patterns(table.get("normalize", []), pyproject),
        max_output_lines=_positive(table, "max-output-lines", DEFAULT_MAX_LINES, pyproject),
        passenv=_names(table, "passenv", pyproject),
        network_posts=_names(table, "allow-network", pyproject),
        cache_dir=Path(os.environ.get(CACHE_VARIABLE)
                       or root / _str(table, "cache-dir", ".runner-cache", pyproject)),
        root=root,
        posts=posts,
        snippets=root / _str(table, "snippets", "snippets", pyproject),
        envs=envs,
        import_names={k: normalize_dist(v) for k, v in import_names.items()},
        timeout=float(timeout),
    )


def _positive(table: dict[str, Any], key: str, default: int, pyproject: Path) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UsageError(f"[tool.runner] {key} must be a positive integer", pyproject)
    return value


def _figures(table: dict[str, Any], root: Path, posts: Path, pyproject: Path) -> Figures | None:
    """[tool.runner] figures = { folder = "assets/figures", link = "/assets/figures" }."""
    value = table.get("figures")
    if value is None:
        return None
    folder = value.get("folder") if isinstance(value, dict) else None
    link = value.get("link") if isinstance(value, dict) else None
    if (not isinstance(folder, str) or not isinstance(link, str) or not folder
            or Path(folder).is_absolute() or ".." in Path(folder).parts
            or not link.startswith("/")):
        raise UsageError('[tool.runner] figures must be { folder = "assets/figures", link = '
                         '"/assets/figures" }: a folder inside the project and the site path '
                         "that serves it", pyproject)
    return Figures(root / folder, link.rstrip("/"), posts)


def _tolerance(table: dict[str, Any], pyproject: Path) -> float:
    """[tool.runner] tolerance: numbers in text output within it of the recorded ones match."""
    value = table.get("tolerance", 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not TOLERANCE.holds(value):
        raise UsageError(f"[tool.runner] tolerance must be {TOLERANCE.meaning}", pyproject)
    return float(value)


def _patterns(entries: Any, pyproject: Path) -> tuple[tuple[re.Pattern[str], str], ...]:
    """[[tool.runner.normalize]] pattern = "...", replace = "...": nbval's sanitizers."""
    if not isinstance(entries, list):
        raise UsageError("[[tool.runner.normalize]] must be an array of tables", pyproject)
    patterns = []
    for entry in entries:
        if not (isinstance(entry, dict) and isinstance(entry.get("pattern"), str)
                and isinstance(entry.get("replace", ""), str)):
            raise UsageError("each [[tool.runner.normalize]] needs pattern = \"regex\" and "
                             "replace = \"text\"", pyproject)
        try:
            patterns.append((re.compile(entry["pattern"], re.MULTILINE), entry.get("replace", "")))
        except re.error as exc:
            raise UsageError(f"[[tool.runner.normalize]] pattern {entry['pattern']!r}: {exc}",
                             pyproject) from exc
    return tuple(patterns)


def _env_spec(folder: Path, settings: Any, table: dict[str, Any], pyproject: Path,
              locked: bool = True) -> EnvSpec:
    lock = folder / "requirements.lock"
    if not lock.is_file() and locked:
        raise UsageError(f"environment '{folder.name}' has no requirements.lock "
                         f"(run: python -m runner envs lock {folder.name})", lock)
    if not isinstance(settings, dict):
        raise UsageError(f"[tool.runner.env.{folder.name}] must be a table", pyproject)
    kernel_env = settings.get("kernel-env", {})
    if not isinstance(kernel_env, dict) or not all(isinstance(v, str) for v in kernel_env.values()):
        raise UsageError(f"[tool.runner.env.{folder.name}] kernel-env must map names to strings",
                         pyproject)
    spec = EnvSpec(
        name=folder.name,
        folder=folder,
        lock_hash="",
        distributions=frozenset(),
        kernel_env=tuple(sorted(kernel_env.items())),
        preload=_preload(settings, folder.name, pyproject),
        memory_mb=_limit(settings, table, "memory-limit-mb", DEFAULT_MEMORY_MB, pyproject),
        processes=_limit(settings, table, "process-limit", DEFAULT_PROCESSES, pyproject),
        network=_flag(settings, "allow-network", folder.name, pyproject),
    )
    return with_lock(spec, folder) if lock.is_file() else spec


def with_lock(spec: EnvSpec, folder: Path) -> EnvSpec:
    """The env with the lock in `folder` (its requirements.lock): the same name and kernel
    settings, that lock's hash, distributions and pins (`bisect` runs a post in such envs)."""
    text = (folder / "requirements.lock").read_bytes()
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    pins = lock_pins(text.decode())
    return replace(spec, folder=folder,
                   lock_hash=hashlib.sha256(text + f"\npython={python}".encode()).hexdigest(),
                   distributions=frozenset(pins), pins=tuple(sorted(pins.items())))


def _limit(settings: dict[str, Any], table: dict[str, Any], key: str, default: int,
           pyproject: Path) -> int:
    value = settings.get(key, table.get(key, default))
    if not isinstance(value, int) or value < 0:
        raise UsageError(f"{key} must be a whole number (0: no limit)", pyproject)
    return value


def _flag(settings: dict[str, Any], key: str, name: str, pyproject: Path) -> bool:
    value = settings.get(key, False)
    if not isinstance(value, bool):
        raise UsageError(f"[tool.runner.env.{name}] {key} must be true or false", pyproject)
    return value


def _names(table: dict[str, Any], key: str, pyproject: Path) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"[tool.runner] {key} must be a list of names", pyproject)
    return tuple(value)


def _preload(settings: dict[str, Any], name: str, pyproject: Path) -> tuple[str, ...]:
    preload = settings.get("preload", [])
    if not isinstance(preload, list) or not all(isinstance(m, str) for m in preload):
        raise UsageError(f"[tool.runner.env.{name}] preload must be a list of module names",
                         pyproject)
    return tuple(preload)


def _str(table: dict[str, Any], key: str, default: str, pyproject: Path) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise UsageError(f"[tool.runner] {key} must be a string", pyproject)
    return value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read: {exc}", path) from exc
