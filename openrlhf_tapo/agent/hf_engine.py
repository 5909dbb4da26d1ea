"""A CPU stand-in for OpenRLHF's vLLM rollout actor: the same `generate` contract, backed by transformers.

`await engine.generate(prompt_token_ids, sampling_params, multi_modal_data={"image": [...]})` returns an object
shaped like vLLM's `RequestOutput`: `.prompt_token_ids` and `.outputs[0]` with `token_ids`, `text`,
`finish_reason` ("stop" | "length"), `stop_reason` and `logprobs` (a list of `{token_id: Logprob}`, or None).
It follows vLLM's conventions where an executor can observe them:

- image pad tokens in the prompt may be expanded (as `process_prompt_with_images` returns them) or one per image:
  runs are collapsed and re-expanded from the image grid, as `RolloutRayActor.generate` + vLLM do;
- `stop` strings end generation right after the token that completes one; the token stays in `token_ids`, the text
  is cut at the stop string (kept when `include_stop_str_in_output`); an EOS token stays in `token_ids`;
- `max_tokens` bounds the new tokens (vLLM's default 16 when None); `temperature` 0 is greedy; `seed` is honoured;
- `logprobs` (any non-None value) returns the log-probability of each sampled token under the unmodified logits.

Used by the tests, the CPU demo and the evaluation CLI. Requests are served one at a time (one model, CPU), in a
worker thread so the event loop keeps running tool calls of other trajectories meanwhile.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import torch
from openrlhf.utils.vlm_utils import dedup_media_tokens
from transformers import StoppingCriteria, StoppingCriteriaList


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str
    stop_reason: str | int | None = None
    logprobs: list[dict[int, Logprob]] | None = None
    cumulative_logprob: float | None = None


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = True


class _StopOnStrings(StoppingCriteria):
    """Stops once the generated tail contains a stop string (checked on the last `window` new tokens)."""

    def __init__(self, tokenizer, stops: list[str], prompt_len: int, skip_special_tokens: bool):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.stops = stops
        self.prompt_len = prompt_len
        self.window = max(len(s) for s in stops) + 2

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        tail = input_ids[0, self.prompt_len :][-self.window :].tolist()
        text = self.tokenizer.decode(tail, skip_special_tokens=self.skip_special_tokens)
        done = any(s in text for s in self.stops)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class HFGenerationEngine:
    """`generate` with vLLM's contract over a transformers `Qwen2_5_VLForConditionalGeneration` (or any causal LM).

    `processor` is the model's processor (tokenizer + image processor) or a plain tokenizer for text-only models.
    """

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.image_processor = getattr(processor, "image_processor", None)
        config = model.config
        self.image_token_id = getattr(config, "image_token_id", None)
        self.video_token_id = getattr(config, "video_token_id", None)
        eos = model.generation_config.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self._lock = threading.Lock()
        self.requests = 0

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None) -> RequestOutput:
        return await asyncio.to_thread(self._generate, list(prompt_token_ids), sampling_params, multi_modal_data)

    # --------------------------------------------------------------------------------------------------- internals

    def _multimodal_inputs(self, token_ids: list[int], images: list) -> tuple[list[int], dict]:
        if not images:
            if self.image_token_id is not None and self.image_token_id in token_ids:
                raise ValueError("prompt holds image placeholder tokens but no images were given")
            return token_ids, {}
        if self.image_processor is None:
            raise ValueError("images given to a text-only engine (no image processor)")
        vision = self.image_processor(images=images, return_tensors="pt")
        grid = vision["image_grid_thw"]
        merge = self.image_processor.merge_size**2
        collapsed = dedup_media_tokens(token_ids, {self.image_token_id})
        runs = collapsed.count(self.image_token_id)
        if runs != len(images):
            raise ValueError(f"prompt has {runs} image placeholders but {len(images)} images were given")
        expanded: list[int] = []
        image_index = 0
        for token in collapsed:
            if token == self.image_token_id:
                expanded.extend([token] * int(grid[image_index].prod() // merge))
                image_index += 1
            else:
                expanded.append(token)
        return expanded, {"pixel_values": vision["pixel_values"], "image_grid_thw": grid}

    def _generate(self, prompt_token_ids: list[int], sp, multi_modal_data) -> RequestOutput:
        images = list((multi_modal_data or {}).get("image") or [])
        token_ids, mm = self._multimodal_inputs(prompt_token_ids, images)
        input_ids = torch.tensor([token_ids], dtype=torch.long)
        if mm:
            # M-RoPE positions come from the token types, as OpenRLHF's Actor.forward rebuilds them for training.
            mm["mm_token_type_ids"] = (input_ids == self.image_token_id).to(torch.int32)
        max_tokens = getattr(sp, "max_tokens", None) or 16
        temperature = getattr(sp, "temperature", 1.0)
        temperature = 1.0 if temperature is None else temperature
        stops = [s for s in (getattr(sp, "stop", None) or []) if s]
        if isinstance(getattr(sp, "stop", None), str):
            stops = [sp.stop]
        top_k = getattr(sp, "top_k", None)
        top_p = getattr(sp, "top_p", None)
        kwargs = dict(
            max_new_tokens=max_tokens,
            do_sample=temperature > 0,
            return_dict_in_generate=True,
            output_logits=getattr(sp, "logprobs", None) is not None,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=sorted(self.eos_token_ids) or None,
        )
        if temperature > 0:
            kwargs.update(temperature=temperature, top_k=top_k if top_k and top_k > 0 else None, top_p=top_p or 1.0)
        banned = [self.tokenizer.encode(w, add_special_tokens=False) for w in getattr(sp, "bad_words", None) or []]
        if any(banned):
            kwargs["bad_words_ids"] = [ids for ids in banned if ids]  # vLLM's `bad_words`, as token sequences
        if stops:
            criteria = _StopOnStrings(self.tokenizer, stops, len(token_ids), _skip_special(sp))
            kwargs["stopping_criteria"] = StoppingCriteriaList([criteria])
        with self._lock:
            seed = getattr(sp, "seed", None)
            if seed is not None:
                torch.manual_seed(seed)
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **mm, **kwargs
                )
            self.requests += 1
        new_tokens = out.sequences[0, len(token_ids) :].tolist()
        return RequestOutput(prompt_token_ids, [self._completion(new_tokens, out, sp, stops, max_tokens)])

    def _completion(self, new_tokens: list[int], out, sp, stops: list[str], max_tokens: int) -> CompletionOutput:
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=_skip_special(sp))
        finish_reason, stop_reason = "length", None
        if new_tokens and new_tokens[-1] in self.eos_token_ids:
            finish_reason, stop_reason = "stop", None
        hits = [(text.find(s), s) for s in stops if s in text]
        if hits:
            at, stop = min(hits)
            text = text[: at + len(stop)] if getattr(sp, "include_stop_str_in_output", False) else text[:at]
            finish_reason, stop_reason = "stop", stop
        elif finish_reason == "length" and len(new_tokens) < max_tokens:
            finish_reason = "stop"  # ended by a stopping rule of the model's generation config
        logprobs = None
        if getattr(sp, "logprobs", None) is not None:
            logprobs = []
            for step, token in enumerate(new_tokens):
                value = torch.log_softmax(out.logits[step][0].float(), dim=-1)[token].item()
                logprobs.append({token: Logprob(value)})
        return CompletionOutput(0, text, new_tokens, finish_reason, stop_reason, logprobs)


def _skip_special(sp) -> bool:
    value = getattr(sp, "skip_special_tokens", True)
    return True if value is None else bool(value)
