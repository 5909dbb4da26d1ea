"""`python -m openrlhf_tapo.cli.train_ppo_ray`: flag plumbing, YAML precedence, dry-run, bad-flag messages, launch."""

import dataclasses
import json
from types import SimpleNamespace

import pytest
import ray
from _launch_inputs import launch_inputs

from openrlhf_tapo.adapter.seam import inject, ray_workers
from openrlhf_tapo.adapter.stage.credit_args import LOSS_FLAG_FIELDS
from openrlhf_tapo.algorithms.policy_loss import PolicyLossConfig
from openrlhf_tapo.algorithms.tapo import TAPOConfig
from openrlhf_tapo.cli import train_ppo_ray as cli

BASE = [
    "--actor.model_name_or_path", "dummy",
    "--algo.advantage.estimator", "group_norm",
    "--rollout.n_samples_per_prompt", "4",
    "--rollout.batch_size", "2",
    "--actor.num_gpus_per_node", "1",
    "--algo.kl.use_loss",
    "--algo.kl.estimator", "k3",
    "--reward.clip_range", "-5", "5",
]  # fmt: skip


@pytest.fixture
def agent_yaml(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text("max_turns: 3\n")
    return str(path)


@pytest.fixture
def no_launch(monkeypatch):
    """Fails the test if anything would start training or Ray."""

    def refuse(args):
        raise AssertionError("launch() must not be reached")

    monkeypatch.setattr(cli, "launch", refuse)


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert not ray.is_initialized()
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return launch_inputs(tmp_path_factory.mktemp("launch"))


def test_dry_run_prints_the_resolved_configuration(capsys, inputs, no_launch):
    agent_yaml = str(inputs.agent_config)
    cli.main([*BASE, "--tapo.enable", "--tapo.beta", "0.5", "--tapo.no_support", "--tapo.span", "call",
              "--tapo.similarity", "text_search=text_exact", "--actor.policy_loss_type", "sapo",
              "--actor.sapo_tau_pos", "2", "--agent.config", agent_yaml, "--dry-run",
              "--actor.model_name_or_path", str(inputs.model), "--data.prompt_dataset", str(inputs.data),
              "--data.input_key", "prompt", "--data.label_key", "label", "--data.image_key", "images",
              "--ckpt.output_dir", str(inputs.save), "--logger.wandb.key", "wandb-secret-1"])  # fmt: skip
    out = capsys.readouterr().out
    resolved = json.loads(out)  # stdout is the JSON alone
    assert "wandb-secret-1" not in out and resolved["logger"]["wandb"]["key"] == "<redacted>"
    assert resolved["tapo"]["enable"] and resolved["tapo"]["beta"] == 0.5 and resolved["tapo"]["span"] == "call"
    assert resolved["tapo"]["use_support"] is False and resolved["tapo"]["clip_at_zero"] is True
    assert resolved["tapo"]["similarity"] == {"text_search": "text_exact", "image_search": "image", "zoom": "bbox_iou"}
    assert resolved["actor"]["policy_loss_type"] == "sapo"
    assert (resolved["actor"]["sapo_tau_pos"], resolved["actor"]["sapo_tau_neg"]) == (2.0, 1.05)
    assert resolved["reward"]["clip_range"] == [-5.0, 5.0]  # negative values pass through to OpenRLHF untouched
    assert resolved["agent"]["config"] == agent_yaml
    assert resolved["train"]["agent_func_path"] == cli.EXECUTOR_PATH  # filled in from --agent.config
    assert resolved["reward"]["remote_url"] == ["agent"]  # OpenRLHF's own validation ran on it
    env = resolved["ray_worker_runtime_env"]
    assert env == {
        "worker_process_setup_hook": ray_workers.SETUP_HOOK,
        "env_vars": {
            ray_workers.PATCH_SETS_ENV: "injection",
            inject.AGENT_CONFIG_ENV: agent_yaml,
            inject.MM_DTYPE_ENV: "bfloat16",  # OpenRLHF's default --ds.param_dtype bf16: what the agent returns
        },
    }


def test_yaml_defaults_and_command_line_precedence(tmp_path, agent_yaml):
    config = tmp_path / "tapo.yaml"
    config.write_text(
        "tapo: {enable: true, beta: 0.5, theta: 0.9, use_support: false, similarity: {zoom: exact_json}}\n"
        f"actor: {{policy_loss_type: gspo_token}}\nagent: {{config: {agent_yaml}}}\n"
    )
    args = cli.resolve_args([*BASE, "--tapo.config", str(config), "--tapo.beta", "0.7", "--tapo.use_support"])
    assert (args.tapo.enable, args.tapo.beta, args.tapo.theta, args.tapo.use_support) == (True, 0.7, 0.9, True)
    assert args.tapo.similarity == {"text_search": "text_fuzzy", "image_search": "image", "zoom": "exact_json"}
    assert args.actor.policy_loss_type == "gspo_token" and args.agent.config == agent_yaml
    assert cli.openrlhf_argv([*BASE, "--tapo.config", str(config)])[-4:] == [
        "--actor.policy_loss_type", "gspo", "--train.agent_func_path", cli.EXECUTOR_PATH
    ]  # fmt: skip
    off = cli.resolve_args([*BASE, "--tapo.config", str(config), "--tapo.disable"])
    assert off.tapo.enable is False


def test_shipped_tapo_yaml_enables_tapo_with_the_dataclass_defaults(agent_yaml):
    from openrlhf_tapo.algorithms.tapo import TAPOConfig

    args = cli.resolve_args([*BASE, "--tapo.config", "configs/tapo.yaml", "--agent.config", agent_yaml])
    assert args.tapo.enable
    for name, value in vars(TAPOConfig()).items():
        assert getattr(args.tapo, name) == value, name


def test_async_training_flags_pass_with_tapo(agent_yaml):
    args = cli.resolve_args(
        [
            *BASE,
            "--tapo.enable",
            "--agent.config",
            agent_yaml,
            "--train.async_enable",
            "--train.partial_rollout_enable",
        ]
    )
    assert args.train.async_enable and args.train.partial_rollout_enable and args.tapo.enable


def test_explicit_agent_func_path_is_kept(agent_yaml):
    argv = [*BASE, "--tapo.disable", "--agent.config", agent_yaml, "--train.agent_func_path", "/opt/my_agent.py"]
    args = cli.resolve_args(argv)
    assert args.train.agent_func_path == "/opt/my_agent.py"
    assert cli.resolve_args(BASE).tapo.enable is False and cli.resolve_args(BASE).agent.config is None


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--tapo.bta", "0.5"], "unknown flag --tapo.bta"),
        (["--tapo.beta", "-1"], "--tapo.beta (on the command line): tapo.beta must be >= 0"),
        (["--tapo.theta", "0"], "--tapo.theta (on the command line)"),
        (["--tapo.scope", "world"], "argument --tapo.scope: invalid choice: 'world'"),
        (["--tapo.similarity", "zoom"], "argument --tapo.similarity"),
        (["--tapo.similarity", "zoom=nope"], "tapo.similarity['zoom'] = 'nope' is not a registered similarity"),
        (["--actor.policy_loss_type", "grpo"], "argument --actor.policy_loss_type: invalid choice: 'grpo'"),
        (["--actor.sapo_tau_pos", "2"], "--actor.sapo_tau_pos only apply to --actor.policy_loss_type sapo"),
        (["--actor.policy_loss_type", "sapo", "--actor.sapo_tau_neg", "0"], "--actor.sapo_tau_neg: sapo_tau_pos/neg"),
        (["--actor.policy_loss_type", "sapo", "--actor.dual_clip", "3"], "dual_clip has no effect on sapo"),
        (["--agent.config", "/no/such.yaml"], "--agent.config /no/such.yaml"),
        (["--tapo.config", "/no/such.yaml"], "--tapo.config /no/such.yaml: no such file"),
        (["--rollout.n_samples_per_prompt", "1"], "group_norm requires n_samples_per_prompt > 1"),
        (["--tapo.enable"], "--tapo.enable acts on the turns and tool calls of an agent, but no agent runs"),
        (
            [
                "--tapo.enable",
                "--algo.kl.init_coef",
                "0.01",
                "--train.agent_func_path",
                "a.py",
                "--reward.clip_range",
                "-1",
                "1",
            ],
            None,
        ),  # fmt: skip
    ],
)
def test_bad_flags_are_named_before_anything_starts(capsys, no_launch, extra, expected):
    argv = [*BASE, *extra]
    if expected is None:  # KL penalty in the reward (use_loss given in BASE, so drop it) with TAPO
        argv.remove("--algo.kl.use_loss")
        expected = "--algo.kl.init_coef 0.01 and no --algo.kl.use_loss"
    assert expected in _error(capsys, argv)


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--tapo.beta", "0.5"], "--tapo.beta given"),
        (["--tapo.no_clip", "--tapo.scope", "batch"], "--tapo.clip_at_zero, --tapo.scope given"),
        (["--agent.config", "AGENT"], "--agent.config given"),
        (["--tapo.config", "TAPO_NO_ENABLE"], "--tapo.config given"),
    ],
)
def test_our_flags_without_tapo_enable_are_an_error(tmp_path, capsys, no_launch, agent_yaml, extra, named):
    tapo_yaml = tmp_path / "tapo.yaml"
    tapo_yaml.write_text("tapo: {beta: 0.5}\n")
    extra = [{"AGENT": agent_yaml, "TAPO_NO_ENABLE": str(tapo_yaml)}.get(token, token) for token in extra]
    message = _error(capsys, [*BASE, *extra])
    assert named in message and "without --tapo.enable" in message and "Add --tapo.enable" in message
    for switch in ("--tapo.enable", "--tapo.disable"):  # either says what the user meant: accepted
        assert cli.split_flags([*BASE, *extra, switch]).tapo_enable is (switch == "--tapo.enable")


