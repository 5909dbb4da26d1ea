"""Make an HF checkpoint loadable by `cli.evaluate` on its own: the processor and tokenizer files of the model it
was trained from.

OpenRLHF's `DeepspeedStrategy.save_model` writes the weights, config.json and `tokenizer.save_pretrained`: for a
vision-language model the image processor's files (preprocessor_config.json, the chat template, ...) are missing,
and `AutoProcessor.from_pretrained(checkpoint)` fails ("Can't load image processor"). The Ray entry point
(`cli/train_ppo_ray.py`) completes every HF checkpoint it leaves with the files of the starting model.
"""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

from openrlhf_tapo.eval.engines import load_processor

# what a processor or tokenizer is saved as (transformers' names; *.py: the remote code a processor class may need)
PROCESSOR_FILES = ("*token*", "*processor*", "chat_template*", "vocab*", "merges.txt", "*.tiktoken", "*.model", "*.py")


def complete_checkpoint(model_source: str | Path, checkpoint_dir: str | Path) -> list[str]:
    """Copy into `checkpoint_dir` the processor and tokenizer files (`PROCESSOR_FILES`) of `model_source` it lacks
    (a local model folder; a hub id is loaded with the project's processor loader and saved there instead). Files
    the checkpoint has are never overwritten; weights, configs and run records are never copied. Returns the names
    written."""
    source, dest = Path(model_source), Path(checkpoint_dir)
    if not dest.is_dir():
        raise FileNotFoundError(f"complete_checkpoint: no checkpoint folder {dest}; train first, or name the folder")
    if not source.is_dir():
        before = {p.name for p in dest.iterdir()}
        load_processor(str(model_source)).save_pretrained(str(dest))
        return sorted({p.name for p in dest.iterdir()} - before)
    written = []
    for path in sorted(source.iterdir()):
        wanted = any(fnmatch.fnmatch(path.name, pattern) for pattern in PROCESSOR_FILES)
        if wanted and path.is_file() and not (dest / path.name).exists():
            shutil.copy2(path, dest / path.name)
            written.append(path.name)
    return written
