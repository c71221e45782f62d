"""Shared fixtures: offline hub, the embedded tiny models, the bundled sample."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sd_dir() -> str:
    from stages.embedded import resolve_model

    return resolve_model("embedded:tiny-sd")


@pytest.fixture(scope="session")
def tiny_sd(tiny_sd_dir):
    from stages.models import load_sd_components

    return load_sd_components(tiny_sd_dir, device="cpu")


@pytest.fixture(scope="session")
def sample(tmp_path_factory):
    from stages.embedded.sample import ensure_sample

    return ensure_sample(tmp_path_factory.mktemp("sample"))
