"""LlavaDataset over a LLaVA JSON and an in-memory feature source, the padding collate, and a DataLoader."""
from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from stages.embedded.llm import build_tiny_tokenizer
from train.batch import Batch, collate
from train.conversation import IGNORE_INDEX, IMAGE_TOKEN_INDEX, tokenize_conversation
from stages.llava import load_llava_json
from stages.serving import MissingKey
from stages.store.reader import FAILED, NOT_EXTRACTED
from train.data import LlavaDataset, MissingImageError
from train.sampler import ModalityLengthGroupedSampler

T, C = 4, 3
ARRAYS = ("U-L1-R1-B0-Cross-Q@t50", "latents")


class ArraySource:
    """Test fixture with the feature-store reader's interface, holding float16 arrays in memory."""

    def __init__(self, keys: list[str]) -> None:
        self.rows = {key: row for row, key in enumerate(keys)}
        rng = np.random.default_rng(0)
        self.arrays = {name: rng.standard_normal((len(keys), T, C)).astype(np.float16) for name in ARRAYS}

    def __contains__(self, key: object) -> bool:
        return key in self.rows

    def why_missing(self, key: str) -> MissingKey:
        return MissingKey(NOT_EXTRACTED, f"key {key!r} was never planned")

    def read(self, keys: list[str], array_ids: list[str]) -> dict[str, np.ndarray]:
        rows = [self.rows[key] for key in keys]
        return {name: self.arrays[name][rows] for name in array_ids}  # (n, T, C)

    def __repr__(self) -> str:
        return "ArraySource('test-store')"


def record(i: int, image: str | None, question: str = "What is in the image?", answer: str = "A cat.") -> dict:
    value = f"{question}\n<image>" if image else question
    out = {"id": str(i), "conversations": [{"from": "human", "value": value}, {"from": "gpt", "value": answer}]}
    return {**out, "image": image} if image else out


RECORDS = [
    record(0, "coco/train2017/000000000009.jpg"),
    record(1, None, "Who wrote this book?", "An author wrote it, as the cover says."),
    record(2, "gqa/images/2354786.jpg", "  What color is the bus? ", "Yellow."),
    record(3, "vg/VG_100K/1.jpg", answer="A dog lying on the grass under a large tree near a red sofa."),
]
IMAGE_KEYS = [r["image"] for r in RECORDS if "image" in r]


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def source():
    return ArraySource(IMAGE_KEYS)


def dataset(tok, source, records=RECORDS, **kwargs) -> LlavaDataset:
    args = {"template": "v1", "tokenizer": tok, "max_length": 128, "num_image_tokens": T,
            "feature_source": source, "array_ids": ARRAYS, **kwargs}
    return LlavaDataset(records, **args)


def test_load_llava_json_reads_records_and_rejects_malformed_ones(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(RECORDS))
    assert load_llava_json(path) == RECORDS
    path.write_text(json.dumps([{"id": "x", "image": "a.jpg"}]))
    with pytest.raises(ValueError, match="record 0 has no 'conversations'"):
        load_llava_json(path)


def test_image_item_carries_masked_ids_question_caption_and_float32_features(tok, source):
    item = dataset(tok, source)[2]
    expected = tokenize_conversation(RECORDS[2]["conversations"], template="v1", tokenizer=tok, has_image=True)
    assert item.input_ids.tolist() == expected.input_ids and item.labels.tolist() == expected.labels
    assert item.input_ids.dtype == item.labels.dtype == torch.long
    assert (item.image_key, item.prompts["question"], item.prompts["caption"]) == ("gqa/images/2354786.jpg",
                                                                      "What color is the bus?", "Yellow.")
    assert set(item.features) == set(ARRAYS)
    for name in ARRAYS:
        assert item.features[name].dtype == torch.float32 and item.features[name].shape == (T, C)
        assert torch.equal(item.features[name], torch.from_numpy(source.arrays[name][1].astype(np.float32)))


def test_text_only_item_has_no_features_and_no_question(tok, source):
    item = dataset(tok, source)[1]
    assert item.image_key is None and item.prompts["question"] is None and item.features is None
    assert item.prompts["caption"] == "An author wrote it, as the cover says."
    assert IMAGE_TOKEN_INDEX not in item.input_ids.tolist()


