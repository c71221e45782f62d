"""mix665k as LLaVA trains on it (issue 22), read from the published layout (`tests.fixtures_ecosystem`):
int ids, text-only rows and symlinked source folders load; a conversation ending on a human turn trains on
its answered turns; a sample whose image failed or was never extracted is skipped and counted by cause
(`data.missing=skip`, the default) or stops the run naming what fixes it (`data.missing=error`)."""
from __future__ import annotations

import json

import pytest

from stages.llava import load_llava_json
from stages.serving import CachedFeatures
from stages.store.reader import FAILED, NOT_EXTRACTED
from tests.fixtures_ecosystem import ABSENT, MIX665K_IMAGES, TRAILING_HUMAN_ID, UNDECODABLE
from train.cli import main
from train.config import DataConfig
from train.conversation import tokenize_conversation
from train.data import LlavaDataset, MissingImageError
from train.model import load_tokenizer
from train.stores import locate_stores

SD_ARRAY = "U-L1-R1-B0-Cross-Q@t50"
DROPPED = "2 samples skipped for their image (1 failed to extract, 1 not extracted), 1 trailing human turn dropped"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("embedded:tiny-llm")


def dataset(llava_tree, tok, records=None, **kwargs) -> LlavaDataset:
    """mix665k + its unusable images (or `records`) over the tree's store."""
    source = CachedFeatures(locate_stores(DataConfig(extract_configs=(str(llava_tree.extract_yaml),))),
                            array_ids=[SD_ARRAY])
    records = load_llava_json(llava_tree.unusable_json) if records is None else records
    return LlavaDataset(records, template="v1", tokenizer=tok, max_length=256,
                        num_image_tokens=source.sample_shape(SD_ARRAY)[0], feature_source=source,
                        array_ids=[SD_ARRAY], **kwargs)


def test_sft_data_loads_mix665k_as_published_and_skips_and_counts_unusable_images_by_default(llava_tree, tok):
    data = dataset(llava_tree, tok)
    records = json.loads(llava_tree.tree.sft_json.read_text())
    assert [r["id"] for r in data.records] == [r["id"] for r in records]  # every published record, int ids too
    assert data.report.skipped == {FAILED: 1, NOT_EXTRACTED: 1} and data.report.trailing_human_turns == 1
    assert data.report.render() == DROPPED
    explained = data.report.explain()
    assert f"image {UNDECODABLE!r} (record 9, id 'unusable-0'): key {UNDECODABLE!r} failed: " in explained
    assert "fix or replace the image file, then run `just extract` on its data file with retry_failed=true" in explained
    assert f"image {ABSENT!r} (record 10, id 'unusable-1'): key {ABSENT!r} was never planned" in explained
    items = [data[i] for i in range(len(data))]
    assert {item.image_key for item in items if item.features is not None} == set(MIX665K_IMAGES)
    trailing = next(i for i, r in enumerate(data.records) if r["id"] == TRAILING_HUMAN_ID)
    answered = tokenize_conversation(data.records[trailing]["conversations"][:2], template="v1", tokenizer=tok,
                                     has_image=True)
    assert items[trailing].input_ids.tolist() == answered.input_ids


@pytest.mark.parametrize("key, fix", [
    (UNDECODABLE, "the failure is recorded in the store: fix or replace the image file, then run `just extract` "
                  "on its data file with retry_failed=true"),
    (ABSENT, "run `just extract` on the data file that holds it"),
])
def test_data_missing_error_stops_at_an_unusable_image_saying_what_fixes_it(llava_tree, tok, key, fix):
    records = [r for r in load_llava_json(llava_tree.unusable_json) if r.get("image") in (None, key)]
    with pytest.raises(MissingImageError, match=rf"image '{key}' .*; {fix}.*; or set data\.missing=skip \(the "
                                                r"default\)"):
        dataset(llava_tree, tok, records, missing="error")


def test_the_sft_run_prints_what_the_data_policy_dropped(llava_tree, tmp_path, capsys):
    data = [f"data.extract_configs=[{llava_tree.extract_yaml}]", f"data.data_path={llava_tree.unusable_json}"]
    code = main(["sft", *data, f"output_dir={tmp_path / 'sft'}", "pretrained_adapter=", "per_device_batch_size=2", "max_steps=1",
                 "max_length=256", "report_to=none", "data.num_workers=0"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = captured.out.strip().splitlines()[-1]
    assert summary.startswith("sft: 1 steps (to step 1)") and f", {DROPPED}; saved " in summary, summary
    assert f"train sft: data.missing=skip: {DROPPED}; failed to extract: image {UNDECODABLE!r}" in captured.err
