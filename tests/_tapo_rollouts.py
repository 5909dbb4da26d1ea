"""Tokenised multi-turn agent rollouts turned into REAL OpenRLHF `Experience` objects, for the TAPO stage tests.

A trajectory is written as text segments (prompt, assistant turns, tool responses in our protocol), tokenised
segment by segment with a byte-level BPE tokenizer built offline (`task.tiny_model.build_tokenizer`), and handed to
OpenRLHF's own `SamplesGenerator._process_response_into_experience` as the rollout executor's response dict
(`observation_tokens`, `action_ranges`, reward, scores). OpenRLHF's `split_rollout_samples` then concatenates them
into micro-batches, exactly as `make_experience_batch` does before `compute_advantages_and_returns`.
"""

import functools

import torch

from openrlhf_tapo.agent.protocol import build_prompt, format_tool_response

# ASCII only: non-ASCII characters in the trajectories are then split into byte tokens, the hard case for mapping
# character offsets back to tokens.
CORPUS = [
    "I will search for the answer. The Eiffel Tower is 330 m tall. Paris weather today is sunny.",
    '<tool_call>{"name": "text_search", "arguments": {"query": "eiffel tower height"}}</tool_call>',
    '{"name": "zoom", "arguments": {"image": "img_0", "bbox": [100, 100, 500, 600]}}',
    "<answer>330 m</answer> <tool_response> </tool_response> the of and a to in is",
] * 4


@functools.cache
def tokenizer():
    from openrlhf_tapo.task.tiny_model import build_tokenizer

    return build_tokenizer(CORPUS, vocab_size=400)


def call(name: str, arguments: str) -> str:
    return f'<tool_call>{{"name": "{name}", "arguments": {arguments}}}</tool_call>'


def response(turns, reward: float, score: float | None = None, question: str = "How tall is this tower?") -> dict:
    """The rollout executor's response for `turns`: [(assistant text, tool response text or None), ...]."""
    tok = tokenizer()
    ids = tok.encode(build_prompt(question, 1, []), add_special_tokens=False)
    ranges = []
    for assistant, tool_response in turns:
        generated = tok.encode(assistant, add_special_tokens=False)
        ranges.append((len(ids), len(ids) + len(generated)))
        ids += generated
        if tool_response is not None:
            env, _ = format_tool_response(tool_response)
            ids += tok.encode(env, add_special_tokens=False)
    return {
        "prompt": question,
        "label": "",
        "observation_tokens": ids,
        "action_ranges": ranges,
        "rollout_log_probs": None,
        "reward": reward,
        "scores": reward if score is None else score,
    }


def experiences(maker, responses: list[dict], max_len: int = 4096):
    """OpenRLHF Experiences for `responses` (rollout order), split into micro-batches by OpenRLHF itself.

    Sets what `make_experience` would have set before the advantage stage with `--algo.kl.use_loss` (zero KL).
    """
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

    samples = [SamplesGenerator._process_response_into_experience(None, r, max_len=max_len) for r in responses]
    batches = maker.split_rollout_samples(samples)
    for exp in batches:
        exp.kl = torch.zeros_like(exp.action_mask, dtype=torch.float32)
        exp.action_log_probs = torch.zeros_like(exp.action_mask, dtype=torch.float32)
    return batches


def rows(batches):
    """(experience, row) for every sample, in batch order."""
    return [(exp, r) for exp in batches for r in range(exp.sequences.shape[0])]


def decode_columns(exp, row: int, start: int, end: int) -> str:
    """Text of the tokens behind advantage columns [start, end) (column j is token j + 1)."""
    return tokenizer().decode(exp.sequences[row, start + 1 : end + 1].tolist(), skip_special_tokens=False)
