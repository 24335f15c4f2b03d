"""The results store of a run directory: every measurement is written as soon as it is measured.

SQLite (``<run dir>/results.sqlite``), because each write is one transaction: a run killed at any
moment — SIGKILL included — leaves every committed measurement intact and never a half-written
one (SQLite's rollback journal undoes an interrupted transaction when the file is next opened);
it is one file in the standard library, and reports are regenerated from it alone.

A measurement is keyed by backbone, method (with its parameters, as written), input size, batch
size, dtype, device, kind (``flops``, ``timing``, ``eval``, ``unsupported``) and a variant string
for what else decides the value (the weights' seed/checkpoint, the timing protocol, the data
folder). Its payload is JSON, including the environment it was measured in.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional

STORE_NAME = "results.sqlite"
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


class ResultsStore:
    """``ResultsStore(path)``: a file (created if missing) or ``":memory:"``."""

    def __init__(self, path: str = ":memory:"):
        self.path = path
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._conn = sqlite3.connect(path)
        with self._conn:
            self._conn.executescript(_SCHEMA)

    @classmethod
    def in_run_dir(cls, run_dir: str) -> "ResultsStore":
        return cls(os.path.join(run_dir, STORE_NAME))

    def get(self, key: Key) -> Optional[dict]:
        cur = self._conn.execute(
            "SELECT payload FROM measurements WHERE backbone=? AND method=? AND input_size=? AND "
            "batch_size=? AND dtype=? AND device=? AND kind=? AND variant=?", key.row())
        found = cur.fetchone()
        return None if found is None else json.loads(found[0])

    def put(self, key: Key, payload: dict) -> None:
        """Store one measurement (one transaction; replaces an older value of the same key)."""
        if key.kind not in KINDS:
            raise ValueError(f"unknown measurement kind {key.kind!r}; kinds: {KINDS}")
        text = json.dumps(payload, default=_jsonable, allow_nan=True)
        with self._conn:
            self._conn.execute("INSERT OR REPLACE INTO measurements VALUES (?,?,?,?,?,?,?,?,?,?)",
                               key.row() + (text, time.time()))

    def log_run(self, arguments: dict) -> None:
        with self._conn:
            self._conn.execute("INSERT INTO runs VALUES (?, ?)",
                               (time.time(), json.dumps(arguments, default=_jsonable)))

    def runs(self) -> list[dict]:
        return [json.loads(a) for (a,) in
                self._conn.execute("SELECT arguments FROM runs ORDER BY started_at")]

    def items(self) -> Iterator[tuple[Key, dict]]:
        for row in self._conn.execute("SELECT * FROM measurements ORDER BY measured_at"):
            yield Key(*row[:8]), json.loads(row[8])

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]

    def close(self) -> None:
        self._conn.close()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)
