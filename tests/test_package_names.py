"""Top-level names are shared with the whole environment: ours must not be another distribution's.

The evaluation package was `evaluate`, which is Hugging Face's `evaluate` (lmms-eval depends on it): one
venv could not hold both. It is `llava_eval` now, a name no package on the index uses (checked
2026-12-04); this test checks every top-level package of ours against the distributions installed here.
"""
from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _our_packages() -> list[str]:
    found = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    return [pattern.rstrip("*") for pattern in found]


def test_no_installed_distribution_but_ours_provides_our_top_level_packages():
    providers = importlib.metadata.packages_distributions()
    ours = importlib.metadata.metadata("diffusion-feature-cache")["Name"]
    clashes = {name: sorted(set(providers.get(name, [])) - {ours}) for name in _our_packages()}
    assert {name: dists for name, dists in clashes.items() if dists} == {}


def test_the_evaluation_package_does_not_take_hugging_faces_name():
    assert "llava_eval" in _our_packages() and "evaluate" not in _our_packages()
