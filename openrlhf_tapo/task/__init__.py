"""The bundled synthetic multimodal search task (knowledge base, questions, tiny model, warm start, gates, report).

Its warm start and gates use the in-process driver (adapter/inprocess/), whose OpenRLHF classes import the CUDA-only
`vllm` / `flash_attn` at module level: on a CPU machine, call `openrlhf_tapo.utils.cuda_stubs.install()` first, as
the demo and the study do (importing this package installs nothing).
"""
