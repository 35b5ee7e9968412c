"""vLLM rollouts as an option: settings checked and mapped into TRL's GRPOConfig, the paper-vllm profile,
and a clear early error where vLLM is not installed (vLLM itself is not needed by these tests)."""

from __future__ import annotations

import pytest
import torch

from pspo_repro.study import profiles
from pspo_repro.training import rollouts
from pspo_repro.training.settings import TrainSettings
from pspo_repro.training.train import grpo_config, train

VLLM_FIELDS = set(rollouts.GRPO_FIELDS)


def test_the_faithful_paper_profile_generates_with_hf_and_paper_vllm_differs_only_in_rollouts():
    paper = {r.name: r.settings.to_dict() for r in profiles.expand(profiles.load_profile("paper"))}
    fast = {r.name: r.settings.to_dict() for r in profiles.expand(profiles.load_profile("paper-vllm"))}
    assert paper.keys() == fast.keys() and len(paper) == 85  # 75 + clip-eps0 at two sizes x 5 seeds
    assert not any(s["use_vllm"] for s in paper.values())
    for name, settings in fast.items():
        assert settings["use_vllm"] is True
        assert settings["vllm_mode"] == "colocate"
        assert settings["vllm_gpu_memory_utilization"] == 0.3
        assert settings["vllm_importance_sampling_correction"] is False  # see the top-p test below
        changed = {k for k in settings if settings[k] != paper[name][k]}
        assert changed == {"use_vllm", "vllm_importance_sampling_correction"}, name


def test_paper_vllm_settings_reach_grpo_config(tmp_path):
    run = profiles.expand(profiles.load_profile("paper-vllm"))[0]
    config = grpo_config(run.settings, tmp_path)
    assert config.use_vllm is True
    assert config.vllm_mode == "colocate"
    assert config.vllm_gpu_memory_utilization == 0.3
    assert config.vllm_importance_sampling_correction is False
    assert config.top_p == 0.9


def test_server_mode_and_the_correction_settings_reach_grpo_config(tmp_path):
    settings = TrainSettings.from_dict(
        {
            "model": "tiny-test",
            "dataset": "synthetic",
            "use_vllm": "true",
            "top_p": "1.0",  # the correction is refused under top-p truncation (see below)
            "vllm_mode": "server",
            "vllm_server_host": "10.0.0.7",
            "vllm_server_port": "8123",
            "vllm_importance_sampling_mode": "token_truncate",
            "vllm_importance_sampling_clip_min": "0.5",
            "vllm_importance_sampling_clip_max": "2",
        }
    )
    config = grpo_config(settings, tmp_path)
    assert (config.vllm_mode, config.vllm_server_host, config.vllm_server_port) == (
        "server",
        "10.0.0.7",
        8123,
    )
    assert config.vllm_server_base_url is None
    assert config.vllm_importance_sampling_mode == "token_truncate"
    assert (config.vllm_importance_sampling_clip_min, config.vllm_importance_sampling_clip_max) == (0.5, 2.0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"vllm_mode": "remote"}, "vllm_mode must be one of colocate, server, got 'remote'"),
        ({"vllm_gpu_memory_utilization": 1.5}, r"in \(0, 1\], got 1.5"),
        ({"vllm_gpu_memory_utilization": 0.0}, r"in \(0, 1\], got 0.0"),
        ({"vllm_server_port": 0}, "vllm_server_port must be a TCP port"),
        (
            {"vllm_importance_sampling_mode": "token"},
            "must be one of token_truncate, token_mask, sequence_truncate",
        ),
        (
            {"vllm_importance_sampling_clip_min": 3.0, "vllm_importance_sampling_clip_max": 2.0},
            r"clip_min \(3.0\) must be below vllm_importance_sampling_clip_max \(2.0\)",
        ),
        (
            {"vllm_importance_sampling_mode": "sequence_truncate", "vllm_importance_sampling_clip_max": None},
            "'sequence_truncate' truncates the weights",
        ),
    ],
)
def test_bad_vllm_settings_are_clear_errors(values, message):
    with pytest.raises(ValueError, match=message):
        TrainSettings(model="tiny-test", dataset="synthetic", **values)


@pytest.mark.skipif(rollouts.vllm_installed(), reason="vLLM is installed here")
def test_asking_for_vllm_without_it_fails_before_the_run_folder_exists(tmp_path):
    settings = TrainSettings(
        model="tiny-test", dataset="synthetic", use_vllm=True, vllm_importance_sampling_correction=False
    )
    with pytest.raises(ImportError, match=r"install the 'vllm' extra") as err:
        train(settings, tmp_path / "run", progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(rollouts.vllm_installed(), reason="vLLM is installed here")
def test_the_cli_reports_missing_vllm_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from pspo_repro.cli import app

    args = ["train", "--out", str(tmp_path / "run"), "--model", "tiny-test", "--dataset", "synthetic"]
    args += ["--set", "use_vllm=true", "--set", "vllm_importance_sampling_correction=false"]
    result = CliRunner().invoke(app, [*args, "--quiet"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: use_vllm is set but vLLM is not installed")
    assert "'vllm' extra" in lines[0]
    assert not (tmp_path / "run").exists()


def test_top_p_makes_each_tokens_importance_weight_its_kept_mass():
    """A toy next-token distribution at the paper's T 0.8 and top-p 0.9. vLLM's processed log-probability of a
    kept token is renormalised over the kept set, the trainer's is over the whole vocabulary, so TRL's weight
    exp(trainer - vLLM) of that token is the kept mass (<= 1), whatever the token; over a 128-token completion
    the sequence weight is the product, far below 1 and never above sequence_mask's 3."""
    from vllm_sampler import kept_mass, processed_logprobs

    logits = torch.tensor([3.0, 2.6, 2.2, 1.8, 1.0, 0.0, -1.0, -2.0])
    full = torch.log_softmax(logits / 0.8, dim=-1)
    vllm = processed_logprobs(logits, 0.8, 0.9)
    kept = vllm.isfinite()
    assert 1 < int(kept.sum()) < len(logits)  # top-p cut the tail
    mass = float(kept_mass(logits, 0.8, 0.9))
    assert 0.9 <= mass < 1
    weights = torch.exp(full - vllm)[kept]
    torch.testing.assert_close(weights, torch.full_like(weights, mass))
    sequence_weight = mass**128
    assert sequence_weight < 1e-2  # here 0.951^128 = 1.5e-3
    assert not sequence_weight > 3.0  # sequence_mask drops only weights above 3: it keeps every such sequence


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_vllm_rollouts_with_top_p_below_1_and_the_correction_are_refused(mode):
    base = dict(model="tiny-test", dataset="synthetic", use_vllm=True, vllm_mode=mode)
    with pytest.raises(
        ValueError, match=r"top_p=0.9 .*mass top-p kept.*set vllm_importance_sampling_correction=false"
    ):
        TrainSettings(**base, top_p=0.9)
    # what may run: the correction off (the mismatch is recorded by the probes), or no top-p truncation
    TrainSettings(**base, top_p=0.9, vllm_importance_sampling_correction=False)
    TrainSettings(**base, top_p=1.0)
    TrainSettings(
        model="tiny-test", dataset="synthetic", top_p=0.9
    )  # HF generate: no vLLM log-probs involved
