"""LLaVA's checkpoints and ours (issue 22): LLaVA's `mm_projector.bin` as `pretrained_adapter` (read with
`weights_only`, mapped onto the CLIP-mode projector, refused in one line when it does not fit), and our
`final/` folder loaded with transformers and safetensors alone, by the snippet docs/training.md shows."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from stages.config import ConfigError
from stages.locations import REPO
from train.cli import main
from train.config import TrainConfig, VisionConfig
from train.conversation import IGNORE_INDEX, tokenize_prompt
from train.fusion import AdapterConfig
from train.model import ADAPTER_FILE, LLM_DIR, build_model, load_tokenizer
from train.pretrained_adapter import load_pretrained_adapter

CLIP = "CLIP-L-2"
C, H = 24, 64  # H: the width of embedded:tiny-llm (the default model)
CLIP_ADAPTER = AdapterConfig(vision=VisionConfig(mode="clip"), feature_dims={CLIP: C}, hidden_size=H)


def llava_projector(path: Path, *, in_dim: int = C, out_dim: int = H, dtype=torch.bfloat16) -> dict:
    """A projector saved as LLaVA-1.5's pretraining saves `mm_projector.bin` (bf16, its key names)."""
    generator = torch.Generator().manual_seed(0)
    state = {"model.mm_projector.0.weight": torch.randn(out_dim, in_dim, generator=generator),
             "model.mm_projector.0.bias": torch.randn(out_dim, generator=generator),
             "model.mm_projector.2.weight": torch.randn(out_dim, out_dim, generator=generator),
             "model.mm_projector.2.bias": torch.randn(out_dim, generator=generator)}
    state = {name: value.to(dtype) for name, value in state.items()}
    torch.save(state, path)
    return state


def test_a_llava_mm_projector_bin_loads_into_the_clip_projector_with_equal_weights(tmp_path):
    state = llava_projector(tmp_path / "mm_projector.bin")
    config = TrainConfig(stage="sft", vision=VisionConfig(mode="clip"),
                         pretrained_adapter=str(tmp_path / "mm_projector.bin"))
    model = build_model(config, feature_dims={CLIP: C})  # the path `pretrained_adapter` takes in a run
    loaded = model.adapter.projector.state_dict()
    assert sorted(loaded) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    for name, value in loaded.items():
        assert torch.equal(value, state[f"model.mm_projector.{name}"].to(value.dtype)), name


def test_a_llava_projector_of_other_shapes_is_one_line_naming_expected_and_found_shapes(tmp_path):
    llava_projector(tmp_path / "mm_projector.bin", in_dim=C + 8)
    with pytest.raises(ConfigError) as info:
        load_pretrained_adapter(CLIP_ADAPTER.build(), tmp_path / "mm_projector.bin", expected=CLIP_ADAPTER)
    message = str(info.value)
    assert "\n" not in message and f"({C} CLIP channels to LLM width {H})" in message
    assert f"expected projector.0.bias ({H},), projector.0.weight ({H}, {C})," in message
    assert f"found model.mm_projector.0.bias ({H},), model.mm_projector.0.weight ({H}, {C + 8})," in message


class _Touch:
    """Pickles as a call of `Path.touch`: loading it with full pickle creates the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


@pytest.mark.parametrize("payload, message", [
    ("code", "is neither an adapter.safetensors of this project nor a LLaVA mm_projector.bin that "
             "torch.load(weights_only=True) accepts"),
    ("llava", "is a LLaVA projector, trained on CLIP patch tokens: it fits vision.mode=clip only (this run: "
              "vision.mode=sd)"),
])
def test_a_pretrained_adapter_that_does_not_fit_is_one_line_exit_2_and_never_runs_code(
        payload, message, train_store, tmp_path, capsys):
    path, marker = tmp_path / "mm_projector.bin", tmp_path / "code-ran"
    if payload == "code":
        torch.save({"model.mm_projector.0.weight": _Touch(marker)}, path)
    else:
        llava_projector(path)
    code = main(["sft", f"data.extract_configs=[{train_store.extract_yaml}]", f"data.data_path={train_store.sft_json}",
                 f"output_dir={tmp_path / 'out'}", f"pretrained_adapter={path}"])
    err = capsys.readouterr().err.strip().splitlines()  # the last line: before it, maybe the LLM's loading bar
    assert code == 2 and err[-1].startswith(f"train sft: error: pretrained_adapter {path} {message}"), err
    assert not marker.exists() and not (tmp_path / "out").exists()
    if payload == "code":  # the file does hold code: full pickle runs it
        torch.load(path, weights_only=False)
        assert marker.exists()


def _snippet() -> str:
    """The Python block after the `final-folder-snippet` marker in docs/training.md."""
    text = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    return re.search(r"<!-- final-folder-snippet -->\n```python\n(.*?)```", text, re.DOTALL).group(1)


def test_the_final_folder_loads_with_transformers_alone_as_the_docs_show(tmp_path):
    config = TrainConfig(stage="sft", output_dir=str(tmp_path))
    sd_array = config.vision.sd_array
    model = build_model(config, feature_dims={sd_array: 8})
    final = tmp_path / "final"
    model.save_pretrained(final, with_llm=True)  # what a run's final save writes (train.loop), and its tokenizer
    tokenizer = load_tokenizer(config.model)
    tokenizer.save_pretrained(final / LLM_DIR)
    assert (final / ADAPTER_FILE).is_file()

    code = _snippet()
    assert 'final = "runs/sample-sft/final"' in code
    namespace: dict = {}
    exec(code.replace('final = "runs/sample-sft/final"', f"final = {str(final)!r}"), namespace)
    assert namespace["reply"].shape[0] == 1  # it generated

    features = torch.randn(1, 16, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(namespace["projector"](features), model.adapter({sd_array: features}), atol=1e-6)
    features = namespace["features"]
    ids = torch.tensor([tokenize_prompt("What is in the image?", template="v1", tokenizer=tokenizer, has_image=True)])
    with torch.no_grad():
        expected, _, _ = model.embed_inputs(input_ids=ids, labels=torch.full_like(ids, IGNORE_INDEX),
                                            attention_mask=torch.ones_like(ids), features={sd_array: features},
                                            max_length=4096)
    assert torch.allclose(namespace["inputs_embeds"], expected, atol=1e-6)  # the ids and tokens training uses
