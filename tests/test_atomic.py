"""`atomic.remove_tree`: a tree a kernel could have made, removed however it is shaped (issue 20,
item 5): deeper than Python's recursion limit, its paths longer than PATH_MAX, folders of mode
000, symlinks out of it, a file system mounted inside it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from runner.atomic import remove_tree
from tests.conftest import ROOT, deep_tree


def test_a_tree_3000_deep_is_removed(deep: Path) -> None:
    tmp_path = deep
    deep_tree(tmp_path / "tree", 3000)
    remove_tree(tmp_path / "tree")
    assert not os.path.lexists(tmp_path / "tree")


def test_a_tree_whose_paths_are_longer_than_path_max_is_removed(deep: Path) -> None:
    tmp_path = deep
    deep_tree(tmp_path / "tree", 30, "n" * 250)  # 7500 bytes of path: past PATH_MAX (4096)
    (tmp_path / "tree" / "beside").write_text("x")
    remove_tree(tmp_path / "tree")
    assert not os.path.lexists(tmp_path / "tree")


def test_links_in_the_tree_are_removed_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "folder" / "keep.txt").write_text("mine")
    (outside / "file.txt").write_text("mine too")
    tree = tmp_path / "tree"
    deep_tree(tree, 3)
    (tree / "d" / "to-folder").symlink_to(outside / "folder")
    (tree / "d" / "to-file").symlink_to(outside / "file.txt")
    (tree / "d" / "d" / "up").symlink_to("../../..")
    (tmp_path / "link").symlink_to(outside)  # the path given is itself a link
    remove_tree(tree)
    remove_tree(tmp_path / "link")
    assert not os.path.lexists(tree) and not os.path.lexists(tmp_path / "link")
    assert (outside / "folder" / "keep.txt").read_text() == "mine"
    assert (outside / "file.txt").read_text() == "mine too"


def test_folders_of_mode_000_are_removed(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    deep_tree(tree / "locked", 2)
    deep_tree(tree / "readonly", 2)
    os.chmod(tree / "locked" / "d", 0o000)
    os.chmod(tree / "locked", 0o000)
    os.chmod(tree / "readonly", 0o500)
    remove_tree(tree)
    assert not os.path.lexists(tree)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_folders_of_mode_000_are_removed_by_an_owner_that_is_not_root() -> None:
    """As root no mode is an obstacle: the same tree removed by its owner, nobody (a forked
    child of this test that gave up root)."""
    base = Path(tempfile.mkdtemp(prefix="runner-test-"))
    try:
        os.chown(base, NOBODY, NOBODY)
        tree = base / "tree"
        deep_tree(tree / "locked", 2)
        deep_tree(tree / "readonly", 2)
        for folder, _, files in os.walk(tree):
            for name in [folder, *(os.path.join(folder, f) for f in files)]:
                os.chown(name, NOBODY, NOBODY)
        os.chmod(tree / "locked" / "d", 0o000)
        os.chmod(tree / "locked", 0o000)
        os.chmod(tree / "readonly", 0o500)
        child = os.fork()
        if child == 0:  # pragma: no cover (the child)
            status = 1
            try:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                remove_tree(tree)
                status = 0
            finally:
                os._exit(status)
        assert os.waitpid(child, 0)[1] == 0
        assert not os.path.lexists(tree)
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", str(base)], check=False)
        shutil.rmtree(base, ignore_errors=True)


NOBODY = 65534


MOUNTED = """
import os, subprocess, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from runner.atomic import remove_tree
tree = Path(sys.argv[2])
(tree / "mounted").mkdir(parents=True)
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(tree / "mounted")], check=True)
(tree / "mounted" / "theirs.txt").write_text("x")
(tree / "mine.txt").write_text("x")
remove_tree(tree)
print(sorted(os.listdir(tree)), os.listdir(tree / "mounted"))
"""


def test_a_file_system_mounted_in_the_tree_is_not_entered(tmp_path: Path) -> None:
    """In a mount namespace of its own (unshare), so nothing stays mounted on the host."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare here")
    done = subprocess.run([unshare, "--user", "--map-root-user", "--mount", sys.executable,
                           "-c", MOUNTED, str(ROOT), str(tmp_path / "tree")],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0 and ("mount" in done.stderr or "unshare" in done.stderr):
        pytest.skip(f"no mount namespace here: {done.stderr[-200:]}")
    assert done.stdout == "['mounted'] ['theirs.txt']\n", done.stderr


def test_what_is_not_there_or_not_a_folder_is_no_error(tmp_path: Path) -> None:
    remove_tree(tmp_path / "missing")
    remove_tree(tmp_path / "missing" / "below")
    (tmp_path / "file").write_text("x")
    remove_tree(tmp_path / "file")
    assert not os.path.lexists(tmp_path / "file")
