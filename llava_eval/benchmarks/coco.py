"""COCO captions, Karpathy test split (Karpathy & Fei-Fei, CVPR 2015): 5,000 val2014 images with five
reference captions each.

Layouts (`coco_layouts`): Karpathy's `dataset_coco.json`, BLIP's `coco_karpathy_test.json`, COCO's own
`captions_val2014.json` with the shipped Karpathy test ids, and lmms-eval's two copies (lmms-lab/COCO-Caption,
yerevann/coco-karpathy). An item's id is the image's path in COCO's layout (`val2014/<file>`).

Prompt "Provide a one-sentence caption for the provided image." (LLaVA-1.5's response-format prompt for
captions, given with TextCaps in its instruction mix). `max_new_tokens = 64`, as lmms-eval's
coco_karpathy_test.yaml: references average about ten words, so one sentence fits with room to spare.
The items are the test images in file order; a prediction's raw text is scored as generated.

Metrics are the standard COCO caption tooling, pycocoevalcap (salaniz/pycocoevalcap, the maintained
package of tylin/coco-caption), run the way its eval.py `COCOEvalCap.evaluate` runs them: references and
predictions through its PTBTokenizer, then Bleu(4) (corpus BLEU, "closest" reference length), Meteor,
Rouge (ROUGE-L) and Cider (CIDEr-D, document frequencies from the evaluated references). Values are the
package's own (fractions; CIDEr is not multiplied by 100). The tokenizer and METEOR run in Java. SPICE
needs the Stanford CoreNLP 3.6.0 jars in pycocoevalcap/spice/lib, which `Spice()` downloads when they are
absent (spice/get_stanford_models.py): they are only used when already there, and SPICE is otherwise
reported as "unavailable", never approximated.

Diffusion prompt settings of the paper's caption leakage study (`sd_prompts`): "none" (the empty prompt),
"gt" (the image's first reference caption) and "mismatched" (the first reference caption of another test
image, under the derangement of `mismatched_partners`).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from llava_eval.benchmarks.base import Benchmark, BenchmarkLayoutError, EvalItem
from llava_eval.benchmarks.coco_layouts import KARPATHY, caption_layouts
from llava_eval.benchmarks.fixtures import photo_jpeg
from llava_eval.benchmarks.layouts import Layout
from stages.console import held_output
from stages.errors import UserError

__all__ = ["CocoCaptions", "JavaNotFoundError", "CAPTION_PROMPT", "SD_NONE", "SD_GT", "SD_MISMATCHED",
           "mismatched_partners", "spice_available"]

CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
SD_NONE, SD_GT, SD_MISMATCHED = "none", "gt", "mismatched"
_SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")

# The fixture: (photo, cocoid, split, five captions), captions true of the photos. The test entries borrow real
# Karpathy test ids (so COCO's other layouts keep them); the train entries are there to be filtered out, their
# images are not written.
_FIXTURE = (
    ("astronaut", 253964, "test", (
        "A woman astronaut in an orange suit smiles for a portrait.",
        "An astronaut posing in front of a flag and a model space shuttle.",
        "A smiling woman wearing an orange space suit with patches.",
        "Portrait of a female astronaut in her orange flight suit.",
        "A woman in an orange jumpsuit sits next to a space shuttle model."),
    ),
    ("chelsea", 350334, "test", (
        "A tabby cat looks straight at the camera.",
        "Close up of a striped cat with green eyes.",
        "A brown and grey tabby cat with a pink nose.",
        "The face of a cat with long white whiskers.",
        "A cat staring at the viewer in close up."),
    ),
    ("coffee", 493284, "test", (
        "A cup of coffee on a red saucer with a spoon.",
        "An espresso in a white cup on a wooden table.",
        "A white coffee cup sitting on a red plate.",
        "A small cup of coffee with foam and a metal spoon.",
        "Coffee served in a white cup on a red saucer."),
    ),
    ("rocket", 283277, "test", (
        "A rocket standing on a launch pad at dusk.",
        "A white rocket between tall towers under a blue sky.",
        "A space rocket ready for launch in the evening.",
        "Lights glow around a rocket on its launch pad.",
        "A tall rocket surrounded by four lightning towers."),
    ),
    ("camera", 900005, "train", (
        "A man looking through a camera on a tripod.",
        "A black and white photo of a cameraman in a field.",
        "A photographer with a camera on a tripod outdoors.",
        "A man in a dark coat films with a camera.",
        "A person using an old camera on a grassy field."),
    ),
    ("coins", 900006, "train", (
        "Rows of old silver coins on a black background.",
        "Many ancient coins laid out in four rows.",
        "A collection of old coins on a dark cloth.",
        "Twenty four coins arranged in a grid.",
        "Black and white photo of antique coins."),
    ),
)


class JavaNotFoundError(UserError, FileNotFoundError):
    """pycocoevalcap's tokenizer and METEOR need a `java` on PATH."""


def spice_available() -> bool:
    """Whether SPICE's Stanford CoreNLP jars are already installed where pycocoevalcap looks for them
    (checked without importing its `spice` module, whose constructor would download them)."""
    package = importlib.util.find_spec("pycocoevalcap")
    if package is None or not package.submodule_search_locations:
        return False
    lib = Path(list(package.submodule_search_locations)[0]) / "spice" / "lib"
    return all((lib / jar).is_file() for jar in _SPICE_JARS)