def test_missing_image_with_missing_error_fails_naming_the_key_and_the_store(tok, source):
    records = [*RECORDS, record(9, "ocr_vqa/images/missing.jpg")]
    with pytest.raises(MissingImageError, match=r"'ocr_vqa/images/missing.jpg'.*ArraySource\('test-store'\)"):
        dataset(tok, source, records, missing="error")


def test_missing_image_is_skipped_and_counted_by_default(tok, source):
    records = [*RECORDS, record(9, "ocr_vqa/images/missing.jpg"), record(10, "textvqa/train_images/gone.jpg")]
    data = dataset(tok, source, records)
    assert len(data) == len(RECORDS) and data.num_skipped == 2
    assert data.report.skipped == {NOT_EXTRACTED: 2}
    assert data.report.render() == "2 samples skipped for their image (2 not extracted)"
    assert "'ocr_vqa/images/missing.jpg' (record 4, id '9')" in data.report.explain()
    assert [data[i].image_key for i in range(len(data))] == [r.get("image") for r in RECORDS]


def test_without_a_feature_source_items_keep_their_image_key_but_carry_no_features(tok):
    item = dataset(tok, None, array_ids=())[0]
    assert item.image_key == RECORDS[0]["image"] and item.features is None


@pytest.mark.parametrize("num_image_tokens", [1, 4, 16])
def test_image_sample_is_truncated_so_the_spliced_sequence_fits_max_length(tok, source, num_image_tokens):
    full = tokenize_conversation(RECORDS[3]["conversations"], template="v1", tokenizer=tok, has_image=True)
    max_length = full.input_ids.index(IMAGE_TOKEN_INDEX) + num_image_tokens + 8  # image + 8 more ids fit
    item = dataset(tok, source, max_length=max_length, num_image_tokens=num_image_tokens)[3]
    assert len(full.input_ids) - 1 + num_image_tokens > max_length  # the case needs truncating
    assert len(item.input_ids) - 1 + num_image_tokens == max_length
    assert item.input_ids.tolist() == full.input_ids[:len(item.input_ids)]
    assert item.labels.tolist() == full.labels[:len(item.labels)]


def test_text_only_sample_is_truncated_to_max_length(tok, source):
    item = dataset(tok, source, max_length=20, num_image_tokens=4)[1]
    assert len(item.input_ids) == len(item.labels) == 20


def test_truncating_the_image_placeholder_away_is_an_error(tok, source):
    with pytest.raises(ValueError, match="raise max_length"):
        dataset(tok, source, max_length=40, num_image_tokens=4)[0]  # the system prompt alone is longer


def test_modality_lengths_are_positive_for_images_and_negative_for_text(tok, source):
    assert dataset(tok, source).modality_lengths == [8, -12, 7, 20]


def test_collate_pads_right_masks_by_length_and_stacks_image_features_in_batch_order(tok, source):
    data = dataset(tok, source)
    items = [data[i] for i in (3, 1, 0)]
    batch = collate(items, pad_token_id=tok.pad_token_id)
    lengths = [len(item.input_ids) for item in items]
    width = max(lengths)
    assert batch.input_ids.shape == batch.labels.shape == batch.attention_mask.shape == (3, width)
    assert batch.attention_mask.dtype == torch.bool
    for row, (item, length) in enumerate(zip(items, lengths)):
        assert torch.equal(batch.input_ids[row, :length], item.input_ids)
        assert torch.equal(batch.labels[row, :length], item.labels)
        assert batch.attention_mask[row].tolist() == [True] * length + [False] * (width - length)
        assert (batch.input_ids[row, length:] == tok.pad_token_id).all()
        assert (batch.labels[row, length:] == IGNORE_INDEX).all()
    assert batch.has_image.tolist() == [True, False, True]
    assert batch.image_keys == [RECORDS[3]["image"], None, RECORDS[0]["image"]]
    assert batch.prompts["question"] == ["What is in the image?", None, "What is in the image?"]
    assert batch.prompts["caption"] == [RECORDS[i]["conversations"][1]["value"] for i in (3, 1, 0)]
    for name in ARRAYS:
        expected = torch.from_numpy(source.arrays[name][[2, 0]].astype(np.float32))  # rows of records 3, 0
        assert batch.features[name].dtype == torch.float32 and torch.equal(batch.features[name], expected)


