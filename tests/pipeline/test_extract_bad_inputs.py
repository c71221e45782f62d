"""Bad inputs to `extract` and `verify` (issue 19): each is one line on stderr and exit status 2, refused
before anything is written (the cache root is byte-identical afterwards) and before Ray starts; one bad
image key is one refused entry of the manifest, never a failed run. A Ctrl-C counts the shards that
were completed, also those whose stats never reached the driver."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from pipeline.cli import main

LONG = "00000/" + "x" * 300 + ".jpg"  # a 304-byte file name
SMALL = ["resolution=128", "grid=4", "features=[U-L1-R1-B0-Cross-Q]", "shard_size=4", "batch_size=2",
         "write_webdataset=false", "device=cpu", "precision=fp32", "num_cpus=4"]


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under `root`: a file's sha256, "dir" for a folder."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def data(sample, tmp_path_factory) -> dict[str, Path]:
    """Six images of the bundled sample, and a JSON that adds a key with a NUL byte, one with a 304-byte
    component and one with a lone surrogate (each escaped in the JSON, as a LLaVA file would hold them)."""
    folder = tmp_path_factory.mktemp("data")
    records = json.loads(Path(sample.pretrain_json).read_text())[:6]
    good = folder / "good.json"
    good.write_text(json.dumps(records))
    bad_keys = ["a\x00b.jpg", LONG, "\ud800.jpg"]
    hostile = folder / "hostile.json"
    hostile.write_text(json.dumps(records + [{**records[0], "image": key} for key in bad_keys]))
    return {"good": good, "hostile": hostile, "root": Path(sample.image_root)}


@pytest.fixture(scope="module")
def planned_root(data, tmp_path_factory) -> Path:
    """A cache root holding a store as a first run leaves it before its Ray job (keys planned, arrays
    created, no shard computed): a later run has work to do in it."""
    from pipeline.config import load_extract_config
    from pipeline.driver import plan_run

    root = tmp_path_factory.mktemp("cache")
    plan_run(load_extract_config([*SMALL, f"cache_root={root}", f"data={data['good']}", f"image_root={data['root']}"]))
    return root


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on return: nothing listens there


def _not_utf8(tmp: Path) -> list[str]:
    path = tmp / "latin1.json"
    path.write_bytes('[{"image": "caf\xe9.jpg", "conversations": []}]'.encode("latin-1"))
    return [f"data={path}"]


# (arguments given the test's tmp folder, a piece of the one error line)
CASES = {
    "data is not UTF-8": (_not_utf8, "latin1.json is not UTF-8 text (invalid continuation byte at byte"),
    "data is a directory": (lambda tmp: [f"data={tmp}"], "is a directory; name the JSON file in it"),
    "cpus_per_actor=-1": (lambda tmp: ["cpus_per_actor=-1"], "cpus_per_actor must be > 0"),
    "cpus_per_actor=.inf": (lambda tmp: ["cpus_per_actor=.inf"], "run: cpus_per_actor must be a finite number, "),
    "actor_resources inf": (lambda tmp: ["actor_resources={h100: .inf}"], "actor_resources must map custom Ray"),
    "num_cpus=0": (lambda tmp: ["num_cpus=0"], "num_cpus must be >= 1"),
    "max_pixels=0": (lambda tmp: ["max_pixels=0"], "max_pixels must be >= 1"),
    "ray_address not an address": (lambda tmp: ["ray_address=head"], "ray_address='head' is not auto, HOST:PORT"),
    "unreachable ray_address": (lambda tmp: [f"ray_address=127.0.0.1:{_closed_port()}"],
                                "cannot connect to the Ray cluster at ray_address='127.0.0.1:"),
    "grid=100000": (lambda tmp: ["grid=100000"], "grid=100000, 2 arrays and shard_size=4 need "),
    "summary json in a directory": (lambda tmp: ["--summary-json", str(tmp)], "--summary-json '{tmp}' is not a file"),
    "summary json in /proc": (lambda tmp: ["--summary-json", "/proc/summary.json"],
                              "--summary-json /proc/summary.json cannot be written: its folder /proc is not writable"),
    "plan json in /proc": (lambda tmp: ["--dry-run", "--plan-json", "/proc/plan.json"],
                           "--plan-json /proc/plan.json cannot be written"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_bad_input_is_one_line_exit_2_before_ray_and_the_cache_root_stays_byte_identical(
        case, planned_root, data, no_ray, tmp_path, capsys):
    arguments, message = CASES[case]
    extra = arguments(tmp_path)
    before = _snapshot(planned_root), _snapshot(tmp_path)
    rc = main(["extract", "--no-progress", *SMALL, f"cache_root={planned_root}", f"data={data['good']}",
               f"image_root={data['root']}", *extra])
    line = _one_error_line(capsys)
    assert rc == 2 and line.startswith("extract: error: ") and message.replace("{tmp}", str(tmp_path)) in line, line
    assert (_snapshot(planned_root), _snapshot(tmp_path)) == before


@pytest.mark.parametrize("where", ["a file", "/proc", "inside /proc", "a read-only folder"])
def test_an_unwritable_cache_root_is_one_line_exit_2_and_nothing_is_written(where, data, no_ray, tmp_path,
                                                                             capsys):
    if where == "a read-only folder" and os.geteuid() == 0:
        pytest.skip("root writes into a read-only folder (the /proc cases cover a refusing file system)")
    cache_root = {"a file": tmp_path / "cache", "/proc": Path("/proc"), "inside /proc": Path("/proc/cache"),
                  "a read-only folder": tmp_path / "ro" / "cache"}[where]
    if where == "a file":
        cache_root.write_text("not a folder")
    if where == "a read-only folder":
        cache_root.parent.mkdir()
        cache_root.parent.chmod(0o555)
    before = _snapshot(tmp_path)
    rc = main(["extract", "--no-progress", *SMALL, f"cache_root={cache_root}", f"data={data['good']}",
               f"image_root={data['root']}"])
    line = _one_error_line(capsys)
    assert rc == 2 and line.startswith(f"extract: error: cache_root={cache_root} "), line
    assert "not writable" in line or "is a file" in line
    assert _snapshot(tmp_path) == before


def test_the_grid_check_names_the_memory_and_how_to_lower_it(planned_root, data, no_ray, capsys):
    rc = main(["extract", "--no-progress", *SMALL, f"cache_root={planned_root}", f"data={data['good']}",
               f"image_root={data['root']}", "grid=100000"])
    line = _one_error_line(capsys)
    assert rc == 2 and " TiB per extractor actor " in line and "lower grid" in line, line


def test_verify_of_a_cache_root_says_so_and_names_its_stores(planned_root, capsys):
    (store,) = [p.name for p in planned_root.iterdir() if p.is_dir()]
    before = _snapshot(planned_root)
    rc = main(["verify", str(planned_root)])
    line = _one_error_line(capsys)
    assert rc == 2 and line.startswith(f"verify: error: {planned_root} is a cache root, not a store: it holds 1 "
                                       f"store(s) ({store}); verify one with `just verify {planned_root / store}`")
    assert f"`just caches {planned_root}`" in line
    assert _snapshot(planned_root) == before


def _stats_lost_then_ctrl_c(monkeypatch, *, computed: int) -> None:
    """The sequential runner computes `computed` shards whose stats never reach the driver (an actor's
    stats lost in flight), then Ctrl-C."""
    from pipeline import runner

    run_sequential = runner.run_sequential

    def lose_stats(tasks, *, on_stats, **kwargs):
        run_sequential(tasks[:computed], on_stats=lambda stats: None, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_sequential", lose_stats)


def test_a_key_no_file_can_have_is_one_refused_entry_and_the_other_images_extract(data, tmp_path, capsys):
    summary = tmp_path / "summary.json"
    rc = main(["extract", "--no-progress", *SMALL, "runner=sequential", f"cache_root={tmp_path / 'cache'}",
               f"data={data['hostile']}", f"image_root={data['root']}", "--summary-json", str(summary)])
    assert rc == 0, capsys.readouterr().err
    counts = json.loads(summary.read_text())
    assert (counts["done"], counts["refused"], counts["failed"]) == (6, 3, 0)
    rows = [json.loads(line) for line in Path(counts["errors_file"]).read_text(encoding="utf-8").splitlines()]
    reasons = {row["key"]: row["reason"] for row in rows if row["kind"] == "refused"}
    assert set(reasons) == {"a\x00b.jpg", LONG, "\ud800.jpg"}  # the keys as the JSON holds them
    assert "NUL byte" in reasons["a\x00b.jpg"] and "component of 304 bytes" in reasons[LONG]
    assert "not valid Unicode" in reasons["\ud800.jpg"]


def test_ctrl_c_counts_the_shards_completed_whose_stats_never_reached_the_driver(data, monkeypatch, tmp_path,
                                                                                  capsys):
    _stats_lost_then_ctrl_c(monkeypatch, computed=1)  # shard 0 written, its stats lost; then Ctrl-C
    rc = main(["extract", "--no-progress", *SMALL, "runner=sequential", f"cache_root={tmp_path / 'cache'}", f"data={data['good']}",
               f"image_root={data['root']}"])
    out = capsys.readouterr()
    assert rc == 130 and "extract: 4 images done" in out.out, out.out
    lines = [ln for ln in out.err.splitlines() if ln.strip() and not ln.startswith("Loading weights")]  # (an actor's)
    assert lines == ["extract: interrupted after 1 shards (4 images) of this run; they are kept: run the same "
                     "command to resume"]
