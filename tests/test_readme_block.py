"""The README's results block is written from the result files, never by hand."""

from __future__ import annotations

from pathlib import Path

from pspo_repro.analysis import readme_block

REPO = Path(__file__).resolve().parents[1]


def test_the_block_is_replaced_between_its_markers_only(tmp_path):
    results = tmp_path / "results" / "cpu"
    results.mkdir(parents=True)
    (results / "headline.md").write_text("| model | x |\n|---|---|\n| m | 1 |\n")
    (results / "timing.md").write_text("| stage | core-minutes |\n")
    readme = tmp_path / "README.md"
    begin, end = readme_block.markers("cpu")
    readme.write_text(f"intro\n{begin}\nold numbers\n{end}\noutro\n")
    assert readme_block.update(readme, "cpu", results)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{end}\noutro\n") and "old numbers" not in text
    assert readme_block.current(readme, "cpu") == readme_block.block(results)
    assert "| m | 1 |" in text and "**Compute** (`timing.md`" in text
    assert not readme_block.update(readme, "smoke", results)  # no markers for that profile: untouched


def test_the_committed_readme_block_is_what_the_committed_results_give(monkeypatch):
    monkeypatch.chdir(REPO)  # the block names the results folder as the report, run from the root, does
    readme = REPO / "README.md"
    for profile in ("cpu",):
        block = readme_block.current(readme, profile)
        assert block is not None, f"README.md has no results block for {profile}"
        assert block == readme_block.block(Path("results") / profile), (
            f"README.md's {profile} block differs from results/{profile}: run `pspo-repro report --profile "
            f"{profile}` from the repository root"
        )


def test_the_phase_winners_read_as_a_winner_a_tie_or_the_difference_that_could_be_missed(tmp_path):
    results = tmp_path / "cpu"
    results.mkdir()
    header = "reuse,learning_rate,best,tied_with_best,runner_up,difference,ci_low,ci_high,p_holm,mdd,winner\n"
    rows = [
        "16,0.0004,gspo,,clip-eps0,0.152,0.064,0.243,0.003,0.1,gspo",
        '1,0.0001,clip,"clip, noclip",noclip,0.0,0.0,0.0,1.0,0.0,',
        "4,0.0004,gspo,,clip,0.006,-0.16,0.168,1.0,0.28,",
    ]
    (results / "phase-winners.csv").write_text(header + "\n".join(rows) + "\n")
    text = readme_block.block(results)
    assert "- reuse 16, lr 0.0004: **gspo** over clip-eps0, +15.2 pp [+6.4, +24.3], p (Holm) 0.003" in text
    assert "- reuse 1, lr 0.0001: no winner (tied at the same accuracy: clip, noclip)" in text
    assert (
        "- reuse 4, lr 0.0004: no winner (best gspo over clip, +0.6 pp [-16.0, +16.8]; a difference under 28 pp"
        in text
    )
