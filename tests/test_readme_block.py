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
