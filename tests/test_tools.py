"""Tools through the ToolRunner: schemas, canonical parameters, rendering, image refs, limits, the worker pool,
configuration and building from it."""

import asyncio
import threading

import numpy as np
import pytest
from _search_tools_helpers import TEXTS, FakeBackend, emblem, gradient, image_rows
from PIL import Image

from openrlhf_tapo.search.local_index import LocalIndex, LocalIndexBackend
from openrlhf_tapo.tools import ToolContext, ToolRunner, ToolsConfig, build_tool_runner, canonical_params
from openrlhf_tapo.tools.base import Tool, ToolResult, bbox_to_pixels
from openrlhf_tapo.tools.image_fit import fit_image
from openrlhf_tapo.tools.registry import build_tools
from openrlhf_tapo.tools.runner import truncate


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tools") / "index"
    LocalIndex.build(TEXTS, image_rows(), out)
    return out


def runner_for(backend, **overrides) -> ToolRunner:
    config = ToolsConfig.from_dict(overrides)
    return ToolRunner(build_tools(config, backend), config)


def test_schemas_are_openai_functions():
    runner = runner_for(FakeBackend())
    schemas = {s["function"]["name"]: s for s in runner.schemas()}
    assert set(schemas) == {"image_search", "text_search", "zoom"}
    for s in schemas.values():
        assert s["type"] == "function" and s["function"]["description"]
        params = s["function"]["parameters"]
        assert params["type"] == "object" and params["additionalProperties"] is False
        assert set(params["required"]) <= set(params["properties"])
    assert schemas["zoom"]["function"]["parameters"]["required"] == ["image", "bbox"]
    assert schemas["text_search"]["function"]["parameters"]["required"] == ["query"]


@pytest.mark.parametrize(
    "name, arguments, canonical",
    [
        ("text_search", {"query": "  Eiffel \n\t Tower  "}, {"query": "Eiffel Tower"}),
        ("text_search", '{"query": "a  b"}', {"query": "a b"}),
        ("image_search", {}, {"image": "img_0"}),
        ("image_search", None, {"image": "img_0"}),
        ("image_search", {"image": " img_2 "}, {"image": "img_2"}),
        ("image_search", {"image": "img_1", "bbox": [0, 0, 1000, 1000]}, {"image": "img_1"}),
        ("image_search", {"bbox": [10.0, 20, 300, 400.0]}, {"image": "img_0", "bbox": [10, 20, 300, 400]}),
        ("zoom", {"bbox": [0, 0, 500, 500], "image": "img_3"}, {"image": "img_3", "bbox": [0, 0, 500, 500]}),
        ("zoom", {"image": "img_0"}, None),
        ("zoom", {"image": "img_0", "bbox": [0, 0, 500, 500.5]}, None),
        ("zoom", {"image": "img_00", "bbox": [0, 0, 5, 5]}, None),
        ("text_search", {"query": ""}, None),
        ("nope", {}, None),
    ],
)
def test_canonical_params(name, arguments, canonical):
    assert canonical_params(name, arguments) == canonical


def test_image_refs_continue_after_question_images():
    ctx = ToolContext(images={"img_0": emblem(0), "img_1": emblem(1)})
    assert ctx.add_image(emblem(2)) == "img_2" and ctx.add_image(emblem(3)) == "img_3"
    assert ToolContext().add_image(emblem(0)) == "img_0"
    assert ToolContext(images={"img_4": emblem(0)}).add_image(emblem(1)) == "img_5"


async def test_zoom_returns_exact_crop_as_new_image():
    runner = runner_for(None, enabled=["zoom"], max_image_pixels=10**6, min_image_side=1)
    image = gradient(200, 100)
    ctx = ToolContext(images={"img_0": image})
    out = await runner.call("zoom", {"image": "img_0", "bbox": [250, 100, 500, 600]}, ctx)
    assert out.error is None and out.params == {"image": "img_0", "bbox": [250, 100, 500, 600]}
    ((ref, crop),) = out.images
    assert ref == "img_1" and ctx.images["img_1"] is crop
    assert out.text == "[img_1] zoom of img_0 at [250, 100, 500, 600]"
    # 0-1000 relative -> pixels: x 50..100 of 200, y 10..60 of 100.
    assert crop.size == (50, 50)
    assert np.array_equal(np.asarray(crop), np.asarray(image)[10:60, 50:100])
    # Zooming into the zoom: refs chain.
    out2 = await runner.call("zoom", {"image": "img_1", "bbox": [0, 0, 500, 500]}, ctx)
    assert out2.images[0][0] == "img_2" and out2.images[0][1].size == (25, 25)


