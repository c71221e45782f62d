"""GQA, COCO captions and LLaVA-Bench: loaders of the official layouts, scorers against hand-computed
metrics or an independent reimplementation, the caption-leakage derangement, LLaVA's answer and review
files. The COCO metrics run pycocoevalcap (Java) once for the whole module."""
from __future__ import annotations

import json
import math
import shutil
from collections import Counter

import pytest

from llava_eval.benchmarks.base import BenchmarkLayoutError, EvalItem
from llava_eval.benchmarks.coco import (CAPTION_PROMPT, CocoCaptions, JavaNotFoundError,
                                      mismatched_partners, spice_available)
from llava_eval.benchmarks.coco_layouts import KARPATHY, KARPATHY_TEST
from llava_eval.benchmarks.gqa import GQA, QUESTIONS, SHORT_ANSWER, normalize_prediction
from llava_eval.benchmarks.llava_bench import (CONTEXT, REFERENCE_ANSWERS, LlavaBench, summarize_reviews,
                                             write_answer_file)
from llava_eval.benchmarks.llava_bench import QUESTIONS as LLAVA_QUESTIONS
from stages.errors import UserError

BENCHMARKS = (GQA(), CocoCaptions(), LlavaBench())


# -- every benchmark: fixture round trip, missing files ------------------------------------------------

@pytest.mark.parametrize("benchmark", BENCHMARKS, ids=lambda b: b.name)
def test_fixture_loads_with_image_keys_under_the_benchmark_folder(benchmark, eval_root, loaded):
    items = loaded[benchmark.name]
    assert items and len({item.id for item in items}) == len(items)
    for item in items:
        assert item.image.startswith(f"{benchmark.name}/")
        assert (eval_root / item.image).is_file()
        json.dumps([item.answer, dict(item.meta)])  # results files hold them


@pytest.mark.parametrize(("benchmark", "remove"), [
    (GQA(), QUESTIONS),
    (GQA(), "images/n100002.jpg"),
    (CocoCaptions(), KARPATHY),
    (CocoCaptions(), "val2014/COCO_val2014_000000493284.jpg"),
    (LlavaBench(), LLAVA_QUESTIONS),
    (LlavaBench(), CONTEXT),
    (LlavaBench(), REFERENCE_ANSWERS),
    (LlavaBench(), "images/002.jpg"),
], ids=lambda v: getattr(v, "name", v))
def test_missing_file_is_refused_with_one_line_naming_it(benchmark, remove, tmp_path):
    benchmark.write_fixture(tmp_path)
    (tmp_path / remove).unlink()
    with pytest.raises(BenchmarkLayoutError) as error:
        benchmark.load(tmp_path)
    message = str(error.value)
    assert str(tmp_path / remove) in message and "\n" not in message
    assert isinstance(error.value, UserError)


# -- GQA ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "normalized"), [
    ("Yes", "yes"),
    (" Orange.\n", "orange"),  # model_vqa_loader strips, convert_gqa_for_eval rstrips '.' and lower-cases
    ("Table..", "table"),  # rstrip('.') removes every trailing period
    ("the cat.", "the cat"),  # nothing else: no article or punctuation removal
    ("cat!", "cat!"),
])
def test_gqa_normalisation_is_llavas(text, normalized):
    assert normalize_prediction(text) == normalized


def test_gqa_accuracy_is_exact_match_over_balanced_questions_only(tmp_path):
    gqa = GQA()
    gqa.write_fixture(tmp_path)
    questions = json.loads((tmp_path / QUESTIONS).read_text())
    questions["20100099"] = {**questions["20100001"], "isBalanced": False}  # an unbalanced one: not scored
    (tmp_path / QUESTIONS).write_text(json.dumps(questions))
    items = gqa.load(tmp_path)
    assert [item.id for item in items] == [f"2010000{n}" for n in range(1, 7)]
    assert items[0].prompt == "What color is the spacesuit?" + SHORT_ANSWER
    predictions = {
        "20100001": "Orange.",  # query, right
        "20100002": "yes",  # verify, right
        "20100003": "a cat",  # query, wrong: no article stripping in GQA's eval.py
        "20100004": "Green",  # choose, right
        "20100005": "red saucer",  # query, wrong
        "20100006": "No.",  # verify, right
    }
    assert gqa.score(items, predictions) == {"accuracy": 4 / 6, "open": 1 / 3, "binary": 3 / 3, "questions": 6}