def test_every_flag_of_ours_has_help_from_where_its_default_is_defined():
    actions = {a.option_strings[0]: a for a in cli.build_parser()._actions if a.option_strings}
    for action in actions.values():
        assert action.help, action.option_strings
    for config, prefix, names in (
        (TAPOConfig, "--tapo.", [f.name for f in dataclasses.fields(TAPOConfig)]),
        (PolicyLossConfig, "--actor.", LOSS_FLAG_FIELDS),
    ):
        fields = {f.name: f for f in dataclasses.fields(config)}
        for name in names:
            help_text = actions[prefix + name].help
            assert help_text.startswith(fields[name].metadata["help"]), name
            default = getattr(config(), name)
            assert help_text.endswith(f"(default: {'off' if default is None else default})"), name


def test_our_flags_are_generated_from_the_dataclass_fields():
    """Type, choices, off switch and help of each flag come from its field: a new field is a new flag."""
    from openrlhf_tapo.algorithms.tapo import OBS_CHECKS, SCOPES, SPANS

    actions = {a.option_strings[0]: a for a in cli.build_parser()._actions if a.option_strings}
    assert {f"--tapo.{f.name}" for f in dataclasses.fields(TAPOConfig)} <= set(actions)
    assert LOSS_FLAG_FIELDS == ("sapo_tau_pos", "sapo_tau_neg")  # the documented PolicyLossConfig fields
    assert (actions["--tapo.scope"].choices, actions["--tapo.span"].choices) == (SCOPES, SPANS)
    assert actions["--tapo.obs_check"].choices == OBS_CHECKS
    assert actions["--tapo.no_support"].dest == "tapo.use_support" and actions["--tapo.no_clip"].const is False
    given = vars(cli.build_parser().parse_args(["--tapo.beta", "0.3", "--tapo.turn_window", "off", "--tapo.no_clip"]))
    assert given == {"tapo.beta": 0.3, "tapo.turn_window": None, "tapo.clip_at_zero": False}


