"""`just bench-eval`: generation throughput against Hugging Face `generate`, and diffusion compute per question.

1. Generated tokens/s of `llava_eval.generate.generate` (splice, left padding, prefill, KV-cache steps) vs a
   bare `llm.generate(inputs_embeds=..., attention_mask=..., do_sample=False, max_new_tokens=N)` on the
   same model and the same spliced, left-padded batch (`left_padded_inputs`, built once and not timed for
   Hugging Face). eos is disabled in both, so every row gets N tokens; both must produce the same tokens.
   CPU, fp32, v1 prompts; the tiny LLM and a mid-size Llama (hidden 512, 4 layers), a random `sd` adapter
   and random features of the paper's SD shape (256 tokens x 1280 channels). Min of 7 interleaved runs.
2. GFLOP per evaluated question at 512 px on the full-size SD 2.1-base architecture (`stages.flops`,
   meta device): without question guidance the SD features are read from the cache (0); with it, the text
   encoder on the question and one U-Net pass on the cached latents stopped after the tap (no VAE).

    python -m benchmarks.bench_eval [--batch 8] [--new-tokens 32] [--threads 1]
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from benchmarks.bench_train import mid_llm  # noqa: E402
from benchmarks.common import best_seconds_interleaved, markdown_table, write_results  # noqa: E402
from llava_eval.generate import generate, left_padded_inputs  # noqa: E402
from stages.cache_spec import CacheSpec  # noqa: E402
from stages.encoders.sd import SD  # noqa: E402
from stages.flops import architecture_dir, text_encoder_gflop, unet_gflop  # noqa: E402
from stages.llava import QUESTION  # noqa: E402
from train.config import VisionConfig  # noqa: E402
from train.conversation import tokenize_prompt  # noqa: E402
from train.fusion import AdapterConfig  # noqa: E402
from train.model import LlavaModel, load_llm, load_tokenizer  # noqa: E402

SD21_BASE = "stabilityai/stable-diffusion-2-1-base"
TAP = "U-L1-R1-B0-Cross-Q"
SD_ARRAY = f"{TAP}@t50"
SD_SHAPE = (256, 1280)  # U-L1-R1-B0-Cross-Q at 512 px: 16 x 16 tokens
QUESTIONS = (
    "What is in the image?",
    "What color is the bus? Answer the question using a single word or phrase.",
    "Describe the image concisely.",
    "How many people are in the picture?\nA. 1\nB. 2\nC. 3\nAnswer with the option's letter from the given "
    "choices directly.",
)
NO_EOS = -1  # never produced: every row runs to max_new_tokens


def _batch(tokenizer: Any, size: int) -> tuple[list[list[int]], dict[str, torch.Tensor]]:
    """`size` v1 prompts over QUESTIONS (every fourth text-only) and random features for their images."""
    has_image = [i % 4 != 3 for i in range(size)]
    prompts = [tokenize_prompt(QUESTIONS[i % len(QUESTIONS)], template="v1", tokenizer=tokenizer, has_image=img)
               for i, img in enumerate(has_image)]
    features = {SD_ARRAY: torch.randn(sum(has_image), *SD_SHAPE)}  # (N_img, T, C)
    return prompts, features


def gflop_per_question() -> dict[str, float]:
    """Diffusion GFLOP per question at eval time, 512 px, SD 2.1-base (the architecture only, no weights)."""
    model_dir = architecture_dir(SD21_BASE)[0]
    spec = CacheSpec(model=SD21_BASE, resolution=512, features=(TAP,), timesteps=(50,))
    text, unet = text_encoder_gflop(str(model_dir), SD.text_encoders), unet_gflop(str(model_dir), 512, (TAP,))
    return {"without_guidance": 0.0, "with_question_guidance": SD.guided_gflop(spec, model_dir, SD_ARRAY,
                                                                                source=QUESTION),
            "text_encoder": text, "unet_to_tap": unet}


def measure(llm_spec: str, *, batch: int, new_tokens: int) -> dict[str, float]:
    tokenizer = load_tokenizer(llm_spec)
    llm = load_llm(llm_spec).eval()
    torch.manual_seed(0)
    vision = VisionConfig(mode="sd", sd_array=SD_ARRAY)
    config = AdapterConfig(vision=vision, feature_dims={SD_ARRAY: SD_SHAPE[1]}, hidden_size=llm.config.hidden_size)
    model = LlavaModel(llm=llm, adapter=config.build(), adapter_config=config, max_length=2048).eval()
    prompts, features = _batch(tokenizer, batch)
    with torch.inference_mode():
        embeds, mask = left_padded_inputs(model, prompts, features)

    def ours() -> list[list[int]]:
        return generate(model, prompts, features, max_new_tokens=new_tokens, eos_token_id=NO_EOS,
                        pad_token_id=tokenizer.pad_token_id)

    def hugging_face() -> list[list[int]]:
        with torch.inference_mode():
            return llm.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False,
                                max_new_tokens=new_tokens, eos_token_id=None,
                                pad_token_id=tokenizer.pad_token_id).tolist()

    if ours() != hugging_face():
        raise AssertionError("llava_eval.generate and Hugging Face generate disagree on the same inputs")
    seconds = best_seconds_interleaved({"ours": ours, "hf": hugging_face}, repeats=7)
    tokens = batch * new_tokens
    return {"prompt_tokens_max": int(mask.shape[1]), "ours_tokens_per_s": tokens / seconds["ours"],
            "hf_tokens_per_s": tokens / seconds["hf"], "ours_over_hf": seconds["hf"] / seconds["ours"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    measured, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        models = {"tiny (hidden 64, 2 layers)": "embedded:tiny-llm",
                  "mid (hidden 512, 4 layers)": mid_llm(Path(tmp) / "mid-llm")}
        for label, spec in models.items():
            result = measure(spec, batch=args.batch, new_tokens=args.new_tokens)
            measured[label] = result
            rows.append([label, args.batch, result["prompt_tokens_max"], args.new_tokens,
                         f"{result['ours_tokens_per_s']:.0f}", f"{result['hf_tokens_per_s']:.0f}",
                         f"{result['ours_over_hf']:.2f}x"])
    print(markdown_table(["LLM (CPU, fp32)", "batch", "prompt tokens (max)", "new tokens",
                          "llava_eval.generate tok/s", "HF generate tok/s", "ours / HF"], rows))
    gflop = gflop_per_question()
    print()
    print(markdown_table(["per evaluated question (512 px, SD 2.1-base)", "diffusion GFLOP"], [
        ["no question guidance (SD features from the cache)", f"{gflop['without_guidance']:.0f}"],
        [f"question guidance s > 0 (text encoder + U-Net to {TAP} on cached latents)",
         f"{gflop['with_question_guidance']:.0f}"]]))
    path = write_results("eval", {"generation": measured, "batch": args.batch, "new_tokens": args.new_tokens,
                                  "gflop_per_question": gflop})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
