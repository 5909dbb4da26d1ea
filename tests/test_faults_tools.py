"""Fault matrix, tool layer: malformed calls, backend faults, cache corruption and concurrency through the real
`ToolRunner` and a real SQLite cache. Every row asserts the outcome the contract promises: a counted error
observation (or a correct result), never a raise, a hang, an uncounted failure, a cached error or a leaked secret.
"""

import asyncio
import json
import logging
import sqlite3
import zlib

import pytest
from _search_tools_helpers import FakeBackend, emblem
from PIL import Image

from openrlhf_tapo.agent import protocol
from openrlhf_tapo.search.base import (
    ImageHit,
    SearchBadResponse,
    SearchError,
    SearchRateLimited,
    SearchTimeout,
    TextHit,
)
from openrlhf_tapo.tools import ToolCache, ToolContext, ToolRunner, ToolsConfig
from openrlhf_tapo.tools.registry import build_tools

SECRET = "sk-live-0123456789abcdef"
HUGE_INT = "9" * 5000  # over Python's 4,300-digit limit for int()


def make_runner(backend, cache=None, **overrides) -> ToolRunner:
    config = ToolsConfig.from_dict(overrides)
    return ToolRunner(build_tools(config, backend), config, cache)


def ctx() -> ToolContext:
    return ToolContext(images={"img_0": emblem(0)})


async def bounded(coro, seconds: float = 10.0):
    """Every fault must end: a hang fails the row instead of the suite."""
    return await asyncio.wait_for(coro, seconds)


def assert_counted_error(runner: ToolRunner, out, kind: str) -> None:
    assert out.error == kind, out.text
    assert out.text.startswith("Error: ") and out.images == [] and not out.cached
    assert runner.stats()[f"errors/{kind}"] == 1


# ---- malformed calls ----------------------------------------------------------------------------------------
MALFORMED = [
    ("web_browse", {"url": "x"}, "unknown_tool"),
    (None, {}, "unknown_tool"),
    (42, {}, "unknown_tool"),
    ("", {}, "unknown_tool"),
    ("text_search", "not json", "bad_json"),
    ("text_search", '{"query": "x"', "bad_json"),
    ("text_search", '{"query": ' + HUGE_INT + "}", "bad_json"),
    ("text_search", "[" * 100_000 + "]" * 100_000, "bad_json"),
    ("text_search", "[1, 2]", "bad_arguments"),
    ("text_search", ["query"], "bad_arguments"),
    ("text_search", 3.5, "bad_arguments"),
    ("text_search", {}, "bad_arguments"),
    ("text_search", {"query": ""}, "bad_arguments"),
    ("text_search", {"query": " \t\n "}, "bad_arguments"),
    ("text_search", {"query": 12}, "bad_arguments"),
    ("text_search", {"query": None}, "bad_arguments"),
    ("text_search", {"query": ["Eiffel"]}, "bad_arguments"),
    ("text_search", {"query": "x" * 10_000}, "bad_arguments"),
    ("text_search", {"query": "x", "top_k": 1000}, "bad_arguments"),
    ("zoom", {"image": "img_0"}, "bad_arguments"),
    ("zoom", {"image": "img_0", "bbox": [0, 0, 1200, 50]}, "bad_arguments"),
    ("zoom", {"image": "img_0", "bbox": [10, 10, 5, 5]}, "bad_arguments"),
    ("zoom", {"image": "img_0", "bbox": [0, 0, "a", 1]}, "bad_arguments"),
    ("zoom", {"image": "img_0", "bbox": [0, 0, float("nan"), 10]}, "bad_arguments"),
    ("zoom", {"image": "img_0", "bbox": [0, 0, 1e308, 10]}, "bad_arguments"),
    ("zoom", {"image": "img_0", "bbox": [True, 0, 10, 10]}, "bad_arguments"),
    ("zoom", {"image": "img_0", "bbox": [0, 0, 10**5000, 10]}, "bad_arguments"),
    ("zoom", {"image": "img_0", "bbox": [0, 0, 10]}, "bad_arguments"),
    ("zoom", {"image": "img_0", "bbox": "0,0,10,10"}, "bad_arguments"),
    ("zoom", {"image": "../../etc/passwd", "bbox": [0, 0, 10, 10]}, "bad_arguments"),
    ("zoom", {"image": "img_9", "bbox": [0, 0, 10, 10]}, "image_ref"),
    ("image_search", {"image": 0}, "bad_arguments"),
    ("image_search", {"image": "img_0; rm -rf /"}, "bad_arguments"),
    ("image_search", {"image": "img_0", "bbox": {"x": 1}}, "bad_arguments"),
]