def test_bad_yaml_keys_are_named(tmp_path, capsys, no_launch):
    config = tmp_path / "tapo.yaml"
    config.write_text("tapo: {betta: 0.5}\n")
    error = _error(capsys, [*BASE, "--tapo.config", str(config)])
    assert "section tapo: unknown key(s) betta (known: alpha_min, beta," in error
    config.write_text("tapo: {beta: high}\n")
    assert "--tapo.beta (in the --tapo.config YAML): tapo.beta must be a finite number" in _error(
        capsys, [*BASE, "--tapo.config", str(config)]
    )
    config.write_text("critic: {lr: 1}\n")
    assert "unknown key(s) critic (known: actor, agent, gigpo, tapo, turn_reward)" in _error(
        capsys, [*BASE, "--tapo.config", str(config)]
    )
    config.write_text("- tapo\n")
    assert "expected a mapping at top level, got list" in _error(capsys, [*BASE, "--tapo.config", str(config)])
    config.write_text("tapo: [beta\n")
    assert "not valid YAML" in _error(capsys, [*BASE, "--tapo.config", str(config)])


def test_openrlhf_rejects_its_own_bad_flags(capsys, no_launch):
    assert "unrecognized arguments: --actor.learning_rate" in _error(capsys, [*BASE, "--actor.learning_rate", "1"])


