"""The multimodal search agent for OpenRLHF's agent API (loaded through the shim `executor.py`).

OpenRLHF builds `AgentExecutor()` once per vLLM rollout actor, then awaits `execute(...)` once per trajectory,
many at a time on the actor's event loop.

One trajectory (token in, token out; see protocol.py for the text format):

1. The question images are decoded (worker pool) and labelled `img_0, ...`; the prompt gets the tools system turn.
   The prompt is tokenised by OpenRLHF's `process_prompt_with_images`, which also gives the first `mm_train_inputs`.
2. Each assistant turn is one `llm_engine.generate` call with the stop strings `</tool_call>`, `</answer>` and
   `max_tokens = min(max_tokens_per_turn, room left)`. Its tokens are recorded as an action range.
3. A turn with an answer ends the trajectory. A turn with a call runs it through the `ToolRunner` (async; its CPU
   work goes to the worker pool), and the tool response turn is appended as environment tokens (no action range,
   so the loss masks it). Images the tool returned are labelled, passed to vLLM as multi-modal data and to
   training as `mm_train_inputs`, accumulated in placeholder order.
4. The reward (reward.py) is computed from the answer, the label and the format; `extra_logs` hold per-trajectory
   counts with the same keys for every trajectory (OpenRLHF stacks them per key across the batch), among them
   `failure/<kind>`: 1 for a failing trajectory's first error (agent/failures.py), so a step's mean is the share
   of the batch that failed that way.
5. Every call the model made gets its record (`tool_calls` in the result: `ToolCall`s with `traj = 0`), built by
   `call_record.turn_records` from the turn's tokens and the response appended after it: the same code the TAPO
   stage rebuilds them with from OpenRLHF's tensors. OpenRLHF ignores the key; tests and offline tools read it.

Nothing the model writes, no tool or backend failure and no undecodable image makes `execute` raise: the model
reads an error observation and the failure is counted. Question images over `tools.max_images_per_trajectory`, or
that do not fit `max_length`, are left out (the prompt says so; counted). A request the engine refuses ends only its
trajectory (counted under errors/engine; a refused first request is retried once without the question images,
since a trajectory must hold a generated token: OpenRLHF's per-sample means divide by the action-token count).
`execute` raises only for a configuration problem: a prompt that cannot fit `max_length` even as text, an engine
that refuses a plain text request, and, with `prompt_check: raise`, a prompt length the engine disagrees with.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from dataclasses import dataclass, field

import torch
from openrlhf.utils.agent import AgentExecutorBase
from openrlhf.utils.vlm_utils import accumulate_mm_inputs, load_images, process_prompt_with_images
from PIL import Image

from openrlhf_tapo.agent import protocol
from openrlhf_tapo.agent.call_record import Decoder, turn_records
from openrlhf_tapo.agent.config import AgentConfig, load_agent_config
from openrlhf_tapo.agent.failures import FAILURE_KINDS, MALFORMED_ERRORS, first_error, hit_turn
from openrlhf_tapo.agent.reward import Label, LLMJudge, compute_reward, parse_label
from openrlhf_tapo.algorithms.tapo import ToolCall
from openrlhf_tapo.search.workers import run_cpu
from openrlhf_tapo.tools.base import ToolContext, ToolOutput, error_text
from openrlhf_tapo.tools.registry import build_tool_runner
from openrlhf_tapo.tools.runner import ToolRunner

logger = logging.getLogger(__name__)

# Error kinds logged under fixed keys (every trajectory reports every key, 0 when it did not happen). Kinds from the
# parser and the tool layer, plus the agent's own: question_image (a dataset image did not decode), context_limit
# (a tool response, or its images, or the question's images did not fit in max_length), turn_limit (a call in the
# last allowed turn), no_action (a turn with neither a call nor an answer), label (the label could not be parsed:
# reward 0), judge (the LLM judge gave no verdict: the rule-based result was used), engine (the engine refused a
# request: the trajectory ended there, or restarted without its question images), prompt_length (the engine ran a
# prompt of another length than the trajectory's tokens; see AgentConfig.prompt_check).
MAX_DECODERS = 4  # tokenizers (models) whose decoder is kept; an executor serves one in practice

ERROR_KINDS = (
    protocol.BAD_JSON,
    protocol.BAD_CALL,
    protocol.UNCLOSED,
    "unknown_tool",
    "bad_arguments",
    "image_ref",
    "call_limit",
    "image_limit",
    "timeout",
    "backend",
    "rate_limited",
    "bad_response",
    "bad_image",
    "cache_miss",
    "internal",
    "question_image",
    "context_limit",
    "turn_limit",
    "no_action",
    "label",
    "judge",
    "engine",
    "prompt_length",
    "other",
)


class EngineRequestError(RuntimeError):
    """The engine raised for one request (its cause is chained)."""


class PromptLengthMismatch(RuntimeError):
    """The engine ran a prompt of another length than the trajectory's tokens (agent.prompt_check: raise)."""


