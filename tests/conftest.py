"""Test setup shared by every test file.

OpenRLHF's RL modules import the CUDA-only `vllm` and `flash_attn` at module level; on a CPU machine they are
replaced by import stubs (see openrlhf_tapo/utils/cuda_stubs.py for why and how). Everything else, OpenRLHF
included, is the real installed code.
"""

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from openrlhf_tapo.utils import cuda_stubs  # noqa: E402

cuda_stubs.install()
