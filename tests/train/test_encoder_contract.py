"""Every registered encoder's store trains: the pipeline writes it (in process), the trainer finds it by
its extraction YAML and runs a real step with the vision mode that reads the encoder's feature array."""
from __future__ import annotations

import numpy as np
import pytest

from stages.cache_spec import CacheSpec
from stages.encoders import ENCODERS
from stages.features import LATENTS
from train.cli import prepare, run
from train.config import DataConfig, TrainConfig, VisionConfig

SPECS = {
    "sd": CacheSpec(model="embedded:tiny-sd", resolution=64, grid=2, features=("U-L1-R1-B0-Cross-Q",)),
    "sdxl": CacheSpec(model="embedded:tiny-sdxl", encoder="sdxl", resolution=64, grid=2, features=("U-L1-R1-B0-Cross-Q",)),
    "clip": CacheSpec(model="embedded:tiny-clip-vision", encoder="clip", resolution=None, grid=2, features=(),
                      timesteps=()),
}
MODE_OF = {"sd": "sd", "sdxl": "sd", "clip": "clip"}  # the single-array vision mode reading each encoder's features


def test_every_registered_encoder_has_a_training_contract():
    assert set(SPECS) == set(MODE_OF) == set(ENCODERS)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_a_store_of_every_encoder_trains_one_step(name, make_train_store, tmp_path):
    spec = SPECS[name]
    store = make_train_store(spec)
    feature = next(a for a in spec.array_ids() if a != LATENTS)
    role = "sd_array" if MODE_OF[name] == "sd" else "clip_array"
    vision = VisionConfig(mode=MODE_OF[name], **{role: feature})
    data = DataConfig(data_path=str(store.pretrain_json), extract_configs=(str(store.extract_yaml),))
    config = TrainConfig(stage="pretrain", model="embedded:tiny-llm", vision=vision, data=data, max_steps=1,
                         max_length=64, per_device_batch_size=2, precision="fp32", output_dir=str(tmp_path / "run"))
    prepared = prepare(config)
    assert prepared.dataset.num_image_tokens == spec.grid**2
    history = run(prepared).history
    assert [m.step for m in history] == [1] and np.isfinite(history[0].loss) and history[0].grad_norm > 0
