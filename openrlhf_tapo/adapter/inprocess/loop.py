"""The in-process RL driver: GRPO (+ TAPO) in one CPU process, with OpenRLHF's own classes.

`InProcessRL.step` is one step, top to bottom, in the order OpenRLHF's `PPOTrainer.train_step` runs it on a cluster:
rollout -> experiences -> log-probs -> advantages -> TAPO -> update, then the step's metrics. Rollouts go through our
`AgentExecutor` with `HFGenerationEngine` (the vLLM actor's `generate` contract on the actor's own transformers
model, so there are no weights to sync); everything after them is OpenRLHF's code (inprocess/trainer.py says which,
and what stands in for Ray and DeepSpeed), with our TAPO stage and PolicyLoss where the Ray workers have them.

The OpenRLHF args come from OpenRLHF's own parser on the run spec's rendering (adapter/run_spec.py), the one the Ray
demo passes to examples/scripts/train_tapo_cpu.sh, with `args.tapo` from the same spec.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController
from openrlhf.utils.logging_utils import TensorboardLogger

from openrlhf_tapo.adapter.inprocess.agent_rollouts import rollout, sampling_params, summarize_responses
from openrlhf_tapo.adapter.inprocess.trainer import (
    InProcessStrategy,
    attach_log_probs,
    build_actor_trainer,
    build_optimizer_and_scheduler,
    ppo_train,
    responses_to_experiences,
    rollout_stats,
)
from openrlhf_tapo.adapter.run_spec import RLConfig, output_flags
from openrlhf_tapo.adapter.seam.patches import INPROCESS, verify
from openrlhf_tapo.adapter.stage.credit_args import STEP_ESTIMATORS, estimator_namespace
from openrlhf_tapo.adapter.stage.experience_stage import TAPOExperienceMaker
from openrlhf_tapo.adapter.stage.openrlhf_args import OPENRLHF_LOSS_TYPE, parse_openrlhf_args
from openrlhf_tapo.agent.executor import AgentExecutor
from openrlhf_tapo.agent.hf_engine import HFGenerationEngine
from openrlhf_tapo.algorithms.estimators import ESTIMATORS
from openrlhf_tapo.utils.step_line import step_line

RUN_NAME = "rl"  # --logger.wandb.run_name: OpenRLHF's TensorboardLogger writes to run_dir/tensorboard/rl


def build_openrlhf_args(config: RLConfig, model_dir: Path, run_dir: Path):
    """OpenRLHF's parsed and validated args for this run, plus `args.tapo` and the other estimators' `args.<name>` as
    our CLI sets them from `tapo_flags`.

    Policy-loss types OpenRLHF's parser does not know (gspo_token, sapo: ours) are parsed as their nearest OpenRLHF
    type (`OPENRLHF_LOSS_TYPE`, as our launcher does) and set after.
    """
    argv = config.openrlhf_flags()
    argv[argv.index("--actor.policy_loss_type") + 1] = OPENRLHF_LOSS_TYPE[config.policy_loss_type]
    argv += ["--actor.model_name_or_path", str(model_dir), "--ckpt.output_dir", str(run_dir / "checkpoint")]
    args = parse_openrlhf_args(argv + output_flags(run_dir, RUN_NAME))
    args.actor.policy_loss_type = config.policy_loss_type
    args.tapo = estimator_namespace(config.tapo_enable, config.tapo)
    for name in STEP_ESTIMATORS:
        on = name in config.step_credit
        setattr(args, name, estimator_namespace(on, config.step_credit[name] if on else ESTIMATORS[name].config()))
    return args


def sampled_entropy(experiences) -> float:
    """Entropy estimate of the rollout policy: mean -log p of the sampled action tokens (one sample per position, no
    full softmax)."""
    tokens = sum(float(e.action_mask.sum()) for e in experiences)
    return -sum(float((e.action_log_probs * e.action_mask).sum()) for e in experiences) / max(tokens, 1.0)


def weight_change(parameters, initial: list[torch.Tensor]) -> float:
    """L2 norm of (`parameters` now - `initial`, their detached copies from before training)."""
    return float(torch.sqrt(sum(((p.detach() - q) ** 2).sum() for p, q in zip(parameters, initial, strict=True))))


def prompt_batches(rows: list[dict], per_step: int, seed: int) -> Iterator[list[dict]]:
    """Endless batches of `per_step` rows, drawn without replacement from a seeded shuffle of `rows` that is redrawn
    each time it runs out (a batch may straddle two passes): every row is seen once per pass."""
    rng, order = random.Random(seed), []
    while True:
        batch = []
        while len(batch) < per_step:
            if not order:
                order = list(rows)
                rng.shuffle(order)
            batch.append(order.pop())
        yield batch


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
        verify(INPROCESS, "in-process driver's borrowed OpenRLHF internals")  # before any of them is used
        self.config = config
        self.run_dir = Path(run_dir)
        self.args = build_openrlhf_args(config, model_dir, self.run_dir)
        self.actor = actor
        self.processor = processor
        self.executor = AgentExecutor(agent_config)
        self.engine = HFGenerationEngine(actor.model, processor)
        args = self.args
        self.strategy = InProcessStrategy(
            args, args.train.batch_size // args.train.micro_batch_size, args.actor.max_norm
        )
        # the lr schedule counts optimizer steps, as OpenRLHF's
        updates = config.steps * config.updates_per_step
        self.optimizer, self.scheduler = build_optimizer_and_scheduler(actor, args, updates)
        self.trainer = build_actor_trainer(self.strategy, actor, self.optimizer, self.scheduler, processor)
        self.kl_ctl = FixedKLController(args.algo.kl.init_coef)
        self.maker = TAPOExperienceMaker(
            None, None, None, None, self.kl_ctl, self.strategy, processor, agent_config=agent_config
        )
        self._steps_done = 0
        # the question kinds of the training rows when they have several (`train` sets them): every step then logs
        # the accuracy and tool-call rate of each kind it drew (`kind/<kind>/...`), even when it drew only one
        self.kinds: list[str] | None = None
        self.last_advantages: list[tuple[list[int], torch.Tensor, torch.Tensor]] = []

    def step(self, rows: list[dict], engine=None) -> dict[str, float]:
        """One RL step on `rows`; `engine` (default: the actor's own) may be one engine per trajectory.

        The step's (rollout index, advantages after TAPO, action mask) per micro-batch stay in `self.last_advantages`
        for inspection (`ppo_train` clears `experience.index`)."""
        args, config = self.args, self.config
        t0 = time.time()
        # 1. rollout: n trajectories per prompt through our agent, seeded per trajectory and step
        self.actor.eval()
        responses = rollout(
            self.executor, rows, config.n_samples_per_prompt, sampling_params(args), args.data.max_len,
            self.processor, engine or self.engine, seed=config.seed * 1_000_003 + self._steps_done * 10_007,
        )  # fmt: skip
        self._steps_done += 1
        t1 = time.time()
        # 2. experiences: SamplesGenerator's conversion, then the maker's micro-batches (sets experience.index)
        experiences = self.maker.split_rollout_samples(responses_to_experiences(responses, args.data.max_len))
        # 3. log-probs: PolicyModelActor.forward per micro-batch (no reference model, no critic: zero KL)
        attach_log_probs(self.actor, experiences, temperature=args.rollout.temperature)
        entropy = sampled_entropy(experiences)
        # 4 + 5. advantages, then TAPO: the one call the Ray trainer makes, TAPOExperienceMaker's
        # compute_advantages_and_returns = OpenRLHF's (group_norm over the whole batch), then `apply_credit`
        experiences = self.maker.compute_advantages_and_returns(experiences)
        self.last_advantages = [(list(e.index), e.advantages.clone(), e.action_mask.clone()) for e in experiences]
        stats = rollout_stats(experiences)
        t2 = time.time()
        # 6. update: ActorPPOTrainer.ppo_train over the batch in its replay buffer, with our PolicyLoss
        status = ppo_train(self.trainer, experiences, self.kl_ctl.value)
        t3 = time.time()
        # metrics: ppo_train's status (every `info` entry: the agent's extra_logs, tapo/*) + the rollout's
        status.update(stats)
        status["policy/entropy"] = entropy
        status.update(summarize_responses(responses, self.kinds))
        status.update({"timing/rollout": t1 - t0, "timing/make_experience": t2 - t1, "timing/ppo_train": t3 - t2})
        return {k: float(v) for k, v in status.items() if isinstance(v, int | float)}

    def train(self, train_rows: list[dict], progress: Callable[[str], None] = print) -> RLResult:
        config = self.config
        batches = prompt_batches(train_rows, config.prompts_per_step, config.seed)
        kinds = sorted({str(row["datasource"]) for row in train_rows if row.get("datasource") is not None})
        self.kinds = kinds if len(kinds) > 1 else None
        initial = [p.detach().clone() for p in self.actor.parameters()]
        logger = TensorboardLogger(self.args)
        metrics_path = self.run_dir / "metrics.jsonl"
        metrics = []
        start = time.time()
        with metrics_path.open("w") as f:
            for step in range(1, config.steps + 1):
                status = self.step(next(batches))
                status["step"] = step
                logger.log_train(step, status)
                f.write(json.dumps(status) + "\n")
                f.flush()
                metrics.append(status)
                progress(f"  step {step}/{config.steps}: {step_line(status)} ({time.time() - start:.0f} s)")
        logger.close()
        change = weight_change(self.actor.parameters(), initial)
        checkpoint = self.run_dir / "checkpoint"
        self.actor.model.save_pretrained(checkpoint)
        self.processor.save_pretrained(checkpoint)
        return RLResult(config.steps, metrics, change, checkpoint, time.time() - start)
