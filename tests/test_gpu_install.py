"""The GPU install as README.md writes it, and scripts/check_gpu_env.py, against the installed OpenRLHF's own pins."""

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _load_checker():
    spec = importlib.util.spec_from_file_location("check_gpu_env", REPO / "scripts" / "check_gpu_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _install_block() -> list[str]:
    section = REPO.joinpath("README.md").read_text().split("## Install on a GPU cluster", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def test_readme_installs_torch_then_flash_attn_without_isolation_then_the_extra():
    commands = _install_block()
    order = [
        next(i for i, c in enumerate(commands) if c.startswith("pip install torch==")),
        next(i for i, c in enumerate(commands) if "flash-attn==" in c and "--no-build-isolation" in c),
        next(i for i, c in enumerate(commands) if c == 'pip install -e ".[gpu]"'),
        next(i for i, c in enumerate(commands) if c == "python scripts/check_gpu_env.py"),
    ]
    assert order == sorted(order)


def test_readme_versions_are_openrlhfs_pins():
    pins = _load_checker().pins()  # from the installed openrlhf 0.11.2's metadata
    assert {"deepspeed", "flash-attn", "ray", "transformers", "vllm"} <= set(pins)
    section = REPO.joinpath("README.md").read_text().split("## Install on a GPU cluster", 1)[1].split("\n## ", 1)[0]
    named = dict(re.findall(r"([a-z][a-z-]*)(?:\[\w+\])?==(\d[\w.]*)", section))
    for name, spec in pins.items():
        assert named.get(name) and spec == f"=={named[name]}", name


def test_checker_names_wrong_and_missing_packages(monkeypatch, capsys):
    checker = _load_checker()
    real = checker._version
    fake = {"deepspeed": "0.18.0", "flash-attn": None}
    monkeypatch.setattr(checker, "_version", lambda name: fake[name] if name in fake else real(name))
    problems = checker.check_versions()
    assert any(p.startswith("deepspeed: found 0.18.0, want deepspeed==0.19.6") for p in problems)
    assert any(p.startswith("flash-attn: not installed, want flash-attn==2.8.3") for p in problems)
    assert "ok    transformers 5.15.0" in capsys.readouterr().out
    fake["openrlhf"] = "0.10.0"
    assert checker.check_versions()[0].startswith("openrlhf: found 0.10.0, want 0.11.2")


def test_checker_reports_no_cuda_on_this_machine():
    import torch

    problems = _load_checker().check_cuda()
    assert bool(problems) is not torch.cuda.is_available()
