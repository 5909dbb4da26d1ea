"""The launch scripts, run for real with a stand-in `ray` that records the job it is asked to submit.

For every script the recorded command line must be accepted by OpenRLHF 0.11.2's OWN parser and validation block
(run, with train() not started) and, for ours, by our launcher; TAPO and baseline must be the same job.
"""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _launch_inputs import launch_inputs

from openrlhf_tapo.adapter.seam import inject
from openrlhf_tapo.adapter.stage.openrlhf_args import parse_openrlhf_args
from openrlhf_tapo.adapter.stage.openrlhf_loss import build_policy_loss
from openrlhf_tapo.algorithms.policy_loss import PolicyLossConfig
from openrlhf_tapo.algorithms.tapo import TAPOConfig
from openrlhf_tapo.cli.train_ppo_ray import build_parser, openrlhf_argv, resolve_args
from openrlhf_tapo.runners.run_presets import run_preset

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "examples" / "scripts"
TAPO_SCRIPTS = ["train_tapo_ray.sh", "train_tapo_gspo_ray.sh", "train_tapo_sapo_ray.sh"]
# The step-credit scripts: the estimators each switches on, and environment overrides of their settings.
STEP_SCRIPTS = {
    "train_gigpo_ray.sh": ({"gigpo"}, {"GIGPO_OMEGA": "0.5"}),
    "train_gigpo_tapo_ray.sh": ({"gigpo", "tapo"}, {"GIGPO_GAMMA": "0.9", "TAPO_BETA": "0.3"}),
    "train_turn_reward_ray.sh": ({"turn_reward"}, {"TURN_REWARD_LAM": "0.25"}),
}
FAKE_RAY = '#!/bin/bash\nprintf "%s\\0" "$@" > "$RAY_ARGS_OUT"\n'


@pytest.fixture(scope="module")
def submit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scripts")
    (tmp / "bin").mkdir()
    (tmp / "bin" / "ray").write_text(FAKE_RAY)
    (tmp / "bin" / "ray").chmod(0o755)
    agent_yaml = tmp / "agent.yaml"
    agent_yaml.write_text("max_turns: 4\n")

    def run(script: str, **env) -> dict:
        out = tmp / f"{script}.args"
        environ = {
            **os.environ,
            "PATH": f"{tmp / 'bin'}:{os.environ['PATH']}",
            "RAY_ARGS_OUT": str(out),
            "AGENT_CONFIG": str(agent_yaml),
            "WANDB_API_KEY": "",
            **env,
        }
        subprocess.run(["bash", str(SCRIPTS / script)], env=environ, check=True, timeout=60)
        args = out.read_text().split("\0")[:-1]
        split = args.index("--")
        submit_opts, command = args[:split], args[split + 1 :]
        assert command[:2] == ["python3", "-m"]
        return {"submit": submit_opts, "module": command[2], "argv": command[3:]}

    return run


@pytest.mark.parametrize("script", ["train_grpo_ray.sh", *TAPO_SCRIPTS])
def test_every_flag_is_accepted_by_openrlhf_and_by_us(submit, script):
    job = submit(script)
    assert job["submit"][0] == "job" and job["submit"][1] == "submit"
    runtime_env = json.loads(next(o for o in job["submit"] if o.startswith("--runtime-env-json=")).split("=", 1)[1])
    agent_yaml = runtime_env["env_vars"]["OPENRLHF_TAPO_AGENT_CONFIG"]
    assert Path(agent_yaml).is_file()
    if script == "train_grpo_ray.sh":
        assert job["module"] == "openrlhf.cli.train_ppo_ray"
        args = parse_openrlhf_args(job["argv"])
        assert args.train.agent_func_path.endswith("openrlhf_tapo/agent/executor.py")
        assert not any(flag.startswith(("--tapo.", "--agent.")) for flag in job["argv"])
    else:
        assert job["module"] == "openrlhf_tapo.cli.train_ppo_ray"
        parse_openrlhf_args(openrlhf_argv(job["argv"]))  # OpenRLHF's own parser on everything that is not ours
        args = resolve_args(job["argv"])
        assert args.tapo.enable and args.agent.config == agent_yaml
    assert args.algo.advantage.estimator == "group_norm"
    assert args.train.colocate_all and args.vllm.enable_sleep and args.ds.enable_sleep
    assert args.data.max_images_per_prompt > 0
    # The agent returns pixel_values in the trainer's dtype, with OpenRLHF's own launcher (the baseline) too.
    assert runtime_env["env_vars"]["OPENRLHF_TAPO_MM_DTYPE"] == inject.trainer_compute_dtype(args) == "bfloat16"


