"""The files beside a post: listed, read, hashed and copied for its kernels, bounded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import runner.beside
from runner.beside import BESIDE_MAX_BYTES, BESIDE_MAX_FILES, copy_beside, files_beside, read_beside
from tests.conftest import without_waiting

POST = "```python\nprint(1)\n```\n"


def hostile_folder(tmp_path: Path) -> Path:
    """A post's folder as a pull request can commit it: data, and links to secrets."""
    folder, outside = tmp_path / "posts", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    (outside / "id_ed25519").write_text("SECRET KEY")
    os.mkfifo(outside / "fifo")
    (folder / "p.md").write_text(POST)
    (folder / "data.csv").write_text("x,y\n1,2\n")
    (folder / ".hidden").write_text("x")
    (folder / "figures").mkdir()
    (folder / "environ.txt").symlink_to("/proc/self/environ")
    (folder / "kmsg.txt").symlink_to("/proc/kmsg")
    (folder / "config.txt").symlink_to("../outside/id_ed25519")
    (folder / "stream.csv").symlink_to(outside / "fifo")
    os.mkfifo(folder / "pipe.csv")
    with (folder / "huge.bin").open("wb") as out:
        out.truncate(BESIDE_MAX_BYTES + 1)  # sparse: costs no disk
    return folder


def test_only_regular_files_of_the_folder_are_beside_a_post(tmp_path: Path) -> None:
    folder = hostile_folder(tmp_path)
    assert [p.name for p in files_beside(folder)] == ["data.csv"]
    warnings: list[str] = []
    beside = without_waiting(lambda: read_beside(folder, warnings.append),
                             folder / "pipe.csv", "read_beside")
    assert [name for name, *_ in beside.files] == ["data.csv"]
    [warning] = warnings  # one line, naming the folder and each file left out
    assert str(folder) in warning and "\n" not in warning
    for name, why in (("environ.txt", "a symlink"), ("kmsg.txt", "a symlink"),
                      ("config.txt", "a symlink"), ("stream.csv", "a symlink"),
                      ("pipe.csv", "a FIFO"), ("huge.bin", "over")):
        assert f"{name} ({why}" in warning, name
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    copy_beside(beside, scratch, warn=pytest.fail)
    assert os.listdir(scratch) == ["data.csv"]
    assert (scratch / "data.csv").read_text() == "x,y\n1,2\n"


def test_the_kernel_gets_only_the_bytes_the_key_was_made_from(tmp_path: Path) -> None:
    """A file changed (or swapped for a link) between the key's read and the copy is left
    out, never copied as it is now; a copy never writes through a link in scratch."""
    folder = hostile_folder(tmp_path)
    (folder / "other.csv").write_text("a\n")
    (folder / "third.csv").write_text("b\n")
    beside = read_beside(folder, warn=lambda text: None)
    assert [name for name, *_ in beside.files] == ["data.csv", "other.csv", "third.csv"]
    (folder / "data.csv").write_text("x,y\n6,6\n")  # the same size, other bytes
    (folder / "other.csv").unlink()
    (folder / "other.csv").symlink_to(tmp_path / "outside" / "id_ed25519")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "third.csv").symlink_to(tmp_path / "outside" / "planted")  # dangling
    warnings: list[str] = []
    copy_beside(beside, scratch, warnings.append)
    assert sorted(os.listdir(scratch)) == ["third.csv"] and (scratch / "third.csv").is_symlink()
    assert not (tmp_path / "outside" / "planted").exists()
    [warning] = warnings
    assert all(name in warning for name in ("data.csv", "other.csv", "third.csv")), warning
    assert beside.digest != read_beside(folder, warn=lambda text: None).digest


def test_a_folder_of_20000_files_gives_its_posts_a_bounded_few(tmp_path: Path) -> None:
    folder = tmp_path / "posts"
    folder.mkdir()
    for n in range(20_000):
        os.close(os.open(folder / f"{n:05}.txt", os.O_CREAT | os.O_WRONLY))
    warnings: list[str] = []
    beside = read_beside(folder, warnings.append)
    assert len(beside.files) == BESIDE_MAX_FILES == len(files_beside(folder))
    [warning] = warnings
    assert f"{20_000 - BESIDE_MAX_FILES} more" in warning and str(folder) in warning


def test_the_files_beside_a_post_are_bounded_in_all(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner.beside, "BESIDE_MAX_TOTAL", 25)
    folder = tmp_path / "posts"
    folder.mkdir()
    for name in ("a", "b", "c"):
        (folder / f"{name}.txt").write_text("x" * 10)
    warnings: list[str] = []
    beside = read_beside(folder, warnings.append)
    assert [name for name, *_ in beside.files] == ["a.txt", "b.txt"]
    assert [p.name for p in files_beside(folder)] == ["a.txt", "b.txt"]
    [warning] = warnings
    assert "c.txt (past 25 bytes in all)" in warning


def test_a_files_mode_is_in_the_key(tmp_path: Path) -> None:
    """A script beside a post, made executable or not, runs or fails: its mode decides."""
    (tmp_path / "helper.sh").write_text("echo hi\n")
    (tmp_path / "helper.sh").chmod(0o755)
    executable = read_beside(tmp_path)
    (tmp_path / "helper.sh").chmod(0o644)
    plain = read_beside(tmp_path)
    assert executable.digest != plain.digest
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    copy_beside(executable, scratch, warn=pytest.fail)
    assert (scratch / "helper.sh").stat().st_mode & 0o777 == 0o755  # as the key says

