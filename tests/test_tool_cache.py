"""The persistent tool-result cache: exact keys, round trips (pixels included), concurrent writers (threads and
processes), never caching errors, replay mode, counters."""

import asyncio
import multiprocessing
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from _search_tools_helpers import FakeBackend, cache_writer, emblem

from openrlhf_tapo.search.base import SearchTimeout
from openrlhf_tapo.tools import ToolCache, ToolContext, ToolRunner, ToolsConfig
from openrlhf_tapo.tools.base import ToolResult
from openrlhf_tapo.tools.cache import cache_key
from openrlhf_tapo.tools.registry import build_tools


def make_runner(backend, cache, **overrides):
    config = ToolsConfig.from_dict(overrides)
    return ToolRunner(build_tools(config, backend), config, cache)


def test_key_is_canonical_json():
    a = cache_key("zoom", {"image": "x", "bbox": [1, 2, 3, 4]})
    b = cache_key("zoom", {"bbox": [1, 2, 3, 4], "image": "x"})
    assert a == b and a[1] == '{"key":{"bbox":[1,2,3,4],"image":"x"},"tool":"zoom"}'
    assert cache_key("zoom", {"image": "y"})[0] != cache_key("text_search", {"image": "y"})[0]


def test_round_trip_keeps_text_and_pixels(tmp_path):
    cache = ToolCache(tmp_path / "c.sqlite")
    result = ToolResult(text="héllo\nworld", images=[("cap 1", emblem(1)), ("cap 2", emblem(2, 33))])
    cache.put_sync("image_search", {"k": 1}, result)
    got = cache.get_sync("image_search", {"k": 1})
    assert got.text == result.text and [c for c, _ in got.images] == ["cap 1", "cap 2"]
    for (_, a), (_, b) in zip(got.images, result.images, strict=True):
        assert a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))
    assert cache.get_sync("image_search", {"k": 2}) is None
    assert cache.stats() == {"cache_hits": 1, "cache_misses": 1, "cache_writes": 1, "cache_corrupt": 0}
    cache.put_sync("image_search", {"k": 1}, ToolResult(text="other"))  # first writer wins
    assert cache.get_sync("image_search", {"k": 1}).text == "héllo\nworld" and len(cache) == 1
    cache.close()
    assert ToolCache(tmp_path / "c.sqlite").get_sync("image_search", {"k": 1}).text == "héllo\nworld"  # persistent
    mode = sqlite3.connect(tmp_path / "c.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_concurrent_writers_threads(tmp_path):
    cache = ToolCache(tmp_path / "t.sqlite")

    def work(worker):
        for i in range(40):
            cache.put_sync("text_search", {"q": i % 10, "w": worker % 2}, ToolResult(text=f"{i % 10}/{worker % 2}"))
            assert cache.get_sync("text_search", {"q": i % 10, "w": worker % 2}).text == f"{i % 10}/{worker % 2}"

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    assert len(cache) == 20 and cache.stats()["cache_writes"] == 20 and cache.stats()["cache_hits"] == 320


def test_concurrent_writers_processes(tmp_path):
    path = str(tmp_path / "p.sqlite")
    ToolCache(path).close()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        found = pool.starmap(cache_writer, [(path, w, 60) for w in range(4)])
    assert found == [30, 30, 30, 30]  # every shared key visible to every writer after its own puts
    cache = ToolCache(path)
    assert len(cache) == 30 + 4 * 30  # shared keys once, own keys per worker: no write lost, none duplicated


async def test_runner_uses_cache_and_never_stores_errors(tmp_path):
    cache = ToolCache(tmp_path / "r.sqlite")
    backend = FakeBackend()
    runner = make_runner(backend, cache)
    first = await runner.call("text_search", {"query": "paris  tower"}, ToolContext())
    second = await runner.call("text_search", {"query": " paris tower "}, ToolContext())  # same canonical params
    assert not first.cached and second.cached and second.text == first.text and backend.text_calls == 1
    assert runner.stats()["cache_hits"] == 1 and runner.stats()["cache_misses"] == 1

    failing = make_runner(FakeBackend(fail=SearchTimeout("slow")), cache)
    out = await failing.call("text_search", {"query": "never cached"}, ToolContext())
    assert out.error == "timeout" and len(cache) == 1
    zoom = await runner.call(
        "zoom", {"image": "img_0", "bbox": [0, 0, 9, 9]}, ToolContext(images={"img_0": emblem(0)})
    )
    assert zoom.error is None and len(cache) == 1  # zoom is not cached


async def test_image_search_key_is_the_image_not_its_ref(tmp_path):
    cache = ToolCache(tmp_path / "i.sqlite")
    backend = FakeBackend()
    runner = make_runner(backend, cache)
    a = await runner.call("image_search", {}, ToolContext(images={"img_0": emblem(1)}))
    b = await runner.call("image_search", {}, ToolContext(images={"img_0": emblem(2)}))  # other question image
    c = await runner.call(
        "image_search", {"image": "img_1"}, ToolContext(images={"img_0": emblem(2), "img_1": emblem(1)})
    )
    assert (a.cached, b.cached, c.cached) == (False, False, True) and backend.image_calls == 2
    assert [r for r, _ in c.images] == ["img_2", "img_3", "img_4"]  # cached images get this trajectory's refs
    for (_, x), (_, y) in zip(a.images, c.images, strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))