def test_bbox_to_pixels_covers_at_least_one_pixel():
    assert bbox_to_pixels([0, 0, 1000, 1000], (7, 3)) == (0, 0, 7, 3)
    assert bbox_to_pixels([500, 500, 501, 501], (10, 10)) == (5, 5, 6, 6)
    assert bbox_to_pixels([333, 0, 334, 1000], (3, 3)) == (0, 0, 2, 3)


async def test_text_search_through_local_index(index_dir):
    runner = build_tool_runner({"backend": {"index_dir": str(index_dir)}, "text_search": {"top_k": 2}})
    out = await runner.call("text_search", {"query": "tower in Paris"}, ToolContext())
    assert out.error is None and out.images == [] and out.params == {"query": "tower in Paris"}
    assert out.text.startswith("1. Eiffel Tower\nURL: u/1\nThe Eiffel Tower is a wrought-iron tower in Paris.")
    assert "2. " in out.text and "3. " not in out.text
    empty = await runner.call("text_search", {"query": "qwertyuiop"}, ToolContext())
    assert empty.error is None and empty.text == 'No results for "qwertyuiop".'
    await runner.close()


async def test_image_search_region_and_new_refs(index_dir):
    runner = build_tool_runner({"backend": {"index_dir": str(index_dir)}, "image_search": {"top_k": 2}})
    # The question image: emblem 6 on the right half of a wider canvas; searching the region finds it.
    canvas = Image.new("RGB", (192, 96), (0, 0, 0))
    canvas.paste(emblem(6), (96, 0))
    ctx = ToolContext(images={"img_0": canvas})
    out = await runner.call("image_search", {"bbox": [500, 0, 1000, 1000]}, ctx)
    assert out.error is None and out.params == {"image": "img_0", "bbox": [500, 0, 1000, 1000]}
    assert [ref for ref, _ in out.images] == ["img_1", "img_2"]
    assert out.text.splitlines()[0] == "Image search results for img_0 region [500, 0, 1000, 1000]:"
    assert out.text.splitlines()[1] == "[img_1] Emblem 6 (URL: https://img/6)"
    assert set(ctx.images) == {"img_0", "img_1", "img_2"}
    await runner.close()


async def test_observation_truncated_to_limit():
    runner = runner_for(FakeBackend(), max_observation_chars=120)
    out = await runner.call("text_search", {"query": "x" * 100}, ToolContext())
    assert len(out.text) <= 120 and out.text.endswith("characters]") and "[truncated" in out.text
    assert truncate("short", 10) == "short"


async def test_image_limits_per_call_and_trajectory():
    runner = runner_for(
        FakeBackend(n_images=4), max_images_per_call=3, max_images_per_trajectory=5, image_search={"top_k": 4}
    )
    ctx = ToolContext(images={"img_0": emblem(0)})
    out = await runner.call("image_search", {}, ctx)
    assert len(out.images) == 3 and "1 more image(s) not shown" in out.text and out.error is None
    out = await runner.call("image_search", {}, ctx)  # 4 images held, room for 1
    assert [r for r, _ in out.images] == ["img_4"] and "3 more image(s) not shown" in out.text
    out = await runner.call("zoom", {"image": "img_0", "bbox": [0, 0, 10, 10]}, ctx)
    assert out.error == "image_limit" and out.images == [] and len(ctx.images) == 5


