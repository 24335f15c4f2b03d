"""The results store of a run directory: every measurement is written as soon as it is measured.

SQLite (``<run dir>/results.sqlite``), because each write is one transaction: a run killed at any
moment — SIGKILL included — leaves every committed measurement intact and never a half-written
one (SQLite's rollback journal undoes an interrupted transaction when the file is next opened);
it is one file in the standard library, and reports are regenerated from it alone.

A measurement is keyed by backbone, method (with its parameters, as written), input size, batch
size, dtype, device, kind (``flops``, ``timing``, ``eval``, ``unsupported``) and a variant string
for what else decides the value (the weights' seed/checkpoint, the timing protocol, the data
folder). Its payload is JSON, including the environment it was measured in.

What decides a value is keyed by content, not by name (``tokenred.fingerprint``): a data folder
by the list of its image files with their sizes and modification times, a checkpoint by a digest
of its bytes. A run directory is locked while a process measures into it (``lock=True``): a second
``compare`` on the same directory is refused with the holder's pid instead of timing against the
first. A file that is not a results store, or a row that is not valid JSON, is a ``StoreError``
naming the file; a failed write (disk full, read-only) rolls back, keeping every committed row.
"""
from __future__ import annotations

import errno
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional

STORE_NAME = "results.sqlite"
LOCK_NAME = ".tokenred.lock"
KINDS = ("flops", "timing", "eval", "unsupported", "match")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS measurements (
    backbone TEXT NOT NULL, method TEXT NOT NULL, input_size INTEGER NOT NULL,
    batch_size INTEGER NOT NULL, dtype TEXT NOT NULL, device TEXT NOT NULL, kind TEXT NOT NULL,
    variant TEXT NOT NULL, payload TEXT NOT NULL, measured_at REAL NOT NULL,
    PRIMARY KEY (backbone, method, input_size, batch_size, dtype, device, kind, variant)
);
CREATE TABLE IF NOT EXISTS runs (
    started_at REAL NOT NULL, arguments TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Key:
    backbone: str
    method: str
    input_size: int
    batch_size: int
    dtype: str
    device: str
    kind: str
    variant: str = ""

    def row(self) -> tuple:
        return (self.backbone, self.method, self.input_size, self.batch_size, self.dtype,
                self.device, self.kind, self.variant)


class StoreError(RuntimeError):
    """The results store cannot be used as asked (foreign or corrupt file, bad row, failed write,
    run directory in use); the message names the file and what to do."""


_COLUMNS = {"measurements": ["backbone", "method", "input_size", "batch_size", "dtype", "device",
                             "kind", "variant", "payload", "measured_at"],
            "runs": ["started_at", "arguments"]}


class ResultsStore:
    """``ResultsStore(path)``: a file (created if missing) or ``":memory:"``. ``lock=True`` takes
    the run directory's lock (see ``RunLock``) for as long as the store is open."""

    def __init__(self, path: str = ":memory:", lock: bool = False):
        self.path = path
        self._lock: Optional[RunLock] = None
        if path != ":memory:":
            directory = os.path.dirname(os.path.abspath(path))
            if os.path.exists(directory) and not os.path.isdir(directory):
                raise StoreError(f"{directory} is a file, not a run directory; give --out a "
                                 f"directory path")
            os.makedirs(directory, exist_ok=True)
            if lock:
                self._lock = RunLock(directory)
        try:
            self._conn = sqlite3.connect(path)
            self._check_schema()          # before creating anything in a file that is not ours
            with self._conn:
                self._conn.executescript(_SCHEMA)
        except BaseException as exc:
            if hasattr(self, "_conn"):
                self._conn.close()
            self._release()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(_explain(exc, path, opening=True)) from None
            raise

    @classmethod
    def in_run_dir(cls, run_dir: str, lock: bool = False) -> "ResultsStore":
        return cls(os.path.join(run_dir, STORE_NAME), lock=lock)

    def _check_schema(self) -> None:
        for table, want in _COLUMNS.items():
            have = [r[1] for r in self._conn.execute(f"PRAGMA table_info({table})")]
            if have and have != want:
                raise StoreError(f"{self.path} is an SQLite file but not a tokenred results store "
                                 f"(table {table!r} has columns {have}); move it away or give "
                                 f"another --out")

    def _decode(self, text: str, what: str) -> Any:
        try:
            return json.loads(text)
        except (json.JSONDecodeError, TypeError):
            raise StoreError(f"{self.path}: the stored row for {what} is not valid JSON; delete "
                             f"that row (or move the store away) to measure it again") from None

    def get(self, key: Key) -> Optional[dict]:
        try:
            cur = self._conn.execute(
                "SELECT payload FROM measurements WHERE backbone=? AND method=? AND input_size=? "
                "AND batch_size=? AND dtype=? AND device=? AND kind=? AND variant=?", key.row())
            found = cur.fetchone()
        except sqlite3.Error as exc:
            raise StoreError(_explain(exc, self.path)) from None
        return None if found is None else self._decode(found[0], _describe(key))

    def put(self, key: Key, payload: dict) -> None:
        """Store one measurement (one transaction; replaces an older value of the same key). A
        failed write rolls back: every row committed before stays."""
        if key.kind not in KINDS:
            raise ValueError(f"unknown measurement kind {key.kind!r}; kinds: {KINDS}")
        text = json.dumps(payload, default=_jsonable, allow_nan=True)
        self._write("INSERT OR REPLACE INTO measurements VALUES (?,?,?,?,?,?,?,?,?,?)",
                    key.row() + (text, time.time()))

    def log_run(self, arguments: dict) -> None:
        self._write("INSERT INTO runs VALUES (?, ?)",
                    (time.time(), json.dumps(arguments, default=_jsonable)))

    def _write(self, sql: str, values: tuple) -> None:
        try:
            with self._conn:
                self._conn.execute(sql, values)
        except sqlite3.Error as exc:
            raise StoreError(_explain(exc, self.path)) from None

    def runs(self) -> list[dict]:
        return [self._decode(a, "a logged run") for (a,) in
                self._conn.execute("SELECT arguments FROM runs ORDER BY started_at")]

    def items(self) -> Iterator[tuple[Key, dict]]:
        for row in self._conn.execute("SELECT * FROM measurements ORDER BY measured_at"):
            key = Key(*row[:8])
            yield key, self._decode(row[8], _describe(key))

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]

    def close(self) -> None:
        self._conn.close()
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