# -- COCO: derangement ----------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 3, 5, 17, 100])
@pytest.mark.parametrize("seed", [0, 1, 1234])
def test_mismatched_partners_are_a_seeded_derangement(n, seed):
    ids = [f"val2014/{i}.jpg" for i in range(n)]
    partners = mismatched_partners(ids, seed=seed)
    assert sorted(partners) == list(range(n))  # a permutation
    assert all(partner != i for i, partner in enumerate(partners))  # no fixed point
    assert mismatched_partners(list(ids), seed=seed) == partners  # deterministic
    reordered = ids[::-1]
    by_id = dict(zip(ids, (ids[p] for p in partners)))
    assert {i: reordered[p] for i, p in zip(reordered, mismatched_partners(reordered, seed=seed))} == by_id


def test_mismatched_partners_depend_on_the_seed():
    ids = [str(i) for i in range(20)]
    assert mismatched_partners(ids, seed=0) != mismatched_partners(ids, seed=1)


def test_mismatched_partners_refuse_a_single_image():
    with pytest.raises(ValueError):
        mismatched_partners(["only.jpg"], seed=0)


def test_sd_prompts_per_caption_setting(loaded):
    coco, items = CocoCaptions(mismatch_seed=7), loaded["coco"]
    assert coco.sd_prompts(items, "none") == [""] * len(items)
    firsts = [item.answer[0] for item in items]
    assert coco.sd_prompts(items, "gt") == firsts
    mismatched = coco.sd_prompts(items, "mismatched")
    assert sorted(mismatched) == sorted(firsts)
    assert all(prompt != first for prompt, first in zip(mismatched, firsts))
    with pytest.raises(ValueError, match="mismatched"):
        coco.sd_prompts(items, "question")


# -- COCO: loading and metrics -----------------------------------------------------------------------------

def test_coco_reads_only_the_karpathy_test_split(eval_root, loaded):
    items = loaded["coco"]
    data = json.loads((eval_root / "coco" / KARPATHY).read_text())
    assert {image["split"] for image in data["images"]} == {"test", "train"}
    assert len(items) == 4
    assert all(item.prompt == CAPTION_PROMPT and len(item.answer) == 5 for item in items)
    assert all(item.image.startswith("coco/val2014/COCO_val2014_") for item in items)
    assert all(item.caption == item.answer[0] for item in items)


def test_coco_reads_the_karpathy_test_file_the_same_way(eval_root, loaded, tmp_path):
    data = json.loads((eval_root / "coco" / KARPATHY).read_text())
    shutil.copytree(eval_root / "coco" / "val2014", tmp_path / "val2014")
    test_file = [{"image": f"{image['filepath']}/{image['filename']}",
                  "caption": [s["raw"] for s in image["sentences"]]}
                 for image in data["images"] if image["split"] == "test"]
    (tmp_path / KARPATHY_TEST).write_text(json.dumps(test_file))
    items = CocoCaptions().load(tmp_path)
    assert [(i.id, i.image, i.answer) for i in items] == [(i.id, i.image, i.answer) for i in loaded["coco"]]


def _predictions(items: list[EvalItem]) -> dict[str, str]:
    """Crafted captions: one equal to a reference, two partial (one broken by a carriage return, which
    must not start a new caption in the tokenizer's input), one empty."""
    texts = ["An astronaut posing in front of a flag and a model space shuttle.",
             "A cat looks\rat the camera.",
             "A red cup of coffee on a table.",
             ""]
    return {item.id: text for item, text in zip(items, texts)}


