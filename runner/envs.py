"""envs/ -> built virtual environments and their kernels, made by uv from the locks.

Each environment is built once per lock into the runner's cache folder, in a folder named by the
lock's hash: a changed lock builds a new one, an unchanged one is found by a single stat. A build
holds a file lock, so two runs at once never build the same environment into each other, and it
is marked done only once complete, so a build that was cut off is started again.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from runner.config import lock_pins
from runner.errors import EnvError, UsageError
from runner.model import EnvSpec

CACHE_VARIABLE = "RUNNER_CACHE_DIR"
_DONE = ".runner-built.json"
BUILD_FORMAT = 2  # envs built by an earlier way of building are built again


def kernel_name(env_name: str) -> str:
    """The name of the env's Jupyter kernel, in its kernelspecs and its notebooks."""
    return f"runner-{env_name}"


@dataclass(frozen=True)
class BuiltEnv:
    spec: EnvSpec
    prefix: Path

    @property
    def python(self) -> Path:
        return self.prefix / "bin" / "python"

    @property
    def kernel_name(self) -> str:
        return kernel_name(self.spec.name)

    @property
    def kernels_dir(self) -> Path:
        return self.prefix / "share" / "jupyter" / "kernels"


def cache_root() -> Path:
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "runner"


def env_path(spec: EnvSpec) -> Path:
    return cache_root() / "envs" / f"{spec.name}-{spec.lock_hash[:16]}"


