"""One transformers for every environment: the CPU install and the GPU install with the vllm extra resolve to
the same pinned transformers (and the tested TRL), which every vLLM release the extra allows accepts."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

# The transformers requirement of each vLLM release TRL 1.16 supports (its own vllm extra: >=0.22.0,<=0.31.0),
# as their wheels' metadata (Requires-Dist) states it. Releases after 0.31 need a newer TRL.
VLLM_TRANSFORMERS = {
    "0.22.0": ">=4.56.0,!=5.0.*,!=5.1.*,!=5.2.*,!=5.3.*,!=5.4.*,!=5.5.0",
    "0.22.1": ">=4.56.0,!=5.0.*,!=5.1.*,!=5.2.*,!=5.3.*,!=5.4.*,!=5.5.0",
    "0.23.0": ">=4.56.0,!=5.0.*,!=5.1.*,!=5.2.*,!=5.3.*,!=5.4.*,!=5.5.0",
    "0.24.0": ">=5.5.3",
    "0.25.0": ">=5.5.3",
    "0.25.1": ">=5.5.3",
    "0.26.0": ">=5.5.3",
    "0.27.0": ">=5.5.3",
    "0.27.1": ">=5.5.3",
    "0.28.0": ">=5.5.3",
    "0.29.0": ">=5.10.4",
    "0.30.0": ">=5.10.4",
    "0.31.0": ">=5.10.4,<5.18.0",
}


def _requirements() -> tuple[dict[str, Requirement], dict[str, list[Requirement]]]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    deps = {(r := Requirement(line)).name: r for line in project["dependencies"]}
    extras = {
        name: [Requirement(line) for line in lines]
        for name, lines in project["optional-dependencies"].items()
    }
    return deps, extras


def _pin(requirement: Requirement) -> Version:
    specs = list(requirement.specifier)
    assert len(specs) == 1 and specs[0].operator == "==", f"{requirement} is not pinned to one exact version"
    return Version(specs[0].version)


def test_transformers_and_trl_are_pinned_to_one_version():
    deps, _ = _requirements()
    assert _pin(deps["trl"]) == Version("1.16.0")  # the TRL whose GRPOTrainer the objectives patch
    assert _pin(deps["transformers"]) == Version("5.17.0")


def test_every_vllm_release_the_extra_allows_accepts_the_pinned_transformers():
    deps, extras = _requirements()
    pin = _pin(deps["transformers"])
    (vllm,) = [r for r in extras["vllm"] if r.name == "vllm"]
    allowed = [v for v in VLLM_TRANSFORMERS if Version(v) in vllm.specifier]
    assert allowed, f"the vllm extra {vllm} allows none of the releases known here"
    assert "0.31.0" in allowed  # the newest, which the resolver picks
    for release in allowed:
        assert pin in SpecifierSet(VLLM_TRANSFORMERS[release]), (release, VLLM_TRANSFORMERS[release], pin)
    # a release past those listed (whose transformers bound is unknown here) is not allowed
    assert Version("0.32.0") not in vllm.specifier


def test_the_vllm_extra_lies_within_trls_own():
    try:
        trl_requires = metadata.requires("trl") or []
    except metadata.PackageNotFoundError:  # pragma: no cover - trl is a dependency
        pytest.skip("trl is not installed")
    (trl_vllm,) = [Requirement(r) for r in trl_requires if r.startswith("vllm") and "extra ==" in r]
    _, extras = _requirements()
    (ours,) = [r for r in extras["vllm"] if r.name == "vllm"]
    for release in VLLM_TRANSFORMERS:
        if Version(release) in ours.specifier:
            assert Version(release) in trl_vllm.specifier, (release, str(trl_vllm.specifier))
