"""`stages.console`: third-party output held back at its source, shown when the call fails or with --verbose."""
import subprocess
import sys

import pytest

from stages.console import VERBOSE_ENV, held_output, take_verbose

CHILD = [sys.executable, "-c", "import sys; print('child out'); sys.stderr.write('child err\\n')"]


def _noisy(fail: bool) -> None:
    """What a wrapped library call does: print itself, and run a child process that prints (Java's tokenizer)."""
    print("python out")
    subprocess.run(CHILD, check=True)
    if fail:
        raise RuntimeError("the call failed")


@pytest.fixture
def quiet(monkeypatch):
    monkeypatch.setenv(VERBOSE_ENV, "0")  # restored after the test, whatever `take_verbose` sets


def test_held_output_hides_a_call_and_its_child_processes_when_it_succeeds(quiet, capfd):
    with held_output(fd=True):
        _noisy(fail=False)
    assert capfd.readouterr() == ("", "")
    with held_output():  # Python's stdout only: a child's output passes
        _noisy(fail=False)
    assert capfd.readouterr() == ("child out\n", "child err\n")


def test_held_output_shows_everything_it_held_when_the_call_fails(quiet, capfd):
    with pytest.raises(RuntimeError, match="the call failed"), held_output(fd=True):
        _noisy(fail=True)
    out, err = capfd.readouterr()
    assert out == "" and err.splitlines() == ["python out", "child out", "child err"]
    with pytest.raises(RuntimeError), held_output():
        _noisy(fail=True)
    assert capfd.readouterr() == ("child out\n", "child err\npython out\n")


def test_verbose_anywhere_in_the_arguments_passes_everything_through_to_this_process_and_its_children(
        quiet, monkeypatch, capfd):
    assert take_verbose(["extract", "grid=8"]) == ["extract", "grid=8"]
    with held_output(fd=True):
        _noisy(fail=False)
    assert capfd.readouterr() == ("", "")
    assert take_verbose(["extract", "--verbose", "grid=8"]) == ["extract", "grid=8"]
    with held_output(fd=True):
        _noisy(fail=False)
    assert capfd.readouterr() == ("python out\nchild out\n", "child err\n")
    assert subprocess.run([sys.executable, "-c", f"import os; print(os.environ['{VERBOSE_ENV}'])"],
                          capture_output=True, text=True).stdout == "1\n"
