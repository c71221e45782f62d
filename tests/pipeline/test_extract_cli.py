"""`python -m pipeline.cli`: user mistakes are one line on stderr and exit status 2, never a traceback;
anything else (a bug) keeps its traceback."""
import pytest

from pipeline.cli import main


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_unreachable_ray_cluster_is_one_line_error_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray"))  # `auto` finds no cluster file here,
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # nor, by Ray's legacy fallback for `auto` (grepping processes), another test's running Ray
    monkeypatch.setattr("ray._private.services._find_address_from_flag", lambda flag: [])
    rc = main(["extract", "--no-progress", f"cache_root={tmp_path / 'cache'}", "--ray-address", "auto"])
    err = _one_error_line(capsys)
    assert rc == 2 and err.startswith("extract: error: cannot connect to the Ray cluster at ray_address='auto'")
    assert "ray start --head" in err


@pytest.mark.parametrize("override, message", [
    ("config=no-such.yaml", "config file no-such.yaml does not exist"),
    ("model=no-such-model-dir", "model directory 'no-such-model-dir' does not exist"),
    ("resolution=100", "resolution 100 is not a positive multiple of 64"),
    ("resize_mode=bogus", "resize_mode 'bogus' is not one of"),
    ("prompt_sources=[bogus]", "unknown prompt source(s) ['bogus']"),
])
def test_a_user_mistake_is_one_line_naming_it_and_exit_2(override, message, tmp_path, capsys):
    rc = main(["extract", "--no-progress", f"cache_root={tmp_path / 'cache'}", override])
    assert rc == 2 and _one_error_line(capsys).startswith(f"extract: error: {message}")


def test_a_bug_is_not_reported_as_a_user_mistake_but_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    def bug(*args, **kwargs):
        raise KeyError("a bug in our code")

    monkeypatch.setattr("pipeline.driver.plan_run", bug)
    with pytest.raises(KeyError, match="a bug in our code"):  # uncaught: Python prints it and exits 1
        main(["extract", "--no-progress", f"cache_root={tmp_path / 'cache'}"])
    assert "error:" not in capsys.readouterr().err