async def test_call_limit_per_tool_per_trajectory():
    runner = runner_for(FakeBackend(), max_calls_per_tool=2)
    ctx = ToolContext()
    errors = [(await runner.call("text_search", {"query": f"q{i}"}, ctx)).error for i in range(3)]
    assert errors == [None, None, "call_limit"]
    assert (await runner.call("text_search", {"query": "q"}, ToolContext())).error is None  # a new trajectory
    assert runner.stats()["errors/call_limit"] == 1 and runner.stats()["calls/text_search"] == 4


def test_fit_image_bounds():
    big = fit_image(Image.new("RGB", (2000, 1000)), 512 * 512, 28)
    assert big.size[0] * big.size[1] <= 512 * 512 and abs(big.size[0] / big.size[1] - 2) < 0.01
    tiny = fit_image(Image.new("RGB", (10, 5)), 512 * 512, 28)
    assert min(tiny.size) == 28 and tiny.size == (56, 28)
    thin = fit_image(Image.new("RGB", (1000, 2), "red"), 512 * 512, 28)
    assert max(thin.size) <= 50 * min(thin.size) and min(thin.size) >= 28
    same = Image.new("RGB", (100, 100))
    assert fit_image(same, 512 * 512, 28) is same


async def test_cpu_work_runs_in_worker_pool(monkeypatch):
    import openrlhf_tapo.tools.zoom as zoom_module

    threads = []
    real = zoom_module._crop

    def spy(image, bbox):
        threads.append(threading.current_thread().name)
        return real(image, bbox)

    monkeypatch.setattr(zoom_module, "_crop", spy)
    runner = runner_for(None, enabled=["zoom"])
    await runner.call("zoom", {"image": "img_0", "bbox": [0, 0, 10, 10]}, ToolContext(images={"img_0": emblem(1)}))
    assert threads and threads[0].startswith("tapo-cpu") and threads[0] != threading.main_thread().name


async def test_concurrent_trajectories_overlap():
    backend = FakeBackend(latency=0.2)
    runner = runner_for(backend)
    outs = await asyncio.gather(*(runner.call("text_search", {"query": f"q{i}"}, ToolContext()) for i in range(20)))
    assert all(o.error is None for o in outs) and backend.text_calls == 20
    # Calls of different trajectories are in flight together instead of running one after another.
    assert backend.max_in_flight > 1


class EchoTool(Tool):
    name = "echo"
    description = "Echo a word."

    def __init__(self, *, backend=None, config=None):
        self.prefix = config.options.get("echo", {}).get("prefix", "")

    def parameters_schema(self):
        return {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}

    def canonicalize(self, arguments):
        return {"word": str(arguments["word"]).lower()}

    async def execute(self, params, ctx):
        return ToolResult(text=self.prefix + params["word"])


async def test_extra_tool_is_a_class_and_a_config_entry():
    runner = build_tool_runner({"enabled": ["zoom", "test_tools:EchoTool"], "options": {"echo": {"prefix": ">"}}})
    assert [s["function"]["name"] for s in runner.schemas()] == ["zoom", "echo"]
    out = await runner.call("echo", {"word": "HeLLo"}, ToolContext())
    assert out.text == ">hello" and out.params == {"word": "hello"}


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="unknown key.*top_kk"):
        ToolsConfig.from_dict({"text_search": {"top_kk": 3}})
    with pytest.raises(ValueError, match=r"tools.text_search.top_k must be in 1..50"):
        ToolsConfig.from_dict({"text_search": {"top_k": 0}})
    with pytest.raises(ValueError, match="tools.cache.path is required"):
        ToolsConfig.from_dict({"cache": {"mode": "readwrite"}})
    with pytest.raises(ValueError, match="index_dir is required"):
        build_tool_runner({})
    with pytest.raises(ValueError, match="unknown tool 'foo'"):
        build_tool_runner({"enabled": ["foo"], "backend": {"kind": "http"}})
    cfg = ToolsConfig.from_dict({"backend": {"kind": "http", "retry": {"retry_on_status": [503]}}})
    assert cfg.backend.retry.retry_on_status == (503,) and ToolsConfig.from_dict(cfg.to_dict()) == cfg


async def test_local_backend_direct(index_dir):
    backend = LocalIndexBackend(index_dir)
    assert [h.id for h in await backend.text_search("Rome", 1)] == ["colosseum"]
