"""The justfile passes arguments through intact: paths with spaces and non-ASCII characters, and flags."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LEGACY = REPO / "tests" / "fixtures" / "legacy-store-v1"
STORE = "a17b7bd375df2aea"


def _just(*args: str) -> subprocess.CompletedProcess:
    just = Path(sys.executable).with_name("just")  # installed beside the interpreter by the dev extra
    env = {**os.environ, "PATH": f"{just.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(just), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture()
def odd_root(tmp_path: Path) -> Path:
    root = tmp_path / "my cache ü"
    shutil.copytree(LEGACY / STORE, root / STORE)
    return root


def test_caches_and_verify_recipes_take_a_root_with_spaces_and_unicode_and_flags(odd_root: Path):
    listed = _just("caches", str(odd_root))
    assert listed.returncode == 0, listed.stderr
    assert str(odd_root / STORE) in listed.stdout
    checked = _just("verify", str(odd_root / STORE), "--allow-incomplete")
    assert checked.returncode == 0 and "OK" in checked.stdout, checked.stderr


def test_extract_recipe_finds_a_store_under_such_a_root(odd_root: Path, sample):
    result = _just("extract", "--no-progress", f"cache_root={odd_root}", f"data=[{LEGACY / 'pretrain.json'}]",
                   f"image_root={sample.image_root}", "model=embedded:tiny-sd", "resolution=64", "grid=2",
                   "features=[U-L1-R1-B0-Cross-Q]", "timesteps=[50]", "prompt_sources=[caption]", "shard_size=2")
    assert result.returncode == 0, result.stderr
    assert "cache hit" in result.stdout and str(odd_root / STORE) in result.stdout
