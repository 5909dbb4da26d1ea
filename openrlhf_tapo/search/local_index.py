"""The embedded search index: BM25 over passages (bm25s) and nearest neighbour over perceptual hashes.

Layout of an index directory (written by `LocalIndex.build`, read by `LocalIndex.load`):
    meta.json            format version, counts, tokenizer and thumbnail settings
    store.sqlite         passages(row, id, title, url, text) and images(row, id, title, url, thumb)
    bm25/                the bm25s index (CSC score matrix, memory-mapped on load) + tokenizer vocabulary
    image_hashes.npy     (N, 2) uint64: pHash and dHash of every indexed image, in `images.row` order

Why bm25s: it precomputes every BM25 term score at build time into a sparse matrix, so a query is a few array
slices and a top-k partition (hundreds to thousands of queries/s on 100k passages, see docs/tools.md), it
memory-maps the matrix so every worker process shares one copy, and it is pure Python + numpy. SQLite FTS5
(the baseline in benchmarks/bench_search.py) scores at query time by walking posting lists, which is slower
for OR-queries with common terms. Passage bodies live in SQLite so the index never holds the corpus in RAM.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from openrlhf_tapo.search.base import ImageHit, SearchBackend, SearchBadImage, TextHit
from openrlhf_tapo.search.images import (
    decode_base64_image,
    decode_image,
    encode_image,
    hamming_distances,
    perceptual_hashes,
    thumbnail,
)
from openrlhf_tapo.search.workers import run_cpu
from openrlhf_tapo.utils.jsonl import iter_json_objects

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
TOKEN_PATTERN = r"(?u)\b\w+\b"  # single characters too: "World War 2", CJK


class CorpusError(ValueError):
    """A corpus row that cannot be indexed; the message names the corpus, the row index and the field."""


def read_jsonl(path: str | os.PathLike, *, images: bool = False) -> Iterator[dict]:
    """Rows of a jsonl corpus. For an image corpus, an `image` path is resolved relative to the jsonl file."""
    path = Path(path)
    for _, row in iter_json_objects(path, CorpusError):
        if images and isinstance(row.get("image"), str) and decode_base64_image(row["image"]) is None:
            row["image"] = path.parent / row["image"]
        yield row


def read_parquet(path: str | os.PathLike, *, images: bool = False) -> Iterator[dict]:
    """Rows of a parquet corpus (same columns as the jsonl form), read batch by batch. An `image` cell may hold
    bytes, a path relative to the parquet file, or a Hugging Face image struct {"bytes", "path"}."""
    import pyarrow.parquet as pq

    path = Path(path)
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            value = row.get("image")
            if images and isinstance(value, dict):
                value = value.get("bytes") or value.get("path")
            if images and isinstance(value, str) and decode_base64_image(value) is None:
                value = path.parent / value
            if images and "image" in row:
                row["image"] = value
            yield row


def read_corpus(path: str | os.PathLike, *, images: bool = False) -> Iterator[dict]:
    """Rows of a corpus file: parquet when its name ends in .parquet, jsonl otherwise."""
    if Path(path).suffix.lower() == ".parquet":
        return read_parquet(path, images=images)
    return read_jsonl(path, images=images)


def _image_from_field(value, where: str, max_pixels: int) -> Image.Image:
    """The image of an image-corpus row: a PIL image, encoded bytes, base64 text, or a file path."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, str):
        data = decode_base64_image(value)
        if data is None:
            value = Path(value)
        else:
            value = data
    if isinstance(value, os.PathLike):
        try:
            value = Path(value).read_bytes()
        except OSError as err:
            raise CorpusError(f"{where}: cannot read image file ({err})") from None
    if isinstance(value, bytes | bytearray):
        try:
            return decode_image(bytes(value), max_pixels=max_pixels)
        except SearchBadImage as err:
            raise CorpusError(f"{where}: {err}") from None
    raise CorpusError(
        f"{where}: 'image' must be a path, base64 text, bytes or a PIL image, got {type(value).__name__}"
    )


def _text_field(row: dict, key: str, where: str, required: bool = False) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise CorpusError(f"{where}: missing '{key}'")
        return ""
    if not isinstance(value, str | int):
        raise CorpusError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
    return str(value)


class _Tokenizer:
    """Lower-case word tokens minus English stop words; the same function for documents and queries."""

    def __init__(self):
        from bm25s.stopwords import STOPWORDS_EN

        self._split = re.compile(TOKEN_PATTERN).findall
        self._stop = frozenset(STOPWORDS_EN)

    def __call__(self, text: str) -> list[str]:
        return [t for t in self._split(text.lower()) if t not in self._stop]