def test_loss_settings_per_script(submit):
    gspo = resolve_args(submit("train_tapo_gspo_ray.sh")["argv"])
    assert gspo.actor.policy_loss_type == "gspo_token"
    assert list(gspo.actor.eps_clip_low_high) == [3e-4, 4e-4]
    assert gspo.algo.kl.init_coef == 0
    sapo = resolve_args(submit("train_tapo_sapo_ray.sh", SAPO_TAU_NEG="1.2")["argv"])
    assert (sapo.actor.policy_loss_type, sapo.actor.sapo_tau_pos, sapo.actor.sapo_tau_neg) == ("sapo", 1.0, 1.2)
    tapo = resolve_args(submit("train_tapo_ray.sh", TAPO_BETA="0.3")["argv"])
    assert tapo.actor.policy_loss_type == "ppo" and tapo.tapo.beta == 0.3
    default = submit("train_tapo_ray.sh")["argv"]
    assert "--tapo.beta" not in default  # beta's default is defined in TAPOConfig, not restated by the script
    assert resolve_args(default).tapo.beta == TAPOConfig().beta


@pytest.mark.parametrize("script", TAPO_SCRIPTS)
def test_scripts_pass_none_of_our_flags_at_its_default(submit, script):
    """A default is defined once, in its dataclass: a script that passes it again would be a second definition."""
    given = vars(build_parser().parse_known_args(submit(script)["argv"])[0])
    defaults = {f"tapo.{k}": v for k, v in vars(TAPOConfig()).items()}
    defaults.update({f"actor.{k}": v for k, v in vars(PolicyLossConfig()).items()})
    defaults["actor.policy_loss_type"] = "ppo"
    repeated = sorted(flag for flag, value in given.items() if flag in defaults and value == defaults[flag])
    assert repeated == [], f"{script} passes defaults: {repeated}"


@pytest.mark.parametrize("script", ["train_grpo_ray.sh", *TAPO_SCRIPTS, *sorted(STEP_SCRIPTS)])
def test_scripts_log_vllm_kl_without_changing_the_loss_and_cache_prefixes(submit, script):
    job = submit(script)
    args = parse_openrlhf_args(job["argv"]) if script == "train_grpo_ray.sh" else resolve_args(job["argv"])
    assert args.vllm.enable_prefix_caching  # every turn resubmits the whole context
    assert args.actor.entropy_coef is None  # no full-vocabulary entropy computed just to be logged
    advantage = args.algo.advantage
    if script == "train_tapo_gspo_ray.sh":  # the sequence ratio would be taken against vLLM's log-probs
        assert advantage.is_correction_level == "off"
        return
    assert (advantage.is_correction_level, advantage.is_correction_mode) == ("token", "clip")
    assert list(advantage.is_correction_threshold) == [1.0, 1.0]
    if script == "train_grpo_ray.sh":
        return
    # The loss the actors build from these args: the same values as without the correction, with vllm_kl logged.
    torch.manual_seed(0)
    log_probs, old, rollout = (-torch.rand(2, 6) for _ in range(3))
    advantages, mask = torch.randn(2, 6), torch.ones(2, 6)
    loss, _, _, vllm_kl, _ = build_policy_loss(args)(log_probs, old, advantages, mask, rollout)
    advantage.is_correction_level = "off"
    plain = build_policy_loss(args)(log_probs, old, advantages, mask, None)[0]
    assert torch.allclose(loss, plain, rtol=1e-6, atol=0) and vllm_kl == pytest.approx((rollout - old).mean().item())


