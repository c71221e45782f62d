"""One benchmark under one SD prompt setting, for one checkpoint: prompts -> cached (and guided) features
-> greedy answers -> the benchmark's scorer -> the result file of its identity (`llava_eval.results`)."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from tqdm import tqdm

from llava_eval.benchmarks.base import Benchmark, EvalItem
from llava_eval.features import EvalFeatures
from llava_eval.generate import generate
from llava_eval.results import ResultFiles
from llava_eval.run import TrainedRun
from train.conversation import tokenize_prompt

__all__ = ["answer", "evaluate_benchmark"]


def answer(run: TrainedRun, features: EvalFeatures, items: Sequence[EvalItem], sd_prompts: Sequence[str], *,
           max_new_tokens: int) -> list[str]:
    """Greedy answers to one batch of items (decoded, special tokens dropped, stripped)."""
    tokenizer = run.tokenizer
    prompts = [tokenize_prompt(item.prompt, template=run.config.template, tokenizer=tokenizer,
                               has_image=item.image is not None) for item in items]
    with_image = [i for i, item in enumerate(items) if item.image is not None]
    batch_features = (features([items[i].image for i in with_image], [sd_prompts[i] for i in with_image])
                      if with_image else {})
    new_tokens = generate(run.model, prompts, batch_features, max_new_tokens=max_new_tokens,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in new_tokens]


def evaluate_benchmark(run: TrainedRun, features: EvalFeatures, benchmark: Benchmark, items: Sequence[EvalItem],
                       *, setting: str, files: ResultFiles, batch_size: int, eval_root: Path,
                       source: Mapping[str, str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Answer what the predictions log of `files.identity` lacks, score everything, write the result file;
    returns it. The identity's generation settings are the ones applied. `eval_root` is the image root;
    `source` the benchmark's folder and the layout read there (recorded as they are)."""
    sd_prompts = dict(zip((item.id for item in items), benchmark.sd_prompts(items, setting)))
    max_new_tokens = files.identity.generation.max_new_tokens
    done = files.answered()
    todo = [item for item in items if item.id not in done]
    started = time.perf_counter()
    with tqdm(total=len(items), initial=len(items) - len(todo), desc=files.dir.parent.name, unit="item",
              disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            texts = answer(run, features, batch, [sd_prompts[item.id] for item in batch],
                           max_new_tokens=max_new_tokens)
            files.append(zip((item.id for item in batch), texts))
            done.update(zip((item.id for item in batch), texts))
            bar.update(len(batch))
    predictions = {item.id: done[item.id] for item in items}
    result = {
        "metrics": benchmark.score(items, predictions),
        "n_items": len(items), "eval_root": str(eval_root), "source": dict(source or {}),
        "checkpoint": {"label": run.checkpoint.label, "path": str(run.checkpoint.weights_dir)},
        "run": {"path": str(run.checkpoint.run_dir), "config": dataclasses.asdict(run.config)},
        "seconds": round(time.perf_counter() - started, 3),
        "predictions": [{"id": item.id, "image": item.image, "prompt": item.prompt, "sd_prompt": sd_prompts[item.id],
                         "answer": item.answer, "meta": dict(item.meta), "text": predictions[item.id]}
                        for item in items],
    }
    result["outputs"] = [str(p) for p in benchmark.write_outputs(items, predictions, files.dir, model_id=run.name)]
    return files.write(result)
