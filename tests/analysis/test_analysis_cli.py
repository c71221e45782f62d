"""`python -m analysis.cli <what>` on the small store: files written, numbers consistent with themselves."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from analysis.cli import main
from analysis.mmvp_vlm import CATEGORIES, MMVP_VLM
from analysis.winoground import WINOGROUND


def common(env, out):
    return ["--extract-config", str(env.extract_yaml), "--out", str(out), "--device", "cpu"]


def images(env, n=3):
    return ["--data", str(env.data_json), "--image-root", str(env.image_root), "--keys", *env.keys[:n]]


def rows(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def config(folder):
    return json.loads((folder / "config.json").read_text())


def test_itm_tables_have_both_rows_and_follow_from_the_recorded_scores(analysis_env, tmp_path):
    env = analysis_env
    assert main(["itm", *common(env, tmp_path), "--mmvp-vlm", str(env.mmvp_vlm), "--winoground", str(env.winoground),
                 "--timesteps", "389", "--trials", "1", "--tokens", "content"]) == 0
    out = tmp_path / "itm"
    results = json.loads((out / "results.json").read_text())
    assert results["options"]["tokens"] == "content" and results["options"]["timesteps"] == [389]
    for benchmark, groups in ((MMVP_VLM, MMVP_VLM.load(env.mmvp_vlm)), (WINOGROUND, WINOGROUND.load(env.winoground))):
        table = rows(out / f"{benchmark.name}.csv")
        assert [r["method"] for r in table] == ["SD cross-attention", "CLIP"]
        assert list(table[0])[1:] == list(benchmark.columns)
        scores = rows(out / f"{benchmark.name}-scores.csv")
        for method, row in zip(("SD cross-attention", "CLIP"), table):
            s = np.array([float(r["score"]) for r in scores if r["method"] == method]).reshape(len(groups), 2, 2)
            assert len(np.unique(s)) > len(groups)  # real scores, not constants
            recomputed = benchmark.metrics(groups, s)
            expected = [recomputed[c] for c in benchmark.columns]
            assert [float(row[c]) for c in benchmark.columns] == pytest.approx(expected, abs=1e-4)
        assert Image.open(out / f"{benchmark.name}.png").size[0] > 0
    assert list(rows(out / "mmvp-vlm.csv")[0])[1:] == [*CATEGORIES, "Average"]
    assert config(out)["sources"]["mmvp-vlm"]["store"] == str(env.store)
    assert (out / "fingerprint.json").is_file() and (out / "images-winoground.json").is_file()


def test_pca_reads_uncond_and_caption_arrays_from_the_store(analysis_env, tmp_path):
    env = analysis_env
    assert main(["pca", *common(env, tmp_path), *images(env), "--scales", "0", "2"]) == 0
    out = tmp_path / "pca"
    sources = config(out)["sources"]["sd"]
    assert sources["rows_computed"] == 0 and sources["rows_read"] == 3 * 4  # 2 arrays + their :caption arrays
    for name in ("pca-uncond.png", "pca-cond.png", "pca-delta.png", "pca-sweep.png"):
        assert Image.open(out / name).size[0] > 100
    variance = rows(out / "explained_variance.csv")
    assert {r["variant"] for r in variance} == {"uncond", "cond", "delta", "s=0", "s=2"}
    assert all(0 < float(r["pc1"]) <= 1 for r in variance)
    fingerprint = json.loads((out / "fingerprint.json").read_text())["sd"]
    assert env.store.name == fingerprint["fingerprint"][:16]


def test_cka_matrices_are_symmetric_with_a_unit_diagonal(analysis_env, tmp_path):
    env = analysis_env
    assert main(["cka", *common(env, tmp_path), *images(env, 4), "--block", "3", "--scales", "0", "4",
                 "--sweep", "0", "1", "7"]) == 0
    out = tmp_path / "cka"
    values = {(r["scale"], r["array_a"], r["array_b"]): float(r["cka"]) for r in rows(out / "cka.csv")}
    arrays = {a for _, a, _ in values}
    assert len(arrays) == 2 and len(values) == 2 * 4
    for (scale, a, b), value in values.items():
        assert value == pytest.approx(values[scale, b, a])
        assert value == pytest.approx(1.0) if a == b else 0 < value < 1
    sweep = {(r["array"], float(r["scale"])): float(r["cka_uncond_vs_amplified"]) for r in rows(out / "cka-sweep.csv")}
    assert all(sweep[a, 0.0] == pytest.approx(1.0) for a in arrays)
    assert (out / "cka-matrices.png").is_file() and (out / "cka-sweep.png").is_file()
    assert main(["cka", *common(env, tmp_path), *images(env, 4), "--estimator", "minibatch", "--block", "4",
                 "--scales", "1", "--sweep", "0", "--name", "cka-minibatch"]) == 0
    unbiased = {(r["array_a"], r["array_b"]): float(r["cka"]) for r in rows(tmp_path / "cka-minibatch" / "cka.csv")}
    assert all(v == pytest.approx(1.0) for (a, b), v in unbiased.items() if a == b)


def test_pairs_and_attention_write_their_tables_and_figures(analysis_env, tmp_path):
    env = analysis_env
    assert main(["pairs", *common(env, tmp_path), "--mmvp-vlm", str(env.mmvp_vlm), "--timesteps", "50", "500",
                 "--clip-config", str(env.clip_yaml)]) == 0
    table = rows(tmp_path / "pairs" / "pairs.csv")
    assert [r["array"] for r in table] == ["U-L1-R1-B0-Cross-Q@t50", "U-L1-R1-B0-Cross-Q@t500",
                                           "U-L2-R1-B0-Cross-Q@t50", "U-L2-R1-B0-Cross-Q@t500", "CLIP-L-2"]
    assert all(-1 <= float(r["mean_cosine"]) <= 1 and r["pairs"] == "9" for r in table)
    assert main(["attention", *common(env, tmp_path), *images(env, 1), "--timesteps", "189", "789",
                 "--stride", "2"]) == 0
    words = json.loads((tmp_path / "attention" / "words.json").read_text())
    assert words["images"][0]["words"][:3] == env.captions[0].split()[:3]
    assert len(words["layers"]) == 5  # every attn2 at stride 2 (32x32 at 512 px): D-L1 x2, U-L2 x3
    assert (tmp_path / "attention" / "attention-0-timesteps.png").is_file()


def test_a_folder_without_the_official_layout_fails_with_one_line(analysis_env, tmp_path, capsys):
    assert main(["itm", *common(analysis_env, tmp_path), "--benchmarks", "winoground",
                 "--winoground", str(tmp_path)]) == 2
    assert "examples.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize("flags, overrides", [
    (["itm", "--trials", "1", "--timesteps", "189", "589", "--mmvp-vlm", "/data/mmvp"],
     ["itm", "trials=1", "timesteps=[189,589]", "mmvp_vlm=/data/mmvp"]),
    (["inspect", "--extract-config", "x.yaml", "--keys", "a.jpg", "b.jpg"],
     ["inspect", "extract_config=x.yaml", "keys=[a.jpg,b.jpg]"]),
    (["cka", "--scales", "0", "4", "--device", "cpu"], ["cka", "--device", "cpu", "scales=[0,4]"]),  # mixed
])
def test_every_option_is_also_a_key_value_override_as_in_every_other_command(flags, overrides):
    from analysis.cli import as_flags, build_parser

    parser = build_parser()
    assert parser.parse_args(as_flags(overrides)) == parser.parse_args(flags)


def test_a_config_file_gives_options_that_overrides_replace_and_nesting_is_one_line(tmp_path, capsys):
    from analysis.cli import as_flags, build_parser

    path = tmp_path / "itm.yaml"
    path.write_text("trials: 2\nseed: 7\n")
    args = build_parser().parse_args(as_flags(["itm", f"config={path}", "trials=1"]))
    assert (args.trials, args.seed) == (1, 7)
    assert main(["itm", "trials.x=1"]) == 2
    assert capsys.readouterr().err.strip().startswith("analyze itm: error: analysis options are not nested")