def test_launch_runs_openrlhf_train_with_our_runtime_env(monkeypatch, agent_yaml):
    """OpenRLHF's real train() initialises Ray with its runtime_env; ours is added to that call."""
    seen = {}

    class Stop(Exception):
        pass

    def recording_init(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(ray, "init", recording_init)
    args = cli.resolve_args([*BASE, "--tapo.enable", "--agent.config", agent_yaml])
    with pytest.raises(Stop):
        cli.launch(args)
    env = seen["runtime_env"]
    assert env["worker_process_setup_hook"] == ray_workers.SETUP_HOOK
    assert env["env_vars"][inject.AGENT_CONFIG_ENV] == agent_yaml
    assert env["env_vars"][ray_workers.PATCH_SETS_ENV] == "injection"
    assert {"TOKENIZERS_PARALLELISM", "NCCL_DEBUG", "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS"} <= set(env["env_vars"])
    assert ray.init is recording_init  # our wrapper is gone again


def test_launcher_and_in_process_driver_parse_each_loss_as_the_same_openrlhf_type(tmp_path, monkeypatch):
    from openrlhf_tapo.adapter.inprocess import loop as inprocess_loop
    from openrlhf_tapo.adapter.run_spec import RLConfig
    from openrlhf_tapo.adapter.stage.openrlhf_args import OPENRLHF_LOSS_TYPE, parse_openrlhf_args
    from openrlhf_tapo.algorithms.policy_loss import POLICY_LOSSES

    handed = []

    def recording_parser(argv):
        handed.append(argv[argv.index("--actor.policy_loss_type") + 1])
        return parse_openrlhf_args(argv)

    monkeypatch.setattr(inprocess_loop, "parse_openrlhf_args", recording_parser)
    assert set(OPENRLHF_LOSS_TYPE) == set(POLICY_LOSSES)
    for loss in POLICY_LOSSES:
        launcher = cli.openrlhf_argv([*BASE, "--actor.policy_loss_type", loss])
        args = inprocess_loop.build_openrlhf_args(RLConfig(policy_loss_type=loss), tmp_path / "m", tmp_path / "r")
        assert launcher[launcher.index("--actor.policy_loss_type") + 1] == handed[-1] == OPENRLHF_LOSS_TYPE[loss]
        assert args.actor.policy_loss_type == loss


def test_step_estimator_flags_resolve_onto_args(agent_yaml, tmp_path):
    from openrlhf_tapo.algorithms.gigpo import GiGPOConfig
    from openrlhf_tapo.algorithms.turn_reward import TurnRewardConfig

    args = cli.resolve_args(
        [*BASE, "--gigpo.enable", "--gigpo.omega", "0.5", "--gigpo.similarity_threshold", "0.9",
         "--agent.config", agent_yaml]
    )  # fmt: skip
    assert args.gigpo.enable and args.gigpo.omega == 0.5 and args.gigpo.similarity_threshold == 0.9
    assert args.gigpo.gamma == GiGPOConfig().gamma
    assert not args.turn_reward.enable and args.turn_reward.lam == TurnRewardConfig().lam
    assert not args.tapo.enable  # --agent.config needs no --tapo.enable when another estimator uses the agent
    # The YAML's sections, under the command line.
    tapo_yaml = tmp_path / "tapo.yaml"
    tapo_yaml.write_text("turn_reward: {enable: true, lam: 0.25}\ngigpo: {enable: true, gamma: 0.9}\n")
    ours = cli.split_flags([*BASE, "--tapo.config", str(tapo_yaml), "--gigpo.gamma", "0.8", "--tapo.enable"])
    assert ours.steps == {"gigpo": GiGPOConfig(gamma=0.8), "turn_reward": TurnRewardConfig(lam=0.25)}


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--gigpo.omega", "0.5"], "--gigpo.omega (on the command line) given without --gigpo.enable"),
        (["--gigpo.enable", "--gigpo.gamma", "2"], "--gigpo.gamma (on the command line): gigpo.gamma must be in"),
        (["--turn_reward.enable", "--turn_reward.lam", "-1"], "--turn_reward.lam (on the command line)"),
        (["--gigpo.enable"], "--gigpo.enable acts on the turns and tool calls of an agent, but no agent runs"),
        (["--gigpo.mode", "max"], "argument --gigpo.mode: invalid choice: 'max'"),
    ],
)
def test_bad_step_estimator_flags_are_named(capsys, no_launch, extra, expected):
    assert expected in _error(capsys, [*BASE, *extra])


