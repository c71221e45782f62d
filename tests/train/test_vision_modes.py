"""One contract over every registered vision mode (`train.vision_modes.VISION_MODES`).

Features come from an in-memory source whose arrays differ in token and channel count (SD 6×12, CLIP
4×10; 4 tokens each where a mode fuses token by token), so a mode that read the wrong array, or sized
the LLM's image tokens from the wrong one, fails here. The training step goes the CLI's way
(`train.cli.prepare` + `run`: ZeRO-2 on CPU, gloo, fp32) on the bundled sample's pretrain JSON, with
caption guidance on, so the modes that read SD also run the guidance path.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from train.cli import SetupError, prepare, run
from train.conditioning import guidance_applies, required_arrays
from train.config import DataConfig, GuidanceConfig, TrainConfig, VisionConfig
from train.fusion import build_adapter
from train.model import ADAPTER_FILE
from train.resume import FINAL_DIR
from train.vision_modes import VISION_MODES

SD, CLIP = "U-L1-R1-B0-Cross-Q@t50", "CLIP-L-2"
CAPTION = f"{SD}:caption"
HIDDEN = 24
GUIDANCE = GuidanceConfig(scale=1.0, prompt_source="caption")


class MemoryFeatures:
    """Seeded random float16 arrays for any key: the source protocol `prepare` takes."""

    def __init__(self, *, sd_tokens: int, clip_tokens: int) -> None:
        self.shapes = {SD: (sd_tokens, 12), CAPTION: (sd_tokens, 12), CLIP: (clip_tokens, 10)}

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str)

    def sample_shape(self, array_id: str) -> tuple[int, int]:
        return self.shapes[array_id]

    def read(self, keys: list[str], array_ids: list[str]) -> dict[str, np.ndarray]:
        return {a: np.stack([np.random.default_rng(list(f"{k}/{a}".encode())).standard_normal(self.shapes[a])
                             .astype(np.float16) for k in keys]) for a in array_ids}  # (n, T, C)


def _vision(name: str) -> VisionConfig:
    return VisionConfig(mode=name, sd_array=SD, clip_array=CLIP, xattn_heads=2)


def _source(name: str) -> MemoryFeatures:
    return MemoryFeatures(sd_tokens=4 if VISION_MODES[name].equal_tokens else 6, clip_tokens=4)


def _adapter(vision: VisionConfig, source: MemoryFeatures) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_adapter(vision, feature_dims={a: c for a, (_, c) in source.shapes.items()}, hidden_size=HIDDEN)


def _features(source: MemoryFeatures, n: int = 3) -> dict[str, torch.Tensor]:
    arrays = source.read([f"img/{i}.jpg" for i in range(n)], list(source.shapes))
    return {a: torch.from_numpy(v) for a, v in arrays.items()}  # float16, as the store keeps them


def _config(name: str, sample, tmp_path) -> TrainConfig:
    return TrainConfig(model="embedded:tiny-llm", vision=_vision(name), guidance=GUIDANCE,
                       data=DataConfig(data_path=str(sample.pretrain_json)), lr=1e-2, warmup_ratio=0.0,
                       max_steps=1, per_device_batch_size=2, max_length=128, output_dir=str(tmp_path),
                       report_to="none", precision="fp32")


@pytest.mark.parametrize("name", sorted(VISION_MODES))
def test_mode_reads_exactly_its_arrays_and_outputs_its_token_arrays_count(name):
    vision, source = _vision(name), _source(name)
    adapter = _adapter(vision, source)
    features = _features(source)
    out = adapter(features)
    assert out.shape == (3, source.sample_shape(vision.token_array)[0], HIDDEN)  # (N_img, T_out, H)
    for array_id in features:  # the output moves with every array the mode reads, and with no other
        moved = adapter({**features, array_id: features[array_id] + 1})
        assert torch.equal(moved, out) == (array_id not in vision.array_ids), array_id
    for array_id in vision.array_ids:
        with pytest.raises(KeyError, match=re.escape(array_id)):
            adapter({k: v for k, v in features.items() if k != array_id})
    reads_sd = SD in vision.array_ids
    assert guidance_applies(vision, GUIDANCE) == VISION_MODES[name].guided == reads_sd
    assert required_arrays(vision, GUIDANCE) == vision.array_ids + ((CAPTION,) if reads_sd else ())


@pytest.mark.parametrize("name", sorted(VISION_MODES))
def test_mode_trains_one_step_through_the_cli_path(name, sample, tmp_path):
    prepared = prepare(_config(name, sample, tmp_path), source=_source(name))
    adapter = prepared.model.adapter
    assert prepared.dataset.num_image_tokens == adapter(_features(_source(name))).shape[1]  # what the LLM sees
    initial = {k: v.clone() for k, v in adapter.state_dict().items()}
    (step,) = run(prepared).history
    assert np.isfinite(step.loss) and step.grad_norm > 0
    saved = load_file(str(tmp_path / FINAL_DIR / ADAPTER_FILE))
    assert saved.keys() == initial.keys()
    assert any(not torch.equal(saved[k], initial[k]) for k in saved), "the adapter did not change"


@pytest.mark.parametrize("name", sorted(n for n, m in VISION_MODES.items() if m.equal_tokens))
def test_token_by_token_modes_refuse_unequal_token_counts_before_training(name, sample, tmp_path):
    source = MemoryFeatures(sd_tokens=6, clip_tokens=4)
    with pytest.raises(ValueError, match="equal"):
        _adapter(_vision(name), source)(_features(source))
    with pytest.raises(SetupError, match="equal token counts"):
        prepare(_config(name, sample, tmp_path), source=source)
    assert not (tmp_path / FINAL_DIR).exists()