@pytest.mark.parametrize("name, arguments, kind", MALFORMED)
async def test_malformed_call_is_a_counted_error_and_never_cached(tmp_path, name, arguments, kind):
    backend = FakeBackend()
    runner = make_runner(backend, ToolCache(tmp_path / "c.sqlite"))
    out = await bounded(runner.call(name, arguments, ctx()))
    assert_counted_error(runner, out, kind)
    assert len(runner.cache) == 0 and backend.text_calls == backend.image_calls == 0


# ---- backend faults -----------------------------------------------------------------------------------------
class ScriptedBackend(FakeBackend):
    """A backend that returns (or raises) what a row scripts, for text and image search alike."""

    def __init__(self, text=None, images=None, fail=None, latency=0.0):
        super().__init__(latency=latency, fail=fail)
        self.text_result, self.image_result = text, images

    async def text_search(self, query, top_k):
        if self.text_result is None or self.fail:
            return await super().text_search(query, top_k)
        self.text_calls += 1
        return self.text_result

    async def image_search(self, image, top_k, *, image_url=None):
        if self.image_result is None or self.fail:
            return await super().image_search(image, top_k, image_url=image_url)
        self.image_calls += 1
        return self.image_result


BACKEND_FAULTS = [
    (dict(fail=SearchError("upstream said 502", "backend")), "text_search", "backend"),
    (dict(fail=SearchTimeout("no reply in 20 s")), "text_search", "timeout"),
    (dict(fail=SearchRateLimited("HTTP 429")), "image_search", "rate_limited"),
    (dict(fail=SearchBadResponse("not JSON")), "image_search", "bad_response"),
    (dict(fail=SearchError("refused the credentials (HTTP 401)", "auth")), "text_search", "auth"),
    (dict(fail=RuntimeError(f"GET https://api.example/search?key={SECRET} failed")), "text_search", "internal"),
    (dict(fail=ValueError(f"Authorization: Bearer {SECRET}")), "image_search", "internal"),
    (dict(fail=KeyError(SECRET)), "text_search", "internal"),
    (dict(fail=ZeroDivisionError()), "image_search", "internal"),
    (dict(latency=5.0), "text_search", "timeout"),
    (dict(images=[ImageHit("empty", "u", Image.new("RGB", (0, 0)))]), "image_search", "bad_image"),
    (dict(images=[ImageHit("flat", "u", Image.new("RGB", (7, 0)))]), "image_search", "bad_image"),
    (dict(images=[ImageHit("none", "u", None)]), "image_search", "bad_response"),
    (dict(images=[ImageHit("bytes", "u", b"\x89PNG")]), "image_search", "bad_response"),
    (dict(text=[TextHit("t", "u", None)]), "text_search", "internal"),
    (dict(text=[None]), "text_search", "internal"),
]


@pytest.mark.parametrize("behaviour, tool, kind", BACKEND_FAULTS)
async def test_backend_fault_is_a_counted_error_never_cached_never_leaked(tmp_path, caplog, behaviour, tool, kind):
    caplog.set_level(logging.DEBUG)
    cache = ToolCache(tmp_path / "c.sqlite")
    runner = make_runner(ScriptedBackend(**behaviour), cache, timeout_s=0.2)
    arguments = {"query": "Eiffel"} if tool == "text_search" else {}
    out = await bounded(runner.call(tool, arguments, ctx()))
    assert_counted_error(runner, out, kind)
    assert len(cache) == 0  # no error is ever cached
    assert SECRET not in out.text and SECRET not in caplog.text
    # The same parameters work once the backend does: nothing bad was left behind.
    healthy = make_runner(FakeBackend(), cache)
    assert (await bounded(healthy.call(tool, arguments, ctx()))).error is None and len(cache) == 1


async def test_surrogates_in_query_and_results_are_replaced_cached_and_tokenizable(tmp_path):
    hits = [TextHit("Caf\udce9 \ud800", "https://x/\udfff", "text \ud83d end")]
    cache = ToolCache(tmp_path / "c.sqlite")
    backend = ScriptedBackend(text=hits)
    runner = make_runner(backend, cache)
    raw = json.loads('{"query": "Eiffel \\ud800 tower"}')  # what the parser makes of a JSON escape
    out = await bounded(runner.call("text_search", raw, ctx()))
    assert out.error is None and out.params == {"query": "Eiffel \ufffd tower"}
    assert "Caf\ufffd \ufffd" in out.text and "text \ufffd end" in out.text
    out.text.encode("utf-8")  # what a tokenizer, SQLite and an HTTP body need
    assert len(cache) == 1 and runner.stats().get("cache_errors", 0) == 0
    again = await bounded(runner.call("text_search", raw, ctx()))
    assert again.cached and again.text == out.text and backend.text_calls == 1