def mismatched_partners(ids: Sequence[str], *, seed: int) -> list[int]:
    """For each position, the position whose caption it borrows in the "mismatched" setting.

    The ids are ordered by sha256(f"{seed}:{id}") and each borrows from the next one in that order, the last
    from the first: one cycle through all items, so no item keeps its own caption (a derangement) when
    there are at least two distinct ids. It depends only on the seed and the set of ids (not on their order
    or on the Python version), so a rerun, or another checkpoint, gets the same pairs.
    """
    if len(set(ids)) != len(ids):
        raise ValueError("mismatched captions need distinct item ids")
    if len(ids) == 1:
        raise ValueError("the mismatched setting needs at least two images")
    cycle = sorted(range(len(ids)), key=lambda i: hashlib.sha256(f"{seed}:{ids[i]}".encode()).hexdigest())
    partners = [0] * len(ids)
    for position, index in enumerate(cycle):
        partners[index] = cycle[(position + 1) % len(cycle)]
    return partners


class CocoCaptions(Benchmark):
    name = "coco"
    max_new_tokens = 64
    sd_settings = (SD_NONE, SD_GT, SD_MISMATCHED)

    def __init__(self, *, mismatch_seed: int = 0) -> None:
        self.mismatch_seed = mismatch_seed

    def layouts(self) -> tuple[Layout, ...]:
        return caption_layouts(self._item)

    def _item(self, path: str, image: str, references: list[str], cocoid: int) -> EvalItem:
        if not references:
            raise BenchmarkLayoutError(f"coco: test image {path} has no reference caption")
        return EvalItem(id=path, image=image, prompt=CAPTION_PROMPT, answer=references, meta={"cocoid": cocoid},
                        caption=references[0].strip())

    def options(self) -> dict[str, Any]:
        return {"mismatch_seed": self.mismatch_seed}

    def sd_prompts(self, items: Sequence[EvalItem], setting: str) -> list[str]:
        if setting == SD_NONE:
            return ["" for _ in items]
        if setting == SD_GT:
            return [item.caption for item in items]
        if setting == SD_MISMATCHED:
            partners = mismatched_partners([item.id for item in items], seed=self.mismatch_seed)
            return [items[partner].caption for partner in partners]
        return super().sd_prompts(items, setting)  # refuses, naming the valid settings

    def score(self, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> dict[str, Any]:
        """BLEU-1..4, METEOR, ROUGE-L, CIDEr(-D) and SPICE (or "unavailable") as pycocoevalcap computes them."""
        if shutil.which("java") is None:
            raise JavaNotFoundError("coco: the COCO caption metrics (pycocoevalcap) run Java for tokenizing "
                                    "and METEOR, and no `java` is on PATH: install a Java runtime (e.g. "
                                    "`apt-get install default-jre-headless`) and retry")
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        meteor = Meteor()  # its JVM loads the paraphrase table (seconds) while the rest is computed
        tokenizer = PTBTokenizer()
        with held_output(fd=True):  # its Java process prints "PTBTokenizer tokenized N tokens at ..." per call
            references = tokenizer.tokenize({item.id: [{"caption": _one_line(ref)} for ref in item.answer]
                                             for item in items})
            candidates = tokenizer.tokenize({item.id: [{"caption": _one_line(predictions[item.id])}]
                                             for item in items})
        bleu, _ = Bleu(4).compute_score(references, candidates, verbose=0)
        metrics: dict[str, Any] = {f"bleu_{n}": float(value) for n, value in enumerate(bleu, start=1)}
        metrics["meteor"] = float(meteor.compute_score(references, candidates)[0])
        metrics["rouge_l"] = float(Rouge().compute_score(references, candidates)[0])
        metrics["cider"] = float(Cider().compute_score(references, candidates)[0])
        metrics["spice"] = _spice(references, candidates) if spice_available() else "unavailable"
        metrics["images"] = len(items)
        return metrics

    def write_fixture(self, root: Path) -> None:
        root = Path(root)
        images = []
        for n, (photo, cocoid, split, captions) in enumerate(_FIXTURE):
            folder = "val2014" if split == "test" else "train2014"
            filename = f"COCO_{folder}_{cocoid:012d}.jpg"
            if split == "test":
                (root / folder).mkdir(parents=True, exist_ok=True)
                (root / folder / filename).write_bytes(photo_jpeg(photo))
            sentences = [{"raw": raw, "tokens": raw.lower().rstrip(".").split(), "imgid": n, "sentid": 5 * n + k}
                         for k, raw in enumerate(captions)]
            images.append({"filepath": folder, "filename": filename, "imgid": n, "split": split,
                           "cocoid": cocoid, "sentids": [s["sentid"] for s in sentences], "sentences": sentences})
        (root / KARPATHY).write_text(json.dumps({"images": images, "dataset": "coco"}, indent=1) + "\n",
                                     encoding="utf-8")


def _one_line(text: str) -> str:
    """Whitespace runs as single spaces. PTBTokenizer reads one caption per line and replaces only "\\n":
    a "\\r" in a generated caption would shift every later caption onto another image."""
    return " ".join(text.split())


def _spice(references: dict, candidates: dict) -> float:
    from pycocoevalcap.spice.spice import Spice

    return float(Spice().compute_score(references, candidates)[0])
