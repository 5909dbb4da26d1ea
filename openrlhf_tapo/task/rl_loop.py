"""The in-process RL driver: GRPO (+ TAPO) on the bundled task, one CPU process, OpenRLHF's own classes.

One step, in the order OpenRLHF's `PPOTrainer.train_step` runs it on a cluster:

1. rollouts: `rollout.batch_size` prompts x `n_samples_per_prompt`, each through our `AgentExecutor` (tools
   against the local index) with `HFGenerationEngine` (the vLLM-actor `generate` contract on the actor's own
   transformers model, so there are no weights to sync);
2. `SamplesGenerator._process_response_into_experience` -> `RemoteExperienceMaker.split_rollout_samples`
   (via our `TAPOExperienceMaker`) -> `PolicyModelActor.forward` log-probs -> the maker's
   `compute_advantages_and_returns`: OpenRLHF's group_norm advantages, then our TAPO stage;
3. `ActorPPOTrainer.ppo_train` with our `PolicyLoss` (ppo / gspo / gspo_token / sapo);
4. metrics: `BasePPOTrainer._compute_rollout_stats` + the ppo_train status (which carries every `info` entry:
   the agent's extra_logs and the `tapo/*` diagnostics), written to `metrics.jsonl` and, through OpenRLHF's
   `TensorboardLogger`, as `train/<key>` scalars.

The OpenRLHF args come from OpenRLHF's own parser (`parse_openrlhf_args`) with our `args.tapo` added as our CLI
adds it, so the same flags drive this loop and the Ray pipeline (`openrlhf_tapo.cli.train_ppo_ray`).
See openrlhf_tapo/task/inprocess.py for what stands in for Ray and DeepSpeed, and why.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController
from openrlhf.utils.logging_utils import TensorboardLogger
from transformers import get_scheduler

from openrlhf_tapo.adapter.config import tapo_namespace
from openrlhf_tapo.adapter.experience_stage import TAPOExperienceMaker
from openrlhf_tapo.adapter.openrlhf_args import OPENRLHF_LOSS_TYPE, parse_openrlhf_args
from openrlhf_tapo.adapter.policy_loss import build_policy_loss
from openrlhf_tapo.agent.executor import AgentExecutor
from openrlhf_tapo.agent.hf_engine import HFGenerationEngine
from openrlhf_tapo.algorithms.tapo import TAPOConfig
from openrlhf_tapo.task.inprocess import (
    InProcessStrategy,
    attach_log_probs,
    build_actor_trainer,
    ppo_train,
    responses_to_experiences,
    rollout_stats,
)

AGENT_FUNC_PATH = str(Path(__file__).resolve().parents[1] / "agent" / "executor.py")


@dataclass
class RLConfig:
    """The RL run. Field names follow the OpenRLHF flag each one sets (`openrlhf_argv`).

    steps: RL steps (one rollout batch + one ppo_train epoch each).
    prompts_per_step / n_samples_per_prompt: `--rollout.batch_size` / `--rollout.n_samples_per_prompt` (GRPO groups).
    micro_batch_size: `--train.micro_batch_size` (the optimizer steps once per step: gradient accumulation).
    lr: `--actor.adam.lr` (large: the model is tiny). temperature: `--rollout.temperature`.
    max_len: `--data.max_len`, prompt + all turns of a trajectory.
    policy_loss_type: `--actor.policy_loss_type` (ppo | gspo | gspo_token | sapo).
    tapo_enable / tapo: `--tapo.enable` and the TAPOConfig fields (`--tapo.beta`, ...).
    """

    steps: int = 12
    prompts_per_step: int = 4
    n_samples_per_prompt: int = 4
    micro_batch_size: int = 4
    lr: float = 5e-4
    temperature: float = 1.0
    max_len: int = 1536
    policy_loss_type: str = "ppo"
    entropy_coef: float | None = None
    tapo_enable: bool = True
    tapo: TAPOConfig = field(default_factory=TAPOConfig)
    seed: int = 0

    def openrlhf_argv(
        self, model_dir: Path, run_dir: Path, prompts: Path | None = None, eval_prompts: Path | None = None
    ) -> list[str]:
        """OpenRLHF flags of this run; with `prompts` (the task's prompt jsonl) also the dataset flags the Ray
        pipeline reads its prompts with (the in-process loop takes the rows directly)."""
        batch = self.prompts_per_step * self.n_samples_per_prompt
        argv = [
            "--actor.model_name_or_path", str(model_dir),
            "--actor.num_gpus_per_node", "1",
            "--algo.advantage.estimator", "group_norm",
            "--algo.kl.init_coef", "0",
            "--rollout.batch_size", str(self.prompts_per_step),
            "--rollout.n_samples_per_prompt", str(self.n_samples_per_prompt),
            "--rollout.micro_batch_size", str(self.n_samples_per_prompt),
            "--rollout.temperature", str(self.temperature),
            "--train.batch_size", str(batch),
            "--train.micro_batch_size", str(self.micro_batch_size),
            "--train.max_epochs", "1",
            "--train.seed", str(self.seed),
            "--train.agent_func_path", AGENT_FUNC_PATH,
            "--data.max_len", str(self.max_len),
            "--actor.adam.lr", str(self.lr),
            "--actor.lr_warmup_ratio", "0",
            "--actor.policy_loss_type", self.policy_loss_type,
            "--ckpt.output_dir", str(run_dir / "checkpoint"),
            "--logger.tensorboard_dir", str(run_dir / "tensorboard"),
            "--logger.wandb.run_name", "rl",
        ]  # fmt: skip
        if self.entropy_coef is not None:
            argv += ["--actor.entropy_coef", str(self.entropy_coef)]
        if prompts is not None:
            argv += ["--data.prompt_dataset", str(prompts), "--data.input_key", "prompt", "--data.label_key", "label"]
            argv += ["--data.image_key", "images"]
        if eval_prompts is not None:
            argv += ["--eval.dataset", str(eval_prompts)]
        return argv


def build_openrlhf_args(config: RLConfig, model_dir: Path, run_dir: Path):
    """OpenRLHF's parsed and validated args for this run, plus `args.tapo` as our CLI sets it.

    Policy-loss types OpenRLHF's parser does not know (gspo_token, sapo: ours) are parsed as their nearest OpenRLHF
    type (`OPENRLHF_LOSS_TYPE`, as our launcher does) and set after.
    """
    argv = config.openrlhf_argv(model_dir, run_dir)
    argv[argv.index("--actor.policy_loss_type") + 1] = OPENRLHF_LOSS_TYPE[config.policy_loss_type]
    args = parse_openrlhf_args(argv)
    args.actor.policy_loss_type = config.policy_loss_type
    args.tapo = tapo_namespace(config.tapo_enable, config.tapo)
    return args


def sampling_params(args, temperature: float | None = None):
    """The SamplingParams OpenRLHF's `SamplesGenerator._dispatch_prompts_to_vllm` builds from the rollout flags."""
    from vllm import SamplingParams

    return SamplingParams(
        temperature=args.rollout.temperature if temperature is None else temperature,
        top_p=1.0,
        top_k=-1,
        max_tokens=None,
        min_tokens=1,
        skip_special_tokens=False,
        logprobs=None,
    )


def _with_seed(sp, seed: int | None):
    sp = sp.clone()
    if seed is not None:
        sp.seed = seed
    return sp


async def _rollouts(executor, rows, n: int, sp, max_len: int, processor, engine, seed) -> list[dict]:
    engines = engine if isinstance(engine, list) else [engine] * (len(rows) * n)
    tasks = [
        executor.execute(
            row["prompt"], row["label"], _with_seed(sp, None if seed is None else seed + i * n + j), max_len,
            processor, engines[i * n + j], images=row["images"],
        )
        for i, row in enumerate(rows)
        for j in range(n)
    ]  # fmt: skip
    return list(await asyncio.gather(*tasks))


def rollout(executor, rows, n, sp, max_len, processor, engine, seed: int | None = None) -> list[dict]:
    """`n` trajectories per row, in OpenRLHF's rollout order (a prompt's samples are consecutive).

    `engine` serves every trajectory, or is a list with one engine per trajectory (in rollout order). With `seed`,
    trajectory k samples with the per-request seed `seed + k` (vLLM's `SamplingParams.seed`), so the rollouts do
    not depend on the order in which concurrent requests reach the engine.
    """
    return asyncio.run(_rollouts(executor, rows, n, sp, max_len, processor, engine, seed))


def summarize_responses(responses: list[dict]) -> dict[str, float]:
    """Accuracy and tool use of a set of trajectories (means of the agent's `extra_logs` and scores)."""
    if not responses:
        return {}
    keys = responses[0]["extra_logs"].keys()
    out = {f"agent/{k}": sum(r["extra_logs"][k] for r in responses) / len(responses) for k in keys}
    out["accuracy"] = sum(float(r["scores"] or 0.0) for r in responses) / len(responses)
    out["reward"] = sum(float(r["reward"] or 0.0) for r in responses) / len(responses)
    out["tool_call_rate"] = sum(r["extra_logs"]["tool_calls"] > 0 for r in responses) / len(responses)
    return out


def evaluate(
    executor, rows, processor, engine, args, max_len: int, temperature: float = 0.0, samples: int = 1, seed=None
) -> tuple[dict[str, float], list[dict]]:
    """`samples` rollouts of every row at `temperature` (default: one greedy); returns the summary and the responses.
    With `seed` the sampling seeds are fixed (`rollout`), so policies compared on them draw the same random numbers."""
    sp = sampling_params(args, temperature=temperature)
    responses = rollout(executor, rows, samples, sp, max_len, processor, engine, seed=seed)
    return summarize_responses(responses), responses


@dataclass
class RLResult:
    steps: int
    metrics: list[dict]
    weight_change: float  # L2 norm of (final - initial) parameters
    checkpoint: Path
    seconds: float


class InProcessRL:
    """The RL run over `actor` (an OpenRLHF `Actor`) with `processor`; see the module docstring for one step."""

    def __init__(self, actor, processor, agent_config, config: RLConfig, model_dir: Path, run_dir: Path):
        self.config = config
        self.run_dir = Path(run_dir)
        self.args = build_openrlhf_args(config, model_dir, self.run_dir)
        self.actor = actor
        self.processor = processor
        self.executor = AgentExecutor(agent_config)
        self.engine = HFGenerationEngine(actor.model, processor)
        args = self.args
        batch = config.prompts_per_step * config.n_samples_per_prompt
        self.strategy = InProcessStrategy(args, batch // config.micro_batch_size, args.actor.max_norm)
        adam = args.actor.adam
        params = [p for p in actor.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=adam.lr, betas=adam.betas, eps=adam.eps, weight_decay=adam.weight_decay
        )
        self.scheduler = get_scheduler(
            args.actor.lr_scheduler,
            self.optimizer,
            num_warmup_steps=math.ceil(config.steps * args.actor.lr_warmup_ratio),
            num_training_steps=config.steps,
            scheduler_specific_kwargs={"min_lr": adam.lr * args.actor.min_lr_ratio},
        )
        self.trainer = build_actor_trainer(
            self.strategy, actor, self.optimizer, self.scheduler, build_policy_loss(args), processor
        )
        self.kl_ctl = FixedKLController(args.algo.kl.init_coef)
        self.maker = TAPOExperienceMaker(
            None, None, None, None, self.kl_ctl, self.strategy, processor, agent_config=agent_config
        )
        self._steps_done = 0
        self.last_advantages: list[tuple[list[int], torch.Tensor, torch.Tensor]] = []

    def step(self, rows: list[dict], engine=None) -> dict[str, float]:
        """One RL step on `rows`; `engine` (default: the actor's own) may be one engine per trajectory.

        The step's (rollout index, advantages after TAPO, action mask) per micro-batch stay in `self.last_advantages`
        for inspection (`ppo_train` clears `experience.index`)."""
        args, config = self.args, self.config
        t0 = time.time()
        self.actor.eval()
        responses = rollout(
            self.executor, rows, config.n_samples_per_prompt, sampling_params(args), args.data.max_len,
            self.processor, engine or self.engine, seed=config.seed * 1_000_003 + self._steps_done * 10_007,
        )  # fmt: skip
        self._steps_done += 1
        t1 = time.time()
        samples = responses_to_experiences(responses, args.data.max_len)
        experiences = self.maker.split_rollout_samples(samples)
        attach_log_probs(self.actor, experiences)
        # entropy estimate: mean -log p of the sampled action tokens (a single-sample estimate, no full softmax)
        tokens = sum(float(e.action_mask.sum()) for e in experiences)
        entropy = -sum(float((e.action_log_probs * e.action_mask).sum()) for e in experiences) / max(tokens, 1.0)
        experiences = self.maker.compute_advantages_and_returns(experiences)
        self.last_advantages = [(list(e.index), e.advantages.clone(), e.action_mask.clone()) for e in experiences]
        stats = rollout_stats(experiences)
        t2 = time.time()
        status = ppo_train(self.trainer, experiences, self.kl_ctl.value)
        t3 = time.time()
        status.update(stats)
        status["policy/entropy"] = entropy
        status.update(summarize_responses(responses))
        status.update({"timing/rollout": t1 - t0, "timing/make_experience": t2 - t1, "timing/ppo_train": t3 - t2})
        return {k: float(v) for k, v in status.items() if isinstance(v, int | float)}

    def train(self, train_rows: list[dict], progress: Callable[[str], None] = print) -> RLResult:
        config = self.config
        rng = random.Random(config.seed)
        initial = [p.detach().clone() for p in self.actor.parameters()]
        logger = TensorboardLogger(self.args)
        metrics_path = self.run_dir / "metrics.jsonl"
        metrics = []
        start = time.time()
        order: list[dict] = []
        with metrics_path.open("w") as f:
            for step in range(1, config.steps + 1):
                rows = []
                while len(rows) < config.prompts_per_step:
                    if not order:
                        order = list(train_rows)
                        rng.shuffle(order)
                    rows.append(order.pop())
                status = self.step(rows)
                status["step"] = step
                logger.log_train(step, status)
                f.write(json.dumps(status) + "\n")
                f.flush()
                metrics.append(status)
                progress(
                    f"  step {step}/{config.steps}: reward {status['rollout/reward_mean']:.2f} "
                    f"acc {status['accuracy']:.2f} tool calls/traj {status['agent/tool_calls']:.2f} "
                    f"TAPO corrected {status.get('tapo/corrected_calls', 0):.0f} calls, "
                    f"loss {status.get('policy_loss', float('nan')):.4f} ({time.time() - start:.0f} s)"
                )
        logger.close()
        change = torch.sqrt(
            sum(((p.detach() - q) ** 2).sum() for p, q in zip(self.actor.parameters(), initial, strict=True))
        )
        checkpoint = self.run_dir / "checkpoint"
        self.actor.model.save_pretrained(checkpoint)
        self.processor.save_pretrained(checkpoint)
        return RLResult(config.steps, metrics, float(change), checkpoint, time.time() - start)
