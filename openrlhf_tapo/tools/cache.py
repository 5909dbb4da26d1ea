"""Persistent tool-result cache: SQLite, keyed by tool name + canonical parameters (+ the settings that change
a result). Parameter determinism makes it exact: equal keys mean equal results.

- Safe under concurrent writers (many rollout workers, threads or processes on one file): WAL journal, a busy
  timeout, one connection per thread, `INSERT OR IGNORE` so the first writer of a key wins and later ones are
  no-ops. WAL needs memory shared by every writer, so one host: a writable cache on a network file system (NFS,
  SMB, Lustre, GPFS, BeeGFS, CephFS, any FUSE mount; read from /proc/mounts) is refused. With several nodes, give
  each node its own file on a local disk (the same tools.cache.path on node-local storage); a shared file can be
  served read-only with `replay`.
- Never stores an error: only successful `ToolResult`s that passed `check_result` reach `put`. A row that does
  not decode to a valid result is bypassed (a miss), counted (`cache_corrupt`) and deleted, so it is rewritten.
- Replay mode (`replay=True`): the runner serves only from the cache and reports a miss as a `cache_miss`
  error instead of calling the backend: reproducible runs without API spend.
- hit/miss counters: `stats()`; the runner logs them on close and the agent reports them in extra_logs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from openrlhf_tapo.tools.base import ToolResult, check_result
from openrlhf_tapo.utils.text import replace_surrogates

logger = logging.getLogger(__name__)
LOG_EVERY = 1000  # lookups between two hit/miss log lines
MOUNTS = "/proc/mounts"
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs")
IO_THREADS = 4  # threads that may wait on the database at once

SCHEMA = """
CREATE TABLE IF NOT EXISTS results(
    key TEXT PRIMARY KEY,     -- sha256 of the canonical JSON of {tool, key}
    tool TEXT NOT NULL,
    params TEXT NOT NULL,     -- the canonical JSON itself, for inspection
    payload TEXT NOT NULL,    -- JSON {text, images: [{caption, mode, size, bytes}]}
    blobs BLOB NOT NULL,      -- the images' zlib-compressed raw pixels, concatenated in order (sizes in payload)
    created REAL NOT NULL
)
"""


def cache_key(tool: str, key: dict) -> tuple[str, str]:
    """(digest, canonical JSON) of a tool name + key dict; key order and spacing never matter."""
    canonical = json.dumps({"tool": tool, "key": key}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    canonical = replace_surrogates(canonical)  # neither sha256 nor SQLite takes a lone surrogate
    return hashlib.sha256(canonical.encode()).hexdigest(), canonical


_RAW_MODES = ("RGB", "RGBA", "L")


def encode_result(result: ToolResult) -> tuple[str, bytes]:
    """(JSON payload, concatenated image blobs). Images are stored as their raw pixels, zlib level 1: lossless
    like PNG but several times faster to write and read (a hit must cost far less than a search). Modes other
    than RGB/RGBA/L are stored as RGBA."""
    meta, blobs = [], []
    for caption, image in result.images:
        if image.mode not in _RAW_MODES:
            image = image.convert("RGBA")
        blob = zlib.compress(image.tobytes(), 1)
        meta.append({"caption": caption, "mode": image.mode, "size": list(image.size), "bytes": len(blob)})
        blobs.append(blob)
    return json.dumps({"text": result.text, "images": meta}, ensure_ascii=False), b"".join(blobs)


def decode_result(payload: str, blobs: bytes) -> ToolResult:
    data = json.loads(payload)
    images, offset = [], 0
    for item in data["images"]:
        raw = zlib.decompress(blobs[offset : offset + item["bytes"]])
        images.append((item["caption"], Image.frombytes(item["mode"], tuple(item["size"]), raw)))
        offset += item["bytes"]
    return ToolResult(text=data["text"], images=images)


def filesystem_type(path: Path) -> str | None:
    """The type of the file system holding `path`: that of the longest mount point above it in /proc/mounts (None
    where the table cannot be read)."""
    try:
        lines = Path(MOUNTS).read_text().splitlines()
    except OSError:
        return None
    target = str(path.expanduser().absolute())
    best, kind = "", None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1].replace("\\040", " ")
        if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, kind = mount, fields[2]
    return kind


class ToolCache:
    def __init__(self, path: str | os.PathLike, *, replay: bool = False, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.replay = replay
        self.busy_timeout_s = busy_timeout_s
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self.corrupt = 0  # rows that did not decode to a valid result (bypassed and deleted)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = os.getpid()
        self._local = threading.local()
        self._pid = os.getpid()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        if replay and not self.path.is_file():
            raise FileNotFoundError(f"replay mode needs an existing cache file; {self.path} does not exist")
        fs = filesystem_type(self.path)
        if not replay and fs is not None and (fs in NETWORK_FILESYSTEMS or fs.startswith("fuse")):
            raise ValueError(
                f"tools.cache.path {self.path} is on a {fs} file system: SQLite's WAL journal, which lets many "
                "rollout workers write one cache, does not work across hosts there (lock errors, possible "
                "corruption). Put the cache on a local disk of each node (one file per node), or use "
                "tools.cache.mode replay to read a shared cache"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn()  # create the schema now, so a bad path fails at start-up, not mid-rollout
        except sqlite3.DatabaseError as err:
            raise ValueError(
                f"tools.cache.path {self.path} is not a usable SQLite tool cache ({err}); delete it or choose another"
            ) from None

    def _conn(self) -> sqlite3.Connection:
        if self._pid != os.getpid():  # forked: the parent's connections must not be used (nor closed) here
            self._pid, self._conns, self._local = os.getpid(), [], threading.local()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            if not self.replay:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute(SCHEMA)
                conn.commit()
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    # ---- synchronous API (any thread) ----------------------------------------------------------------------
    def get_sync(self, tool: str, key: dict) -> ToolResult | None:
        digest, _ = cache_key(tool, key)
        try:
            row = self._conn().execute("SELECT payload, blobs FROM results WHERE key = ?", (digest,)).fetchone()
        except sqlite3.OperationalError as err:
            if "no such table" not in str(err):
                raise
            row = None
        result = None if row is None else self._decode_row(tool, digest, row)
        with self._lock:
            if result is None:
                self.misses += 1
            else:
                self.hits += 1
            lookups = self.hits + self.misses
        if lookups % LOG_EVERY == 0:
            logger.info(
                "tool cache %s: %d hits, %d misses after %d lookups", self.path.name, self.hits, self.misses, lookups
            )
        return result

    def _decode_row(self, tool: str, digest: str, row: tuple) -> ToolResult | None:
        """The row's result, or None for a row that does not decode to a valid result: that row is deleted (not in
        replay mode) so the fresh result is written in its place instead of the bad row failing every call."""
        try:
            return check_result(decode_result(*row), tool)
        except Exception as err:  # anything a damaged payload or blob can raise: json, zlib, PIL, KeyError, ...
            logger.warning("tool cache %s: unreadable %s row (%s); bypassed", self.path.name, tool, type(err).__name__)
            with self._lock:
                self.corrupt += 1
            if not self.replay:
                conn = self._conn()
                with conn:
                    conn.execute("DELETE FROM results WHERE key = ?", (digest,))
            return None

    def put_sync(self, tool: str, key: dict, result: ToolResult) -> None:
        if self.replay:
            return
        digest, canonical = cache_key(tool, key)
        payload, blobs = encode_result(result)
        conn = self._conn()
        with conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO results VALUES (?,?,?,?,?,?)",
                (digest, tool, canonical, payload, blobs, time.time()),
            )
        if cur.rowcount:
            with self._lock:
                self.writes += 1

    # ---- async API (the runner's): SQLite and image coding block, so they run in the cache's own threads: a
    # locked database then holds those, never the CPU pool that zoom and image decoding share ----------------
    async def get(self, tool: str, key: dict) -> ToolResult | None:
        return await asyncio.get_running_loop().run_in_executor(self._io_pool(), self.get_sync, tool, key)

    async def put(self, tool: str, key: dict, result: ToolResult) -> None:
        await asyncio.get_running_loop().run_in_executor(self._io_pool(), self.put_sync, tool, key, result)

    def _io_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pool_pid != os.getpid():  # a forked child has none of the threads
                self._pool = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="tapo-cache")
                self._pool_pid = os.getpid()
            return self._pool

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "cache_hits": self.hits,
                "cache_misses": self.misses,
                "cache_writes": self.writes,
                "cache_corrupt": self.corrupt,
            }

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
            pool, self._pool = self._pool, None
        self._local = threading.local()
        if pool is not None:
            pool.shutdown(wait=False)