class LocalIndex:
    """A read-only, thread-safe handle on an index directory. Search methods are synchronous (CPU-bound);
    `LocalIndexBackend` wraps them for async callers."""

    def __init__(self, directory: Path, meta: dict, retriever, vocab: dict[str, int], hashes: np.ndarray):
        self.directory = directory
        self.meta = meta
        self._retriever = retriever
        self._vocab = vocab
        self._hashes = hashes
        self._tokenize = _Tokenizer()
        self._local = threading.local()

    # ---- building -------------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        text_corpus: Iterable[dict],
        image_corpus: Iterable[dict],
        out_dir: str | os.PathLike,
        *,
        thumbnail_side: int = 256,
        max_image_pixels: int = 40_000_000,
        progress: Callable[[str, int], None] | None = None,
        overwrite: bool = False,
    ) -> LocalIndex:
        """Build an index from text rows {id?, title?, text, url?} and image rows {id?, title?, url?, image}.

        The index is written to a temporary sibling directory and renamed into place at the end, so a failed
        build never leaves a half-written index behind. `progress(stage, rows_done)` is called every 1000 rows.
        """
        import bm25s

        out = Path(out_dir)
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (CLI: --overwrite)")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            db = sqlite3.connect(tmp / "store.sqlite")
            db.executescript(
                "CREATE TABLE passages(row INTEGER PRIMARY KEY, id TEXT, title TEXT, url TEXT, text TEXT);"
                "CREATE TABLE images(row INTEGER PRIMARY KEY, id TEXT, title TEXT, url TEXT, thumb BLOB);"
            )
            tokenize = _Tokenizer()
            vocab: dict[str, int] = {}
            doc_ids: list[list[int]] = []
            batch = []
            for i, row in enumerate(text_corpus):
                where = f"text corpus row {i}"
                if not isinstance(row, dict):
                    raise CorpusError(f"{where}: expected an object, got {type(row).__name__}")
                text = _text_field(row, "text", where, required=True)
                if not text.strip():
                    raise CorpusError(f"{where}: 'text' is empty")
                title = _text_field(row, "title", where)
                ident = _text_field(row, "id", where) or str(i)
                doc_ids.append([vocab.setdefault(t, len(vocab)) for t in tokenize(f"{title} {text}")])
                batch.append((i, ident, title, _text_field(row, "url", where), text))
                if len(batch) == 1000:
                    db.executemany("INSERT INTO passages VALUES (?,?,?,?,?)", batch)
                    batch.clear()
                    if progress:
                        progress("text", i + 1)
            db.executemany("INSERT INTO passages VALUES (?,?,?,?,?)", batch)
            n_text = len(doc_ids)
            if progress:
                progress("text", n_text)

            hashes = []
            for i, row in enumerate(image_corpus):
                where = f"image corpus row {i}"
                if not isinstance(row, dict) or "image" not in row:
                    raise CorpusError(f"{where}: expected an object with an 'image' field")
                image = _image_from_field(row["image"], where, max_image_pixels)
                hashes.append(perceptual_hashes(image))
                thumb = encode_image(thumbnail(image, thumbnail_side), "JPEG")
                ident = _text_field(row, "id", where) or str(i)
                values = (i, ident, _text_field(row, "title", where), _text_field(row, "url", where), thumb)
                db.execute("INSERT INTO images VALUES (?,?,?,?,?)", values)
                if progress and (i + 1) % 1000 == 0:
                    progress("images", i + 1)
            if progress:
                progress("images", len(hashes))
            db.execute("CREATE INDEX images_id ON images(id)")
            db.commit()
            db.close()
            np.save(tmp / "image_hashes.npy", np.array(hashes, dtype=np.uint64).reshape(-1, 2))

            if vocab:  # no vocabulary (all passages stop words) = nothing BM25 could ever match
                retriever = bm25s.BM25()
                retriever.index(bm25s.tokenization.Tokenized(ids=doc_ids, vocab=vocab), show_progress=False)
                retriever.save(tmp / "bm25", show_progress=False)
            meta = {
                "format_version": FORMAT_VERSION,
                "passages": n_text,
                "bm25": bool(vocab),
                "images": len(hashes),
                "token_pattern": TOKEN_PATTERN,
                "stopwords": "en",
                "thumbnail_side": thumbnail_side,
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls.load(out)

    # ---- loading --------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | os.PathLike) -> LocalIndex:
        import bm25s

        directory = Path(directory)
        meta_path = directory / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{directory} is not an index directory (no meta.json); build one with "
                "`python -m openrlhf_tapo.cli.build_index`"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory}: index format {meta.get('format_version')} != {FORMAT_VERSION}; rebuild it")
        retriever, vocab = None, {}
        if meta["bm25"]:
            retriever = bm25s.BM25.load(directory / "bm25", mmap=True, show_progress=False)
            vocab = retriever.vocab_dict
        hashes = np.load(directory / "image_hashes.npy", mmap_mode="r")
        return cls(directory, meta, retriever, vocab, np.asarray(hashes))

    def _db(self) -> sqlite3.Connection:
        # One read-only connection per thread and process: sqlite3 connections must not cross threads or fork().
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            self._local.pid = os.getpid()
            uri = (self.directory / "store.sqlite").resolve().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self._local.conn = conn
        return conn

    @property
    def num_passages(self) -> int:
        return int(self.meta["passages"])

    @property
    def num_images(self) -> int:
        return int(self.meta["images"])

    # ---- searching ------------------------------------------------------------------------------------------
    def search_text(self, query: str, top_k: int) -> list[TextHit]:
        """The top_k passages by BM25 score (ties by corpus order); passages that match no term are left out."""
        if self._retriever is None or top_k <= 0:
            return []
        ids = [self._vocab[t] for t in self._tokenize(query) if t in self._vocab]
        if not ids:
            return []
        scores = self._retriever.get_scores_from_ids(ids)
        k = min(top_k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.lexsort((top, -scores[top]))]
        top = [int(r) for r in top if scores[r] > 0]
        if not top:
            return []
        rows = self._fetch("SELECT row, id, title, url, text FROM passages", top)
        return [TextHit(title=t, url=u, text=x, score=float(scores[r]), id=i) for r, i, t, u, x in rows]

    def search_image(self, image: Image.Image, top_k: int) -> list[ImageHit]:
        """The top_k indexed images nearest to `image` in pHash+dHash Hamming distance (ties by corpus order).
        `score` is the similarity 1 - distance/128 (1 = identical hashes)."""
        return [
            ImageHit(title=t, url=u, image=decode_image(thumb), score=score, id=i)
            for i, t, u, thumb, score in self.search_image_encoded(image, top_k)
        ]

    def search_image_encoded(self, image: Image.Image, top_k: int) -> list[tuple[str, str, str, bytes, float]]:
        """Like `search_image` but with the stored JPEG thumbnail bytes: (id, title, url, jpeg, score) rows.
        The HTTP service sends these bytes as they are, so remote and local results decode to equal pixels."""
        if self.num_images == 0 or top_k <= 0:
            return []
        dist = hamming_distances(self._hashes, perceptual_hashes(image))
        k = min(top_k, len(dist))
        top = np.argpartition(dist, k - 1)[:k]
        top = [int(r) for r in top[np.lexsort((top, dist[top]))]]
        rows = self._fetch("SELECT row, id, title, url, thumb FROM images", top)
        return [(i, t, u, thumb, 1.0 - float(dist[r]) / 128.0) for r, i, t, u, thumb in rows]

    def image_by_id(self, image_id: str) -> Image.Image | None:
        """The stored thumbnail of an indexed image (used by the HTTP service for id-based queries)."""
        row = self._db().execute("SELECT thumb FROM images WHERE id = ? LIMIT 1", (image_id,)).fetchone()
        return decode_image(row[0]) if row else None

    def _fetch(self, select: str, rows: list[int]) -> list[tuple]:
        marks = ",".join("?" * len(rows))
        by_row = {r[0]: r for r in self._db().execute(f"{select} WHERE row IN ({marks})", rows)}
        return [by_row[r] for r in rows]


class LocalIndexBackend(SearchBackend):
    """A `SearchBackend` over a `LocalIndex`; scoring and image work run in the shared CPU pool."""

    name = "local"

    def __init__(self, index: LocalIndex | str | os.PathLike, *, max_image_pixels: int = 40_000_000):
        self.index = index if isinstance(index, LocalIndex) else LocalIndex.load(index)
        self.max_image_pixels = max_image_pixels

    async def text_search(self, query: str, top_k: int) -> list[TextHit]:
        return await run_cpu(self.index.search_text, query, top_k)

    async def image_search(self, image, top_k: int, *, image_url: str | None = None) -> list[ImageHit]:
        return await run_cpu(self._image_search, image, top_k)

    def _image_search(self, image, top_k: int) -> list[ImageHit]:
        if isinstance(image, bytes | bytearray):
            image = decode_image(bytes(image), max_pixels=self.max_image_pixels)
        if not isinstance(image, Image.Image):
            raise SearchBadImage(f"image must be bytes or a PIL image, got {type(image).__name__}")
        return self.index.search_image(image, top_k)
