"""The bundled synthetic multimodal search task (knowledge base, questions, warm start, in-process RL loop).

Its modules drive OpenRLHF's RL classes on CPU, which import the CUDA-only `vllm` / `flash_attn` at module level:
the import stubs are installed here, before any submodule imports OpenRLHF (see openrlhf_tapo/utils/cuda_stubs.py).
"""

from openrlhf_tapo.utils import cuda_stubs

cuda_stubs.install()
