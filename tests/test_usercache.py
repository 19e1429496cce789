"""The cache root is used only where no one but this user and root can move
it (bpf_sdt/usercache.py): every directory above it is theirs and writable
by no one else unless sticky, links in the chosen path are resolved once,
and the directories bpf-sdt makes are 0700 whatever the umask.  As root in a
shared cache (BPF_SDT_CACHE=/tmp/shared), the owner of a directory above it
could otherwise move the checked directory away and point trace's writes
anywhere.  chown needs root: skipped elsewhere, required in CI."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

import pytest
from toolchain import need

from bpf_sdt import usercache

OTHER_UID = 65534           # nobody


@pytest.fixture
def root() -> None:
    need(os.geteuid() == 0, "chown to another user needs root")


def _cache_at(monkeypatch: pytest.MonkeyPatch, where: Path) -> Path | None:
    monkeypatch.setenv(usercache.CACHE_ENV, str(where))
    return usercache.cache_dir("instrumented")


def test_a_root_below_our_own_directories_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _cache_at(monkeypatch, tmp_path / "cache") == Path(os.path.realpath(tmp_path)) / "cache" / "instrumented"


def test_a_root_below_anothers_directory_is_not_used(root: None, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "cache").mkdir(mode=0o700)
    os.chown(shared, OTHER_UID, OTHER_UID)          # its owner could rename cache/ away and put a link there
    assert _cache_at(monkeypatch, shared / "cache") is None
    assert _cache_at(monkeypatch, shared / "cache" / "deeper") is None     # not made yet: the same


def test_writable_by_others_is_refused_and_sticky_is_not(root: None, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    above = tmp_path / "above"
    above.mkdir()
    os.chown(above, 0, OTHER_UID)                   # a group with other members (nogroup)
    above.chmod(0o770)
    assert _cache_at(monkeypatch, above / "cache") is None
    above.chmod(0o707)
    assert _cache_at(monkeypatch, above / "cache") is None
    above.chmod(0o1777)                             # as /tmp: others cannot rename what is ours
    assert _cache_at(monkeypatch, above / "cache") is not None


def test_group_write_of_a_user_private_group_is_no_one_elses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """umask 002 with a group of one's own (Debian, Ubuntu, Fedora) makes
    ~/.cache 0775: still usable.  The same mode with others' write is not."""
    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid())
    need(group.gr_name == user and set(group.gr_mem) <= {user},
         f"this user's primary group {group.gr_name} is a user private group")
    home_cache = tmp_path / "home" / ".cache"
    home_cache.mkdir(parents=True)
    home_cache.chmod(0o775)
    assert _cache_at(monkeypatch, home_cache / "bpf-sdt") is not None
    home_cache.chmod(0o777)
    assert _cache_at(monkeypatch, home_cache / "bpf-sdt") is None


def test_anothers_link_in_the_chosen_path_is_refused(root: None, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Its owner chooses where root's cache goes, and may repoint it later."""
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    (tmp_path / "link").symlink_to(chosen, target_is_directory=True)
    os.lchown(tmp_path / "link", OTHER_UID, OTHER_UID)
    assert _cache_at(monkeypatch, tmp_path / "link" / "cache") is None
    os.lchown(tmp_path / "link", 0, 0)
    assert _cache_at(monkeypatch, tmp_path / "link" / "cache") is not None


def test_a_relative_root_is_judged_up_to_the_real_root(root: None, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    (shared / "work").mkdir(parents=True)
    os.chown(shared, OTHER_UID, OTHER_UID)
    monkeypatch.chdir(shared / "work")
    assert _cache_at(monkeypatch, Path("cache")) is None


def test_a_link_in_the_chosen_path_is_resolved_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever owns the link could repoint it after the check; the resolved
    path is what every later use names."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    where = _cache_at(monkeypatch, tmp_path / "link" / "cache")
    assert where is not None and "link" not in where.parts and where.parent == Path(os.path.realpath(real)) / "cache"


def test_made_directories_are_ours_alone_under_any_umask(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        usercache.make_dirs(tmp_path / "a" / "b" / "c")
    finally:
        os.umask(old)
    for d in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d


def test_a_parent_another_made_first_is_found_after_making(root: None, tmp_path: Path) -> None:
    """A parent someone else created while we made the rest: the write must not follow."""
    (tmp_path / "a").mkdir()
    os.chown(tmp_path / "a", OTHER_UID, OTHER_UID)
    with pytest.raises(PermissionError):
        usercache.make_dirs(tmp_path / "a" / "b")


def test_a_trace_under_anothers_directory_keeps_no_cache(root: None, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end with the instrumented-object cache: as root, storing an
    entry below a shared directory another user owns writes nothing there."""
    from bpf_sdt.trace import instcache

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, OTHER_UID, OTHER_UID)
    monkeypatch.setenv(usercache.CACHE_ENV, str(shared / "cache"))
    (tmp_path / "in.o").write_bytes(b"\x7fELF input")
    (tmp_path / "out.o").write_bytes(b"\x7fELF instrumented")
    job = instcache.Job(tmp_path / "in.o")
    assert instcache.store(job, tmp_path / "out.o", instcache.Instrumented([], [])) is None
    assert list(shared.iterdir()) == []
    os.chown(shared, 0, 0)                          # the same, root's: stored
    assert instcache.store(job, tmp_path / "out.o", instcache.Instrumented([], [])) is not None


def test_a_relative_root_without_a_working_directory_is_no_cache(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert _cache_at(monkeypatch, Path("rel")) is None           # getcwd fails: no traceback


def test_a_directory_that_vanishes_during_the_check_after_making_is_refused(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Renamed away while make_dirs judges it (so lstat finds nothing), it
    could be renamed back, someone else's, once the check has passed."""
    target = tmp_path / "a" / "b"
    real_lstat = os.lstat

    def vanishing(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if Path(str(path)) == tmp_path / "a":
            raise FileNotFoundError(2, "renamed away meanwhile", str(path))
        return real_lstat(path, *args, **kwargs)  # type: ignore[arg-type]

    (tmp_path / "a").mkdir()
    monkeypatch.setattr(os, "lstat", vanishing)
    with pytest.raises(PermissionError):
        usercache.make_dirs(target)