async def test_image_caption_with_surrogate_is_replaced():
    backend = ScriptedBackend(images=[ImageHit("title \udcff", "u", emblem(3, 30))])
    out = await bounded(make_runner(backend).call("image_search", {}, ctx()))
    assert out.error is None and "title \ufffd" in out.text


@pytest.mark.parametrize("tool", ["text_search", "image_search"])
async def test_backend_returning_more_than_top_k_is_cut_before_caching(tmp_path, tool):
    text = [TextHit(f"T{i}", f"https://x/{i}", "p " * 200) for i in range(2000)]
    images = [ImageHit(f"I{i}", f"https://i/{i}", emblem(i % 7, 24)) for i in range(200)]
    cache = ToolCache(tmp_path / "c.sqlite")
    runner = make_runner(ScriptedBackend(text=text, images=images), cache, max_observation_chars=100_000)
    out = await bounded(runner.call(tool, {"query": "q"} if tool == "text_search" else {}, ctx()))
    top_k = runner.config.text_search.top_k if tool == "text_search" else runner.config.image_search.top_k
    assert out.error is None
    row = sqlite3.connect(tmp_path / "c.sqlite").execute("SELECT payload, blobs FROM results").fetchone()
    payload = json.loads(row[0])
    if tool == "text_search":
        assert out.text.count("URL: ") == top_k and payload["text"].count("URL: ") == top_k
    else:
        assert len(out.images) == top_k and len(payload["images"]) == top_k
    assert len(row[0]) + len(row[1]) < 20_000


@pytest.mark.parametrize("where", ["title", "caption", "body"])
async def test_label_in_backend_text_cannot_steal_a_placeholder(where):
    spoof = "see [img_2] here"
    if where == "body":
        hits = [TextHit(spoof, "u", "t")]
        runner, tool = make_runner(ScriptedBackend(text=hits)), "text_search"
    else:
        title, url = (spoof, "u") if where == "title" else ("a", f"https://x/{spoof}")
        images = [ImageHit(title, url, emblem(1, 40)), ImageHit("b", "u", emblem(2, 40))]
        runner, tool = make_runner(ScriptedBackend(images=images)), "image_search"
    out = await bounded(runner.call(tool, {"query": "q"} if tool == "text_search" else {}, ctx()))
    refs = [ref for ref, _ in out.images]
    text, order = protocol.format_tool_response(out.text, refs)
    assert "(img_2)" in text and order == refs
    for ref in refs:  # each placeholder sits right after the label the runner wrote for its image
        assert f"\n[{ref}] {protocol.IMAGE_PLACEHOLDER}" in text
    assert text.count(protocol.IMAGE_PLACEHOLDER) == len(refs)


# ---- cache corruption ---------------------------------------------------------------------------------------
def _corrupt(path, payload=None, blobs=None):
    conn = sqlite3.connect(path)
    with conn:
        if payload is not None:
            conn.execute("UPDATE results SET payload = ?", (payload,))
        if blobs is not None:
            conn.execute("UPDATE results SET blobs = ?", (blobs,))
    conn.close()


def _image_row(mode="RGB", size=(4, 4), pixels=bytes(48), caption="c"):
    """(payload, blobs) of a one-image row, with the parts a row can get wrong as parameters."""
    blob = zlib.compress(pixels)
    image = {"caption": caption, "mode": mode, "size": list(size), "bytes": len(blob)}
    return dict(payload=json.dumps({"text": "t", "images": [image]}), blobs=blob)


CORRUPTIONS = [
    ("payload not JSON", dict(payload="{not json")),
    ("payload a list", dict(payload="[1, 2]")),
    ("payload without images", dict(payload='{"text": "t"}')),
    ("payload text null", dict(payload='{"text": null, "images": []}')),
    ("payload huge integer", dict(payload='{"text": "t", "images": [], "n": ' + HUGE_INT + "}")),
    ("payload nested deeply", dict(payload="[" * 100_000 + "]" * 100_000)),
    ("blob not zlib", dict(_image_row(), blobs=b"hello, not zlib")),
    ("blob truncated", dict(_image_row(), blobs=zlib.compress(bytes(48))[:6])),
    ("caption not a string", _image_row(caption=5)),
    ("pixels too few", _image_row(pixels=bytes(3))),
    ("unknown image mode", _image_row(mode="XYZ")),
    ("empty image", _image_row(size=(0, 0), pixels=b"")),
    ("negative size", _image_row(size=(-4, 4))),
]