def test_collate_of_text_only_batch_has_no_features(tok, source):
    batch = collate([dataset(tok, source)[1]], pad_token_id=tok.pad_token_id)
    assert batch.features == {} and batch.has_image.tolist() == [False]


def test_dataloader_with_workers_yields_every_sample_once_in_sampler_order(tok, source):
    records = [record(i, IMAGE_KEYS[i % 3] if i % 4 else None, answer="word " * (i + 1)) for i in range(24)]
    data = dataset(tok, source, records)
    sampler = ModalityLengthGroupedSampler(data.modality_lengths, batch_size=4, seed=0)
    loader = DataLoader(data, batch_size=2, sampler=sampler, num_workers=2,
                        collate_fn=partial(collate, pad_token_id=tok.pad_token_id))
    captions = [c for batch in loader for c in batch.prompts["caption"]]
    assert captions == [records[i]["conversations"][1]["value"] for i in sampler.rank_order()]
    assert sorted(captions) == sorted(r["conversations"][1]["value"] for r in records)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_a_pinning_loader_pins_every_tensor_of_the_batch(tok, source):
    loader = DataLoader(dataset(tok, source), batch_size=4, pin_memory=True,
                        collate_fn=partial(collate, pad_token_id=tok.pad_token_id))
    batch = next(iter(loader))
    assert isinstance(batch, Batch) and batch.features
    assert all(t.is_pinned() for t in (batch.input_ids, batch.labels, batch.attention_mask, batch.has_image,
                                       *batch.features.values()))


def test_collate_refuses_a_batch_where_only_some_image_samples_carry_features(tok, source):
    with_features = dataset(tok, source)[0]
    without = dataset(tok, None, array_ids=())[2]
    with pytest.raises(ValueError, match="some image samples"):
        collate([with_features, without], pad_token_id=tok.pad_token_id)


@pytest.mark.parametrize("conversations, message", [
    ([{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}], "a text-only sample"),
    ([{"from": "human", "value": "What?"}], "a conversation must alternate"),
    ([{"from": "human", "value": "What?"}, {"from": "human", "value": "Why?"}, {"from": "gpt", "value": "No."}],
     "a conversation must alternate"),
    ([{"from": "user", "value": "What?"}, {"from": "gpt", "value": "A cat."}], "turn 0 must be"),
])
def test_a_malformed_conversation_fails_at_construction_naming_the_record(tok, source, conversations, message):
    bad = {"id": "text-42", "conversations": conversations}
    with pytest.raises(ValueError, match=rf"record 1 \(id 'text-42'\) does not fit the 'v1' template: {message}"):
        dataset(tok, source, [RECORDS[0], bad])  # no item is read


def test_a_non_string_image_fails_at_construction_naming_the_record(tok):
    bad = {**RECORDS[0], "id": "n", "image": 7}
    with pytest.raises(ValueError, match=r"record 0 \(id 'n'\) .*'image' is not a string: 7"):
        dataset(tok, None, [bad], array_ids=())


def test_a_missing_image_error_says_what_fixes_its_cause(tok, source, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(ArraySource, "why_missing",
                      lambda self, key: MissingKey(FAILED, f"key {key!r} failed: cannot decode image"))
        with pytest.raises(MissingImageError, match=r"'x\.jpg' failed: cannot decode image; the failure is recorded "
                                                    r"in the store: fix or replace the image file, then run `just "
                                                    r"extract` on its data file with retry_failed=true; or set "
                                                    r"data\.missing=skip"):
            dataset(tok, source, [*RECORDS, record(9, "x.jpg")], missing="error")
    with pytest.raises(MissingImageError, match=r"never planned; run `just extract` on the data file that holds "
                                                r"it, with the run's extraction config; or set data\.missing=skip"):
        dataset(tok, ArraySource(["a.jpg"]), [record(9, "y.jpg")], missing="error")
