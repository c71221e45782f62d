"""`python -m pipeline.cli`: user errors are one line on stderr and a non-zero exit, never a traceback."""
from pipeline.cli import main


def test_unreachable_ray_cluster_is_one_line_error_and_exit_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray"))  # `auto` finds no cluster file here
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    rc = main(["extract", "--no-progress", f"cache_root={tmp_path / 'cache'}", "--ray-address", "auto"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert err[0].startswith("extract: error: cannot connect to the Ray cluster at ray_address='auto'")
    assert "ray start --head" in err[0]