@pytest.mark.parametrize("what, damage", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
async def test_corrupt_cache_row_is_bypassed_counted_and_rewritten(tmp_path, what, damage):
    path = tmp_path / "c.sqlite"
    backend = FakeBackend()
    runner = make_runner(backend, ToolCache(path))
    first = await bounded(runner.call("image_search", {}, ctx()))
    assert first.error is None and len(runner.cache) == 1
    _corrupt(path, **damage)
    again = await bounded(runner.call("image_search", {}, ctx()))
    assert again.error is None and not again.cached and again.text == first.text
    assert backend.image_calls == 2 and runner.cache.stats()["cache_corrupt"] == 1
    third = await bounded(runner.call("image_search", {}, ctx()))  # the bad row was replaced by the fresh result
    assert third.cached and backend.image_calls == 2


async def test_corrupt_row_in_replay_mode_is_a_counted_cache_miss_and_kept(tmp_path):
    path = tmp_path / "c.sqlite"
    await make_runner(FakeBackend(), ToolCache(path)).call("text_search", {"query": "q"}, ctx())
    _corrupt(path, payload="{broken")
    runner = make_runner(FakeBackend(), ToolCache(path, replay=True))
    out = await bounded(runner.call("text_search", {"query": "q"}, ctx()))
    assert_counted_error(runner, out, "cache_miss")
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM results").fetchone()[0] == 1


async def test_dropped_table_is_a_miss_and_the_call_succeeds(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = ToolCache(path)
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE results")
    conn.commit()
    runner = make_runner(FakeBackend(), cache)
    outs = [await bounded(runner.call("text_search", {"query": "q"}, ctx())) for _ in range(2)]
    assert [o.error for o in outs] == [None, None] and outs[0].text == outs[1].text


def test_a_file_that_is_not_a_database_is_refused_at_start_naming_it(tmp_path):
    path = tmp_path / "not.sqlite"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(ValueError, match=r"not\.sqlite is not a usable SQLite tool cache"):
        ToolCache(path)


async def test_locked_database_is_bounded_by_the_call_timeout_and_does_not_starve_zoom(tmp_path):
    path = tmp_path / "c.sqlite"
    runner = make_runner(FakeBackend(), ToolCache(path, busy_timeout_s=30.0), timeout_s=0.5)
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another process holds the database
    try:
        searches = [runner.call("text_search", {"query": f"q{i}"}, ctx()) for i in range(12)]
        zoom = runner.call("zoom", {"image": "img_0", "bbox": [0, 0, 500, 500]}, ctx())
        outs = await bounded(asyncio.gather(*searches, zoom), 8.0)
    finally:
        locker.rollback()
        locker.close()
    assert all(o.error is None for o in outs)  # served by the backend; the zoom ran
    assert runner.stats()["cache_errors"] >= 12


# ---- concurrency --------------------------------------------------------------------------------------------
async def test_concurrent_identical_calls_write_one_row_and_fail_none(tmp_path):
    runner = make_runner(FakeBackend(latency=0.01), ToolCache(tmp_path / "c.sqlite"))
    outs = await bounded(asyncio.gather(*(runner.call("text_search", {"query": "same"}, ctx()) for _ in range(32))))
    assert all(o.error is None for o in outs) and len({o.text for o in outs}) == 1
    assert len(runner.cache) == 1 and runner.stats()["calls/text_search"] == 32


async def test_concurrent_mix_of_faults_is_counted_exactly(tmp_path):
    runner = make_runner(FakeBackend(), ToolCache(tmp_path / "c.sqlite"))
    calls = []
    for i in range(40):
        calls.append(("text_search", {"query": f"q{i}"}) if i % 4 else ("text_search", {"query": ""}))
    calls += [("zoom", {"image": "img_7", "bbox": [0, 0, 9, 9]})] * 5 + [("nope", {})] * 3
    outs = await bounded(asyncio.gather(*(runner.call(n, a, ctx()) for n, a in calls)))
    stats = runner.stats()
    assert sum(o.error is not None for o in outs) == 10 + 5 + 3
    assert (stats["errors/bad_arguments"], stats["errors/image_ref"], stats["errors/unknown_tool"]) == (10, 5, 3)
    assert len(runner.cache) == 30