@pytest.fixture(scope="module")
def coco_metrics(loaded):
    return CocoCaptions().score(loaded["coco"], _predictions(loaded["coco"]))


def _tokens(text: str) -> list[str]:
    """PTBTokenizer's output for these captions (lower case, the final period dropped: no other
    punctuation occurs in them)."""
    assert not set(text) & set(",;:!?'\"()-")
    return text.lower().rstrip(".").split()


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def _cider_d(candidates: list[list[str]], references: list[list[list[str]]], sigma: float = 6.0) -> float:
    """CIDEr-D (Vedantam et al. 2015): tf-idf n-gram vectors (df = images whose references hold the
    n-gram), per n the mean over references of the clipped cosine times a Gaussian length penalty, the
    mean over n = 1..4, times 10; averaged over images."""
    images = len(candidates)
    scores = []
    for cand, refs in zip(candidates, references):
        per_n = []
        for n in range(1, 5):
            df = Counter(g for other in references for g in set().union(*(_ngrams(ref, n) for ref in other)))

            def tfidf(words):
                return {g: tf * math.log(images / max(1.0, df[g])) for g, tf in _ngrams(words, n).items()}

            c = tfidf(cand)
            total = 0.0
            for ref in refs:
                r = tfidf(ref)
                norms = math.sqrt(sum(v * v for v in c.values())) * math.sqrt(sum(v * v for v in r.values()))
                clipped = sum(min(v, r.get(g, 0.0)) * r.get(g, 0.0) for g, v in c.items())
                cosine = clipped / norms if norms else 0.0
                total += cosine * math.exp(-((len(cand) - len(ref)) ** 2) / (2 * sigma ** 2))
            per_n.append(total / len(refs))
        scores.append(10 * sum(per_n) / 4)
    return sum(scores) / images


def test_coco_bleu_matches_a_hand_computation(coco_metrics):
    # Clipped n-gram matches / candidate n-grams per caption (n = 1..4), after PTB tokenization:
    #   astronaut, equal to its second reference (13 words): 13/13, 12/12, 11/11, 10/10
    #   "a cat looks at the camera": 6/6, 4/5 (not "looks at"), 1/4 ("at the camera"), 0/3
    #   "a red cup of coffee on a table": 8/8, 5/7, 3/6, 2/5 ("cup of coffee on", "of coffee on a")
    #   "": nothing
    # corpus precisions 27/27, 21/24, 15/21, 12/18 (product 5/12); candidate length c = 27; closest
    # reference lengths 13 + 8 + 9 + 8 = 38 (the empty caption's closest is the 8-word one), so the brevity
    # penalty is exp(1 - 38/27).
    brevity = math.exp(1 - 38 / 27)
    assert coco_metrics["bleu_1"] == pytest.approx(brevity, rel=1e-6)
    assert coco_metrics["bleu_4"] == pytest.approx(brevity * (5 / 12) ** 0.25, rel=1e-6)


def test_coco_cider_matches_a_reimplementation(loaded, coco_metrics):
    items = loaded["coco"]
    predictions = _predictions(items)
    candidates = [_tokens(predictions[item.id]) for item in items]
    references = [[_tokens(ref) for ref in item.answer] for item in items]
    assert coco_metrics["cider"] == pytest.approx(_cider_d(candidates, references), rel=1e-9)


def test_coco_reports_every_metric_and_spice_only_when_installed(coco_metrics):
    for name in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider"):
        assert isinstance(coco_metrics[name], float) and coco_metrics[name] > 0
    assert coco_metrics["bleu_1"] >= coco_metrics["bleu_4"] and coco_metrics["meteor"] < 1
    assert coco_metrics["images"] == 4
    if spice_available():
        assert isinstance(coco_metrics["spice"], float)
    else:
        assert coco_metrics["spice"] == "unavailable"


