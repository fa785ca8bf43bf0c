"""Files every later step reads: written atomically, CSVs always through the csv module.

Every file is written to a temporary file in the same folder, fsynced, then renamed over the old
one: a crash at any moment leaves the previous good file. The new file gets the mode an ordinary
file gets under the process's umask (a temporary file alone would be 0600).
"""
from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

# Test hook: called with a label at moments inside a save, so tests can kill there cheaply.
_SAVE_HOOK: Optional[Callable[[str], None]] = None


def _hook(label: str) -> None:
    if _SAVE_HOOK is not None:
        _SAVE_HOOK(label)


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data[: len(data) // 2])
            _hook(f"write:{path.name}")
            f.write(data[len(data) // 2:])
            f.flush()
            os.fchmod(f.fileno(), _umask_mode())
            os.fsync(f.fileno())
        _hook(f"rename:{path.name}")
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and not e.filename:  # write() names no file: say which one it was
            e.filename = str(path)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def remove_temp_files(folder: Path) -> list[Path]:
    """Delete the temporary files that a killed atomic write left in ``folder``; returns them."""
    stale = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink()
    return stale


def csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A CSV document (header + rows), quoted by the csv module, with \\n line ends."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def read_csv_rows(path: str | os.PathLike, what: str = "CSV file") -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a CSV a user gives (training data, predict inputs, folds): the one reader every
    command uses. UTF-8 with or without a byte-order mark, or UTF-16 with one; ``,``, ``;`` or tab separated
    (found from the header line); header cells stripped. Anything else is one sentence naming the file."""
    from .errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} '{path}' does not exist; check the path.")
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = raw.decode("utf-16")
    else:
        try:
            text = raw.decode("utf-8-sig")  # spreadsheet programs often start the file with a BOM
        except UnicodeDecodeError as e:
            # Not guessed as cp1252: a wrong guess would silently turn file names and labels into others.
            raise UserError(f"{what} '{path}' is not UTF-8 (byte {e.start} is not valid UTF-8; it looks like "
                            "cp1252/Latin-1 from a spreadsheet program); save it as UTF-8 CSV.") from None
    first = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=first.count) if first else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [cell.strip() for cell in next(reader, [])]
    return header, list(reader)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write a CSV atomically (see ``atomic_write_bytes``)."""
    atomic_write_text(path, csv_text(header, rows))


def check_writable(folder: Path, what: str, fix: str) -> None:
    """Fail now, in one sentence, when ``folder`` cannot take new files (read-only file system, no
    permission, a file in the way), rather than after the work that would fill it.

    The probe creates and removes a temporary file: access() checks say yes to root on a read-only
    mount, so only a real write answers. ``what`` names the folder for the user ("run folder"), ``fix``
    is what to do ("choose another --out").
    """
    from .errors import UserError

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} '{folder}' is a file, not a folder; {fix}.")
    # A folder still to be made is probed in its nearest existing parent, and nothing is created.
    probe = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    if not probe.is_dir():
        raise UserError(f"{what} '{folder}' lies inside '{probe}', which is a file, not a folder; {fix}.")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".imgcls-probe.", suffix=".tmp", dir=probe)
    except OSError as e:
        raise UserError(f"cannot write into {what} '{folder}' ({e.strerror or e}); {fix}.") from None
    os.close(fd)
    os.unlink(tmp)


FILE_SYSTEM_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EFBIG,
                      errno.EISDIR, errno.ENOTDIR, errno.EEXIST}


def describe_os_error(e: OSError) -> str:
    """One sentence for a file-system error met while reading or writing: the path, the reason, a fix."""
    where = f" '{e.filename}'" if e.filename else ""
    reason = e.strerror or str(e)
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "make it writable or choose another output location"
    elif e.errno == errno.ENOSPC:
        fix = "free some disk space and run the command again"
    elif e.errno == errno.EDQUOT:
        fix = "free some space within your disk quota (or ask for a larger one) and run the command again"
    elif e.errno == errno.EFBIG:
        fix = ("the file system or the file-size limit refuses a file this large: raise the limit (ulimit -f) or "
               "write to another file system, and run the command again")
    elif e.errno in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST):
        fix = "choose a path that is not taken by a file or folder of the other kind"
    else:
        fix = "check the path and run the command again"
    return f"cannot use{where} ({reason}); {fix}."


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (weights, fix files, images for duplicates)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
