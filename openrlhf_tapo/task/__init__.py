"""The bundled synthetic multimodal search task (knowledge base, questions, tiny model, warm start, gates, report).

Its warm start and gates use the in-process driver (adapter/inprocess*.py), whose OpenRLHF classes import the
CUDA-only `vllm` / `flash_attn` at module level: the import stubs are installed here, before any submodule imports
OpenRLHF (see openrlhf_tapo/utils/cuda_stubs.py).
"""

from openrlhf_tapo.utils import cuda_stubs

cuda_stubs.install()