def _count(counts: Counter, kind: str, n: int = 1) -> None:
    counts[f"errors/{kind}"] += n
    counts["errors"] += n


@dataclass
class _Trajectory:
    """Mutable state of one rollout."""

    tokens: list[int]
    log_probs: list[float] | None
    pil_images: list[Image.Image]
    mm_train_inputs: dict | None
    ctx: ToolContext
    decoder: Decoder
    action_ranges: list[tuple[int, int]] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)  # what the prompt says about the question images
    answer: str | None = None
    format_ok: bool = True
    truncated: bool = False
    turns: int = 0
    malformed_turn: int | None = None  # first turn with a malformed call (agent.failures.MALFORMED_ERRORS)


class AgentExecutor(AgentExecutorBase):
    """Multi-turn tool-using rollout. `config`, `runner` and `judge` default to what the agent YAML describes
    (OpenRLHF constructs the class with no arguments); tests and the evaluation CLI pass their own."""

    def __init__(
        self, config: AgentConfig | None = None, runner: ToolRunner | None = None, judge: LLMJudge | None = None
    ):
        self.config = config if config is not None else load_agent_config()
        self._runner = runner
        judge_config = self.config.reward.judge
        self.judge = judge if judge is not None else (LLMJudge(judge_config) if judge_config.enabled else None)
        self._warned_text_only = False
        # tokenizer identity -> its Decoder (token texts shared by trajectories). OpenRLHF sends a freshly unpickled
        # tokenizer with every prompt, so the key is what the vocabulary is, not which object: one entry per model.
        self._decoders: dict[tuple, Decoder] = {}

    def _decoder(self, tokenizer) -> Decoder:
        key = (type(tokenizer).__name__, getattr(tokenizer, "name_or_path", ""), len(tokenizer))
        decoder = self._decoders.get(key)
        if decoder is None:
            if len(self._decoders) >= MAX_DECODERS:
                self._decoders.pop(next(iter(self._decoders)))  # the oldest
            decoder = self._decoders[key] = Decoder(tokenizer)
        return decoder

    @property
    def runner(self) -> ToolRunner:
        # Built on first use, inside the actor's event loop (HTTP backends open their sessions there).
        if self._runner is None:
            self._runner = build_tool_runner(self.config.tools)
        return self._runner

    def log_keys(self) -> list[str]:
        """The keys of `extra_logs`, identical for every trajectory."""
        tools = list(self.runner.tools)
        return (
            ["turns", "tool_calls", "answered", "format_ok", "truncated_turn", "exact_match", "substring_match", "f1"]
            + ["judged", "cache_hits", "cache_misses", "errors", "images_added", "mm_bytes"]
            + [f"calls/{name}" for name in tools]
            + [f"errors/{kind}" for kind in ERROR_KINDS]
            + [f"failure/{kind}" for kind in FAILURE_KINDS]
        )

    # ---------------------------------------------------------------------------------------------------- rollout

    async def execute(self, prompt, label, sampling_params, max_length: int, hf_tokenizer, llm_engine, images=None):
        cfg = self.config
        tokenizer = getattr(hf_tokenizer, "tokenizer", hf_tokenizer)
        vision = hasattr(hf_tokenizer, "image_processor")

        if images and not vision and not self._warned_text_only:
            self._warned_text_only = True
            logger.warning("the tokenizer has no image processor (a text-only model): question images are not shown")
        loaded, urls, failed = await run_cpu(_load_question_images, images) if (images and vision) else ([], [], 0)
        counts = Counter()
        notes = [f"{failed} question image(s) could not be loaded"] if failed else []
        _count(counts, "question_image", failed)
        limit = cfg.tools.max_images_per_trajectory  # the launcher keeps vLLM's per-request limit at least this
        if len(loaded) > limit:
            _count(counts, "image_limit", len(loaded) - limit)
            notes.append(f"{len(loaded) - limit} question image(s) not shown: at most {limit} images per question")
            loaded, urls = loaded[:limit], urls[:limit]
        traj = await self._start(prompt, loaded, urls, notes, sampling_params, hf_tokenizer, counts)
        if loaded and len(traj.tokens) + cfg.min_tokens_per_turn > max_length:
            _count(counts, "context_limit")
            why = "too large for the context"
            traj = await self._restart_text_only(traj, prompt, why, sampling_params, hf_tokenizer)
        if len(traj.tokens) + cfg.min_tokens_per_turn > max_length:
            raise ValueError(
                f"the agent prompt takes {len(traj.tokens)} tokens without its images, leaving less than "
                f"agent.min_tokens_per_turn={cfg.min_tokens_per_turn} of max_length={max_length}: raise --data.max_len"
                " / --rollout.max_new_tokens or shorten the question or the instructions"
            )

        turn = 0
        while turn < cfg.max_turns:
            try:
                done = await self._turn(traj, turn, sampling_params, max_length, hf_tokenizer, tokenizer, llm_engine)
            except EngineRequestError as err:
                # The engine refused a request (vLLM: more images than its limit, an image it cannot process, a
                # prompt over max_model_len). Only this trajectory pays: it ends where it is, counted; a refused
                # first request is retried once without the question images, so that it holds a generated turn.
                logger.warning("the engine refused turn %d of a trajectory (%s)", turn, err)
                _count(counts, "engine")
                if traj.action_ranges:
                    traj.format_ok = False
                    break
                if not traj.pil_images:  # a plain text request refused: the engine itself is unusable
                    raise
                why = "refused by the engine"
                traj = await self._restart_text_only(traj, prompt, why, sampling_params, hf_tokenizer)
                continue
            if done:
                break
            turn += 1

        return await self._finish(traj, prompt, label, images)

    async def _start(self, prompt, loaded, urls, notes, sampling_params, hf_tokenizer, counts) -> _Trajectory:
        """The trajectory's first prompt: tools system turn, the labelled question images, the question."""
        cfg = self.config
        tokenizer = getattr(hf_tokenizer, "tokenizer", hf_tokenizer)
        schemas = self.runner.schemas() if cfg.tools_block else []
        instructions = cfg.instructions or protocol.DEFAULT_INSTRUCTIONS
        note = "; ".join(notes)
        if protocol.IM_START in prompt:
            prompt_text = protocol.with_system_prompt(prompt, len(loaded), schemas, instructions, note)
        else:
            prompt_text = protocol.build_prompt(prompt, len(loaded), schemas, instructions, note)
        if loaded:
            prompt_tokens, mm_train_inputs, pil = await run_cpu(
                process_prompt_with_images, hf_tokenizer, prompt_text, loaded
            )
        else:
            prompt_tokens, mm_train_inputs, pil = await run_cpu(_encode, tokenizer, prompt_text), None, []
        ctx = ToolContext(images={protocol.image_ref(i): im for i, im in enumerate(loaded)})
        ctx.image_urls.update({protocol.image_ref(i): u for i, u in enumerate(urls) if u})
        want_logprobs = getattr(sampling_params, "logprobs", None) is not None
        return _Trajectory(
            tokens=list(prompt_tokens),
            log_probs=[0.0] * len(prompt_tokens) if want_logprobs else None,
            pil_images=list(pil),
            mm_train_inputs=mm_train_inputs,
            ctx=ctx,
            decoder=self._decoder(tokenizer),
            counts=counts,
            notes=notes,
        )

    async def _restart_text_only(self, traj, prompt, why: str, sampling_params, hf_tokenizer) -> _Trajectory:
        """The trajectory restarted with its question images left out, which the prompt says: an image that cannot
        be shown costs that image, not the run (the caller counts why)."""
        notes = [*traj.notes, f"the question image(s) could not be shown: {why}"]
        return await self._start(prompt, [], [], notes, sampling_params, hf_tokenizer, traj.counts)

    def _check_prompt_length(self, traj: _Trajectory, turn: int, request) -> None:
        """The prompt the engine ran (vLLM returns it with every image pad run expanded by its own processor) must be
        the trajectory's tokens: training takes positions and image placement from `traj.tokens`, so a different
        expansion would shift them silently between rollout and training."""
        ran = getattr(request, "prompt_token_ids", None)
        if self.config.prompt_check == "off" or ran is None or len(ran) == len(traj.tokens):
            return
        message = (
            f"turn {turn}: the engine ran a {len(ran)}-token prompt, the trajectory holds {len(traj.tokens)} tokens "
            f"({len(traj.pil_images)} images): the engine's processor expands the image pads differently from the "
            "trainer's, so rollout and training positions differ"
        )
        if self.config.prompt_check == "raise":
            raise PromptLengthMismatch(message)
        logger.warning("%s (counted under errors/prompt_length)", message)
        _count(traj.counts, "prompt_length")

    async def _turn(self, traj, turn, sampling_params, max_length, hf_tokenizer, tokenizer, llm_engine) -> bool:
        """One assistant turn and, when it calls a tool, the tool response. Returns True when the trajectory ends."""
        cfg = self.config
        room = max_length - len(traj.tokens)
        if room < cfg.min_tokens_per_turn:
            traj.truncated = True
            traj.format_ok = False
            return True
        params = _turn_sampling_params(sampling_params, min(cfg.max_tokens_per_turn, room), cfg.stop)
        mm_data = {"image": list(traj.pil_images)} if traj.pil_images else None
        try:
            request = await llm_engine.generate(list(traj.tokens), params, multi_modal_data=mm_data)
        except Exception as err:
            raise EngineRequestError(f"{type(err).__name__}: {err}") from err
        self._check_prompt_length(traj, turn, request)
        output = request.outputs[0]
        action = list(output.token_ids)
        start = len(traj.tokens)
        traj.tokens.extend(action)
        traj.action_ranges.append((start, start + len(action)))
        traj.turns += 1
        if traj.log_probs is not None:
            traj.log_probs.extend(_action_log_probs(action, output.logprobs))

        text = traj.decoder.decode(action)  # exactly what the TAPO stage will parse
        calls = protocol.parse_tool_calls(text)
        answer = protocol.ending_answer(text, calls)
        if answer is not None:
            traj.answer = answer
            return True
        if not calls:
            traj.format_ok = False
            if output.finish_reason == "length":
                traj.truncated = True
            else:
                traj.counts["errors/no_action"] += 1
                traj.counts["errors"] += 1
            return True
        call = calls[0]
        if turn == cfg.max_turns - 1:
            traj.format_ok = False
            traj.counts["errors/turn_limit"] += 1
            traj.counts["errors"] += 1
            self._record_calls(traj, turn, start, action, text, calls, "")
            return True

        result = await self._call_tool(call, traj.ctx, cfg.max_tokens_per_turn)
        self._count_call(traj, call, result)
        if traj.malformed_turn is None and result.error in MALFORMED_ERRORS:
            traj.malformed_turn = turn
        if call.error is not None or len(calls) > 1:
            traj.format_ok = False
        notice = cfg.last_turn_notice if turn == cfg.max_turns - 2 else ""
        ended_turn = bool(action) and action[-1] == tokenizer.convert_tokens_to_ids(protocol.IM_END)
        response = await self._append_response(traj, result, notice, ended_turn, max_length, hf_tokenizer, tokenizer)
        self._record_calls(traj, turn, start, action, text, calls, response or "")
        return response is None

    def _record_calls(self, traj: _Trajectory, turn: int, start: int, action, text, calls, response: str) -> None:
        """The records of this turn's calls; the turn's advantage columns are its token range shifted by one
        (OpenRLHF's action_mask[j] is token j + 1)."""
        records, _ = turn_records(
            traj.decoder,
            0,
            turn,
            (start - 1, start - 1 + len(action)),
            action,
            text,
            calls,
            self.runner.canonical_params,
            lambda: response,
        )
        traj.tool_calls.extend(records)

    async def _call_tool(self, call: protocol.ParsedToolCall, ctx: ToolContext, turn_limit: int) -> ToolOutput:
        if call.error == protocol.UNCLOSED:
            message = (
                f"the tool call is not closed with {protocol.TOOL_CALL_CLOSE} (a turn may hold at most {turn_limit} "
                "tokens; keep reasoning short)"
            )
        elif call.error == protocol.BAD_JSON:
            message = (
                'the text inside <tool_call></tool_call> is not one JSON object {"name": ..., "arguments": {...}}'
            )
        elif call.error == protocol.BAD_CALL:
            message = 'a tool call needs "name" (a string) and "arguments" (a JSON object)'
        else:
            try:
                return await self.runner.call(call.name, call.arguments, ctx)
            except Exception as err:  # the runner never raises; this keeps the rollout alive if that breaks
                logger.exception("tool runner raised for %s", call.name)
                return ToolOutput(text=error_text(f"{call.name} failed ({type(err).__name__})"), error="internal")
        return ToolOutput(text=protocol.format_error(call.error, message), error=call.error)

    def _count_call(self, traj: _Trajectory, call: protocol.ParsedToolCall, result: ToolOutput) -> None:
        counts = traj.counts
        counts["tool_calls"] += 1
        tool = self.runner.tools.get(call.name) if call.name else None
        if tool is not None:
            counts[f"calls/{call.name}"] += 1
            if call.name in self.config.reward.search_tools:
                counts["searched"] += 1
        if result.error:
            counts["errors"] += 1
            counts[f"errors/{result.error if result.error in ERROR_KINDS else 'other'}"] += 1
        elif tool is not None and tool.cacheable and self.runner.cache is not None:
            counts["cache_hits" if result.cached else "cache_misses"] += 1

    async def _append_response(
        self, traj, result, notice, ended_turn, max_length, hf_tokenizer, tokenizer
    ) -> str | None:
        """Append the tool response turn and return its text; None when it cannot fit (the trajectory then ends,
        truncated)."""
        vision = hasattr(hf_tokenizer, "image_processor")
        images = list(result.images) if vision else []
        body = result.text
        for _ in range(2):  # with the images, then text only
            text, order = protocol.format_tool_response(body, [ref for ref, _ in images], not ended_turn, notice)
            by_ref = dict(images)
            new_images = [by_ref[ref] for ref in order]
            try:
                if new_images:
                    tokens, mm, pil = await run_cpu(process_prompt_with_images, hf_tokenizer, text, new_images)
                else:
                    tokens, mm, pil = await run_cpu(_encode, tokenizer, text), None, []
            except Exception as err:  # an image the processor refuses: show the text without images
                logger.warning("tool images could not be processed (%s); sending text only", type(err).__name__)
                traj.counts["errors/bad_image"] += 1
                traj.counts["errors"] += 1
                images, body = [], body + "\n(the returned images could not be processed)"
                continue
            if len(traj.tokens) + len(tokens) + self.config.min_tokens_per_turn <= max_length:
                traj.tokens.extend(tokens)
                if traj.log_probs is not None:
                    traj.log_probs.extend([0.0] * len(tokens))
                traj.pil_images.extend(pil)
                traj.mm_train_inputs = accumulate_mm_inputs(traj.mm_train_inputs, mm)
                traj.counts["images_added"] += len(pil)
                return text
            traj.counts["errors/context_limit"] += 1
            traj.counts["errors"] += 1
            if not images:
                break
            images, body = [], body + "\n(images not shown: the context length limit is reached)"
        traj.truncated = True
        traj.format_ok = False
        return None

    async def _finish(self, traj: _Trajectory, prompt, label, images) -> dict:
        cfg = self.config
        counts = traj.counts
        try:
            parsed_label = parse_label(label)
        except ValueError as err:
            logger.warning("unreadable label (%s): reward 0", err)
            counts["errors/label"] += 1
            counts["errors"] += 1
            parsed_label = Label("")
        format_ok = traj.format_ok and traj.answer is not None
        result = await compute_reward(
            traj.answer,
            parsed_label,
            format_ok,
            counts["searched"] > 0,
            cfg.reward,
            question=prompt if protocol.IM_START not in prompt else "",
            judge=self.judge,
        )
        counts.update(
            turns=traj.turns,
            answered=int(traj.answer is not None),
            format_ok=int(format_ok),
            truncated_turn=int(traj.truncated),
            exact_match=result.exact,
            substring_match=result.substring,
            f1=result.f1,
            judged=result.judged,
        )
        kind = first_error(
            succeeded=result.score >= 1.0,
            answered=traj.answer is not None,
            malformed_turn=traj.malformed_turn,
            call_turns=[call.turn for call in traj.tool_calls],
            hit_turn=hit_turn(traj.tool_calls, parsed_label.golds()),
        )
        if kind is not None:
            counts[f"failure/{kind}"] = 1
        counts["errors/judge"] += result.judge_errors
        counts["errors"] += result.judge_errors
        mm_train_inputs = cast_mm_inputs(traj.mm_train_inputs, cfg.mm_dtype)
        counts["mm_bytes"] = mm_payload_bytes(mm_train_inputs)
        extra_logs = {key: float(counts.get(key, 0)) for key in self.log_keys()}
        return {
            "prompt": prompt,
            "label": label,
            "images": images,
            "mm_train_inputs": mm_train_inputs,
            "observation_tokens": traj.tokens,
            "action_ranges": traj.action_ranges,
            "rollout_log_probs": traj.log_probs,
            "reward": result.reward,
            "scores": result.score,
            "truncated": traj.truncated,
            "extra_logs": extra_logs,
            "tool_calls": traj.tool_calls,
        }


