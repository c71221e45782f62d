"""Every accepted layout of every benchmark loads to the items of its official layout (same ids, prompts,
answers, meta and image bytes), found where users keep them: given as the benchmark's own path, behind
symlinks, in a hub cache, saved with `save_to_disk`, in lmms-eval's copies or LLaVA's playground; a folder
in no layout is refused in one line naming every layout tried."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from llava_eval.benchmarks import BENCHMARKS, BenchmarkLayoutError
from llava_eval.benchmarks.fixtures import hub_image, photo_jpeg, write_parquet
from llava_eval.benchmarks.karpathy_test_ids import KARPATHY_TEST_COCOIDS
from llava_eval.cli import load_eval_config
from llava_eval.sources import load_benchmarks
from stages.config import ConfigError
from tests.llava_eval.benchmark_layouts import (hub_cache, save_to_disk, write_coco_blip_test, write_coco_captions_val,
                                                write_coco_karpathy_parquet, write_lmms_parquet)


def _official(name, tmp):
    BENCHMARKS[name].write_fixture(tmp / "official")
    return tmp / "official"


def _linked(target: Path, link: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target.absolute(), target_is_directory=True)
    return link


def _lmms(name, tmp, eval_root, loaded):
    return write_lmms_parquet(name, loaded[name], tmp / "lmms", image_root=eval_root)


def _naturalbench_data_linked(tmp, *_):
    """The issue's case: the benchmark folder's `data/` is a symlink to where the parquet files are."""
    source = _official("naturalbench", tmp)
    (tmp / "NaturalBench").mkdir()
    _linked(source / "data", tmp / "NaturalBench" / "data")
    return tmp / "NaturalBench"


def _blink_with_test_split(tmp, *_):
    """The Hub's BLINK keeps each subtask's test split beside its val split: never read (no answers)."""
    source = _official("blink", tmp)
    write_parquet(source / "Counting" / "test-00000-of-00001.parquet",
                  [{"idx": "test_Counting_1", "prompt": "?", "choices": ["0", "1"], "answer": "?",
                    "image_1": hub_image(photo_jpeg("moon"), "moon.jpg")}])
    return hub_cache(source, tmp / "datasets--BLINK-Benchmark--BLINK")


def _gqa_playground(tmp, *_):
    """LLaVA's playground: `gqa/data/` holds the official download, beside LLaVA's own question file."""
    BENCHMARKS["gqa"].write_fixture(tmp / "gqa" / "data")
    (tmp / "gqa" / "llava_gqa_testdev_balanced.jsonl").write_text("{}\n")
    return tmp / "gqa"


# (benchmark, how it is laid out, the layout it must be read as, build(tmp, eval_root, loaded) -> its folder)
CASES = [
    ("mmvp", "official via a symlinked folder", "official MMVP/MMVP",
     lambda t, *_: _linked(_official("mmvp", t), t / "links" / "MMVP")),
    ("mmvp", "official in a hub cache", "official MMVP/MMVP",
     lambda t, *_: hub_cache(_official("mmvp", t), t / "datasets--MMVP--MMVP")),
    ("mmvp", "lmms-eval parquet", "lmms-eval's lmms-lab-eval/MMVP", lambda t, r, l: _lmms("mmvp", t, r, l)),
    ("mmvp", "lmms-eval save_to_disk", "lmms-eval's lmms-lab-eval/MMVP",
     lambda t, r, l: save_to_disk(_lmms("mmvp", t, r, l), t / "saved")),
    ("naturalbench", "official with data/ a symlink", "official BaiqiL/NaturalBench", _naturalbench_data_linked),
    ("naturalbench", "official save_to_disk", "official BaiqiL/NaturalBench",
     lambda t, *_: save_to_disk(_official("naturalbench", t), t / "saved")),
    ("naturalbench", "official in a hub cache", "official BaiqiL/NaturalBench",
     lambda t, *_: hub_cache(_official("naturalbench", t), t / "datasets--BaiqiL--NaturalBench")),
    ("naturalbench", "lmms-eval parquet", "lmms-eval's BaiqiL/NaturalBench-lmms-eval",
     lambda t, r, l: _lmms("naturalbench", t, r, l)),
    ("naturalbench", "lmms-eval in a hub cache", "lmms-eval's BaiqiL/NaturalBench-lmms-eval",
     lambda t, r, l: hub_cache(_lmms("naturalbench", t, r, l), t / "datasets--BaiqiL--NaturalBench-lmms-eval")),
    ("blink", "official in a hub cache, test split beside", "official BLINK-Benchmark/BLINK", _blink_with_test_split),
    ("blink", "official save_to_disk", "official BLINK-Benchmark/BLINK",
     lambda t, *_: save_to_disk(_official("blink", t), t / "saved")),
    ("gqa", "official in LLaVA's playground", "official GQA testdev-balanced", _gqa_playground),
    ("gqa", "lmms-eval parquet", "lmms-eval's lmms-lab/GQA", lambda t, r, l: _lmms("gqa", t, r, l)),
    ("gqa", "lmms-eval save_to_disk", "lmms-eval's lmms-lab/GQA",
     lambda t, r, l: save_to_disk(_lmms("gqa", t, r, l), t / "saved")),
    ("coco", "BLIP's test file", "BLIP's coco_karpathy_test.json",
     lambda t, r, l: write_coco_blip_test(l["coco"], t / "blip", image_root=r)),
    ("coco", "official captions_val2014.json", "official captions_val2014.json + Karpathy test ids",
     lambda t, r, l: write_coco_captions_val(l["coco"], t / "coco", image_root=r)),
    ("coco", "lmms-eval COCO-Caption in a hub cache", "lmms-eval's lmms-lab/COCO-Caption + Karpathy test ids",
     lambda t, r, l: hub_cache(_lmms("coco", t, r, l), t / "datasets--lmms-lab--COCO-Caption")),
    ("coco", "lmms-eval coco-karpathy beside val2014/", "lmms-eval's yerevann/coco-karpathy + val2014/ images",
     lambda t, r, l: write_coco_karpathy_parquet(l["coco"], t / "karpathy", image_root=r)),
    ("llava-bench", "LLaVA's in a hub cache", "LLaVA's liuhaotian/llava-bench-in-the-wild",
     lambda t, *_: hub_cache(_official("llava-bench", t), t / "datasets--liuhaotian--llava-bench-in-the-wild")),
    ("llava-bench", "lmms-eval parquet", "lmms-eval's lmms-lab/llava-bench-in-the-wild",
     lambda t, r, l: _lmms("llava-bench", t, r, l)),
]


def _contents(items, image_root: Path):
    """What a layout must reproduce: everything of each item but its image key, and its image's bytes."""
    return [(item.id, item.prompt, item.answer, item.caption, dict(item.meta), (image_root / item.image).read_bytes())
            for item in items]


