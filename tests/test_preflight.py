"""The launcher's preflight: what a cluster run would only find after its models load is named before Ray starts."""

import json
from types import SimpleNamespace

import pytest
import ray
import yaml
from _launch_inputs import launch_inputs

from openrlhf_tapo.adapter.checks import preflight
from openrlhf_tapo.cli import train_ppo_ray as cli

LAYOUT = ["--data.input_key", "prompt", "--data.label_key", "label", "--data.image_key", "images"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return launch_inputs(tmp_path_factory.mktemp("preflight"))


def _data(path, **keys):
    return SimpleNamespace(prompt_dataset=str(path), **{"input_key": "prompt", "label_key": "label",
                                                        "image_key": "images", **keys})  # fmt: skip


def test_shipped_agent_yaml_without_an_index_fails_before_ray(inputs, monkeypatch, capsys):
    monkeypatch.setattr(cli, "launch", lambda args: pytest.fail("launch() reached"))
    argv = ["--actor.model_name_or_path", str(inputs.model), "--data.prompt_dataset", str(inputs.data), *LAYOUT,
            "--algo.advantage.estimator", "group_norm", "--rollout.n_samples_per_prompt", "4",
            "--algo.kl.init_coef", "0", "--ckpt.output_dir", str(inputs.save),
            "--tapo.enable", "--agent.config", "configs/agent.yaml"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2 and not ray.is_initialized()
    err = capsys.readouterr().err
    assert "configs/agent.yaml: its tools cannot be built" in err and "--agent.config" in err
    assert "tools.backend.index_dir is required" in err and "cli.build_index" in err
    cli.main([*argv[:-2], "--agent.config", str(inputs.agent_config), "--dry-run"])  # the same with an index: fine
    assert json.loads(capsys.readouterr().out)["agent"]["config"] == str(inputs.agent_config)


def _problems(data, *args):
    return preflight.check_prompt_data(data, *args)[0]


def test_prompt_data_problems_are_named_with_their_row(inputs, tmp_path):
    assert _problems(_data(inputs.data)) == []
    missing = _problems(_data("data/train.jsonl"))
    assert len(missing) == 1 and "--data.prompt_dataset data/train.jsonl: no such file" in missing[0]
    assert "python -m openrlhf_tapo.agent.data" in missing[0]
    assert _problems(_data("org/some-dataset")) == []  # a hub id: OpenRLHF downloads it
    wrong_key = _problems(_data(inputs.data, input_key="question"))
    assert "3 row(s) unusable: line 1: has no prompt under --data.input_key 'question'" in wrong_key[0]
    rows = [json.loads(line) for line in inputs.data.read_text().splitlines()]
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in [rows[0], {**rows[1], "images": [str(not_image)]}]) + "\n")
    problem = _problems(_data(bad))
    assert len(problem) == 1 and f"line 2: --data.image_key 'images': image 0 {not_image} is unreadable" in problem[0]
    bad.write_text(json.dumps({"prompt": "q"}) + "\n")
    assert "line 1: has no label under --data.label_key 'label'" in _problems(_data(bad))[0]
    bad.write_text("{not json\n")
    assert "line 1 is not JSON" in _problems(_data(bad))[0]


def test_web_search_key_is_required_and_never_printed(tmp_path, monkeypatch, capsys):
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({"tools": {"backend": {"kind": "serper", "api_key_env": "PREFLIGHT_TEST_KEY"}}}))
    monkeypatch.delenv("PREFLIGHT_TEST_KEY", raising=False)
    problems = preflight.check_agent_tools(str(config))
    assert len(problems) == 1 and "environment variable PREFLIGHT_TEST_KEY, which is unset" in problems[0]
    monkeypatch.setenv("PREFLIGHT_TEST_KEY", "sk-very-secret-123")
    assert preflight.check_agent_tools(str(config)) == []
    assert "sk-very-secret-123" not in capsys.readouterr().out + capsys.readouterr().err


def test_model_and_output_paths(inputs, tmp_path):
    assert preflight.check_model("--actor.model_name_or_path", str(inputs.model)) == []
    assert preflight.check_model("--actor.model_name_or_path", "Qwen/Qwen2.5-VL-7B-Instruct") == []
    assert "without config.json" in preflight.check_model("--actor.model_name_or_path", str(tmp_path))[0]
    for bad in ("/models/missing", "./ckpt/none", "qwen-vl"):
        assert "neither a local model directory" in preflight.check_model("--actor.model_name_or_path", bad)[0]
    assert preflight.check_writable("--ckpt.output_dir", str(tmp_path / "new" / "run")) == []
    afile = tmp_path / "afile"
    afile.write_text("")
    assert "is a file, not a directory" in preflight.check_writable("--ckpt.path", str(afile / "ckpt"))[0]


def test_all_problems_are_reported_at_once(tmp_path):
    args = SimpleNamespace(
        data=_data(tmp_path / "none.jsonl", max_images_per_prompt=0, max_len=1024),
        agent=SimpleNamespace(config=None),
        actor=SimpleNamespace(model_name_or_path="/no/model"),
        ref=SimpleNamespace(model_name_or_path=None),
        ckpt=SimpleNamespace(output_dir=str(tmp_path), path=None),
        logger=SimpleNamespace(tensorboard_dir=None),
    )
    with pytest.raises(preflight.PreflightError) as err:
        preflight.preflight(args)
    assert len(err.value.problems) == 2 and "2 problem(s)" in str(err.value)