def is_built(spec: EnvSpec) -> bool:
    """Built completely, by this runner's way of building (bytecode compiled, fingerprinted)."""
    try:
        done = json.loads((env_path(spec) / _DONE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(done, dict) and done.get("format") == BUILD_FORMAT


def build(spec: EnvSpec, say: Callable[[str], None] = print) -> BuiltEnv:
    """The built environment for this lock, building it first if it is not there yet, or
    again if it is no longer what was built (its fingerprint changed: never used then)."""
    built = BuiltEnv(spec, env_path(spec))
    try:
        if is_built(spec):
            if fingerprint(built.prefix) == _recorded(built.prefix):
                return built
            say(f"environment '{spec.name}' in {built.prefix} changed since it was built "
                "(files added, removed or edited): building it again")
            _mark_unbuilt(built.prefix)
        return _build(built, say)
    except OSError as exc:
        raise EnvError(f"environment '{spec.name}' cannot be built in {built.prefix}: "
                       f"{exc.strerror or exc}", spec.folder) from exc


def _build(built: BuiltEnv, say: Callable[[str], None]) -> BuiltEnv:
    spec = built.spec
    from filelock import FileLock  # here: listing or checking envs needs no lock

    built.prefix.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(built.prefix) + ".lock"):
        if is_built(spec):  # another run built it while we waited
            return built
        say(f"building environment '{spec.name}' from {spec.lock} into {built.prefix}")
        started = time.monotonic()
        shutil.rmtree(built.prefix, ignore_errors=True)
        _uv(spec, "venv", "--quiet", "--python", sys.executable, str(built.prefix))
        # Bytecode compiled now: kernels see the env read-only, and nothing they import may
        # write into it (that would also change its fingerprint).
        _uv(spec, "pip", "sync", "--quiet", "--require-hashes", "--compile-bytecode",
            "--python", str(built.python), str(spec.lock))
        if "ipykernel" not in spec.distributions:
            say(f"environment '{spec.name}': ipykernel is not in its lock, installing it unpinned")
            _uv(spec, "pip", "install", "--quiet", "--compile-bytecode", "--python",
                str(built.python), "ipykernel")
        write_kernelspec(built.kernels_dir / built.kernel_name,
                         [str(built.python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                         f"runner: {spec.name}",
                         {"runner": {"env": spec.name, "lock_hash": spec.lock_hash}})
        (built.prefix / _DONE).write_text(json.dumps(
            {"env": spec.name, "lock_hash": spec.lock_hash, "python": sys.version.split()[0],
             "format": BUILD_FORMAT}))
        _record(built.prefix)  # last: nothing in the env changes after it
        say(f"environment '{spec.name}' built in {time.monotonic() - started:.1f} s")
    return built


# --- fingerprint: is the env still what was built? ---------------------------------------------
# Every folder (a file added or removed changes its folder's mtime) and every file Python runs
# (.py, .pyc, .pth, .so), by size and mtime: about 15,000 stats for the TensorFlow env, a few
# tens of milliseconds. Recorded outside the env, beside it in the runner's cache.

_CODE = (".py", ".pyc", ".pth", ".so")


def fingerprint(prefix: Path) -> str:
    """The digest of the recorded paths as they are now ("" when nothing was recorded)."""
    try:
        paths = json.loads(_fingerprint_file(prefix).read_text())["paths"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return _digest(prefix, paths)


def _record(prefix: Path) -> None:
    paths = []  # relative to the env; "." is the env's own folder
    for folder, _folders, files in os.walk(prefix):
        relative = os.path.relpath(folder, prefix)
        paths.append(relative)
        paths += [os.path.join(relative, name) for name in files
                  if name.endswith(_CODE) or ".so." in name]
    _fingerprint_file(prefix).write_text(json.dumps(
        {"paths": paths, "digest": _digest(prefix, paths)}))


def _recorded(prefix: Path) -> str | None:
    try:
        return str(json.loads(_fingerprint_file(prefix).read_text())["digest"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _digest(prefix: Path, paths: list[str]) -> str:
    """Sizes and mtimes of the paths, in order (the paths themselves are in the record)."""
    folder = os.open(prefix, os.O_RDONLY | os.O_DIRECTORY)
    try:
        stat, values = os.stat, list[int]()
        for path in paths:
            try:
                found = stat(path, dir_fd=folder, follow_symlinks=False)
                values += (found.st_size, found.st_mtime_ns)
            except OSError:
                values += (-1, -1)
    finally:
        os.close(folder)
    return hashlib.blake2b(repr(values).encode(), digest_size=16).hexdigest()


def _fingerprint_file(prefix: Path) -> Path:
    return prefix.with_name(prefix.name + ".fingerprint.json")


def _mark_unbuilt(prefix: Path) -> None:
    (prefix / _DONE).unlink(missing_ok=True)


def install_kernelspecs(specs: list[EnvSpec]) -> list[tuple[str, str]]:
    """`kernels install`: each env, built if needed, as a Jupyter kernel of the user's
    ("runner: sklearn"), so JupyterLab and VS Code open the snippets/ notebooks in it.
    The kernel names and where each was installed."""
    from jupyter_client.kernelspec import KernelSpecManager

    manager = KernelSpecManager()
    installed = []
    for spec in specs:
        built = build(spec, say=lambda text: print(f"runner: {text}", file=sys.stderr))
        where = manager.install_kernel_spec(str(built.kernels_dir / built.kernel_name),
                                            kernel_name=built.kernel_name, user=True)
        installed.append((built.kernel_name, where))
    return installed


LOCK_PLATFORM = "x86_64-unknown-linux-gnu"  # what the project's locks target: CI's machines
_LOCK_COMMAND = "#    uv pip compile "  # the line of a lock's header that says how it was made


def compile_lock(spec_folder: Path, upgrade: bool = False, as_of: date | None = None) -> bool:
    """requirements.in -> requirements.lock with exact versions and hashes (uv pip compile);
    whether the lock's bytes changed.

    A lock is made again with the options its header says it was made with (target Python and
    platform among them), and uv prefers the pins already in it: with an unchanged
    requirements.in the lock stays byte for byte, so its hash, its built env and the posts'
    `verified_by` stamps stay too. Only `upgrade`, or a changed requirements.in, moves pins.

    `as_of`: the newest releases uploaded by the end of that day (UTC), as if locked then
    (uv's `--exclude-newer`, recorded in the header, so later re-locks keep the date). Every
    pin must then have a wheel for the target Python, else the lock is left as it was and an
    `EnvError` names the release that has none."""
    lock = spec_folder / "requirements.lock"
    before = _contents(lock)
    return _compile(spec_folder, lock_options(before) or _new_lock_options(), upgrade, as_of,
                    before)


def _compile(folder: Path, args: list[str], upgrade: bool, as_of: date | None,
             before: bytes) -> bool:
    lock = folder / "requirements.lock"
    if as_of is not None:
        args = [*without_option(args, EXCLUDE_NEWER), EXCLUDE_NEWER, exclude_newer(as_of)]
    _run([_uv_bin(), "pip", "compile", *args, "--quiet",
          *(["--upgrade"] if upgrade or as_of else [])], folder.name, folder)
    if as_of is not None and (problem := missing_wheels(lock, args)):
        if before:
            lock.write_bytes(before)
        else:
            lock.unlink(missing_ok=True)
        raise EnvError(f"environment '{folder.name}' as of {as_of}: {problem}; the lock is "
                       "left as it was", folder)
    return _contents(lock) != before


EXCLUDE_NEWER = "--exclude-newer"


def exclude_newer(as_of: date) -> str:
    """uv's `--exclude-newer` for "the releases that existed that day": its end, in UTC (the
    same on every machine, whatever its time zone)."""
    return f"{as_of.isoformat()}T23:59:59Z"


def without_option(args: list[str], option: str) -> list[str]:
    """`args` less `option VALUE` and `option=VALUE`."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return kept


def option_value(args: list[str], option: str) -> str | None:
    for flag, value in zip(args, [*args[1:], ""], strict=True):
        if flag == option:
            return value
        if flag.startswith(option + "="):
            return flag.split("=", 1)[1]
    return None


def missing_wheels(lock: Path, args: list[str]) -> str | None:
    """None when every pin of the lock has a wheel for the lock's target (its Python version
    and platform), else which has none, in one phrase. Only uv's resolver is asked (`--no-deps
    --only-binary :all:` on the exact pins): nothing is downloaded but metadata."""
    pins = [f"{name}=={version}" for name, version in lock_pins(_contents(lock).decode()).items()]
    python = option_value(args, "--python-version")
    target = [*(["--python-version", python] if python else []),
              *(["--python-platform", p] if (p := option_value(args, "--python-platform")) else [])]
    with tempfile.TemporaryDirectory(prefix="runner-wheels-") as folder:
        wanted = Path(folder) / "pins.txt"
        wanted.write_text("\n".join(pins) + "\n")
        done = subprocess.run([_uv_bin(), "pip", "compile", str(wanted), "--no-deps",
                               "--only-binary", ":all:", "--no-header", "--quiet",
                               "-o", os.devnull, *target], capture_output=True, text=True)
    if done.returncode == 0:
        return None
    return no_wheel_message(done.stderr, python or running_python())


def running_python() -> str:
    """`3.11`: the Python envs are built with (the runner's own)."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


_NO_WHEEL = re.compile(r"([A-Za-z0-9][\w.-]*)==(\S+?) has no (?:usable )?wheels")
_WHEELS_FOR = re.compile(r"wheels for `([^`]+)` \(v([^)]+)\)")


def no_wheel_message(uv_stderr: str, python: str) -> str:
    """uv's refusal of `--only-binary` as one phrase: which release has no wheel for which
    Python, and what to do (else uv's last line)."""
    found = _NO_WHEEL.search(uv_stderr) or _WHEELS_FOR.search(uv_stderr)
    if found is None:
        lines = [line.strip() for line in uv_stderr.splitlines() if line.strip()]
        return f"a release has no wheel for Python {python} ({lines[-1] if lines else 'uv'})"
    name, version = found[1], found[2]
    return (f"{name} {version} has no wheel for Python {python} (only a source distribution, "
            f"which building the env would have to compile): choose a later date, or pin a "
            f"newer {name} in requirements.in")


def new_env(source: EnvSpec, name: str, as_of: date | None = None) -> Path:
    """`envs new NAME --from SOURCE [--as-of DATE]`: a new env folder beside SOURCE's, with its
    requirements.in, and SOURCE's lock (no date) or one made as of the date, with the options
    SOURCE's lock was made with. Nothing is left behind when the lock cannot be made."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise UsageError(f"'{name}' cannot name an environment: letters, digits, '.', '_', '-'")
    folder = source.folder.parent / name
    if folder.exists():
        raise UsageError(f"environment '{name}' exists already ({folder})")
    folder.mkdir()
    try:
        shutil.copyfile(source.folder / "requirements.in", folder / "requirements.in")
        if as_of is None:
            shutil.copyfile(source.lock, folder / "requirements.lock")
        else:
            options = lock_options(_contents(source.lock)) or _new_lock_options()
            _compile(folder, options, True, as_of, b"")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def resolve_candidate(folder: Path, source: EnvSpec, pin: str | None = None) -> None:
    """A lock in `folder` for `bisect`: SOURCE's requirements.in resolved with SOURCE's lock
    options (no date), either fresh (`pin` None: the newest releases) or with `pin`
    (`numpy==1.24.0`) and SOURCE's pins preferred where they fit. The pinned package must
    have a wheel for the target: an old release is never compiled from source."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source.folder / "requirements.in", folder / "requirements.in")
    args = without_option(lock_options(_contents(source.lock)) or _new_lock_options(),
                          EXCLUDE_NEWER)
    if pin is None:
        _run([_uv_bin(), "pip", "compile", *args, "--quiet", "--upgrade"], source.name, folder)
        return
    shutil.copyfile(source.lock, folder / "requirements.lock")  # its pins are preferred
    (folder / "bisect-pin.txt").write_text(pin + "\n")
    package = pin.split("==")[0]
    _run([_uv_bin(), "pip", "compile", *args, "-c", "bisect-pin.txt", "--only-binary", package,
          "--quiet"], source.name, folder)


def _contents(lock: Path) -> bytes:
    return lock.read_bytes() if lock.is_file() else b""


def lock_options(lock_text: bytes) -> list[str] | None:
    """The `uv pip compile` arguments a lock's header records (`requirements.in ... -o
    requirements.lock`), in their order, so the header comes out the same; None without one."""
    for line in lock_text.decode("utf-8", "replace").splitlines()[:5]:
        if line.startswith(_LOCK_COMMAND):
            try:
                args = shlex.split(line.removeprefix(_LOCK_COMMAND))
            except ValueError:
                return None
            return args if "requirements.in" in args and _writes_lock(args) else None
    return None


def _writes_lock(args: list[str]) -> bool:
    """The arguments write requirements.lock (and not some other file)."""
    return any((flag in ("-o", "--output-file") and value == "requirements.lock")
               or flag in ("-orequirements.lock", "--output-file=requirements.lock")
               for flag, value in zip(args, [*args[1:], ""], strict=True))


def _new_lock_options() -> list[str]:
    return ["requirements.in", "--generate-hashes", "--python-version", running_python(),
            "--python-platform", LOCK_PLATFORM, "-o", "requirements.lock"]


def write_kernelspec(folder: Path, argv: list[str], display_name: str,
                     metadata: dict[str, object] | None = None,
                     interrupt_mode: str | None = None) -> Path:
    """A Python kernelspec: `folder`/kernel.json (the folder is made), and its path.
    `interrupt_mode` "message": interrupts come as a message, not a signal (a sandboxed
    kernel's process is not the launcher's to signal)."""
    spec: dict[str, object] = {"argv": argv, "display_name": display_name, "language": "python"}
    if metadata is not None:
        spec["metadata"] = metadata
    if interrupt_mode is not None:
        spec["interrupt_mode"] = interrupt_mode
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "kernel.json"
    path.write_text(json.dumps(spec, indent=1))
    return path


def _uv(spec: EnvSpec, *args: str) -> None:
    _run([_uv_bin(), *args], spec.name, spec.folder)


def _run(command: list[str], name: str, cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise EnvError(f"environment '{name}': {' '.join(command[1:3])} failed: "
                       + " / ".join(tail), cwd)


def _uv_bin() -> str:
    try:
        from uv import find_uv_bin
    except ImportError:  # uv installed some other way
        found = shutil.which("uv")
        if found is None:
            raise EnvError("uv is not installed (pip install uv)") from None
        return found
    return find_uv_bin()


# What a kernel gets of the caller's environment (tox's passenv): nothing else, so tokens and
# keys in the shell that runs the runner never reach a snippet. [tool.runner] passenv adds.
PASSENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_*", "TZ", "TERM",
           "TMPDIR", "OPENBLAS_*", "OMP_*", "MKL_*")


def kernel_env(env: BuiltEnv, passenv: Sequence[str] = ()) -> dict[str, str]:
    """The environment a kernel of the built env gets, from this process's."""
    return kernel_variables(env.spec, env.prefix, passenv, os.environ)


def kernel_variables(spec: EnvSpec, prefix: Path, passenv: Sequence[str],
                     environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a kernel of the env at `prefix` gets, made from `environ` (pure: the
    cache key is made of it before any env is built): its allowed part, the env's own bin/
    first on PATH, and the env's kernel-env settings."""
    allowed = (*PASSENV, *passenv)
    variables = {name: value for name, value in environ.items()
                 if any(fnmatch.fnmatchcase(name, pattern) for pattern in allowed)}
    variables["VIRTUAL_ENV"] = str(prefix)
    variables["PATH"] = os.pathsep.join([str(prefix / "bin"), variables.get("PATH", "")])
    variables.update(spec.kernel_env)
    return variables
