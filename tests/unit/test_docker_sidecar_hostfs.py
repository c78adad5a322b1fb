"""The host path walker against a real file system (tmp directories): symlinks anywhere on the
way are refused, never followed; directories other users may change are refused; the final
object's type and owner are checked; a walk below a volume root cannot be sent outside it, not
even by a thread that flips a directory and a symlink while it walks."""

from __future__ import annotations

import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecars.docker.hostfs import HostPathError, Opened, canonical, open_beneath, open_host_path

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="ownership checks need root to chown test files")


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A root-owned directory only root may write (pytest's tmp dirs are 0700 already)."""
    d = tmp_path / "host"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    return d


def _open(path: Path | str, expect: str = "directory", trusted: tuple[int, ...] = ()) -> Opened:
    return open_host_path(str(path), expect=expect, trusted=trusted)  # type: ignore[arg-type]


def test_a_plain_directory_is_opened_and_it_is_the_same_inode(base: Path) -> None:
    d = base / "x11"
    d.mkdir()
    with _open(d) as opened:
        assert (opened.st.st_dev, opened.st.st_ino) == (d.stat().st_dev, d.stat().st_ino)
        assert opened.is_dir
        assert stat.S_ISDIR(os.fstat(opened.fd).st_mode)


@pytest.mark.parametrize("path", ["relative", "/a//b", "/a/./b", "/a/../b", "/a/", "/a/b/.."])
def test_paths_must_be_written_plainly(path: str) -> None:
    assert not canonical(path)
    with pytest.raises(HostPathError, match="plain absolute path"):
        open_host_path(path, expect="directory", trusted=())


def test_a_symlink_as_the_last_component_is_refused_not_followed(base: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (base / "link").symlink_to(secret)
    with pytest.raises(HostPathError, match="symlink"):
        _open(base / "link")


def test_a_symlink_in_the_middle_is_refused(base: Path) -> None:
    real = base / "real"
    (real / "sub").mkdir(parents=True)
    (base / "via").symlink_to(real)
    with pytest.raises(HostPathError, match=r"via is a symlink"):
        _open(base / "via" / "sub")


def test_a_symlink_to_slash_planted_where_a_directory_was_leads_nowhere(base: Path) -> None:
    # What the attack did: a pod replaced a directory of an allowed one with a link to /.
    d = base / "allowed"
    d.mkdir()
    (d / "below").symlink_to("/")
    with pytest.raises(HostPathError, match="symlink"):
        _open(d / "below" / "etc")
    with pytest.raises(HostPathError, match="symlink"):
        _open(d / "below")


def test_a_missing_path_says_so_and_may_be_tried_again(base: Path) -> None:
    with pytest.raises(HostPathError) as info:
        _open(base / "nope" / "deeper")
    assert info.value.missing and "does not exist" in info.value.message


@pytest.mark.parametrize(
    ("make", "expect", "needle"),
    [
        ("dir", "socket", "is a directory, not a socket"),
        ("file", "directory", "is a regular file, not a directory"),
        ("socket", "file", "is a socket, not a regular file"),
        ("file", "devices", "not a character device"),
        ("fifo", "any-dir-or-file", "is a FIFO"),
    ],
)
def test_the_final_object_must_be_of_the_listed_type(base: Path, make: str, expect: str, needle: str) -> None:
    p = base / "obj"
    if make == "dir":
        p.mkdir()
    elif make == "file":
        p.write_text("")
    elif make == "fifo":
        os.mkfifo(p)
    else:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(p))
        s.close()
    with pytest.raises(HostPathError, match=needle):
        _open(p, expect)


def test_sockets_and_character_devices_open_as_what_they_are(base: Path) -> None:
    sock = base / "X0"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock))
    try:
        with _open(sock, "socket") as opened:
            assert stat.S_ISSOCK(opened.st.st_mode)
    finally:
        s.close()
    with _open("/dev/null", "devices") as opened:
        assert stat.S_ISCHR(opened.st.st_mode)


@needs_root
def test_an_object_owned_by_another_user_is_refused_unless_trusted(base: Path) -> None:
    d = base / "theirs"
    d.mkdir()
    os.chown(d, NOBODY, NOBODY)
    with pytest.raises(HostPathError, match=f"owned by uid {NOBODY}"):
        _open(d)
    _open(d, trusted=(NOBODY,)).close()


@needs_root
def test_a_directory_of_another_user_on_the_way_is_refused(base: Path) -> None:
    (base / "home" / "share").mkdir(parents=True)
    os.chown(base / "home", NOBODY, NOBODY)
    with pytest.raises(HostPathError, match="who could replace what is below it"):
        _open(base / "home" / "share")