class RunLock:
    """An exclusive, non-blocking lock on a run directory (``flock`` on ``.tokenred.lock``; the
    kernel drops it when the process dies, so a killed run never leaves a stale lock). A second
    process is refused with the holder's pid."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LOCK_NAME)
        try:
            import fcntl
        except ImportError:   # no flock (Windows): runs are not protected from each other
            self._fd = None
            return
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            self._fd = None
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise StoreError(f"run directory {run_dir} is in use by another tokenred process "
                                 f"(pid {holder}); wait for it to finish or give another --out"
                                 ) from None
            raise
        try:   # the holder's pid, for the message a second process gets
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, str(os.getpid()).encode(), 0)
        except OSError as exc:
            self.release()
            raise OSError(exc.errno, exc.strerror, self.path) from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)   # closing the descriptor drops the flock
            self._fd = None


def _describe(key: Key) -> str:
    return f"{key.backbone} / {key.method} ({key.kind})"


def _explain(exc: sqlite3.Error, path: str, opening: bool = False) -> str:
    text = str(exc)
    if "not a database" in text or "malformed" in text or "file is encrypted" in text:
        return (f"{path} is not a readable tokenred results store ({text}); move it away or give "
                f"another --out")
    if "full" in text:
        return f"{path}: the disk is full ({text}); every measurement committed before is kept"
    if "readonly" in text or "unable to open" in text:
        return (f"{path}: cannot {'open' if opening else 'write'} the results store ({text}); "
                f"give --out a directory you can write")
    return f"{path}: results store error ({text})"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)
