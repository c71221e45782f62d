"""Fingerprint hashing, weight content hashes and the tar key encoding."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stages.store import Fingerprint, FingerprintMismatch, contract_fields, decode_key, encode_key, weights_hash

REPO = Path(__file__).resolve().parents[3]


def _component(path: Path, payload: bytes = b"\x00\x01weights" * 1000) -> Path:
    path.mkdir(parents=True)
    (path / "diffusion_pytorch_model.safetensors").write_bytes(payload)
    (path / "config.json").write_text(json.dumps({"_name_or_path": str(path), "in_channels": 4}))
    return path


def _fields(tmp_path: Path, **changes) -> dict:
    base = dict(components={"unet": tmp_path / "unet", "vae": tmp_path / "vae"},
                scheduler_config={"num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
                                  "_diffusers_version": "0.30"},
                preprocess={"resolution": 512, "resize": "pad", "pad_color": [122, 116, 104]},
                noise={"seed": 0, "trials": 1}, pooling={"grid": 16, "mode": "area"},
                dtypes={"features": "float16", "latents": "float32"}, memo_path=tmp_path / "memo.json")
    base.update(changes)
    return contract_fields(**base)


@pytest.fixture()
def models(tmp_path: Path) -> Path:
    _component(tmp_path / "unet")
    _component(tmp_path / "vae", b"vae" * 500)
    return tmp_path


def test_fingerprint_is_canonical_json_sha256() -> None:
    fp = Fingerprint.from_fields({"b": [1, 2], "a": {"y": 1.5, "x": "é"}})
    assert fp.json == '{"a":{"x":"é","y":1.5},"b":[1,2]}'
    import hashlib
    assert fp.full == hashlib.sha256(fp.json.encode()).hexdigest() and fp.short == fp.full[:16]
    assert Fingerprint.from_fields({"a": {"x": "é", "y": 1.5}, "b": (1, 2)}) == fp
    with pytest.raises(ValueError):
        Fingerprint.from_fields({"x": float("nan")})


def test_fingerprint_is_identical_in_two_processes(models: Path) -> None:
    code = ("import sys, json; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "from tests.stages.store.test_store_fingerprint import _fields; from stages.store import Fingerprint; "
            "print(Fingerprint.from_fields(_fields(Path(sys.argv[2]))).full)")
    runs = [subprocess.run([sys.executable, "-c", code, str(REPO), str(models)], capture_output=True,
                           text=True, check=True, env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout.strip()
            for seed in (1, 2)]
    assert runs[0] == runs[1] == Fingerprint.from_fields(_fields(models)).full


@pytest.mark.parametrize("change", [
    {"preprocess": {"resolution": 768, "resize": "pad", "pad_color": [122, 116, 104]}},
    {"preprocess": {"resolution": 512, "resize": "crop", "pad_color": [122, 116, 104]}},
    {"preprocess": {"resolution": 512, "resize": "pad", "pad_color": [0, 0, 0]}},
    {"noise": {"seed": 1, "trials": 1}}, {"noise": {"seed": 0, "trials": 2}},
    {"pooling": {"grid": 24, "mode": "area"}}, {"dtypes": {"features": "float32", "latents": "float32"}},
    {"scheduler_config": {"num_train_timesteps": 1000, "beta_schedule": "linear"}},
])
def test_every_contract_field_changes_the_fingerprint(models: Path, change: dict) -> None:
    assert Fingerprint.from_fields(_fields(models, **change)).full != Fingerprint.from_fields(_fields(models)).full


def test_weights_change_the_fingerprint_but_their_path_does_not(models: Path, tmp_path: Path) -> None:
    base = Fingerprint.from_fields(_fields(models))
    moved = shutil.copytree(models / "unet", tmp_path / "elsewhere" / "unet-copy")
    (moved / "config.json").write_text(json.dumps({"_name_or_path": "other", "in_channels": 4}))
    same = Fingerprint.from_fields(_fields(models, components={"unet": moved, "vae": models / "vae"}))
    assert same == base
    (moved / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00\x02weights" * 1000)
    changed = Fingerprint.from_fields(_fields(models, components={"unet": moved, "vae": models / "vae"}))
    assert changed != base
    assert any(line.strip().startswith("weights.unet:") for line in str(
        FingerprintMismatch(tmp_path, store=base, requested=changed)).splitlines())


def test_weights_hash_is_memoised_by_path_size_and_mtime(models: Path, tmp_path: Path) -> None:
    memo = tmp_path / "memo.json"
    first = weights_hash(models / "unet", memo_path=memo)
    entries = json.loads(memo.read_text())
    assert len(entries) == 2
    # Poison the memo: a second call must trust it (no re-hash) while size and mtime are unchanged.
    json_key = next(k for k in entries if "safetensors" in k)
    memo.write_text(json.dumps({**entries, json_key: "0" * 64}))
    assert weights_hash(models / "unet", memo_path=memo) != first
    weights = models / "unet" / "diffusion_pytorch_model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))
    assert weights_hash(models / "unet", memo_path=memo) == first


@pytest.mark.parametrize("key", ["coco/train2017/000000033471.jpg", "00453/004539375.jpg",
                                 "vg/VG_100K_2/a b.c.d.png", "ocr_vqa/images/ünï cödé/中文.jpg", "%2E.~"])
def test_key_encoding_is_tar_safe_and_reversible(key: str) -> None:
    encoded = encode_key(key)
    assert not set(encoded) & set("./ ~") and encoded.isascii()
    assert decode_key(encoded) == key