def test_step_estimator_flags_have_help_and_types_from_their_fields():
    from openrlhf_tapo.adapter.stage.credit_args import STEP_ESTIMATORS
    from openrlhf_tapo.algorithms.estimators import ESTIMATORS

    actions = {a.option_strings[0]: a for a in cli.build_parser()._actions if a.option_strings}
    assert STEP_ESTIMATORS == ("gigpo", "turn_reward")
    for name in STEP_ESTIMATORS:
        config = ESTIMATORS[name].config
        for spec in dataclasses.fields(config):
            action = actions[f"--{name}.{spec.name}"]
            assert action.help.startswith(spec.metadata["help"]), spec.name
            assert action.choices == spec.metadata.get("choices"), spec.name
    given = vars(cli.build_parser().parse_args(["--gigpo.similarity_threshold", "off", "--turn_reward.lam", "0.1"]))
    assert given == {"gigpo.similarity_threshold": None, "turn_reward.lam": 0.1}


def test_agent_tensors_follow_the_trainer_dtype_cpu_profile_included(monkeypatch):
    import openrlhf.utils.utils as openrlhf_utils

    from openrlhf_tapo.adapter.seam import cpu_profile

    args = SimpleNamespace(ds=SimpleNamespace(param_dtype="bf16"))
    assert inject.trainer_compute_dtype(args) == "bfloat16"
    args.ds.param_dtype = "fp16"
    assert inject.trainer_compute_dtype(args) == "float16"
    # The CPU profile's float32_compute replaces OpenRLHF's conversion: the agent then keeps float32.
    monkeypatch.setattr(openrlhf_utils, "convert_to_torch_dtype", cpu_profile._float32)
    assert inject.trainer_compute_dtype(args) == "float32"
    assert inject.worker_env_vars(None, "float32") == {inject.MM_DTYPE_ENV: "float32"}


def test_a_worker_without_vllm_refuses_when_the_launcher_has_it(monkeypatch):
    """The injection stubs vLLM only where the job runs without it everywhere (a CPU machine, these tests)."""
    from openrlhf_tapo.utils import cuda_stubs

    args = SimpleNamespace(ds=SimpleNamespace(param_dtype="bf16"), agent=SimpleNamespace(config=None))
    monkeypatch.setattr(cuda_stubs, "real_module_available", lambda name: True)  # the launcher's node has vLLM
    env = inject.launcher_env_vars(args)
    assert env == {inject.MM_DTYPE_ENV: "bfloat16", inject.REQUIRE_VLLM_ENV: "1"}
    monkeypatch.setattr(cuda_stubs, "real_module_available", lambda name: False)  # this worker's node has not
    assert inject.REQUIRE_VLLM_ENV not in inject.launcher_env_vars(args)  # a CPU launch: stubs stay allowed
    monkeypatch.setenv(inject.REQUIRE_VLLM_ENV, "1")
    with pytest.raises(RuntimeError, match="vllm is not importable on this node .* but the launcher's node has it"):
        inject.install()
    assert not inject.hook_installed()  # refused before patching anything