def test_a_parent_other_users_may_write_without_the_sticky_bit_is_refused(base: Path) -> None:
    shared = base / "shared"
    (shared / "sock-dir").mkdir(parents=True)
    shared.chmod(0o777)
    with pytest.raises(HostPathError, match="no sticky bit"):
        _open(shared / "sock-dir")
    shared.chmod(0o1777)  # the sticky bit: others cannot replace root's entry
    _open(shared / "sock-dir").close()


@needs_root
def test_a_parent_a_group_may_write_is_refused_unless_the_group_is_root(base: Path) -> None:
    shared = base / "group"
    (shared / "sock-dir").mkdir(parents=True)
    shared.chmod(0o775)
    _open(shared / "sock-dir").close()  # group root
    os.chown(shared, 0, 1234)
    with pytest.raises(HostPathError, match="no sticky bit"):
        _open(shared / "sock-dir")


@needs_root
def test_in_a_sticky_shared_directory_only_trusted_owners_count(base: Path) -> None:
    # /tmp/.X11-unix: sticky and writable by all; a local user (nobody) may add entries there.
    x11 = base / "tmp-x11"
    x11.mkdir()
    x11.chmod(0o1777)
    mine = x11 / "X0"
    mine.mkdir()
    theirs = x11 / "X9"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    _open(mine).close()
    with pytest.raises(HostPathError, match="another user's file"):
        _open(theirs)
    # The directory itself, owned by root and sticky, is fine to mount as a whole.
    _open(x11).close()


@needs_root
def test_a_symlink_a_local_user_planted_in_a_sticky_directory_is_refused(base: Path) -> None:
    x11 = base / "tmp-x11"
    x11.mkdir()
    x11.chmod(0o1777)
    (x11 / "X7").symlink_to("/etc/shadow")
    os.lchown(x11 / "X7", NOBODY, NOBODY)
    with pytest.raises(HostPathError, match="symlink"):
        _open(x11 / "X7", "socket")


# ------------------------------------------------------------------------------------ beneath


@pytest.fixture
def volume(base: Path) -> Iterator[Opened]:
    (base / "vol").mkdir()
    (base / "vol").chmod(0o777)
    opened = _open(base / "vol")
    yield opened
    opened.close()


def test_below_a_volume_missing_directories_are_made_with_the_mode_asked(volume: Opened, base: Path) -> None:
    with open_beneath(volume, "a/b/c", create_dirs=True, dir_mode=0o777) as opened:
        assert opened.is_dir
        made = base / "vol" / "a" / "b" / "c"
        assert (opened.st.st_ino, stat.S_IMODE(made.stat().st_mode)) == (made.stat().st_ino, 0o777)


def test_below_a_volume_a_file_may_be_the_sub_path(volume: Opened, base: Path) -> None:
    (base / "vol" / "conf").write_text("x")
    with open_beneath(volume, "conf") as opened:
        assert stat.S_ISREG(opened.st.st_mode)


@pytest.mark.parametrize("sub", ["../x", "a/../../x", "/etc", "a//b", "./a", ""])
def test_below_a_volume_escaping_spellings_are_refused(volume: Opened, sub: str) -> None:
    with pytest.raises(HostPathError, match="must be relative"):
        open_beneath(volume, sub)


def test_below_a_volume_a_planted_symlink_is_refused_even_when_creating(volume: Opened, base: Path) -> None:
    (base / "vol" / "dir").symlink_to("/")
    with pytest.raises(HostPathError, match="symlink"):
        open_beneath(volume, "dir", create_dirs=True)
    (base / "vol" / "d2").mkdir()
    (base / "vol" / "d2" / "up").symlink_to("../..")
    with pytest.raises(HostPathError, match="symlink"):
        open_beneath(volume, "d2/up/etc")


def test_below_a_volume_a_racing_flipper_never_gets_the_walk_out_of_it(volume: Opened, base: Path, tmp_path: Path) -> None:
    """1,000 walks while a thread swaps `dir` between a directory and a symlink to a directory
    outside the volume: each walk ends in the volume (its directory) or is refused, never outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary").write_text("host")
    outside_ino = outside.stat().st_ino
    vol = base / "vol"
    stop = threading.Event()

    def flip() -> None:
        d, tmp_link = vol / "dir", vol / "dir.link"
        while not stop.is_set():
            try:
                d.mkdir()
                d.rmdir()
                tmp_link.symlink_to(outside)
                os.rename(tmp_link, d)  # the symlink replaces the name atomically
                os.unlink(d)
            except OSError:
                pass

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    got_dir = refused = 0
    try:
        for _ in range(1000):
            try:
                with open_beneath(volume, "dir", create_dirs=True) as opened:
                    assert opened.st.st_ino != outside_ino
                    assert opened.is_dir
                    got_dir += 1
            except HostPathError as exc:
                assert "symlink" in exc.message or "does not exist" in exc.message, exc.message
                refused += 1
    finally:
        stop.set()
        flipper.join(5)
    assert got_dir + refused == 1000 and got_dir > 0
