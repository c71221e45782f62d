"""MMVP, NaturalBench and BLINK: loaders of the official layouts, scorers against hand-computed metrics,
BLINK's composite images, and the LLaVA-JSON export of benchmark images."""
from __future__ import annotations

import csv
import hashlib
import io
import json

import pytest
from PIL import Image

from llava_eval.benchmarks.base import BenchmarkLayoutError, EvalItem
from llava_eval.benchmarks.blink import MARGIN, Blink, compose_horizontally
from llava_eval.benchmarks.choices import extract_choice
from llava_eval.benchmarks.hf_local import iter_rows
from llava_eval.benchmarks.mmvp import MMVP
from llava_eval.benchmarks.naturalbench import NaturalBench, extract_answer
from llava_eval.export import write_llava_json
from pipeline.manifest import build_manifest
from stages.errors import UserError
from stages.llava import load_llava_json

BENCHMARKS = (MMVP(), NaturalBench(), Blink())


# -- letter extraction ---------------------------------------------------------------------------------

OPEN_CLOSED = ["Open", "Closed"]


@pytest.mark.parametrize(("answer", "options", "letter"), [
    ("B", OPEN_CLOSED, "B"),
    ("(a)", OPEN_CLOSED, "A"),
    ("A.", OPEN_CLOSED, "A"),
    ("Answer: B", OPEN_CLOSED, "B"),
    ("The answer is (B).", OPEN_CLOSED, "B"),
    ("I would pick option A here", OPEN_CLOSED, "A"),
    ("B) Closed", OPEN_CLOSED, "B"),
    ("A\nThe wings are spread.", OPEN_CLOSED, "A"),
    ("Closed.", OPEN_CLOSED, "B"),
    ("The wings are open.", OPEN_CLOSED, "A"),
    ("It is dark red.", ["red", "dark red"], "B"),
    ("open or closed, hard to say", OPEN_CLOSED, None),  # both options named: no choice
    ("A butterfly on a flower", OPEN_CLOSED, None),  # the article is not a choice
    ("C", OPEN_CLOSED, None),  # not one of the options
    ("(A) or (B)", OPEN_CLOSED, None),
])
def test_extract_choice_finds_the_picked_option_or_none(answer, options, letter):
    assert extract_choice(answer, options) == letter


@pytest.mark.parametrize(("answer", "kind", "expected"), [
    ("Yes, it is.", "yes_no", "yes"),
    ("No; yes would be wrong", "yes_no", "no"),  # the first one wins
    ("I cannot know", "yes_no", None),  # whole words only
    ("B: a rocket", "multiple_choice", "b"),
    ("It is a person, B.", "multiple_choice", "a"),  # official: the article "a" counts as A
])
def test_naturalbench_extraction_is_the_official_first_whole_word(answer, kind, expected):
    assert extract_answer(answer, kind) == expected


# -- MMVP ----------------------------------------------------------------------------------------------

