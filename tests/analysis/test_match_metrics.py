"""MMVP-VLM and Winoground: official layouts in, official metrics out, on crafted score matrices."""
import json

import numpy as np
import pytest

from analysis.matching import BenchmarkLayoutError, MatchGroup, score_matrix
from analysis.mmvp_vlm import CATEGORIES, MMVP_VLM
from analysis.winoground import WINOGROUND


def groups(categories):
    return [MatchGroup(str(i), c, (f"{i}a.jpg", f"{i}b.jpg"), (f"text {i}a", f"text {i}b"))
            for i, c in enumerate(categories)]


def test_mmvp_vlm_pair_counts_only_when_both_statements_pick_their_own_image():
    pairs = groups([CATEGORIES[0]] * 4 + [CATEGORIES[5]] * 2)
    s = np.array([
        [[2, 1], [0, 1]],  # both right
        [[2, 1], [3, 1]],  # statement 2 picks image 1
        [[1, 2], [0, 1]],  # statement 1 picks image 2
        [[1, 1], [0, 1]],  # tie for statement 1: official rule picks image 2 -> wrong
        [[2, 1], [1, 1]],  # tie for statement 2: picks image 2 -> right
        [[5, 4], [4, 5]],  # both right
    ], dtype=float)
    got = MMVP_VLM.metrics(pairs, s)
    assert got == {CATEGORIES[0]: 25.0, CATEGORIES[5]: 100.0, "Average": 62.5}
    assert list(got) == [CATEGORIES[0], CATEGORIES[5], "Average"]  # the paper's column order


def test_winoground_text_image_and_group_scores():
    s = np.array([
        [[2, 0], [1, 3]],  # text: 2>1, 3>0 yes; image: 2>0, 3>1 yes -> group
        [[2, 3], [1, 4]],  # text: 2>1, 4>3 yes; image: 2>3 no
        [[2, 1], [3, 4]],  # text: 2>3 no; image: 2>1, 4>3 yes
        [[0, 1], [1, 0]],  # nothing
    ], dtype=float)
    assert WINOGROUND.metrics(groups(["x"] * 4), s) == {"Text": 50.0, "Image": 50.0, "Group": 25.0}


def test_score_matrix_puts_text_on_rows_and_images_on_columns():
    pairs = groups(["c"])
    got = score_matrix(pairs, lambda keys, texts: [float(k[1] == "b") * 10 + float(t[-1] == "b") for k, t in
                                                   zip(keys, texts)])
    np.testing.assert_array_equal(got[0], [[0, 10], [1, 11]])  # S[text, image]


def test_official_layouts_load_from_the_fixtures(tmp_path):
    MMVP_VLM.write_fixture(tmp_path / "mmvp")
    pairs = MMVP_VLM.load(tmp_path / "mmvp")
    assert len(pairs) == 9 and {p.category for p in pairs} == set(CATEGORIES)
    first = pairs[0]
    assert first.images == ("MLLM_VLM Images/Orientation and Direction/1.jpg",
                            "MLLM_VLM Images/Orientation and Direction/2.jpg")
    assert first.texts[0].startswith("a photo of ")
    WINOGROUND.write_fixture(tmp_path / "wino")
    examples = WINOGROUND.load(tmp_path / "wino")
    record = json.loads((tmp_path / "wino" / "examples.jsonl").read_text().splitlines()[0])
    assert examples[0].images == (f"images/{record['image_0']}.png", f"images/{record['image_1']}.png")
    assert examples[0].texts == (record["caption_0"], record["caption_1"])


def test_a_folder_without_the_official_layout_is_named_in_the_error(tmp_path):
    with pytest.raises(BenchmarkLayoutError, match="Questions.csv"):
        MMVP_VLM.load(tmp_path)
    with pytest.raises(BenchmarkLayoutError, match="examples.jsonl"):
        WINOGROUND.load(tmp_path)
    MMVP_VLM.write_fixture(tmp_path)
    (tmp_path / "MLLM_VLM Images" / "Texts" / "15.jpg").unlink()
    with pytest.raises(BenchmarkLayoutError, match="15.jpg"):
        MMVP_VLM.load(tmp_path)