async def test_top_k_is_part_of_the_key(tmp_path):
    cache = ToolCache(tmp_path / "k.sqlite")
    backend = FakeBackend()
    await make_runner(backend, cache, text_search={"top_k": 2}).call("text_search", {"query": "q"}, ToolContext())
    out = await make_runner(backend, cache, text_search={"top_k": 3}).call(
        "text_search", {"query": "q"}, ToolContext()
    )
    assert not out.cached and backend.text_calls == 2 and "3. " in out.text


async def test_replay_serves_only_from_cache(tmp_path):
    path = tmp_path / "replay.sqlite"
    with pytest.raises(FileNotFoundError, match="replay mode needs an existing cache"):
        ToolCache(path, replay=True)
    writer = make_runner(FakeBackend(), ToolCache(path))
    recorded = await writer.call("text_search", {"query": "known"}, ToolContext())
    backend = FakeBackend()
    replay = make_runner(backend, ToolCache(path, replay=True))
    hit, miss = await asyncio.gather(
        replay.call("text_search", {"query": "known"}, ToolContext()),
        replay.call("text_search", {"query": "unknown"}, ToolContext()),
    )
    assert hit.cached and hit.text == recorded.text and hit.error is None
    assert miss.error == "cache_miss" and "replay mode" in miss.text
    assert backend.text_calls == 0 and replay.cache.stats() == {
        "cache_hits": 1,
        "cache_misses": 1,
        "cache_writes": 0,
        "cache_corrupt": 0,
    }


async def test_broken_cache_never_fails_a_call(tmp_path, monkeypatch):
    cache = ToolCache(tmp_path / "broken.sqlite")

    def locked(*args):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(cache, "get_sync", locked)
    monkeypatch.setattr(cache, "put_sync", locked)
    backend = FakeBackend()
    runner = make_runner(backend, cache)
    out = await runner.call("text_search", {"query": "q"}, ToolContext())
    assert out.error is None and not out.cached and backend.text_calls == 1
    assert runner.stats()["cache_errors"] == 2


def test_cache_object_survives_fork(tmp_path):
    from _search_tools_helpers import inherited_cache_put

    cache = ToolCache(tmp_path / "fork.sqlite")
    cache.put_sync("text_search", {"query": "parent"}, ToolResult(text="from parent"))  # parent connection open
    ctx = multiprocessing.get_context("fork")  # fork() copies the object, its thread-local connection included
    children = [ctx.Process(target=inherited_cache_put, args=(cache, q)) for q in ("a", "b")]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    assert cache.get_sync("text_search", {"query": "b"}).text == "from child b"
    assert cache.get_sync("text_search", {"query": "a"}).text == "from child a" and len(cache) == 3


@pytest.mark.parametrize("fs", ["nfs4", "lustre", "fuse.sshfs"])
def test_a_writable_cache_on_a_network_file_system_is_refused(tmp_path, monkeypatch, fs):
    from openrlhf_tapo.tools import cache

    shared = tmp_path / "shared"
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nserver:/export {shared} {fs} rw,relatime 0 0\n")
    monkeypatch.setattr(cache, "MOUNTS", str(mounts))
    assert cache.filesystem_type(shared / "c.sqlite") == fs
    assert cache.filesystem_type(tmp_path / "sharedness" / "c.sqlite") == "ext4"  # a prefix is not a mount
    with pytest.raises(ValueError, match=rf"tools.cache.path .* is on a {fs} file system.*one file per node"):
        ToolCache(shared / "c.sqlite")
    ToolCache(tmp_path / "local.sqlite")  # a local disk: fine
    # A cache written on a local disk and copied to the shared mount can be replayed from there (no WAL).
    (shared / "c.sqlite").parent.mkdir(parents=True, exist_ok=True)
    (shared / "c.sqlite").write_bytes((tmp_path / "local.sqlite").read_bytes())
    assert ToolCache(shared / "c.sqlite", replay=True).get_sync("t", {"q": 1}) is None
