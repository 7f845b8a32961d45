"""Folders and files mmpipe trusts enough to unpickle or to read a secret from: they must be this user's alone.

Ray Tune resumes a search by unpickling files in its experiment folder (tuner.pkl, the searcher's state, trial
states). Whoever can write one of them, or replace a folder on the way to them, runs code as the user who resumes:
with shared run directories and a scheduler that resumes on its own, that is anyone with write access. A folder is
private when it, its parents up to the run directory, and everything in it belong to this user (or root) and none
of it is writable by group or others. POSIX only: elsewhere file modes say nothing and nothing is checked.

Group write is fine for the user's private group (named after the user, their primary group, no other members):
with the umask 002 of such systems everything the user writes is group-writable, and nobody else is in the group.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_LISTED = 5  # offending paths named in one error; the fix covers the rest


class UntrustedPath(RuntimeError):
    """State that would be unpickled lies where someone else could have written it; the message says how to fix."""


def user_name(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def private_group(gid: int) -> bool:
    """Whether ``gid`` is this user's private group (user private groups, as Debian and Red Hat make them)."""
    try:
        import grp
        import pwd

        me = pwd.getpwuid(os.getuid())
        group = grp.getgrgid(gid)
    except (ImportError, KeyError):
        return False
    return gid == me.pw_gid and group.gr_name == me.pw_name and set(group.gr_mem) <= {me.pw_name}


def _problem(path: Path, st: os.stat_result) -> str | None:
    """Why ``path`` is not private, or None."""
    me = os.getuid()
    if st.st_uid not in (me, 0):  # root can write anything anyway: trusting it adds no risk
        return f"{path} belongs to {user_name(st.st_uid)}, not to you ({user_name(me)})"
    group_writes = st.st_mode & stat.S_IWGRP and not private_group(st.st_gid)
    writers = [who for bit, who in ((group_writes, "group"), (st.st_mode & stat.S_IWOTH, "others")) if bit]
    if writers:
        return f"{path} is writable by {' and '.join(writers)} (mode {stat.filemode(st.st_mode)})"
    return None


def _entries(path: Path, root: Path):
    """``path``, its parents up to and including ``root``, then everything below ``path`` (links not followed)."""
    yield path
    for parent in path.parents:
        if parent == root or root in parent.parents:
            yield parent
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            yield Path(folder) / name


def check_private_dir(path: str | Path, what: str, root: str | Path | None = None) -> None:
    """Raise UntrustedPath unless ``path`` (and its parents up to ``root``, by default ``path`` itself, and every
    file and folder in it) belongs to this user and is writable by nobody else. ``what`` names it for the error,
    e.g. "the tune experiment to resume"."""
    if os.name != "posix":
        return
    path = Path(path).resolve()  # the folders themselves, not links to them, are what must be private
    root = Path(root).resolve() if root is not None else path
    if root != path and root not in path.parents:
        raise ValueError(f"{path} is not inside {root}")
    problems = []
    for entry in _entries(path, root):
        try:
            st = entry.stat()  # a link's own mode means nothing: what it points at is what gets read
        except FileNotFoundError:  # removed while we looked, or a dangling link: nothing to read there
            continue
        if problem := _problem(entry, st):
            problems.append(problem)
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  … and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise UntrustedPath(
            f"{what}: refusing to resume from {path}: resuming unpickles the state in it, so whoever could write "
            f"there could run code as you.\n  {listed}{more}\nFix: if nobody else has changed it, make it yours "
            f"alone (`chmod -R go-w {root}`; files of another user: copy the folder and resume from the copy), "
            f"or start afresh with another --out / --run-dir.")


def readable_by_others(path: str | Path) -> str | None:
    """How ``path`` (a secret) is readable by group or others, e.g. "group and others (mode -rw-r--r--)", or None."""
    if os.name != "posix":
        return None
    mode = Path(path).stat().st_mode
    readers = [who for bit, who in ((stat.S_IRGRP, "group"), (stat.S_IROTH, "others")) if mode & bit]
    return f"{' and '.join(readers)} (mode {stat.filemode(mode)})" if readers else None
