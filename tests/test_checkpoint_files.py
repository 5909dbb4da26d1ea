"""A checkpoint saved the way OpenRLHF's `DeepspeedStrategy.save_model` saves it (weights, config, tokenizer) cannot
be loaded by `cli.evaluate` ("Can't load image processor"); `eval.checkpoint.complete_checkpoint`, which the Ray
entry point runs on every HF checkpoint it leaves (`cli.train_ppo_ray.complete_checkpoints`), makes it loadable."""

from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from openrlhf_tapo.cli.train_ppo_ray import complete_checkpoints
from openrlhf_tapo.eval.checkpoint import complete_checkpoint
from openrlhf_tapo.eval.engines import load_engine, load_processor
from openrlhf_tapo.task.tiny_model import build_tiny_vlm


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("model"), ["Which city? Paris Lyon"], vocab_size=300)


def openrlhf_save(model_dir, out):
    """What `DeepspeedStrategy.save_model` writes: save_pretrained of the model, its config, the tokenizer."""
    Qwen2_5_VLForConditionalGeneration.from_pretrained(str(model_dir)).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(out)
    return out


def test_a_tokenizer_only_checkpoint_fails_and_the_completed_one_loads(model_dir, tmp_path):
    (model_dir / "warm_start.json").write_text("{}")  # a run record beside the weights: not the checkpoint's
    checkpoint = openrlhf_save(model_dir, tmp_path / "checkpoint")
    weights = {p.name: p.read_bytes() for p in checkpoint.iterdir() if p.suffix == ".safetensors"}
    with pytest.raises(OSError, match="without its image processor's files.*complete_checkpoint"):
        load_processor(checkpoint)
    saved = {p.name for p in checkpoint.iterdir()}
    written = complete_checkpoint(model_dir, checkpoint)
    # the processor's files (and the remote code it names), nothing the checkpoint had, no run record, no weights
    assert "processor_config.json" in written and not saved & set(written)
    assert {name for name in written if not name.endswith(".py")} == {"processor_config.json"}
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir() if p.suffix == ".safetensors"} == weights
    _, processor, backend = load_engine(checkpoint, backend="hf")
    assert backend == "hf" and processor.image_processor is not None
    assert complete_checkpoint(model_dir, checkpoint) == []  # nothing left to add, nothing overwritten


def test_the_launcher_completes_the_final_and_the_step_checkpoints(model_dir, tmp_path):
    final = openrlhf_save(model_dir, tmp_path / "final")
    step = openrlhf_save(model_dir, tmp_path / "ckpt" / "global_step2_hf")
    (tmp_path / "ckpt" / "_actor").mkdir()  # DeepSpeed states: not an HF checkpoint
    args = SimpleNamespace(
        actor=SimpleNamespace(model_name_or_path=str(model_dir)),
        ckpt=SimpleNamespace(output_dir=str(final), path=str(tmp_path / "ckpt"), save_hf=True),
    )
    assert complete_checkpoints(args) == [final, step]
    for folder in (final, step):
        assert load_processor(folder).image_processor is not None


def test_a_missing_checkpoint_folder_is_named(model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        complete_checkpoint(model_dir, tmp_path / "nope")
