"""The console of the entry points a newcomer runs shows no library warnings they cannot act on: torch's pynvml
FutureWarning, bitsandbytes' "kernels-community" line, DeepSpeed's accelerator warning and op-builder linker
errors go to the run's log file (utils/library_output.py). Each entry point runs in a fresh subprocess, where the
libraries print on first import. The launch scripts' dry runs are checked in tests/test_launch_scripts.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from openrlhf_tapo.utils.library_output import launch_log_path

REPO = Path(__file__).resolve().parents[1]
NOISE = ("pynvml package is deprecated", "kernels-community", "Setting accelerator to CPU", "cannot find -laio")


def run(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def assert_quiet(proc: subprocess.CompletedProcess) -> None:
    shown = proc.stdout + proc.stderr
    assert [n for n in NOISE if n in shown] == [], shown[-3000:]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    from openrlhf_tapo.task.knowledge_base import KnowledgeBaseConfig
    from openrlhf_tapo.task.prepare import TaskConfig, prepare_task
    from openrlhf_tapo.task.questions import QuestionSetConfig

    config = TaskConfig(kb=KnowledgeBaseConfig(num_entities=5), questions=QuestionSetConfig(num_eval=2))
    return prepare_task(tmp_path_factory.mktemp("task"), config, progress=lambda _: None)


def test_build_index_prints_its_result_only(task, tmp_path):
    kb = task.kb_dir
    proc = run(["openrlhf_tapo.cli.build_index", "--text", str(kb / "text_corpus.jsonl"), "--images",
                str(kb / "image_corpus.jsonl"), "--out", str(tmp_path / "index")])  # fmt: skip
    assert_quiet(proc)
    assert "10 passages, 5 images" in proc.stdout


def test_evaluate_sends_library_output_to_its_log(task, tmp_path):
    out = tmp_path / "eval"
    argv = ["openrlhf_tapo.cli.evaluate", "--model", str(task.model_dir), "--data", str(task.prompts["eval"])]
    proc = run([*argv, "--agent-config", str(task.agent_config), "--out", str(out), "--limit", "1", "--backend", "hf"])
    assert_quiet(proc)
    assert "| samples | 1 |" in proc.stdout
    log = (out / "evaluate.log").read_text()
    assert "pynvml" in log or "pynvml" not in sys.modules  # where pynvml is installed, its warning is in the log


def test_quiet_imports_keeps_what_a_library_prints_in_the_log(tmp_path):
    module = tmp_path / "noisy_lib.py"
    module.write_text("import sys, warnings\nprint('loaded noisily')\nwarnings.warn('old api', FutureWarning)\n")
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
        "from openrlhf_tapo.utils.library_output import quiet_imports\n"
        f"quiet_imports({str(tmp_path / 'run' / 'x.log')!r}, ('noisy_lib', 'not_installed_anywhere'))\n"
        "import noisy_lib\nprint('ours')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, proc.stderr) == ("ours\n", "")
    log = (tmp_path / "run" / "x.log").read_text()
    assert "loaded noisily" in log and "FutureWarning: old api" in log


def test_the_launch_log_sits_beside_the_checkpoint():
    assert launch_log_path(["--x", "1", "--ckpt.output_dir", "/a/b"]) == Path("/a/b/launch.log")
    assert launch_log_path(["--ckpt.output_dir=/c"]) == Path("/c/launch.log")
    assert launch_log_path([]) == Path("runs/launch.log")