def _mmvp_folder(root, rows):
    (root / "MMVP Images").mkdir(parents=True)
    for index, *_ in rows:
        Image.new("RGB", (8, 8), "gray").save(root / "MMVP Images" / f"{index}.jpg")
    with (root / "Questions.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("Index", "Question", "Options", "Correct Answer"), *rows])
    return root


MMVP_ROWS = [  # the released CSV's rows 99/100 carry swapped answers
    (1, "Are the butterfly's wings closer to being open or closed?", "(a) Open (b) Closed", "(a)"),
    (2, "Are the butterfly's wings closer to being open or closed?", "(a) Open (b) Closed", "(b)"),
    (99, "Does the elephant have long or short tusks?", "(a) Long (b) Short", "(a)"),
    (100, "Does the elephant have long or short tusks?", "(a) Long (b) Short", "(b)"),
]
MMVP_PREDICTIONS = {"1": "A", "2": "A. Open", "99": "(b)", "100": "The tusks are long."}


@pytest.mark.parametrize(("corrected", "accuracy", "pair_accuracy"), [
    (True, 3 / 4, 1 / 2),  # 99 -> B and 100 -> A: right; pair 1-2 lost by question 2
    (False, 1 / 4, 0.0),  # the CSV's answers: only question 1 right
])
def test_mmvp_accuracy_and_pairs_with_and_without_the_corrections(tmp_path, corrected, accuracy, pair_accuracy):
    benchmark = MMVP(corrected=corrected)
    items = benchmark.load(_mmvp_folder(tmp_path / "mmvp", MMVP_ROWS))
    metrics = benchmark.score(items, MMVP_PREDICTIONS)
    assert metrics["accuracy"] == pytest.approx(accuracy)
    assert metrics["pair_accuracy"] == pytest.approx(pair_accuracy)
    assert (metrics["questions"], metrics["pairs"], metrics["corrected"]) == (4, 2, corrected)


def test_mmvp_corrections_are_on_by_default():
    assert MMVP().corrected


def test_mmvp_prompt_rewrites_the_options_as_letters(loaded):
    first = loaded["mmvp"][0]
    assert first.prompt == ("Is the picture in colour or in black and white?\nA. Colour\nB. Black and white\n"
                            "Answer with the option's letter from the given choices directly.")
    assert (first.id, first.image, first.answer) == ("1", "mmvp/MMVP Images/1.jpg", "A")


def test_mmvp_fixture_pairs_ask_one_question_with_opposite_answers(loaded):
    items = loaded["mmvp"]
    assert len(items) == 8
    for first, second in zip(items[::2], items[1::2]):
        assert first.prompt == second.prompt and first.answer != second.answer
        assert first.meta["pair"] == second.meta["pair"]


def test_mmvp_refuses_a_missing_image_naming_it(tmp_path):
    root = _mmvp_folder(tmp_path / "mmvp", MMVP_ROWS)
    (root / "MMVP Images" / "100.jpg").unlink()
    with pytest.raises(BenchmarkLayoutError, match="MMVP Images/100.jpg does not exist"):
        MMVP().load(root)


def test_mmvp_refuses_a_missing_questions_file_naming_it(tmp_path):
    with pytest.raises(UserError, match="Questions.csv does not exist"):
        MMVP().load(tmp_path)


def test_mmvp_refuses_a_broken_pair(tmp_path):
    with pytest.raises(BenchmarkLayoutError, match="questions 99 and 100"):
        MMVP().load(_mmvp_folder(tmp_path / "mmvp", MMVP_ROWS[:3]))


# -- NaturalBench --------------------------------------------------------------------------------------

def test_naturalbench_four_metrics_on_a_crafted_case(loaded):
    predictions = {
        # sample 0 (yes/no; truth q0: Yes/No on images 0/1, q1: No/Yes): q1 wrong on image 0, unanswered on 1
        "0_q0_i0": "Yes, there is a cat.", "0_q0_i1": "No.", "0_q1_i0": "Yes, a cup.", "0_q1_i1": "I cannot tell.",
        # sample 1 (A/B; truth q0: A/B, q1: B/A): q1 on image 0 read as A (the article comes first)
        "1_q0_i0": "A", "1_q0_i1": "B: a rocket", "1_q1_i0": "It is a person, B.", "1_q1_i1": "A",
    }
    metrics = NaturalBench().score(loaded["naturalbench"], predictions)
    # right (q, i): sample 0 {00, 01}, sample 1 {00, 01, 11}
    assert metrics["q_acc"] == pytest.approx(2 / 4)  # q0 of both samples
    assert metrics["i_acc"] == pytest.approx(1 / 4)  # image 1 of sample 1
    assert metrics["acc"] == pytest.approx(5 / 8)
    assert metrics["g_acc"] == 0.0
    assert (metrics["samples"], metrics["unanswered"]) == (2, 1)
    # the same four per question type: sample 0 is the yes/no one, sample 1 the multiple-choice one
    assert metrics["per_type"] == {
        "yes_no": {"q_acc": 1 / 2, "i_acc": 0.0, "acc": 2 / 4, "g_acc": 0.0, "samples": 1},
        "multiple_choice": {"q_acc": 1 / 2, "i_acc": 1 / 2, "acc": 3 / 4, "g_acc": 0.0, "samples": 1}}


def test_naturalbench_items_cross_two_questions_with_two_images(loaded):
    items = loaded["naturalbench"]
    assert [item.id for item in items[:4]] == ["0_q0_i0", "0_q0_i1", "0_q1_i0", "0_q1_i1"]
    assert items[0].prompt == "Is there a cat in this image? Please answer Yes or No."
    assert items[4].prompt.endswith(" Please output the letter corresponding to the correct option.")
    assert len({item.image for item in items[:4]}) == 2 and items[0].image == items[2].image  # image 0 of sample 0
    assert NaturalBench().score(items, {item.id: item.answer for item in items})["g_acc"] == 1.0


def test_naturalbench_images_are_the_embedded_bytes_written_once_named_by_their_sha256(eval_root, loaded):
    root = eval_root / "naturalbench"
    (row,) = [r for r in iter_rows(sorted(root.rglob("*.parquet"))) if r["Index"] == 1]
    data = row["Image_1"]["bytes"]
    item = next(item for item in loaded["naturalbench"] if item.id == "1_q0_i1")
    assert item.image == f"naturalbench/images/{hashlib.sha256(data).hexdigest()}.jpg"
    written = eval_root / item.image
    assert written.read_bytes() == data
    stamp = written.stat().st_mtime_ns
    NaturalBench().load(root)
    assert written.stat().st_mtime_ns == stamp
    assert not list(root.rglob("*.tmp"))


def test_naturalbench_reads_a_save_to_disk_folder_like_the_parquet_files(tmp_path, eval_root, loaded):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(next((eval_root / "naturalbench").rglob("*.parquet")))
    (tmp_path / "train").mkdir()
    with pa.ipc.new_stream(str(tmp_path / "train" / "data-00000-of-00001.arrow"), table.schema) as writer:
        writer.write_table(table)  # what Dataset.save_to_disk writes
    assert NaturalBench().load(tmp_path) == loaded["naturalbench"]


def test_naturalbench_refuses_a_folder_without_data_files(tmp_path):
    with pytest.raises(BenchmarkLayoutError, match="BaiqiL/NaturalBench"):
        NaturalBench().load(tmp_path)


# -- BLINK ---------------------------------------------------------------------------------------------

def test_blink_score_is_the_unweighted_mean_of_subtasks(loaded):
    predictions = {
        "val_Counting_1": "(B)", "val_Counting_2": "B", "val_Counting_3": "The answer is D.",  # 2 of 3
        "val_Visual_Similarity_1": "the second image", "val_Visual_Similarity_2": "A",  # 1 of 2
    }
    metrics = Blink().score(loaded["blink"], predictions)
    assert metrics["per_subtask"] == pytest.approx({"Counting": 2 / 3, "Visual_Similarity": 1 / 2})
    assert metrics["mean_accuracy"] == pytest.approx(7 / 12)  # not 3/5, the mean over questions
    assert metrics["questions_per_subtask"] == {"Counting": 3, "Visual_Similarity": 2}


def test_compose_horizontally_centres_images_between_black_margins():
    images = [Image.new("RGB", size, "white") for size in ((10, 6), (7, 10), (5, 4))]
    composite = compose_horizontally(images)
    assert composite.size == (10 + 7 + 5 + 2 * MARGIN, 10)
    column = [composite.getpixel((0, y)) for y in range(10)]  # the 6-high image sits at rows 2..7
    assert column == [(0, 0, 0)] * 2 + [(255, 255, 255)] * 6 + [(0, 0, 0)] * 2
    margins = [x for x in range(composite.width) if 10 <= x < 20 or 27 <= x < 37]
    assert {composite.getpixel((x, y)) for x in margins for y in range(10)} == {(0, 0, 0)}


def test_blink_multi_image_question_reads_its_composite(eval_root, loaded):
    root = eval_root / "blink"
    item = next(i for i in loaded["blink"] if i.id == "val_Visual_Similarity_1")
    assert item.image.startswith("blink/images/") and item.image.endswith(".png")
    (row,) = [r for r in iter_rows(sorted((root / "Visual_Similarity").glob("val-*.parquet")))
              if r["idx"] == item.id]
    sources = [Image.open(io.BytesIO(row[f"image_{k}"]["bytes"])) for k in (1, 2, 3)]
    with Image.open(eval_root / item.image) as composite:
        assert composite.size == (sum(s.width for s in sources) + 2 * MARGIN, max(s.height for s in sources))
        left = sources[0].width
        assert {composite.getpixel((x, y)) for x in range(left, left + MARGIN)
                for y in range(composite.height)} == {(0, 0, 0)}
    assert item.meta["n_images"] == 3 and item.answer == "A"


def test_blink_single_image_question_keeps_its_image_unchanged(eval_root, loaded):
    item = loaded["blink"][0]
    assert item.image.startswith("blink/images/") and item.image.endswith(".jpg")
    assert item.prompt == ("How many cats are in the image?\nSelect from the following choices.\n"
                           "(A) 0\n(B) 1\n(C) 2\n(D) 3")
    (row,) = [r for r in iter_rows(sorted((eval_root / "blink" / "Counting").glob("val-*.parquet")))
              if r["idx"] == item.id]
    assert (eval_root / item.image).read_bytes() == row["image_1"]["bytes"]


def test_blink_refuses_a_folder_without_subtasks(tmp_path):
    with pytest.raises(BenchmarkLayoutError, match="Counting/val-00000-of-00001.parquet"):
        Blink().load(tmp_path)


def test_blink_refuses_a_file_without_a_column_naming_both(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "Counting").mkdir()
    pq.write_table(pa.table({"idx": ["val_Counting_1"], "prompt": ["?"]}), tmp_path / "Counting" / "val-0.parquet")
    with pytest.raises(BenchmarkLayoutError, match=r"val-0.parquet has no column 'choices'"):
        Blink().load(tmp_path)


# -- round trip and export -----------------------------------------------------------------------------

@pytest.mark.parametrize("benchmark", BENCHMARKS, ids=lambda b: b.name)
def test_fixture_round_trip_answers_itself_perfectly(eval_root, loaded, benchmark):
    items = loaded[benchmark.name]
    assert items == benchmark.load(eval_root / benchmark.name)  # loading again changes nothing
    assert len({item.id for item in items}) == len(items)
    for item in items:
        assert item.image.startswith(f"{benchmark.name}/") and (eval_root / item.image).is_file()
        with Image.open(eval_root / item.image) as image:
            assert max(image.size) <= 128 or benchmark.name == "blink"  # composites are wider
    metrics = benchmark.score(items, {item.id: str(item.answer) for item in items})
    assert metrics["unanswered"] == 0
    assert all(value == 1.0 for key, value in metrics.items() if key.endswith("acc") or key.endswith("accuracy"))


def test_export_writes_one_llava_record_per_item_with_an_image(tmp_path, eval_root, loaded):
    items = [*loaded["mmvp"][:2],
             EvalItem(id="text-only", image=None, prompt="Say hi.", answer="hi"),
             EvalItem(id="coco-1", image="mmvp/MMVP Images/3.jpg", prompt="Describe.", answer=["a cat", "cat"],
                      caption="a cat on a sofa")]
    path = write_llava_json(items, tmp_path / "mmvp.json")
    records = load_llava_json(path)
    assert [r["id"] for r in records] == ["1", "2", "coco-1"]
    assert records[0]["image"] == "mmvp/MMVP Images/1.jpg"
    assert records[0]["conversations"] == [
        {"from": "human", "value": "<image>\n" + items[0].prompt}, {"from": "gpt", "value": "A"}]
    assert records[2]["conversations"][1]["value"] == "a cat on a sofa"  # the caption, not the answers
    assert json.loads(path.read_text()) == records


def test_export_of_every_fixture_is_a_complete_extraction_manifest(tmp_path, eval_root, loaded):
    paths = [write_llava_json(items, tmp_path / f"{name}.json") for name, items in loaded.items()]
    manifest = build_manifest(paths, image_root=eval_root, prompt_sources=("caption",))
    assert not manifest.refused and not manifest.missing
    assert set(manifest.keys) == {item.image for items in loaded.values() for item in items}
