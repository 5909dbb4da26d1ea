"""A CPU stand-in for OpenRLHF's vLLM rollout actor: the same `generate` contract, backed by transformers.

`await engine.generate(prompt_token_ids, sampling_params, multi_modal_data={"image": [...]})` returns an object
shaped like vLLM's `RequestOutput`: `.prompt_token_ids` (the prompt the model ran, image pads expanded by this
engine's own image processor, as vLLM returns it) and `.outputs[0]` with `token_ids`, `text`, `finish_reason`
("stop" | "length"), `stop_reason` and `logprobs` (a list of `{token_id: Logprob}`, or None).
It follows vLLM's conventions where an executor can observe them:

- image pad tokens in the prompt may be expanded (as `process_prompt_with_images` returns them) or one per image:
  runs are collapsed and re-expanded from the image grid, as `RolloutRayActor.generate` + vLLM do;
- `stop` strings end generation right after the token that completes one; the token stays in `token_ids`, the text
  is cut at the stop string (kept when `include_stop_str_in_output`); an EOS token stays in `token_ids`;
- `max_tokens` bounds the new tokens (vLLM's default 16 when None); `temperature` 0 is greedy; `seed` is honoured;
- `logprobs` (any non-None value) returns the log-probability of each sampled token under the unmodified logits.

Used by the tests, the CPU demo, the evaluation CLI and the CPU RL loop. Requests are served in BATCHES, like vLLM:
each `generate` call queues its request and awaits a future; one worker thread (started on demand, gone when the
queue is empty) takes everything queued (up to `max_batch`, once no more arrived for `batch_wait_s`), runs one
batched decode loop over it and resolves each request's future, so the event loop keeps running the tool calls
of other trajectories meanwhile and the requests that arrive during a batch form the next one.

The decode loop is our own (`model.generate` cannot do per-row seeds, stops or temperatures): prompts are left
padded, the prefill gets the batch's images (`pixel_values` concatenated in row order, `image_grid_thw` stacked)
and Qwen2-VL's M-RoPE positions from `get_rope_index` under the attention mask (as `generate` builds them, with the
text positions in front), then each step feeds one token per row through the KV cache. Every row is processed with
its own sampling parameters: bad words as transformers' `NoBadWordsLogitsProcessor` bans them, transformers' own
warpers (temperature, top-k, top-p), and its own `torch.Generator` (seeded by `seed`, else from the engine's
generator), so a seeded request samples the same tokens as alone with `model.generate` after `torch.manual_seed`.
Finished rows leave the batch (and the cache).

Numerics: a row's logits in a batch equal its logits alone up to float rounding (padding and batch size change the
kernels' summation order, ~1e-7 here), so greedy or seeded outputs are batch-independent except where two tokens'
scores tie to that precision (or a sampled uniform lands within it of a bucket edge): rare, but not impossible.
`max_batch=1` serves one request at a time through the same loop.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from openrlhf.utils.vlm_utils import dedup_media_tokens
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


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

    def hit(self, new_tokens: list[int]) -> bool:
        text = self.tokenizer.decode(new_tokens[-self.window :], skip_special_tokens=self.skip_special_tokens)
        return any(s in text for s in self.stops)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = self.hit(input_ids[0, self.prompt_len :].tolist())
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


@dataclass
class _Params:
    """A request's sampling parameters, read once with vLLM's defaults."""

    max_tokens: int
    temperature: float
    top_k: int | None
    top_p: float
    stops: list[str]
    include_stop: bool
    bad_words_ids: list[list[int]]
    logprobs: bool
    skip_special: bool
    seed: int | None


@dataclass
class _Request:
    prompt_token_ids: list[int]
    sp: Any
    multi_modal_data: dict | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


@dataclass
class _Row:
    """One request inside a batch: its model inputs, sampling state and output so far."""

    request: _Request
    params: _Params
    token_ids: list[int]  # prompt with image pads expanded
    mm: dict
    generator: torch.Generator
    banned: list[int]  # single-token bad words, banned at every step
    banned_after: list[tuple[list[int], int]]  # (prefix, token): token banned right after prefix
    warpers: list  # temperature, top-k, top-p: transformers' own, in `generate`'s order
    stop: _StopOnStrings | None
    new_tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)

    def banned_now(self) -> list[int]:
        """Tokens the bad words forbid at this step, as transformers' `NoBadWordsLogitsProcessor` decides."""
        if not self.banned_after:
            return self.banned
        sequence = self.token_ids + self.new_tokens
        tail = [token for prefix, token in self.banned_after if sequence[len(sequence) - len(prefix) :] == prefix]
        return self.banned + tail


