"""Every embedded artefact has pinned bytes: a library release cannot change what the embedded default is.

Each artefact is built in a fresh `DFC_EMBEDDED_HOME`; its digest is the sha256 of its `embedded.json`,
which lists the sha256 of every file it holds. A failure names the artefact and prints that list. If
the change is intended (new sizes, corpus, photos, weight rule), bump the artefact's version and pin
the new digest; if it is not, a dependency drifted: compare with `requirements.lock`.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import pytest

from stages.embedded import MANIFEST_NAME, registered_names, resolve_model

PINNED = {
    "sample": "09c5bb6e5653007ed41f99786f1598deee34534cf698160306e0143e4dd2fb1e",
    "tiny-clip-vision": "3967baa2f749b78d0f92047c22d6a2b8093ebf6750dca3344f4cd3125fcbb4c6",
    "tiny-llm": "b199ec8c30d63b7107fac25a501c9ff9782a386987e8e7b7e26f560d2fab8630",
    "tiny-sd": "c97c812fbd6d5628351364672a9e71dfef6dfdc0d279d310135dc32d890acede",
    "tiny-sd15": "be19de41e9ffd3630dcb93359ce36ce6f2e5b777b412f5a60e7997ac5b35a6db",
    "tiny-sd21-768": "1387069a30ca905808165924fdf752463351506015060920823ca8fdc09288d2",
    "tiny-sdxl": "4c88d74601c01d35a78dfcec3cbfc345f8eb7e61800bd3ab3053e14d97c4feca",
    "eval-benchmarks": "76cc4fe9aac7294556e7a76dad74dabf71566acfdbfd436e24c1476ff0069cbe",
    "analysis-tiny-clip": "fcd61bc3e1573973a8f058a94cfdf52fc2320a8452341aa75ffcb95aea7fe64d",
    "analysis-mmvp-vlm": "43436dfdae3877dad2a7e900fab25a08b60fecccb0a5ab45158754519b17fd26",
    "analysis-winoground": "370f350d22e39e6d6de5734ef109194e200316351ba7b982154af05826a6fa0d",
}


def _builders() -> dict[str, Callable[[], str | Path]]:
    from analysis.fixtures import benchmark_root, tiny_clip_dir
    from llava_eval.embedded import ensure_eval_root

    registered = {name: (lambda name=name: resolve_model(f"embedded:{name}")) for name in registered_names()}
    return {**registered, "eval-benchmarks": ensure_eval_root, "analysis-tiny-clip": tiny_clip_dir,
            "analysis-mmvp-vlm": lambda: benchmark_root("mmvp-vlm"),
            "analysis-winoground": lambda: benchmark_root("winoground")}


def test_every_embedded_artefact_is_pinned():
    assert sorted(_builders()) == sorted(PINNED)


@pytest.fixture(scope="module")
def fresh_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fresh-embedded-home")


@pytest.mark.parametrize("name", sorted(PINNED))
def test_embedded_artefact_bytes_equal_their_pinned_digest(name, fresh_home, monkeypatch):
    monkeypatch.setenv("DFC_EMBEDDED_HOME", str(fresh_home))
    path = Path(_builders()[name]())
    assert path.is_relative_to(fresh_home)  # built here, not found elsewhere
    manifest = (path / MANIFEST_NAME).read_bytes()
    digest = hashlib.sha256(manifest).hexdigest()
    assert digest == PINNED[name], f"embedded artefact {name!r} changed; its files:\n{manifest.decode()}"