def _load_by_path(name: str, folder: Path, tmp: Path):
    root, (one,) = load_benchmarks([BENCHMARKS[name]], eval_root=None, paths={name: str(folder)},
                                   view=tmp / "run" / "eval" / "images", written=tmp / "cache" / "eval-images")
    return root, one


@pytest.mark.parametrize(("name", "case", "layout", "build"), CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_every_layout_loads_the_items_of_the_official_one(name, case, layout, build, tmp_path, eval_root, loaded,
                                                          capsys):
    folder = build(tmp_path, eval_root, loaded)
    capsys.readouterr()
    root, one = _load_by_path(name, folder, tmp_path)
    (said,) = capsys.readouterr().err.splitlines()
    assert said.startswith(f"{name}: {layout} (") and said.endswith(f", {len(one.items)} items")
    assert one.located.layout.name == layout
    assert _contents(one.items, root) == _contents(loaded[name], eval_root)


def test_blink_lmms_rows_of_composites_load_the_same_questions_and_images(tmp_path, eval_root, loaded):
    """`write_lmms_parquet("blink")` writes a multi-image question's composite as its one image."""
    root, one = _load_by_path("blink", _lmms("blink", tmp_path, eval_root, loaded), tmp_path)
    without_meta = [c[:4] + c[5:] for c in _contents(one.items, root)]  # meta n_images: 1 for a composite
    assert without_meta == [c[:4] + c[5:] for c in _contents(loaded["blink"], eval_root)]


def test_llavas_playground_is_an_eval_root(tmp_path, eval_root, loaded):
    """`playground/data/eval` names its folders `MMVP`, `gqa` (the download under `data/`) and
    `llava-bench-in-the-wild`: the image root is then the run's folder of links, named by benchmark."""
    playground = tmp_path / "playground" / "data" / "eval"
    BENCHMARKS["mmvp"].write_fixture(playground / "MMVP")
    _gqa_playground(playground.parent.parent / "gqa-tmp")
    shutil.move(playground.parent.parent / "gqa-tmp" / "gqa", playground / "gqa")
    BENCHMARKS["llava-bench"].write_fixture(playground / "llava-bench-in-the-wild")
    chosen = [BENCHMARKS[name] for name in ("mmvp", "gqa", "llava-bench")]
    root, loaded_here = load_benchmarks(chosen, eval_root=playground, paths={}, view=tmp_path / "view",
                                        written=tmp_path / "written")
    assert root == tmp_path / "view"
    assert os.readlink(root / "llava-bench") == str(playground / "llava-bench-in-the-wild")
    for one in loaded_here:
        assert _contents(one.items, root) == _contents(loaded[one.benchmark.name], eval_root)


def test_an_eval_root_in_the_official_layouts_stays_the_image_root(eval_root, loaded, tmp_path):
    root, loaded_here = load_benchmarks(list(BENCHMARKS.values()), eval_root=eval_root, paths={},
                                        view=tmp_path / "view", written=tmp_path / "written")
    assert root == eval_root and not (tmp_path / "view").exists() and not (tmp_path / "written").exists()
    assert {one.benchmark.name: one.items for one in loaded_here} == loaded


def test_images_of_a_data_file_given_by_path_are_written_under_the_cache_not_into_its_folder(tmp_path, eval_root,
                                                                                             loaded):
    folder = _lmms("naturalbench", tmp_path, eval_root, loaded)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)  # a read-only shared copy
    try:
        root, one = _load_by_path("naturalbench", folder, tmp_path)
    finally:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert not (folder / "images").exists()
    written = sorted(p.name for p in (tmp_path / "cache" / "eval-images" / "naturalbench" / "images").iterdir())
    assert written == sorted({Path(item.image).name for item in one.items})
    assert all(name.split(".")[0] == hashlib.sha256((root / "naturalbench" / "images" / name).read_bytes()).hexdigest()
               for name in written)