def test_tapo_and_baseline_are_the_same_openrlhf_job(submit):
    # Only the output location differs by default (RUN_NAME); pinned here.
    same_output = {"RUN_NAME": "compare", "SAVE_PATH": "/ckpt/compare"}
    baseline = submit("train_grpo_ray.sh", **same_output)
    tapo = submit("train_tapo_ray.sh", **same_output)
    assert openrlhf_argv(tapo["argv"]) == baseline["argv"]
    assert tapo["submit"] == baseline["submit"]


def test_paths_and_sizes_come_from_the_environment(submit):
    env = {
        "MODEL_PATH": "/models/Qwen3-VL-4B-Instruct",
        "DATASET_PATH": "/data/fvqa.jsonl",
        "SAVE_PATH": "/ckpt/run1",
        "NUM_NODES": "2",
        "GPUS_PER_NODE": "4",
        "VLLM_TP": "2",
        "ROLLOUT_BATCH": "16",
        "N_SAMPLES": "4",
        "TRAIN_BATCH": "64",
        "MAX_LEN": "8192",
        "LR": "2e-6",
        "RAY_ADDRESS": "http://head:8265",
    }
    job = submit("train_tapo_ray.sh", **env)
    args = resolve_args(job["argv"])
    assert args.actor.model_name_or_path == env["MODEL_PATH"]
    assert args.data.prompt_dataset == env["DATASET_PATH"]
    assert args.ckpt.output_dir == env["SAVE_PATH"] and args.ckpt.path == env["SAVE_PATH"] + "/ckpt"
    assert (args.actor.num_nodes, args.actor.num_gpus_per_node) == (2, 4)
    assert (args.vllm.num_engines, args.vllm.tensor_parallel_size) == (4, 2)
    assert (args.rollout.batch_size, args.rollout.n_samples_per_prompt, args.train.batch_size) == (16, 4, 64)
    assert (args.data.max_len, args.actor.adam.lr) == (8192, 2e-6)
    assert "--address=http://head:8265" in job["submit"]


@pytest.mark.parametrize("script", ["train_grpo_ray.sh", *TAPO_SCRIPTS])
def test_header_says_what_the_script_expects(script):
    header = "\n".join(line for line in (SCRIPTS / script).read_text().splitlines() if line.startswith("#"))
    for topic in ("GPUs", "Model", "Data", "Search backend", "Ray"):
        assert f"#   {topic}" in header, topic


# ------------------------------------------------------------------------------------------------- DRY_RUN=1
ALL_SCRIPTS = sorted(path.name for path in SCRIPTS.glob("train_*.sh"))
REFUSING_RAY = '#!/bin/bash\necho "$@" > "$RAY_CALLED"\nexit 1\n'
SECRET = "wandb-secret-987"