class HFGenerationEngine:
    """`generate` with vLLM's contract over a transformers `Qwen2_5_VLForConditionalGeneration` (or any causal LM).

    `processor` is the model's processor (tokenizer + image processor) or a plain tokenizer for text-only models.
    `max_batch`: most requests decoded together. Before starting a batch that is not full the worker waits while
    requests keep coming: until none arrived for `batch_wait_s`, at most `batch_wait_max_s` in all (trajectories
    that start together reach the engine a few ms apart, after building their prompts). `requests` counts served
    requests, `batches` decode loops run and `batch_sizes` their sizes.
    """

    def __init__(
        self, model, processor, max_batch: int = 64, batch_wait_s: float = 0.01, batch_wait_max_s: float = 0.1
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.processor = processor
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.batch_wait_max_s = batch_wait_max_s
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.image_processor = getattr(processor, "image_processor", None)
        config = model.config
        self.image_token_id = getattr(config, "image_token_id", None)
        self.video_token_id = getattr(config, "video_token_id", None)
        eos = model.generation_config.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else min(self.eos_token_ids, default=0)
        inner = getattr(model, "model", None)
        self._rope_index = getattr(inner, "get_rope_index", None) if self.image_token_id is not None else None
        self._logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        # unseeded requests draw their seed from here: reproducible after torch.manual_seed before construction
        self._rng = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        self._lock = threading.Lock()  # one decode loop on the model at a time
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._worker: threading.Thread | None = None
        self.requests = 0
        self.batches = 0
        self.batch_sizes: list[int] = []

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None) -> RequestOutput:
        loop = asyncio.get_running_loop()
        request = _Request(list(prompt_token_ids), sampling_params, multi_modal_data, loop, loop.create_future())
        with self._cond:
            self._queue.append(request)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="hf-engine", daemon=True)
                self._worker.start()
            self._cond.notify_all()
        return await request.future

    # --------------------------------------------------------------------------------------------------- internals

    def _work(self) -> None:
        while True:
            with self._cond:
                # gather: wait while requests keep arriving (each resets a quiet window of batch_wait_s)
                deadline = time.monotonic() + self.batch_wait_max_s
                while 0 < len(self._queue) < self.max_batch:
                    left = min(self.batch_wait_s, deadline - time.monotonic())
                    queued = len(self._queue)
                    if left <= 0 or (not self._cond.wait(left) and len(self._queue) == queued):
                        break
                if not self._queue:
                    self._worker = None
                    return
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            self._serve(batch)

    def _serve(self, batch: list[_Request]) -> None:
        rows = []
        for request in batch:
            try:
                rows.append(self._row(request))
            except Exception as error:  # a bad request fails alone
                _settle(request, None, error)
        if not rows:
            return
        try:
            with self._lock, torch.no_grad():
                training = self.model.training  # eval: no dropout, and gradient checkpointing would drop the cache
                self.model.eval()
                try:
                    self._decode(rows)
                finally:
                    self.model.train(training)
                self.requests += len(rows)
                self.batches += 1
                self.batch_sizes.append(len(rows))
            results = [self._output(row) for row in rows]
        except Exception as error:
            for row in rows:
                _settle(row.request, None, error)
            return
        for row, result in zip(rows, results, strict=True):
            _settle(row.request, result, None)

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

    def _params(self, sp) -> _Params:
        temperature = getattr(sp, "temperature", 1.0)
        stop = getattr(sp, "stop", None)
        stops = [stop] if isinstance(stop, str) and stop else [s for s in (stop or []) if s]
        top_k = getattr(sp, "top_k", None)
        banned = [self.tokenizer.encode(w, add_special_tokens=False) for w in getattr(sp, "bad_words", None) or []]
        return _Params(
            max_tokens=getattr(sp, "max_tokens", None) or 16,
            temperature=1.0 if temperature is None else float(temperature),
            top_k=top_k if top_k and top_k > 0 else None,
            top_p=getattr(sp, "top_p", None) or 1.0,
            stops=stops,
            include_stop=bool(getattr(sp, "include_stop_str_in_output", False)),
            bad_words_ids=[ids for ids in banned if ids],  # vLLM's `bad_words`, as token sequences
            logprobs=getattr(sp, "logprobs", None) is not None,
            skip_special=_skip_special(sp),
            seed=getattr(sp, "seed", None),
        )

    def _row(self, request: _Request) -> _Row:
        images = list((request.multi_modal_data or {}).get("image") or [])
        token_ids, mm = self._multimodal_inputs(request.prompt_token_ids, images)
        params = self._params(request.sp)
        # bad words as `NoBadWordsLogitsProcessor` applies them (a lone EOS token is never banned), then the warpers
        # `model.generate` builds for these parameters, in its order
        words = [ids for ids in params.bad_words_ids if not (len(ids) == 1 and ids[0] in self.eos_token_ids)]
        banned = sorted({ids[0] for ids in words if len(ids) == 1})
        banned_after = [(ids[:-1], ids[-1]) for ids in words if len(ids) > 1]
        warpers: list = []
        if params.temperature > 0:
            if params.temperature != 1.0:
                warpers.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k is not None:
                warpers.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                warpers.append(TopPLogitsWarper(params.top_p))
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,), generator=self._rng))
        stop = _StopOnStrings(self.tokenizer, params.stops, 0, params.skip_special) if params.stops else None
        generator = torch.Generator().manual_seed(seed)
        return _Row(request, params, token_ids, mm, generator, banned, banned_after, warpers, stop)

    def _decode(self, rows: list[_Row]) -> None:
        """One batched decode loop: fills each row's `new_tokens` (and `logprobs`)."""
        width = max(len(row.token_ids) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row.token_ids) :] = torch.tensor(row.token_ids)
            attention_mask[i, width - len(row.token_ids) :] = 1
        text_positions = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        kwargs: dict = {}
        with_images = [row.mm for row in rows if row.mm]
        if with_images:
            kwargs["pixel_values"] = torch.cat([mm["pixel_values"] for mm in with_images])
            kwargs["image_grid_thw"] = torch.cat([mm["image_grid_thw"] for mm in with_images])
        if self._rope_index is not None:
            # M-RoPE: (text, temporal, height, width) positions, as `generate` builds them; pads are skipped
            if with_images:
                types = (input_ids == self.image_token_id).to(torch.int32)
                grid = kwargs["image_grid_thw"]
                positions, _ = self._rope_index(input_ids, types, image_grid_thw=grid, attention_mask=attention_mask)
            else:
                positions = text_positions.unsqueeze(0).expand(3, -1, -1)
            position_ids = torch.cat([text_positions.unsqueeze(0), positions.to(text_positions.dtype)])
        else:
            position_ids = text_positions
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **kwargs,
        )
        cache = out.past_key_values
        active = list(range(len(rows)))  # rows still generating, in batch order
        while True:
            tokens = self._next_tokens([rows[i] for i in active], out.logits[:, -1, :].float())
            next_tokens, keep = [], []
            for b, (i, token) in enumerate(zip(active, tokens, strict=True)):
                if not self._finished(rows[i], token):
                    next_tokens.append(token)
                    keep.append(b)
            if not keep:
                return
            if len(keep) < len(active):  # finished rows leave the batch and the cache
                index = torch.tensor(keep)
                cache.batch_select_indices(index)
                attention_mask, position_ids = attention_mask[index], position_ids[..., index, :]
                active = [active[b] for b in keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=-1)
            position_ids = position_ids[..., -1:] + 1
            out = self.model(
                input_ids=torch.tensor(next_tokens).unsqueeze(-1),
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            )

    def _next_tokens(self, rows: list[_Row], logits: torch.Tensor) -> list[int]:
        """Each row's next token from its logits (batch, vocab): bad words, then argmax or its warpers and sampler."""
        scores = logits
        bans = [(b, token) for b, row in enumerate(rows) for token in row.banned_now()]
        if bans:
            scores = logits.clone()
            scores[[b for b, _ in bans], [token for _, token in bans]] = float("-inf")
        greedy = scores.argmax(dim=-1).tolist() if any(row.params.temperature <= 0 for row in rows) else None
        tokens = []
        for b, row in enumerate(rows):
            if row.params.temperature <= 0:
                tokens.append(greedy[b])
                continue
            row_scores = scores[b : b + 1]
            for warper in row.warpers:
                row_scores = warper(None, row_scores)
            probs = torch.softmax(row_scores, dim=-1)
            tokens.append(int(torch.multinomial(probs, num_samples=1, generator=row.generator).item()))
        if any(row.params.logprobs for row in rows):
            chosen = torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(tokens).unsqueeze(-1))[:, 0].tolist()
        for b, (row, token) in enumerate(zip(rows, tokens, strict=True)):
            row.new_tokens.append(token)
            if row.params.logprobs:
                row.logprobs.append(chosen[b])
        return tokens

    def _finished(self, row: _Row, token: int) -> bool:
        return (
            token in self.eos_token_ids
            or len(row.new_tokens) >= row.params.max_tokens
            or (row.stop is not None and row.stop.hit(row.new_tokens))
        )

    def _output(self, row: _Row) -> RequestOutput:
        completion = self._completion(row.new_tokens, row.logprobs if row.params.logprobs else None, row.params)
        return RequestOutput(row.token_ids, [completion])

    def _completion(self, new_tokens: list[int], logprobs: list[float] | None, params: _Params) -> CompletionOutput:
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=params.skip_special)
        finish_reason, stop_reason = "length", None
        if new_tokens and new_tokens[-1] in self.eos_token_ids:
            finish_reason, stop_reason = "stop", None
        hits = [(text.find(s), s) for s in params.stops if s in text]
        if hits:
            at, stop = min(hits)
            text = text[: at + len(stop)] if params.include_stop else text[:at]
            finish_reason, stop_reason = "stop", stop
        elif finish_reason == "length" and len(new_tokens) < params.max_tokens:
            finish_reason = "stop"  # ended by a stopping rule of the model's generation config
        if logprobs is not None:
            logprobs = [{token: Logprob(value)} for token, value in zip(new_tokens, logprobs, strict=True)]
        return CompletionOutput(0, text, new_tokens, finish_reason, stop_reason, logprobs)

    def _generate_with_hf(self, prompt_token_ids, sp, multi_modal_data=None) -> RequestOutput:
        """One request through `model.generate` (the engine before batching): the reference the tests compare to."""
        images = list((multi_modal_data or {}).get("image") or [])
        token_ids, mm = self._multimodal_inputs(list(prompt_token_ids), images)
        input_ids = torch.tensor([token_ids], dtype=torch.long)
        if mm:
            mm["mm_token_type_ids"] = (input_ids == self.image_token_id).to(torch.int32)
        params = self._params(sp)
        kwargs = dict(
            max_new_tokens=params.max_tokens,
            do_sample=params.temperature > 0,
            return_dict_in_generate=True,
            output_logits=params.logprobs,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=sorted(self.eos_token_ids) or None,
        )
        if params.temperature > 0:
            kwargs.update(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p)
        if params.bad_words_ids:
            kwargs["bad_words_ids"] = params.bad_words_ids
        if params.stops:
            criteria = _StopOnStrings(self.tokenizer, params.stops, len(token_ids), params.skip_special)
            kwargs["stopping_criteria"] = StoppingCriteriaList([criteria])
        with self._lock, torch.no_grad():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            out = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **mm, **kwargs)
        new_tokens = out.sequences[0, len(token_ids) :].tolist()
        logprobs = None
        if params.logprobs:
            logprobs = [
                torch.log_softmax(out.logits[step][0].float(), dim=-1)[token].item()
                for step, token in enumerate(new_tokens)
            ]
        return RequestOutput(token_ids, [self._completion(new_tokens, logprobs, params)])


def _settle(request: _Request, result, error) -> None:
    """Resolve a request's future on its own event loop (from the worker thread); a closed loop is ignored."""

    def settle() -> None:
        if request.future.done():  # cancelled meanwhile
            return
        if error is not None:
            request.future.set_exception(error)
        else:
            request.future.set_result(result)

    try:
        request.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop was closed: nobody awaits this request any more
        pass


def _skip_special(sp) -> bool:
    value = getattr(sp, "skip_special_tokens", True)
    return True if value is None else bool(value)
