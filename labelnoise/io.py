"""Atomic output files: every file a stage writes appears whole or not at all."""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np

# (temporary, final) renames held back by :func:`all_or_nothing` (temporary None: final is to be deleted), and
# the output roots it covers
_held: list[tuple[Path | None, Path]] | None = None
_held_roots: tuple[Path, ...] = ()
COMMIT_JOURNAL = ".labelnoise.commit.json"  # a stage's commit in progress, in its workspace (see all_or_nothing)


def repo_root() -> Path:
    """The project root: DVC_ROOT inside DVC (also in `dvc exp` temp and queue copies), else the working folder.
    Relative paths a user gives (the MLflow store, a file of given labels) resolve against it."""
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def repo_path(name: str) -> Path:
    """A path from the params (``data.path``, ``noise.file``): absolute as it is, relative against :func:`repo_root`
    (so `dvc exp` copies read the user's files, which git does not carry, from the repository)."""
    path = Path(name)
    return path if path.is_absolute() else repo_root() / path


def _is_held(path: Path) -> bool:
    if _held is None:
        return False
    path = path.resolve()
    return any(path == root or root in path.parents for root in _held_roots)


def _temp_pattern(path: Path) -> str:
    return f".{path.name}.*.tmp{path.suffix}"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Temporaries of ``path`` left behind by a killed process are removed first. Inside
    :func:`all_or_nothing`, a path under its outputs is renamed only when that whole block succeeds.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    held_now = {tmp for tmp, _ in _held or []}
    for stale in path.parent.glob(_temp_pattern(path)):  # SIGKILL between write and rename
        if stale not in held_now:
            stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; outputs get the usual mode
    keep = False
    try:
        try:
            yield tmp_path
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise OSError(errno.ENOSPC, f"{path} could not be written: no space left on the device (free some, "
                                            "then run again)") from None
            raise
        if _held is not None and _is_held(path):
            _held.append((tmp_path, path))
            keep = True
        else:
            os.replace(tmp_path, path)
    finally:
        if not keep:
            tmp_path.unlink(missing_ok=True)


@contextmanager
def all_or_nothing(outputs: Iterable[str | Path], journal: str | Path | None = None) -> Iterator[None]:
    """A stage's outputs change together or not at all.

    Inside the block, files written with :func:`atomic_path` (and the helpers below) under any of
    ``outputs`` (files or folders) stay under their temporary names; when the block succeeds they
    replace their final paths, and when it raises they are deleted, so a failed stage leaves the
    previous outputs exactly as they were. Other files (checkpoints) are written at once, as usual.
    Inside the block, read a just-written output through :func:`readable`.

    ``journal``: a file naming every rename of the commit while it runs, so that a process killed between two
    renames (SIGKILL, power loss) leaves no mix of new and old outputs: the next block with the same journal
    finishes that commit first (:func:`finish_commit`).
    """
    global _held, _held_roots
    if _held is not None:
        raise RuntimeError("all_or_nothing blocks do not nest")
    if journal is not None and finish_commit(journal):
        print(f"finished the commit of a stage killed while it replaced its outputs ({journal})", file=sys.stderr)
    _held, _held_roots = [], tuple(Path(p).resolve() for p in outputs)
    try:
        yield
        _replace_all(_held, journal=None if journal is None else Path(journal))
    finally:
        for tmp, _ in _held:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        _held, _held_roots = None, ()


def _previous_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.{secrets.token_hex(6)}.tmp{final.suffix}")


def _replace_all(pairs: list[tuple[Path | None, Path]], *, journal: Path | None = None) -> None:
    """Move each temporary onto its final path (none: delete the final path), all or none: each previous file is
    kept under a temporary name (a hard link, else a copy) until every rename has succeeded; a failed rename (a
    read-only or immutable file, a full disk) puts back the ones already done and raises. ``journal``: written
    (whole) before the first rename, removed after the last: what :func:`finish_commit` completes."""
    plan = [(tmp, final, _previous_name(final)) for tmp, final in pairs]
    if journal is not None and plan:
        save_json(journal, {"renames": [[None if t is None else str(t.resolve()), str(f.resolve()),
                                         str(p.resolve())] for t, f, p in plan]})
    kept: list[tuple[Path, Path | None]] = []  # (final replaced, its previous content's temporary name or None)
    try:
        for tmp, final, previous in plan:
            if final.exists():
                try:
                    os.link(final, previous)
                except OSError:
                    shutil.copy2(final, previous)
            else:
                previous = None
            try:
                if tmp is None:
                    final.unlink(missing_ok=True)
                else:
                    os.replace(tmp, final)
            except BaseException:
                if previous is not None:
                    previous.unlink(missing_ok=True)
                raise
            kept.append((final, previous))
    except BaseException:
        for final, previous in reversed(kept):
            if previous is not None:
                os.replace(previous, final)
            else:
                final.unlink(missing_ok=True)
        kept.clear()
        raise
    finally:
        for _, previous in kept:
            if previous is not None:
                previous.unlink(missing_ok=True)
        if journal is not None:
            journal.unlink(missing_ok=True)