def test_a_changed_data_file_never_reads_the_image_written_for_the_old_one(tmp_path):
    naturalbench = BENCHMARKS["naturalbench"]
    naturalbench.write_fixture(tmp_path)
    before = naturalbench.load(tmp_path)[0]
    naturalbench_file = next(tmp_path.rglob("*.parquet"))
    from llava_eval.benchmarks.hf_local import iter_rows

    rows = list(iter_rows([naturalbench_file]))
    rows[0]["Image_0"] = hub_image(photo_jpeg("moon"), "moon.jpg")  # the same sample, another picture
    write_parquet(naturalbench_file, rows)
    after = naturalbench.load(tmp_path)[0]
    assert after.image != before.image and (tmp_path / after.image.split("/", 1)[1]).read_bytes() == photo_jpeg("moon")


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_a_folder_in_no_layout_is_refused_in_one_line_naming_every_layout_tried(name, tmp_path):
    (tmp_path / "unrelated.txt").write_text("not a benchmark")
    with pytest.raises(BenchmarkLayoutError) as error:
        BENCHMARKS[name].load(tmp_path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{name}: {tmp_path} holds none of the accepted layouts")
    assert all(f"{layout.name}: " in message for layout in BENCHMARKS[name].layouts())


def test_a_data_file_of_another_benchmark_is_refused_naming_the_column_it_lacks(tmp_path, eval_root, loaded):
    folder = _lmms("llava-bench", tmp_path, eval_root, loaded)
    with pytest.raises(BenchmarkLayoutError, match=r"lmms-eval's lmms-lab-eval/MMVP: .*has no column 'Options or "
                                                   r"options'"):
        BENCHMARKS["mmvp"].load(folder)


def test_the_shipped_karpathy_test_ids_are_the_5000_val2014_test_images():
    assert len(KARPATHY_TEST_COCOIDS) == 5000
    assert {253964, 350334, 493284, 283277} <= KARPATHY_TEST_COCOIDS  # the fixture's, from the list's top
    assert 11169 not in KARPATHY_TEST_COCOIDS  # the first image of the Karpathy val split


def test_each_benchmark_takes_its_own_path_and_unknown_names_are_refused():
    config = load_eval_config(["paths.mmvp=/data/MMVP", "paths.llava-bench=/data/llava-bench-in-the-wild"])
    assert dict(config.paths) == {"mmvp": "/data/MMVP", "llava-bench": "/data/llava-bench-in-the-wild"}
    with pytest.raises(ConfigError, match="unknown benchmarks"):
        load_eval_config(["paths.mmpv=/data/MMVP"])


def test_a_benchmark_without_a_folder_is_refused_naming_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="paths.gqa"):
        load_benchmarks([BENCHMARKS["gqa"]], eval_root=tmp_path, paths={}, view=tmp_path / "v", written=tmp_path / "w")