SHIPPED = "train_tapo_ray.sh with the shipped defaults"


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """Every script run with DRY_RUN=1 (a few at once: each is a Python start-up), a `ray` on PATH that records any
    call (the test then fails) and `python3` = this interpreter; the inputs are real files at toy size
    (tests/_launch_inputs.py). Plus train_tapo_ray.sh with the shipped configs/agent.yaml and the default data path."""
    tmp = tmp_path_factory.mktemp("dry_run")
    inputs = launch_inputs(tmp / "inputs")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for name, text in (("ray", REFUSING_RAY), ("python3", f'#!/bin/bash\nexec "{sys.executable}" "$@"\n')):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    task_dir = tmp / "task"  # train_tapo_cpu.sh reads the task directory `make demo` writes
    task_dir.mkdir()
    (task_dir / "prompts_train.jsonl").symlink_to(inputs.data)
    (task_dir / "agent.yaml").symlink_to(inputs.agent_config)
    cases = {script: (script, {}) for script in ALL_SCRIPTS}
    cases[SHIPPED] = ("train_tapo_ray.sh", {"AGENT_CONFIG": str(REPO / "configs" / "agent.yaml"), "DATASET_PATH": ""})

    def start(index: int, script: str, env: dict):
        environ = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "RAY_CALLED": str(tmp / f"ray_called_{index}"),
            "DRY_RUN": "1",
            "MODEL_PATH": str(inputs.model),
            "DATASET_PATH": str(inputs.data),
            "AGENT_CONFIG": str(inputs.agent_config),
            "SAVE_PATH": str(tmp / "exp"),
            "TASK_DIR": str(task_dir),
            "PYTHON": str(bin_dir / "python3"),
            "WANDB_API_KEY": SECRET,
            **env,
        }
        environ = {k: v for k, v in environ.items() if v != ""}  # "" = unset: the script's default applies
        proc = subprocess.Popen(
            ["bash", str(SCRIPTS / script)], env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        return proc, Path(environ["RAY_CALLED"])

    # As many at once as there are cores: more only queue for the CPU, and every start-up then risks the timeout.
    results, pending = {}, list(enumerate(cases.items()))
    while pending:
        wave, pending = pending[: os.cpu_count() or 2], pending[os.cpu_count() or 2 :]
        running = {case: start(index, script, env) for index, (case, (script, env)) in wave}
        for case, (proc, called) in running.items():
            out, err = proc.communicate(timeout=300)
            results[case] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
            results[case].ray_called = called.read_text() if called.exists() else None
    results["inputs"] = inputs
    return results


@pytest.mark.slow
@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_dry_run_submits_nothing_and_prints_only_json(dry_runs, script):
    proc = dry_runs[script]
    assert proc.ray_called is None, f"{script} called ray with DRY_RUN=1: {proc.ray_called}"
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert SECRET not in proc.stdout + proc.stderr
    # library warnings a newcomer cannot act on go to SAVE_PATH/.../launch.log (utils/library_output.py)
    for noise in ("pynvml package is deprecated", "kernels-community", "Setting accelerator to CPU", "-laio"):
        assert noise not in proc.stdout + proc.stderr, noise
    resolved = json.loads(proc.stdout)
    assert resolved["tapo"]["enable"] is ("tapo" in script)  # the step-credit scripts name their estimators
    assert resolved["gigpo"]["enable"] is ("gigpo" in script)
    assert resolved["turn_reward"]["enable"] is ("turn_reward" in script)
    assert resolved["actor"]["model_name_or_path"] == str(dry_runs["inputs"].model)
    assert resolved["data"]["prompt_dataset"].endswith(".jsonl")
    if script != "train_tapo_cpu.sh":
        module = "openrlhf.cli.train_ppo_ray" if script == "train_grpo_ray.sh" else "openrlhf_tapo.cli.train_ppo_ray"
        assert "DRY_RUN: would run: ray job submit --address=http://127.0.0.1:8265" in proc.stderr
        assert f"-- python3 -m {module} " in proc.stderr
        assert resolved["logger"]["wandb"]["key"] == "<redacted>"


# The run train_tapo_cpu.sh trains without flags is the run preset `cpu_script` (runners/run_presets.py), rendered by
# the run spec (the one rendering the in-process loop parses and the Ray demo appends to the script).
CPU_SCRIPT_RUN = run_preset("cpu_script").rl


def _flag_values(argv: list[str]) -> dict[str, str | bool]:
    """{dotted name: value} of a flat flag list; a switch (`--tapo.disable` = `tapo.enable` off) is a bool."""
    values, i = {}, 0
    while i < len(argv):
        name = argv[i].removeprefix("--")
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            values[name], i = argv[i + 1], i + 2
        else:
            values["tapo.enable" if name == "tapo.disable" else name], i = name != "tapo.disable", i + 1
    return values


def _same(got, want: str | bool) -> bool:
    if isinstance(want, bool):
        return got is want
    if str(got) == want:
        return True
    try:
        return float(got) == float(want)  # "1e-3" is 0.001
    except (TypeError, ValueError):
        return False


def test_cpu_script_writes_the_run_presets_values():
    """Fast: every flag the script writes literally has the value the `cpu_script` preset renders (the slow test
    below checks the resolved configuration, OpenRLHF's defaults included)."""
    text = (SCRIPTS / "train_tapo_cpu.sh").read_text().replace("\\\n", " ")
    literal = _flag_values([t for t in shlex.split(text[text.index("exec ") :]) if "$" not in t])
    spec = CPU_SCRIPT_RUN
    rendered = _flag_values([*spec.openrlhf_flags(), *spec.tapo_flags()])
    shared = set(rendered) & set(literal)
    assert {"rollout.batch_size", "train.batch_size", "data.max_len", "actor.adam.lr"} <= shared
    differ = {name: (rendered[name], literal[name]) for name in shared if not _same(literal[name], rendered[name])}
    assert differ == {}, f"train_tapo_cpu.sh's flags differ from runners/run_presets.py's cpu_script: {differ}"


@pytest.mark.slow
def test_cpu_script_is_the_run_spec(dry_runs):
    resolved = json.loads(dry_runs["train_tapo_cpu.sh"].stdout)
    spec = CPU_SCRIPT_RUN
    rendered = _flag_values([*spec.openrlhf_flags(), *spec.tapo_flags(), *spec.episode_flags(num_train_prompts=99)])
    differ = {}
    for name, want in rendered.items():
        got = resolved
        for key in name.split("."):
            got = got[key]
        if not _same(got, want):
            differ[name] = (want, got)
    assert differ == {}, f"train_tapo_cpu.sh's own flags differ from the run spec's rendering: {differ}"


@pytest.mark.slow
def test_dry_run_with_the_shipped_defaults_names_what_is_missing(dry_runs):
    proc = dry_runs[SHIPPED]
    assert proc.ray_called is None and proc.returncode == 2 and proc.stdout == ""
    assert "tools.backend.index_dir is required" in proc.stderr
    assert "/data/train.jsonl: no such file" in proc.stderr  # common_search_agent.sh's default DATASET_PATH


@pytest.mark.parametrize("script", sorted(STEP_SCRIPTS))
def test_step_credit_scripts_are_the_same_job_with_their_estimators(submit, script):
    """Each step-credit script is the baseline's OpenRLHF job plus its estimators, with overrides from the
    environment and nothing passed at its default."""
    from openrlhf_tapo.algorithms.estimators import ESTIMATORS

    enabled, overrides = STEP_SCRIPTS[script]
    same_output = {"RUN_NAME": "compare", "SAVE_PATH": "/ckpt/compare"}
    baseline = submit("train_grpo_ray.sh", **same_output)
    job = submit(script, **same_output)
    assert job["module"] == "openrlhf_tapo.cli.train_ppo_ray" and job["submit"] == baseline["submit"]
    assert openrlhf_argv(job["argv"]) == baseline["argv"]
    args = resolve_args(job["argv"])
    assert {name for name in ESTIMATORS if getattr(args, name).enable} == enabled
    assert args.agent.config is not None
    defaults = resolve_args(submit(script)["argv"])
    for name in enabled - {"tapo"}:
        assert vars(defaults)[name].__dict__ == {"enable": True, **vars(ESTIMATORS[name].config())}
    with_env = resolve_args(submit(script, **overrides)["argv"])
    assert (
        with_env.gigpo.omega,
        with_env.gigpo.gamma,
        with_env.tapo.beta,
        with_env.turn_reward.lam,
    ) == (
        float(overrides.get("GIGPO_OMEGA", defaults.gigpo.omega)),
        float(overrides.get("GIGPO_GAMMA", defaults.gigpo.gamma)),
        float(overrides.get("TAPO_BETA", defaults.tapo.beta)),
        float(overrides.get("TURN_REWARD_LAM", defaults.turn_reward.lam)),
    )