def finish_commit(journal: str | Path) -> bool:
    """Complete the commit of a process killed between its renames (``journal`` left behind): every output it
    had not yet renamed gets its new content (each temporary was written whole before the first rename), the
    kept previous contents go. True when there was one to finish."""
    journal = Path(journal)
    if not journal.is_file():
        return False
    try:
        renames = load_json(journal)["renames"]
    except (ValueError, KeyError, TypeError):  # killed while writing the journal: no rename had begun
        renames = []
    for tmp, final, previous in renames:
        if tmp is None:
            Path(final).unlink(missing_ok=True)
        elif Path(tmp).exists():
            os.replace(tmp, final)
        Path(previous).unlink(missing_ok=True)
    journal.unlink()
    return bool(renames)


@contextmanager
def workspace_lock(stage: str, folder: str | Path = ".") -> Iterator[None]:
    """One stage at a time in a workspace (``folder``, where a stage reads and writes its paths): a second one
    raises RuntimeError in one line naming the running stage, its process and when it started. The lock is the
    kernel's (flock on ``.labelnoise.lock``), so a killed process never leaves it held; the file is removed when
    the stage ends (a run that finds its lock file replaced meanwhile takes the new one)."""
    import fcntl
    import time

    path = Path(folder) / ".labelnoise.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another stage"
            os.close(fd)
            raise RuntimeError(f"{holder} is running in this workspace ({Path(folder).resolve()}); wait for it to "
                               "end, or run in another folder (`dvc exp run --queue` gives each run its own)"
                               ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed it between our open and our lock: lock the current file instead
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"stage {stage} (pid {os.getpid()}, started {time.strftime('%H:%M:%S')})".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)  # before the unlock: a waiting opener then sees a replaced file
        os.close(fd)


def readable(path: str | Path) -> Path:
    """Where the newest content of ``path`` is: its held temporary inside :func:`all_or_nothing`, else itself."""
    path = Path(path)
    for tmp, final in reversed(_held or []):
        if tmp is not None and (final == path or final.resolve() == path.resolve()):
            return tmp
    return path


def keep_only(folder: str | Path, written: Iterable[str | Path], pattern: str = "[!.]*.png") -> None:
    """Delete the files of ``folder`` (a stage's own) matching ``pattern`` that are not among ``written``. Inside
    :func:`all_or_nothing` the deletions wait for its commit, with the files written: a failed stage deletes
    nothing."""
    keep = {Path(p).resolve() for p in written}
    for stale in Path(folder).glob(pattern):
        if stale.resolve() in keep:
            continue
        if _is_held(stale):
            _held.append((None, stale))  # type: ignore[union-attr]  # _is_held: _held is a list
        else:
            stale.unlink(missing_ok=True)


def _kind(mode: int) -> str:
    import stat

    return ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")


def regular_file(path: str | Path, *, what: str) -> Path:
    """``path`` when it is a regular file (a symlink is followed); else one ValueError line naming ``what`` and the
    file: reading a named pipe or a device (a link to ``/dev/zero``) would block or never end."""
    import stat

    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ValueError(f"{what}: {path} does not exist" + (" (a link to a missing file)" if path.is_symlink()
                                                              else "")) from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"{what}: {path} is {_kind(mode)}, not a file: remove it or replace it by the file itself")
    return path


