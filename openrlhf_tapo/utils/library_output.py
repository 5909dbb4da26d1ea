"""Library output a newcomer cannot act on goes to the run's log file, not to the console.

Libraries print when they load and when they run: torch's pynvml FutureWarning, bitsandbytes' "Failed to load CPU
gemm_4bit_forward from kernels-community" line, DeepSpeed's "Setting accelerator to CPU" warning and its op
builders' linker errors, transformers' deprecation notes. `quiet_output(log_path)` points file descriptors 1 and 2
(and Python's sys.stdout / sys.stderr) at a log file while a block runs and hands back a stream on the terminal:
the demo and the study run entirely inside it. Entry points that print their own results on the console
(`cli.evaluate`, the launcher's dry run) use `quiet_imports`: the noisy libraries are imported inside it, so what
they print on import lands in the log, and later imports of them are silent.

    python -m openrlhf_tapo.utils.library_output MODULE FLAGS...   # MODULE's __main__ after quiet_imports

runs an entry point that imports them at module level (the launch scripts' dry runs: `cli.train_ppo_ray`), with
the log beside its checkpoint (`launch_log_path`); `adapter/seam/cpu_profile.py` does the same before its patches.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import runpy
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

# what the launcher imports (OpenRLHF's train_ppo_ray pulls in all of them), in the order they print
LAUNCH_LIBRARIES = ("torch", "transformers", "bitsandbytes", "deepspeed")


@contextlib.contextmanager
def quiet_output(log_path: Path) -> Iterator[TextIO]:
    """Send fds 1 and 2 (Python's prints, logging and warnings included) to `log_path`; yield a stream on the old
    stdout."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    with open(log_path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:  # Python's own streams too, wherever they point (e.g. a test's capture)
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            terminal.close()


def quiet_imports(log_path: str | Path, modules: Sequence[str] = LAUNCH_LIBRARIES) -> Path:
    """Import `modules` (those installed) with their output appended to `log_path` (its folder is created)."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_output(log_path):
        for name in modules:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
    return log_path


def launch_log_path(argv: Sequence[str], flag: str = "--ckpt.output_dir", name: str = "launch.log") -> Path:
    """`<value of the last flag in argv>/name` (`flag VALUE` or `flag=VALUE`), else `runs/name`: where the launcher
    logs what the libraries print, beside the run's checkpoint."""
    value = "runs"
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return Path(value) / name


def main(argv: Sequence[str] | None = None) -> None:
    """Run MODULE's `__main__` (argv[0]) with the remaining flags, after `quiet_imports(launch_log_path(flags))`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        raise SystemExit("usage: python -m openrlhf_tapo.utils.library_output MODULE [FLAGS...]")
    entry = argv.pop(0)
    quiet_imports(launch_log_path(argv))
    sys.argv = [entry, *argv]
    runpy.run_module(entry, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
