"""Preflight on images: vLLM's per-request limit against the agent's, every row's image count and token size against
--data.max_len (from header sizes), and the step's multimodal payload against Ray's object store."""

import json
from types import SimpleNamespace

import pytest
import yaml
from _agent_helpers import tiny_vlm_dir
from _launch_inputs import launch_inputs
from PIL import Image
from transformers import AutoTokenizer

from openrlhf_tapo.adapter.checks import mm_budget, preflight
from openrlhf_tapo.cli import train_ppo_ray as cli
from openrlhf_tapo.tools.config import ToolsConfig

LAYOUT = ["--data.input_key", "prompt", "--data.label_key", "label", "--data.image_key", "images"]
QWEN25 = mm_budget.VisionSpec()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return launch_inputs(tmp_path_factory.mktemp("preflight_images"))


def vision_model(root, max_pixels=28 * 28 * 16384):
    """A Qwen2.5-VL folder as preflight reads it: config.json with vision_config and the processor's sizes."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl", "vision_config": {"patch_size": 14}}))
    processor = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2, "min_pixels": 3136}
    (root / "preprocessor_config.json").write_text(json.dumps({**processor, "max_pixels": max_pixels}))
    return root


def argv(inputs, model, *more):
    return ["--actor.model_name_or_path", str(model), "--data.prompt_dataset", str(inputs.data), *LAYOUT,
            "--algo.advantage.estimator", "group_norm", "--rollout.n_samples_per_prompt", "4",
            "--algo.kl.init_coef", "0", "--ckpt.output_dir", str(inputs.save),
            "--tapo.enable", "--agent.config", str(inputs.agent_config), *more, "--dry-run"]  # fmt: skip


def run(argv, capsys) -> tuple[int, str]:
    try:
        cli.main(argv)
    except SystemExit as err:
        return err.code, capsys.readouterr().err
    return 0, capsys.readouterr().err


def test_launcher_refuses_image_limits_vllm_would_reject(inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "launch", lambda args: pytest.fail("launch() reached"))
    model = vision_model(tmp_path / "vlm")
    # The agent's default allows 16 images per trajectory; vLLM would accept 8 per request.
    code, err = run(argv(inputs, model, "--data.max_images_per_prompt", "8"), capsys)
    assert code == 2
    assert "tools.max_images_per_trajectory 16" in err and "--data.max_images_per_prompt 8" in err
    assert "Raise --data.max_images_per_prompt to 16" in err and "lower tools.max_images_per_trajectory to 8" in err
    # 0 (text only) for a vision model.
    code, err = run(argv(inputs, model, "--data.max_images_per_prompt", "0"), capsys)
    assert code == 2 and "is a vision model but --data.max_images_per_prompt is 0" in err
    assert "Set --data.max_images_per_prompt to 16" in err
    # Packing through dynamic batching or ring attention, with a vision model.
    for flags, named in (
        (["--train.dynamic_batch_enable", "--vllm.num_engines", "1"], "--train.dynamic_batch_enable"),
        (["--ds.ring_attn_size", "2", "--vllm.num_engines", "1"], "--ds.ring_attn_size 2"),
    ):
        code, err = run(argv(inputs, model, "--data.max_images_per_prompt", "16", *flags), capsys)
        assert code == 2 and f"{named} with a vision model" in err and "M-RoPE" in err, err[-2000:]
    # Consistent limits pass; a text-only model is not held to a vision model's rules.
    assert run(argv(inputs, model, "--data.max_images_per_prompt", "16"), capsys)[0] == 0
    assert run(argv(inputs, inputs.model, "--data.max_images_per_prompt", "0"), capsys)[0] == 0


def _data(path, **keys):
    return SimpleNamespace(prompt_dataset=str(path), input_key="prompt", label_key="label", image_key="images",
                           **{"max_images_per_prompt": 2, "max_len": 2048, **keys})  # fmt: skip


def test_every_row_is_scanned_and_bad_rows_are_named_by_line(tmp_path):
    small, big = tmp_path / "small.png", tmp_path / "big.png"
    Image.new("RGB", (56, 56), "red").save(small)
    Image.new("RGB", (1400, 1400), "blue").save(big)  # 50 x 50 merged patches: 2,500 tokens
    rows = [{"prompt": f"q{i}", "label": "a", "images": [str(small)]} for i in range(30)]
    rows[12]["images"] = [str(small)] * 3  # line 13, beyond the 8 rows read before
    rows[20]["images"] = [str(big)]  # line 21
    rows[25]["images"] = [str(big), str(small)]  # line 26
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems, scan = preflight.check_prompt_data(_data(data), str(vision_model(tmp_path / "vlm")))
    assert QWEN25.image_tokens(1400, 1400) == 2500 and QWEN25.image_tokens(56, 56) == 4
    assert len(problems) == 2, problems
    assert "1 row(s) hold more images than --data.max_images_per_prompt 2: line 13: 3 images" in problems[0]
    assert "2 row(s) do not fit --data.max_len 2048 (image tokens only: no tokenizer of the model here" in problems[1]
    assert "line 21: 2500 tokens, 2500 of them image tokens; line 26: 2504 tokens" in problems[1]
    assert "--max-pixels" in problems[1]
    assert (scan.max_images, scan.max_image_tokens) == (3, 2504)
    # A text-only model: the image count is not vLLM's business and there are no image tokens.
    assert preflight.check_prompt_data(_data(data), "/models/some-llm")[0] == []


def test_prompt_text_is_counted_with_the_model_tokenizer_and_the_agent_prompt(tmp_path):
    model = tiny_vlm_dir()
    image = tmp_path / "q.png"
    Image.new("RGB", (100, 100), "red").save(image)
    long_question = "What is shown in this picture? " * 300
    rows = [{"prompt": q, "label": "a", "images": [str(image)]} for q in ("What is shown?", long_question)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    agent_yaml = tmp_path / "agent.yaml"
    agent_yaml.write_text(yaml.safe_dump({"tools": {"enabled": ["zoom"]}}))
    agent = preflight.load_agent(str(agent_yaml))[1]
    problems, _ = preflight.check_prompt_data(_data(data, max_len=1024), str(model), agent)
    assert len(problems) == 1 and "prompt text and image tokens with the agent's system prompt" in problems[0]
    assert "1 row(s) do not fit" in problems[0] and "line 2: " in problems[0]
    reported = int(problems[0].split("line 2: ")[1].split(" tokens")[0])
    question = len(AutoTokenizer.from_pretrained(model)(long_question, add_special_tokens=False)["input_ids"])
    assert reported > question + 100  # the system prompt with the zoom tool's schema is counted too


def test_payload_estimate_on_hand_computed_numbers():
    # Qwen2.5-VL in bf16: 4 merged patches x 3 x 2 x 14 x 14 values x 2 B = 9,408 B per image token.
    assert QWEN25.bytes_per_token("bfloat16") == 9408 and QWEN25.bytes_per_token("float32") == 18816
    assert mm_budget.QWEN3_VL.bytes_per_token("float32") == 24576
    # The scripts' agent: 5 images per call, 16 per trajectory, 512 x 512 tool images (smart_resize: 504 x 504,
    # 18 x 18 = 324 tokens), 5 turns (4 calls); one 1000 x 1000 question image (1008 x 1008: 36 x 36 = 1,296).
    estimate = mm_budget.estimate_payload(
        QWEN25, "bfloat16", ToolsConfig(), 5, 16, question_images=1, question_tokens=1296, trajectories=128 * 8
    )
    assert (estimate.tool_images, estimate.tool_image_tokens) == (15, 324)
    assert estimate.trajectory_bytes == (1296 + 15 * 324) * 9408 == 57_915_648
    assert estimate.step_bytes == 57_915_648 * 1024 == 59_305_623_552
    # Three crossings of the object store: 177.9 GB. Warned against 100 GB, not against 200 GB.
    warning = mm_budget.payload_warning(estimate, "bfloat16", 100 * 10**9, "test")
    assert "59.3 GB" in warning and "178 GB against 100 GB" in warning
    for knob in ("tools.max_images_per_call", "tools.max_images_per_trajectory", "tools.max_image_pixels"):
        assert knob in warning
    assert "--max-pixels" in warning and "--rollout.batch_size" in warning
    assert mm_budget.payload_warning(estimate, "bfloat16", 200 * 10**9, "test") is None
    # Fewer images per call bound the tool images: 2 per call x 4 calls = 8.
    fewer = mm_budget.estimate_payload(QWEN25, "bfloat16", ToolsConfig(max_images_per_call=2), 5, 16, 1, 1296, 1)
    assert fewer.tool_images == 8 and fewer.trajectory_bytes == (1296 + 8 * 324) * 9408
    # Ray's default store: 30 % of RAM, at most 200 GB.
    assert mm_budget.object_store_bytes(512 * 10**9)[0] == int(512 * 10**9 * 0.3)
    assert mm_budget.object_store_bytes(10**12)[0] == 200 * 10**9


def test_shipped_model_names_are_vision_models():
    assert mm_budget.vision_spec("Qwen/Qwen2.5-VL-7B-Instruct") == QWEN25
    assert mm_budget.vision_spec("Qwen/Qwen3-VL-4B-Instruct").patch_size == 16
    assert mm_budget.vision_spec("Qwen/Qwen2.5-7B-Instruct") is None