def list_files(folder: str | Path, *, what: str) -> list[tuple[str, int, int]]:
    """(path relative to ``folder``, size, mtime in ns) of every file under ``folder`` (links followed, hidden
    entries included), sorted; nothing is read. Anything that is not a regular file or a folder (a named pipe, a
    device, a link to one or to nothing) is one ValueError line naming it: reading it would block or never end.
    A missing ``folder`` lists nothing."""
    import stat

    folder = Path(folder)
    found: list[tuple[str, int, int]] = []
    seen: set[tuple[int, int]] = set()  # folders walked (a link back to a parent is walked once, not forever)
    for top, dirs, files in os.walk(folder, followlinks=True):
        here = os.stat(top)
        if (here.st_dev, here.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((here.st_dev, here.st_ino))
        for name in sorted(dirs + files):
            path = Path(top) / name
            try:
                info = path.stat()
            except OSError:
                raise ValueError(f"{what}: {path} is a link to a missing file: remove it or fix the link") from None
            if stat.S_ISDIR(info.st_mode):
                continue
            if not stat.S_ISREG(info.st_mode):
                raise ValueError(f"{what}: {path} is {_kind(info.st_mode)}, not a file: remove it from {folder} or "
                                 "replace it by the file itself")
            found.append((path.relative_to(folder).as_posix(), info.st_size, info.st_mtime_ns))
    return sorted(found)


def write_atomic(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def save_json(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented JSON; an undefined number (NaN, infinity: JSON has neither) is written as null."""
    text = json.dumps(finite_or_none(obj), indent=2, sort_keys=False, default=_to_builtin) + "\n"
    return write_atomic(path, lambda p: p.write_text(text))


def load_json(path: str | Path, *, remedy: str = "run the stage that writes it again (dvc repro)") -> Any:
    """The JSON at ``path``; a file that is not valid JSON is one line naming it and ending in ``remedy``."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _unreadable(Path(path), e, remedy) from None


def save_npz(path: str | Path, **arrays: Any) -> Path:
    """Uncompressed npz (fast to load; DVC caches it), the same bytes for the same arrays on any Python: each
    entry is written whole with a fixed header (np.savez streams them with a zip64 header whose bytes changed
    between Python 3.11 patch releases)."""
    def _write(p: Path) -> None:
        with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_STORED) as archive:
            for key, value in arrays.items():
                buffer = BytesIO()
                np.lib.format.write_array(buffer, np.asanyarray(value), allow_pickle=False)
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.create_system, info.external_attr = 3, 0o600 << 16
                archive.writestr(info, buffer.getvalue())

    return write_atomic(path, _write)


def save_torch(path: str | Path, obj: Any) -> Path:
    import torch

    def _write(p: Path) -> None:
        with open(p, "wb") as f:  # a file object: torch names the archive's folder after a path's stem,
            try:  # so saving to the temporary name would make equal content differ in bytes
                torch.save(obj, f)
            except RuntimeError as e:  # a full disk: "[enforce fail at inline_container.cc:...] ... unexpected pos"
                raise OSError(f"{path} could not be written (torch: {one_line(e)[:120]}): is the disk full?") from None

    return write_atomic(path, _write)


def terminal_bar(*columns: Any, show: bool | None = None) -> Any:
    """The project's progress bar (a rich ``Progress`` with ``columns``, rich's default ones without): on stderr,
    shown only where stderr is a terminal (``show`` decides otherwise), gone when done; elsewhere (a pipe, a file,
    DVC's log) it draws nothing."""
    from rich.console import Console
    from rich.progress import Progress

    show = sys.stderr.isatty() if show is None else show
    return Progress(*columns, transient=True, console=Console(file=sys.stderr), disable=not show)


def terminal_progress(items: Sequence[Any], description: str) -> Iterator[Any]:
    """``items``, with a :func:`terminal_bar` while they are gone through."""
    with terminal_bar() as bar:
        yield from bar.track(items, total=len(items), description=description)


def one_line(e: BaseException) -> str:
    """An exception as one line of text: its message with whitespace collapsed, else its type."""
    return " ".join(str(e).split()) or type(e).__name__


def load_problem(e: BaseException) -> str:
    """Why a file could not be loaded, in a few words: torch's refusal of a file that holds code-carrying objects
    reads as what it is (its own text ends in advice to load the file unsafely), the rest as the exception says."""
    if "Weights only load failed" in str(e) or "Unsupported global" in str(e):
        return "it holds Python objects beyond tensors and plain values, refused: loading them could run code"
    return f"{type(e).__name__}: {one_line(e)[:200]}"


def _unreadable(path: Path, e: BaseException, remedy: str) -> ValueError:
    return ValueError(f"{path} is corrupt or unreadable ({load_problem(e)}); {remedy}")


def read_npz(path: str | Path, *, remedy: str, keys: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """Every array of the npz at ``path`` (no pickles); a missing file, an unreadable one or one without
    ``keys`` is one line ending in ``remedy`` (what to run to make it again)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; {remedy}")
    try:
        if not zipfile.is_zipfile(path):  # np.load would read it as a pickle, and suggest allow_pickle
            raise ValueError("not an npz archive")
        with np.load(path, allow_pickle=False) as z:
            missing = sorted(set(keys) - set(z.files))
            if missing:
                raise KeyError(f"no {', '.join(missing)}")
            return {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - truncated, not a zip, pickled, missing arrays: one line
        raise _unreadable(path, e, remedy) from None


def read_torch(path: str | Path, *, remedy: str, keys: Iterable[str] = ()) -> dict[str, Any]:
    """The dict saved with :func:`save_torch` at ``path`` (tensors and plain types only); a missing or
    unreadable file, or one without ``keys`` (another kind of file), is one line ending in ``remedy``."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; {remedy}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, dict):
            raise TypeError(f"holds a {type(obj).__name__}, not a dict")
        missing = sorted(set(keys) - set(obj))
        if missing:
            raise KeyError(f"no {', '.join(missing)}: another kind of file")
    except Exception as e:  # noqa: BLE001 - truncated, foreign format: one line
        raise _unreadable(path, e, remedy) from None
    return obj


_INTEGER = re.compile(r"-?[0-9]+")
HUGE = 10**30  # what parse_int gives for an integer of more digits: beyond any index, and no int() digit limit
_INT64 = np.iinfo(np.int64)


def parse_int(text: str) -> int | None:
    """``text`` as an integer when it is one written in ASCII digits (a leading ``-`` allowed), else None: ``int()``
    and ``str.isdigit()`` also take ``"²"`` or ``"٣"``. More than 30 digits come back as ±``HUGE``."""
    if not _INTEGER.fullmatch(text):
        return None
    digits = text.removeprefix("-")
    value = int(digits) if len(digits) <= 30 else HUGE
    return -value if text.startswith("-") else value


def read_csv_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and the rows of a CSV file in UTF-8 (a byte-order mark is skipped), each row with its row number
    as a spreadsheet counts it (the header is row 1, a blank line is a row too). A file that cannot be read, or is
    not UTF-8 CSV text, is a ValueError saying why in a few words (the caller names the file)."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text: {one_line(e)[:160]}") from None
    except (OSError, csv.Error) as e:
        raise ValueError(f"not CSV text: {one_line(e)[:160]}" if isinstance(e, csv.Error) else one_line(e)[:200]
                         ) from None
    return header, rows


def read_label_csv(path: str | Path, *, param: str, classes: list[str] | None = None,
                   paths: list[str] | None = None) -> tuple[str, np.ndarray, np.ndarray]:
    """A CSV of labels with a header row: ``index`` (an image's index in the dataset's order) or, given the
    dataset's image ``paths``, ``path``; and ``label``, a name of ``classes`` or a class index (an index only when no
    class name is an integer: with names like 10, 20 a label must be one of them). A byte-order mark is fine.
    Returns (the key column's name, the images' indices int64 (n,), the labels int64 (n,)); anything else (no rows,
    a label or index that is no such thing) is one ValueError line naming ``param``, the file and the row."""
    path = Path(path)
    keys = ("index", "path") if paths is not None else ("index",)
    try:
        header, rows = read_csv_rows(path)
    except ValueError as e:
        raise ValueError(f"{param}: {path} cannot be read ({e})") from None
    key = next((k for k in keys if k in header), None)
    if key is None or "label" not in header:
        raise ValueError(f"{param}: {path} needs a header row with the columns {' or '.join(keys)} and label "
                         f"(found: {', '.join(header) or 'nothing'})")
    if not rows:
        raise ValueError(f"{param}: {path} has a header row but no rows of labels")
    names = {c: i for i, c in enumerate(classes or [])}
    indices_allowed = not any(parse_int(c) is not None for c in names)
    known = f" (classes: {', '.join(list(names)[:12])}{', ...' if len(names) > 12 else ''})" if names else ""
    where = {p: i for i, p in enumerate(paths or [])}
    index = np.empty(len(rows), dtype=np.int64)
    labels = np.empty(len(rows), dtype=np.int64)
    for i, (r, row) in enumerate(rows):
        text, cell = (row["label"] or "").strip(), (row[key] or "").strip()
        at = f"{param}: {path} row {r}"
        k = names[text] if text in names else parse_int(text)
        if k is None:
            raise ValueError(f"{at}: label {text!r} is neither a class index nor a class name{known}")
        if text not in names and not indices_allowed:
            raise ValueError(f"{at}: label {text!r} is not a class name{known}")
        if not _INT64.min <= k <= _INT64.max:  # a class index out of range is the caller's to say
            raise ValueError(f"{at}: label {text!r} is too large to be a class index{known}")
        labels[i] = k
        if key == "path":
            if cell not in where:
                raise ValueError(f"{at}: {cell!r} is not an image of the dataset")
            index[i] = where[cell]
            continue
        n = parse_int(cell)
        if n is None or n < 0:
            raise ValueError(f"{at}: index {cell!r} is not a non-negative integer")
        if n > _INT64.max:
            raise ValueError(f"{at}: index {cell!r} is too large to be an image's index")
        index[i] = n
    return key, index, labels


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every NaN or infinite number (nested in dicts, lists, arrays) replaced by None."""
    if isinstance(obj, float | np.floating):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(v) for v in obj]
    if isinstance(obj, np.ndarray) and obj.dtype.kind == "f":
        return finite_or_none(obj.tolist())
    return obj


def _to_builtin(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
