"""The system prompt as a named setting, used alike by training, validation, evaluation and a study."""

from __future__ import annotations

import json

import pytest

from pspo_repro.data import prompts
from pspo_repro.data.problem import Problem
from pspo_repro.evaluation import evaluate
from pspo_repro.study import profiles, runner
from pspo_repro.training.settings import TrainSettings
from pspo_repro.training.train import to_dataset

AUTHORS = (  # format_dataset in the authors' maths_dataset_loading.py, character for character
    "You are a careful math solver. Think through the solution and show the steps. Use English only. "
    "End the response with the final answer only in the format: '#### <final numeric answer only>'"
)


def test_the_authors_wording_for_every_kind_and_ours_by_default():
    assert prompts.system_message("numeric", "authors") == AUTHORS
    assert prompts.system_message("latex", "authors") == AUTHORS  # they asked for #### on MATH-500 too
    assert prompts.system_message("numeric") == prompts.NUMERIC_SYSTEM_PROMPT
    assert "\\boxed{}" in prompts.system_message("latex")
    messages = prompts.chat_messages("What is 2 + 3?", "numeric", "authors")
    assert messages == [{"role": "system", "content": AUTHORS}, {"role": "user", "content": "What is 2 + 3?"}]


def test_unknown_system_prompt_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown system_prompt 'ours'; allowed: default, authors"):
        prompts.chat_messages("q", "numeric", "ours")
    with pytest.raises(ValueError, match=r"unknown system_prompt 'theirs'"):
        TrainSettings(system_prompt="theirs")
    with pytest.raises(ValueError, match=r"unknown system_prompt 'x'"):
        evaluate.evaluate("tiny-test", "synthetic", "/nonexistent", system_prompt="x")


def test_training_prompts_and_the_run_config_carry_the_setting():
    settings = TrainSettings.from_dict({"system_prompt": "authors"})
    assert settings.to_dict()["system_prompt"] == "authors"  # recorded in the run's config.json
    problem = Problem(id="p", benchmark="gsm8k", question="What is 2 + 3?", answer="5", kind="numeric")
    row = to_dataset([problem], settings.system_prompt)[0]
    assert row["prompt"][0] == {"role": "system", "content": AUTHORS}
    assert to_dataset([problem])[0]["prompt"][0]["content"] == prompts.NUMERIC_SYSTEM_PROMPT


def test_a_run_is_evaluated_with_the_prompt_it_was_trained_with(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"system_prompt": "authors"}))
    assert evaluate.run_system_prompt(run) == "authors"
    (run / "config.json").write_text(json.dumps({"model": "m"}))  # a run from before the setting
    assert evaluate.run_system_prompt(run) == "default"
    assert evaluate.run_system_prompt("tiny-test") == "default"


def test_the_paper_profile_uses_the_authors_prompt_for_runs_and_starting_models(tmp_path):
    paper = profiles.expand(profiles.load_profile("paper"))
    assert {r.settings.system_prompt for r in paper} == {"authors"}
    starts = [t for t in runner.tasks(paper, tmp_path, ["gsm8k"], {}, None) if t.kind == "base"]
    assert len(starts) == 3 and all(t.eval_options["system_prompt"] == "authors" for t in starts)
    cpu = profiles.expand(profiles.load_profile("cpu"))
    assert {r.settings.system_prompt for r in cpu} == {"default"}
