"""What a launch needs, at toy size: a model folder, prompt data in OpenRLHF's layout written by our converter, and
an agent YAML whose local index is built. Shared by the launcher, preflight, launch-script and cluster-doc tests."""

from pathlib import Path
from types import SimpleNamespace

import yaml
from _agent_helpers import make_index, picture


def launch_inputs(root: Path) -> SimpleNamespace:
    from openrlhf_tapo.agent.data import write_openrlhf_jsonl
    from openrlhf_tapo.agent.datasets import AgentSample

    root.mkdir(parents=True, exist_ok=True)
    make_index(root / "index")
    image = root / "q.png"
    picture(0).save(image)
    samples = [
        AgentSample(question=f"Which city is shown in picture {i}?", answer="Paris", images=[image.read_bytes()])
        for i in range(3)
    ]
    for i, sample in enumerate(samples):
        sample.index = i
    data = write_openrlhf_jsonl(samples, root / "train.jsonl")
    agent_config = root / "agent.yaml"
    agent_config.write_text(
        yaml.safe_dump({"tools": {"backend": {"kind": "local", "index_dir": str(root / "index")}}})
    )
    model = root / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")  # what the preflight looks for; no weights are loaded before Ray
    return SimpleNamespace(model=model, data=data, agent_config=agent_config, save=root / "exp")
