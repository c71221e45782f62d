"""The report's parts without a browser: the banner names exactly the tiny random models, tables are rounded per
column (percentages to one decimal) while evaluation tables stay as written, the files read are the ones the
trainer writes, and a run or table named but missing is one line, exit 2, before any analysis runs."""
import re
from pathlib import Path

from analysis.cli import main
from analysis.provenance import Provenance, weights
from analysis.report import Section, Table, write_report
from analysis.training import METRICS_FILE, RUN_CONFIG_FILE, sample_runs

TABLE = "method,score,share,steps,weights\nSD,11.1111,0.985416,18,123456789012\nCLIP,0,0.5,6,abcdef012345\n"


def page_of(tmp_path: Path, *sections: Section) -> str:
    return write_report(tmp_path, sections, title="report").read_text()


def cells(page: str, caption: str) -> list[list[str]]:
    table = re.search(rf"<caption>{re.escape(caption)}</caption>(.*?)</table>", page, re.S)[1]
    return [re.findall(r"<t[hd]>(.*?)</t[hd]>", row) for row in re.findall(r"<tr>(.*?)</tr>", table)]


def test_the_banner_names_the_tiny_random_models_and_only_a_report_with_one_has_it(tmp_path):
    real = Section("Real", "Fig. 1", tmp_path / "real", provenance=weights("stabilityai/stable-diffusion-2-1-base"))
    tiny = Section("Tiny", "Fig. 2", tmp_path / "tiny", provenance=weights("embedded:tiny-sd") + Provenance(
        (("store", "`0123`"),)))
    page = page_of(tmp_path, real)
    assert "class='banner'" not in page and "<code>stabilityai/stable-diffusion-2-1-base</code> (pretrained weights)" \
        in page
    page = page_of(tmp_path, real, tiny)
    banner = re.search(r"<div class='banner'>(.*?)</div>", page, re.S)[1]
    assert re.findall(r"<code>([^<]+)</code>", banner) == ["embedded:tiny-sd"]
    tiny_header = re.search(r"<h2 id='s1'>.*?(<dl class='prov'>.*?</dl>)", page, re.S)[1]
    assert "<code>embedded:tiny-sd</code> <span class='badge'>" in tiny_header
    assert "<dd><code>0123</code>" in tiny_header


def test_tables_are_rounded_per_column_percentages_to_one_decimal_and_eval_tables_kept_as_written(tmp_path):
    folder = tmp_path / "itm"
    folder.mkdir()
    (folder / "a.csv").write_text(TABLE)
    page = page_of(tmp_path, Section("ITM", "Table 1", folder, tables=[
        Table("a.csv", "auto"), Table("a.csv", "percent", decimals=1), Table("a.csv", "written", rounded=False)]))
    header = ["method", "score", "share", "steps", "weights"]
    assert cells(page, "auto (a.csv)") == [header, ["SD", "11.1", "0.985", "18", "123456789012"],
                                           ["CLIP", "0.0", "0.500", "6", "abcdef012345"]]
    assert cells(page, "percent (a.csv)")[1][:4] == ["SD", "11.1", "1.0", "18.0"]
    assert cells(page, "written (a.csv)") == [row.split(",") for row in TABLE.splitlines()]


def test_training_files_are_the_ones_the_trainer_writes_and_the_sample_runs_its_default_output_dirs():
    from train.config import DEFAULT_CONFIGS, load_stage_config
    from train.config import RUN_CONFIG_FILE as TRAIN_CONFIG
    from train.metrics import METRICS_FILE as TRAIN_METRICS

    assert (METRICS_FILE, RUN_CONFIG_FILE) == (TRAIN_METRICS, TRAIN_CONFIG)
    assert sample_runs() == [Path(load_stage_config(stage).output_dir) for stage in DEFAULT_CONFIGS]


def test_runs_or_an_eval_table_named_but_missing_are_one_line_before_any_analysis(tmp_path, capsys):
    assert main(["inspect", f"runs=[{tmp_path}]", f"out={tmp_path / 'out'}"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"analyze inspect: error: runs: {tmp_path} holds no metrics.jsonl; `just train-pretrain` / `just train-sft` "
        "write one per run (output_dir)")
    assert main(["inspect", f"eval_table={tmp_path / 'table'}", f"out={tmp_path / 'out'}"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"analyze inspect: error: eval_table: no {tmp_path / 'table'}.csv or {tmp_path / 'table'}-*.csv; "
        f"`just eval-table RUN ... --out {tmp_path / 'table'}` writes them")
    assert not (tmp_path / "out" / "inspect" / "pca").exists()