def cast_mm_inputs(mm_train_inputs: dict | None, dtype: str | None) -> dict | None:
    """`mm_train_inputs` with its floating-point tensors (pixel_values) in `dtype` (None: unchanged); integer
    tensors (image_grid_thw) are kept as they are."""
    if not mm_train_inputs or dtype is None:
        return mm_train_inputs
    target = getattr(torch, dtype)
    return {
        key: value.to(target) if isinstance(value, torch.Tensor) and value.is_floating_point() else value
        for key, value in mm_train_inputs.items()
    }


def mm_payload_bytes(mm_train_inputs: dict | None) -> int:
    """Bytes of the tensors a trajectory hands to training (what crosses Ray's object store for it)."""
    return sum(v.numel() * v.element_size() for v in (mm_train_inputs or {}).values() if isinstance(v, torch.Tensor))


def _encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text` (no special tokens added). Runs in the worker pool: a few ms per observation.

    Goes to the Rust tokenizer directly when there is one: the same ids as the transformers wrapper, without the
    wrapper's per-call truncation/padding bookkeeping, which is not meant to be shared between threads.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.encode(text, add_special_tokens=False).ids
    return tokenizer.encode(text, add_special_tokens=False)


def _load_question_images(refs) -> tuple[list[Image.Image], list[str | None], int]:
    """(decoded RGB images, their URL when given as one, how many failed). Runs in the worker pool.

    Each image is fully decoded here: `Image.open` is lazy, and a truncated file would otherwise fail later,
    inside the processor, with the prompt already built.
    """
    refs = refs if isinstance(refs, list | tuple) else [refs]
    images, urls, failed = [], [], 0
    for ref in refs:
        if ref is None:
            continue
        try:
            (image,) = load_images([ref]) or [None]
            if image is None:
                raise ValueError("not loadable")
            image = image.convert("RGB")
        except Exception as err:
            logger.warning("question image %d could not be loaded: %s", len(images) + failed, type(err).__name__)
            failed += 1
            continue
        images.append(image)
        urls.append(ref if isinstance(ref, str) and ref.startswith(("http://", "https://")) else None)
    return images, urls, failed


def _turn_sampling_params(sampling_params, max_tokens: int, stops: list[str]):
    """A copy of OpenRLHF's sampling params for one turn: per-turn token limit, our stop strings kept in the output,
    the vision special tokens banned (`bad_words`, tokenised by the engine).

    vLLM's SamplingParams derives `output_text_buffer_length` from the stops at construction; with
    `include_stop_str_in_output` the buffer is 0, so it is set directly rather than left stale.
    """
    params = copy.deepcopy(sampling_params)
    own = getattr(params, "stop", None) or []
    own = [own] if isinstance(own, str) else list(own)
    params.stop = own + [s for s in stops if s not in own]
    banned = list(getattr(params, "bad_words", None) or [])
    params.bad_words = banned + [t for t in protocol.VISION_SPECIAL_TOKENS if t not in banned]
    params.include_stop_str_in_output = True
    params.max_tokens = max_tokens
    if hasattr(params, "output_text_buffer_length"):
        params.output_text_buffer_length = 0
    return params


def _action_log_probs(action: list[int], logprobs) -> list[float]:
    """The sampled tokens' log-probs from vLLM's per-position `{token_id: Logprob}` dicts (0.0 where missing)."""
    values = []
    for i, token in enumerate(action):
        entry = logprobs[i].get(token) if logprobs is not None and i < len(logprobs) and logprobs[i] else None
        values.append(float(entry.logprob) if entry is not None else 0.0)
    return values
