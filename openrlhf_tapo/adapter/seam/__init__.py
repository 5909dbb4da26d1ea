"""Where we touch OpenRLHF, DeepSpeed, vLLM, Ray and torch at run time: every replacement and borrowed internal
declared and verified (patches.py), the injection into Ray workers, the one ray.init wrapper and worker hook, the
CPU profile."""