def test_coco_without_java_is_a_user_error(loaded, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on it
    with pytest.raises(JavaNotFoundError, match="java") as error:
        CocoCaptions().score(loaded["coco"], _predictions(loaded["coco"]))
    assert isinstance(error.value, UserError)


# -- LLaVA-Bench --------------------------------------------------------------------------------------

def test_llava_bench_items_keep_questions_order_and_references(loaded):
    items = loaded["llava-bench"]
    assert [(item.id, item.meta["category"]) for item in items] == [("0", "conv"), ("1", "detail"),
                                                                    ("2", "complex")]
    assert [item.image for item in items] == ["llava-bench/images/001.jpg", "llava-bench/images/002.jpg",
                                              "llava-bench/images/002.jpg"]
    assert items[0].answer.startswith("She is wearing an orange spacesuit")
    assert LlavaBench.max_new_tokens == 1024


def test_answer_file_has_llavas_format_in_question_order(loaded, tmp_path):
    items = loaded["llava-bench"]
    predictions = {item.id: f"  answer {item.id}\n" for item in items}
    path = write_answer_file(tmp_path / "answers" / "model.jsonl", items, predictions, model_id="run-a")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [set(line) for line in lines] == [{"question_id", "prompt", "text", "answer_id", "model_id",
                                              "metadata"}] * 3
    assert [(line["question_id"], line["text"], line["model_id"]) for line in lines] == [
        (0, "answer 0", "run-a"), (1, "answer 1", "run-a"), (2, "answer 2", "run-a")]
    assert lines[1]["prompt"] == items[1].prompt and lines[1]["metadata"] == {}
    assert len({line["answer_id"] for line in lines}) == 3
    again = write_answer_file(tmp_path / "again.jsonl", items, predictions, model_id="run-a")
    assert again.read_text() == path.read_text()  # no random ids: a rerun writes the same file


def test_llava_bench_score_does_not_invent_a_judge(loaded):
    items = loaded["llava-bench"]
    metrics = LlavaBench().score(items, {item.id: "" if item.id == "2" else "an answer" for item in items})
    assert metrics["judge"] == "not run" and metrics["answered"] == 2
    assert metrics["questions_per_category"] == {"conv": 1, "detail": 1, "complex": 1}
    assert not any(isinstance(value, float) for value in metrics.values())


def _review(question_id: int, category: str | None, ratings: list[float]) -> str:
    review = {"id": question_id + 1, "question_id": question_id, "answer1_id": "ref", "answer2_id": "model",
              "content": f"{ratings[0]} {ratings[1]}\nThe first assistant ...", "tuple": ratings}
    if category:
        review["category"] = category
    return json.dumps(review) + "\n"


def test_review_summary_is_llavas_relative_score(tmp_path):
    judged = tmp_path / "llava-v1.5.jsonl"  # eval_gpt_review_bench.py's format, 2 reviews
    judged.write_text(_review(0, "llava_bench_conv", [8.0, 6.0]) + _review(1, "llava_bench_detail", [9.0, 4.5]))
    odd = tmp_path / "odd.jsonl"  # no categories, and a reply the judge script could not parse
    odd.write_text(_review(0, None, [7.0, 7.0]) + _review(1, None, [-1, -1]))
    summary = summarize_reviews([judged, odd])
    assert summary[str(judged)] == {
        # relative = 100 * mean(model) / mean(reference); reference and model = 10 * mean rating
        "llava_bench_conv": {"relative": 75.0, "reference": 80.0, "model": 60.0, "reviews": 1, "unparsed": 0},
        "llava_bench_detail": {"relative": 50.0, "reference": 90.0, "model": 45.0, "reviews": 1, "unparsed": 0},
        "all": {"relative": 61.8, "reference": 85.0, "model": 52.5, "reviews": 2, "unparsed": 0},  # 5.25 / 8.5
    }
    assert summary[str(odd)] == {"all": {"relative": 100.0, "reference": 30.0, "model": 30.0, "reviews": 2,
                                         "unparsed": 1}}


def test_review_file_without_ratings_is_refused(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"question_id": 0, "content": "8 6"}) + "\n")
    with pytest.raises(BenchmarkLayoutError, match="review 1"):
        summarize_reviews([broken])
