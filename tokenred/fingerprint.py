"""Content fingerprints for the results store: what decided a measurement, not where it lives.

A data folder is fingerprinted by its image list (relative path, size and modification time of
every file, and the unreadable entries), so adding, removing or replacing an image measures
again; a weights file by the SHA-256 of its bytes, so a checkpoint replaced at the same path
measures again. Digests of large files are cached per (path, size, mtime) within a process.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

_FILE_DIGESTS: dict[tuple, str] = {}


def file_digest(path: str) -> str:
    """``sha256:<hex>`` of the file's bytes."""
    st = os.stat(path)
    cache_key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if cache_key not in _FILE_DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _FILE_DIGESTS[cache_key] = "sha256:" + h.hexdigest()
    return _FILE_DIGESTS[cache_key]


def images_digest(root: str, paths: list[str], labels: Optional[list[int]],
                  unreadable: list[tuple[str, str]] = ()) -> str:
    """A digest of an image list: each file's path relative to ``root``, label, size and mtime."""
    h = hashlib.sha256()
    for i, path in enumerate(paths):
        try:
            st = os.stat(path)
            stat = (st.st_size, st.st_mtime_ns)
        except OSError as exc:      # unreadable now: its state is part of what decides the value
            stat = (type(exc).__name__,)
        entry = (os.path.relpath(path, root), None if labels is None else labels[i]) + stat
        h.update(json.dumps(entry).encode())
        h.update(b"\n")
    for path, why in unreadable:
        h.update(json.dumps(["unreadable", os.path.relpath(path, root), why]).encode())
    return "sha256:" + h.hexdigest()
