"""The published LLaVA layouts (`tests.fixtures_ecosystem`) read as they are: planning and extraction follow
the symlinked source folders the image root holds, decode a PNG named `.jpg`, and refuse the keys a data file
must not use (`..`, absolute), each with its cause counted in the summary and its reason in the errors file."""
from __future__ import annotations

import json


from pipeline.cli import main
from pipeline.config import split_config
from pipeline.plan import plan_extract
from stages.flops import ComputeBudget
from stages.store import StoreReader
from tests.conftest import SPEC, spec_summary
from tests.fixtures_ecosystem import (ABSENT, LINKED_FOLDERS, MIX665K_IMAGES, PNG_AS_JPG, PRETRAIN_IMAGES, UNDECODABLE,
                                      build_llava_tree)


def test_the_dry_run_plans_every_image_of_both_layouts_through_their_symlinked_folders(tmp_path):
    tree = build_llava_tree(tmp_path / "tree")
    for data, root, images in ((tree.pretrain_json, tree.pretrain_root, PRETRAIN_IMAGES),
                               (tree.sft_json, tree.sft_root, MIX665K_IMAGES)):
        fields = {**spec_summary(SPEC), "data": [str(data)], "image_root": str(root), "cache_root": str(tmp_path / "c"),
                  "shard_size": 4, "device": "cpu", "precision": "fp32"}
        plan = plan_extract(split_config(fields), budget=ComputeBudget())
        assert plan.images["new"] == len(images) and plan.images["failing_checks"] == 0, plan.images
    assert plan.images["text_only_samples"] == 2 and not (tmp_path / "c").exists()


def test_symlinked_source_folders_are_followed_and_a_png_named_jpg_is_decoded(llava_tree):
    summary = llava_tree.summary
    keys = set(StoreReader(summary.store, expect=None).keys)
    assert keys == set(MIX665K_IMAGES)  # coco/, gqa/ and vg/VG_100K_2/ are links; PNG_AS_JPG holds a PNG
    assert {k.split("/")[0] for k in keys} >= {link.split("/")[0] for link in LINKED_FOLDERS} and PNG_AS_JPG in keys
    assert (summary.done, summary.failed, summary.missing) == (len(MIX665K_IMAGES), 1, 1)


def test_hostile_keys_are_refused_with_their_cause_counted_in_the_summary_and_their_reason_in_the_errors_file(
        llava_tree):
    summary, hostile = llava_tree.summary, llava_tree.hostile
    assert summary.refused == len(hostile)
    assert summary.refused_by_cause == {"'..' in the path": 2, "absolute path": 2}
    assert ("refused: 2 '..' in the path, 2 absolute path; keys are paths under image_root, whose symlinks are "
            "followed") in summary.render()
    rows = {row["key"]: row for row in map(json.loads, summary.errors_file.read_text().splitlines())}
    assert {k for k, row in rows.items() if row["kind"] == "refused"} == set(hostile)
    for key, cause in hostile.items():
        words = "is absolute" if cause == "absolute path" else "has a '..' component"
        assert f"{words}, which escapes the image root: keys are paths under image_root" in rows[key]["reason"]
    assert (rows[UNDECODABLE]["kind"], rows[ABSENT]["kind"]) == ("failed", "missing")


def test_no_images_to_extract_names_each_refusal_cause_with_an_example_and_the_fix(llava_tree, tmp_path, capsys):
    data = tmp_path / "only-hostile.json"
    data.write_text(json.dumps([{"id": i, "image": key, "conversations": []}
                                for i, key in enumerate(llava_tree.hostile)]))
    code = main(["extract", f"config={llava_tree.extract_yaml}", f"data=[{data}]", f"cache_root={tmp_path / 'c'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    first = "../LLaVA-Pretrain/images/00000/000000010.jpg"
    assert f"4 refused: 2 '..' in the path (e.g. {first!r}), 2 absolute path (e.g." in err[0]
    assert err[0].endswith("to use images kept elsewhere, link their folder into image_root")
    assert not (tmp_path / "c").exists()
