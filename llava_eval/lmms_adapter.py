"""lmms-eval's model `dfc_llava`: a trained run answers lmms-eval's tasks with `just eval`'s own generation and
feature serving (`llava_eval.evaluator.answer`), so lmms-eval's datasets, prompts and scorers judge the model
the paper's tables judge.

    lmms-eval --model dfc_llava --model_args run=runs/sft[,checkpoint=step-00000024] --tasks mmvp,gqa

lmms-eval finds it through the entry point group `lmms_eval.models` (pyproject.toml). Model arguments, as
`just eval` takes them: `run`; `checkpoint`, a folder of `<run>/checkpoints/` (default: `final/`);
`cache_root`; `max_new_tokens` (0: the task's); `sd_prompt`, what conditions the U-Net's guided pass:
`question` (the task's prompt, `just eval`'s default setting) or `none` (no prompt: X = X_u, COCO's
no-caption setting). lmms-eval's own `--batch_size` and `--device` apply; one process (no `accelerate launch`).

Images: a request's pictures (`doc_to_visual`; several are composed side by side, BLINK's single-image
protocol) are written once as PNG to `<cache_root>/eval-images/<task>/images/<sha256 of the PNG>.png`, as
`just eval` writes images embedded in data files, and served from the run's stores under that key; images
not cached yet are refused with the `just extract` command that caches them. Decoding is greedy, as in
`just eval`; a task asking for sampling or beam search is refused.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from PIL import Image
from tqdm import tqdm

from llava_eval.benchmarks.base import Benchmark, EvalItem
from llava_eval.benchmarks.blink import compose_horizontally
from llava_eval.benchmarks.coco import SD_NONE
from llava_eval.benchmarks.layouts import ImageFiles
from llava_eval.evaluator import answer
from llava_eval.export import write_llava_json
from llava_eval.features import EvalFeatures
from llava_eval.results import EVAL_DIR
from llava_eval.run import Checkpoint, TrainedRun
from llava_eval.sources import written_images
from stages.config import ConfigError
from stages.llava import QUESTION
from stages.models import default_device
from train.engine import CHECKPOINTS_DIR
from train.resume import FINAL_DIR

__all__ = ["MODEL_NAME", "MANIFEST", "DfcLlava"]

MODEL_NAME = "dfc_llava"
SD_PROMPTS = (QUESTION, SD_NONE)
DATA_JSON = "lmms-eval.json"  # under <run>/eval/data/: the images of the last requests, for `just extract`


class DfcLlava(lmms):
    """A run's checkpoint with its feature stores, answering lmms-eval's `generate_until` requests."""

    def __init__(self, run: str, checkpoint: str = "", cache_root: str = "", max_new_tokens: int = 0,
                 sd_prompt: str = QUESTION, device: str | None = None, batch_size: int | str = 1,
                 max_batch_size: int | None = None) -> None:  # max_batch_size: lmms-eval's, for batch size "auto"
        super().__init__()
        if sd_prompt not in SD_PROMPTS:
            raise ConfigError(f"{MODEL_NAME}: sd_prompt must be one of {SD_PROMPTS}, got {sd_prompt!r}")
        if not str(batch_size).isdigit() or int(batch_size) < 1 or not str(max_new_tokens).isdigit():
            raise ConfigError(f"{MODEL_NAME}: --batch_size must be a positive number (got {batch_size!r}) and "
                              f"max_new_tokens a number >= 0 (got {max_new_tokens!r})")
        weights = FINAL_DIR if str(checkpoint) in ("", FINAL_DIR) else f"{CHECKPOINTS_DIR}/{checkpoint}"
        self.checkpoint = Checkpoint.locate(Path(run) / weights)
        config = self.checkpoint.config
        self.image_root = written_images(str(cache_root), config.data.cache_root)
        self.features = EvalFeatures(config, cache_root=str(cache_root), image_root=self.image_root,
                                     device=torch.device(device) if device else default_device())
        self.trained = TrainedRun.load(self.checkpoint, device=self.features.device)
        self.max_new_tokens, self.sd_prompt, self.batch_size = int(max_new_tokens), sd_prompt, int(batch_size)
        print(f"{MODEL_NAME}: {self.trained.name} on {self.features.device}, features "
              f"{self.features.settings}", file=sys.stderr)

    def generate_until(self, requests: list[Instance]) -> list[str]:
        items, settings = [], []
        for n, request in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            image = self._image_key(task, doc_to_visual(self.task_dict[task][split][doc_id]))
            items.append(EvalItem(id=str(n), image=image, prompt=context, answer=""))
            settings.append(self._generation(task, gen_kwargs))
        data_json = write_llava_json(items, self.checkpoint.run_dir / EVAL_DIR / "data" / DATA_JSON)
        self.features.check_cached([item.image for item in items if item.image is not None], data_json=data_json)
        groups: dict[tuple[int, tuple[str, ...]], list[int]] = {}
        for n, setting in enumerate(settings):
            groups.setdefault(setting, []).append(n)
        texts = [""] * len(items)
        with tqdm(total=len(items), desc=MODEL_NAME, unit="request", disable=self.rank != 0) as bar:
            for (max_new_tokens, until), indexes in groups.items():
                for start in range(0, len(indexes), self.batch_size):
                    batch = indexes[start:start + self.batch_size]
                    answers = answer(self.trained, self.features, [items[n] for n in batch],
                                     [self._sd_prompt(items[n]) for n in batch], max_new_tokens=max_new_tokens)
                    for n, text in zip(batch, answers):
                        texts[n] = _cut(text, until)
                    bar.update(len(batch))
        return texts

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(f"{MODEL_NAME} answers generate_until tasks only (as `just eval` does)")

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(f"{MODEL_NAME} answers one-round generate_until tasks only")

    def _image_key(self, task: str, visuals: Sequence[Any] | None) -> str | None:
        """The key of the request's picture, written under the image root (module doc); None for none."""
        pictures = [visual for visual in visuals or () if visual is not None]
        if not pictures:
            return None
        if not all(isinstance(picture, Image.Image) for picture in pictures):
            kinds = sorted({type(picture).__name__ for picture in pictures})
            raise ConfigError(f"{task}: {MODEL_NAME} reads images, and this task gives {kinds}")
        picture = pictures[0].convert("RGB") if len(pictures) == 1 else compose_horizontally(pictures)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return ImageFiles(task, self.image_root / task, self.image_root / task).embedded(
            {"bytes": buffer.getvalue()}, where=task)

    def _generation(self, task: str, gen_kwargs: Mapping[str, Any]) -> tuple[int, tuple[str, ...]]:
        """(max new tokens, stop strings) of a request; sampling and beam search are refused."""
        if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature") or 0) > 0 \
                or int(gen_kwargs.get("num_beams") or 1) > 1:
            raise ConfigError(f"{task} asks for sampling or beam search ({dict(gen_kwargs)}); {MODEL_NAME} decodes "
                              "greedily, as `just eval` does")
        until = gen_kwargs.get("until") or ()
        max_new_tokens = self.max_new_tokens or int(gen_kwargs.get("max_new_tokens") or Benchmark.max_new_tokens)
        return max_new_tokens, (until,) if isinstance(until, str) else tuple(until)

    def _sd_prompt(self, item: EvalItem) -> str:
        return item.prompt if self.sd_prompt == QUESTION else ""


def _cut(text: str, until: tuple[str, ...]) -> str:
    """`text` up to the first of the stop strings."""
    for stop in filter(None, until):
        text = text.split(stop)[0]
    return text.strip()


MANIFEST = ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.{DfcLlava.__name__}")
