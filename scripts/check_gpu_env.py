#!/usr/bin/env python3
"""Check a GPU node's environment for a TAPO run, and print what is wrong: `python scripts/check_gpu_env.py`.

- openrlhf is 0.11.2, and torch / vllm / flash-attn / deepspeed / ray / transformers are at the versions it pins (read
  from the installed OpenRLHF's own metadata, its `vllm` extra included; torch's pin from vLLM's metadata);
- CUDA is visible to torch (how many devices, which);
- our injection works: Ray's worker setup hook imports and patches OpenRLHF's trainer and actor modules.

Exit status 0 when everything is in place, 1 otherwise. The install sequence that gets there is in README.md
("Install on a GPU cluster").
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import sys

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

OPENRLHF_VERSION = "0.11.2"
CHECKED = ("torch", "vllm", "flash-attn", "deepspeed", "ray", "transformers")
FIX = 'README.md, "Install on a GPU cluster"'


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def pins() -> dict[str, str]:
    """{package: version specifier} for CHECKED, from OpenRLHF's metadata (base + vllm extra) and vLLM's (torch)."""
    found = {}
    for source, extra in (("openrlhf", "vllm"), ("vllm", None)):
        for line in metadata.requires(source) if _version(source) else []:
            req = Requirement(line)
            if req.name in CHECKED and req.name not in found and req.specifier:
                if req.marker is None or req.marker.evaluate({"extra": extra or ""}):
                    found[req.name] = str(req.specifier)
    return found


def check_versions() -> list[str]:
    problems = []
    installed = _version("openrlhf")
    if installed != OPENRLHF_VERSION:
        problems.append(f"openrlhf: found {installed or 'nothing'}, want {OPENRLHF_VERSION} (see {FIX})")
        if installed is None:
            return problems
    wanted = pins()
    for name in CHECKED:
        version = _version(name)
        req = wanted.get(name)
        if version is None:
            problems.append(f"{name}: not installed, want {name}{req or ''} (see {FIX})")
        elif req is not None and not SpecifierSet(req).contains(version, prereleases=True):
            problems.append(f"{name}: found {version}, want {name}{req} (see {FIX})")
        else:
            print(f"ok    {name} {version}" + (f" (OpenRLHF pins {req})" if req else ""))
    return problems


def check_cuda() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return [f"CUDA: torch {torch.__version__} sees no GPU (CPU build of torch, or CUDA_VISIBLE_DEVICES / driver)"]
    names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
    print(f"ok    CUDA {torch.version.cuda}: {torch.cuda.device_count()} device(s): {', '.join(names)}")
    return []


def check_injection() -> list[str]:
    """Run the hook Ray runs in every worker (adapter/seam/worker_hook.py, applying adapter/seam/inject.py), then
    import the modules it patches."""
    try:
        from openrlhf_tapo.adapter.seam import inject, ray_workers

        module, _, name = ray_workers.SETUP_HOOK.rpartition(".")
        getattr(importlib.import_module(module), name)()
        for patched in inject.PATCHES:
            importlib.import_module(patched)
    except Exception as err:  # any import failure is the finding to report
        return [f"injection: {type(err).__name__}: {err} (pip install -e . on every node, at the same path)"]
    missing = sorted(set(inject.PATCHES) - set(inject.PATCHED))
    if missing:
        return [f"injection: OpenRLHF modules not patched: {', '.join(missing)}"]
    print(f"ok    injection: {ray_workers.SETUP_HOOK} patches {', '.join(inject.PATCHES)}")
    return []


def main() -> int:
    problems = check_versions() + check_cuda() + check_injection()
    for problem in problems:
        print(f"FAIL  {problem}")
    print("GPU environment ready" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
