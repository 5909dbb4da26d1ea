"""The ONE Ray worker setup hook: every worker process of a job we start applies the patch sets the job asked for.

Ray calls `setup_worker()` (named by `ray_workers.SETUP_HOOK`, which the driver's `ray.init` wrapper puts in the
job's runtime_env) in each worker before it runs any task or builds any actor. It sits apart from ray_workers.py, the
driver's side, because it imports the patch sets (cpu_profile.py, inject.py) and cpu_profile.py asks ray_workers.py
for its set: one module for both would import cpu_profile.py and be imported by it.
"""

from __future__ import annotations

import os

from openrlhf_tapo.adapter.seam.ray_workers import PATCH_SETS, PATCH_SETS_ENV


def setup_worker() -> None:
    """Ray `worker_process_setup_hook`: apply the job's patch sets ($OPENRLHF_TAPO_PATCH_SETS) in this worker process,
    in PATCH_SETS' order."""
    sets = [name for name in os.environ.get(PATCH_SETS_ENV, "injection").split(",") if name]
    unknown = sorted(set(sets) - set(PATCH_SETS))
    if unknown:
        raise ValueError(f"{PATCH_SETS_ENV}={','.join(sets)}: unknown patch set(s) {', '.join(unknown)}")
    if "cpu_profile" in sets:
        from openrlhf_tapo.adapter.seam.cpu_profile import apply_cpu_profile

        apply_cpu_profile()
    if "injection" in sets:
        from openrlhf_tapo.adapter.seam import inject

        inject.install()
