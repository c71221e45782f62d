"""Bad inputs to `train` (issue 19): each is one line on stderr and exit status 2, refused before anything
is written (the output folder is byte-identical afterwards); a Ctrl-C in the final save, or while the
process exits after it, is one line and exit status 130 too."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train.cli import main
from train.config import REPO


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under `root`: a file's sha256, "dir" for a folder."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def _common(store, out) -> list[str]:
    return [f"data.extract_configs=[{store.extract_yaml}]", f"data.data_path={store.pretrain_json}",
            f"output_dir={out}", "per_device_batch_size=2", "save_every=0", "report_to=none"]


def _write(tmp: Path, name: str, data: bytes) -> Path:
    (tmp / name).write_bytes(data)
    return tmp / name


LATIN1_JSON = '[{"id": "café", "conversations": []}]'.encode("latin-1")


# (arguments given the test's tmp folder, a piece of the one error line)
CASES = {
    "lr=.inf": (lambda tmp: ["lr=.inf"], "train config: lr must be a finite number, got inf"),
    "lr=nan": (lambda tmp: ["lr=nan"], "train config: lr must be a finite number, got 'nan'"),
    "guidance.scale=inf": (lambda tmp: ["guidance.scale=inf"], "guidance.scale must be a finite number"),
    "max_grad_norm=.inf": (lambda tmp: ["max_grad_norm=.inf"], "max_grad_norm must be a finite number"),
    "data not UTF-8": (lambda tmp: [f"data.data_path={_write(tmp, 'latin1.json', LATIN1_JSON)}"],
                       "latin1.json is not UTF-8 text"),
    "data is a directory": (lambda tmp: [f"data.data_path={tmp}"], "is not a file (a LLaVA JSON)"),
    "DeepSpeed JSON malformed": (lambda tmp: [f"deepspeed_config={_write(tmp, 'ds.json', b'{bf16: 1}')}"],
                                 "ds.json is not readable JSON: Expecting property name"),
    "DeepSpeed JSON not an object": (lambda tmp: [f"deepspeed_config={_write(tmp, 'ds.json', b'[1]')}"],
                                     "ds.json must hold a JSON object"),
    "output_dir is a file": (lambda tmp: [f"output_dir={_write(tmp, 'out', b'x')}"], "out is a file, not a directory"),
    "output_dir in /proc": (lambda tmp: ["output_dir=/proc/run"],
                            "output_dir=/proc/run is not writable (it would be created in /proc)"),
    "dry run's plan in /proc": (lambda tmp: ["--dry-run", "--plan-json", "/proc/plan.json"],
                                "--plan-json /proc/plan.json cannot be written"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_bad_input_is_one_line_exit_2_and_the_output_folder_stays_byte_identical(case, train_store, tmp_path,
                                                                                    capsys):
    arguments, message = CASES[case]
    extra = arguments(tmp_path)
    before = _snapshot(tmp_path)
    code = main(["pretrain", *_common(train_store, tmp_path / "out"), *extra])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("train pretrain: error: ") and message in err[0], err
    assert _snapshot(tmp_path) == before


def test_ctrl_c_in_the_final_save_is_one_line_exit_130_naming_the_checkpoint(train_store, tmp_path, monkeypatch,
                                                                               capsys):
    from transformers import PreTrainedTokenizerBase

    def ctrl_c(*args, **kwargs):  # the SFT run's last piece of final/: the tokenizer beside the LLM
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", ctrl_c)
    out = tmp_path / "out"
    code = main(["sft", f"data.extract_configs=[{train_store.extract_yaml}]", f"data.data_path={train_store.sft_json}",
                 f"output_dir={out}", "per_device_batch_size=2", "report_to=none", "max_steps=1",
                 "max_length=256", "pretrained_adapter="])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert code == 130 and "Traceback" not in err
    assert lines == ["train sft: interrupted at step 1 of 1; the final save (final/) was cut short: run the same "
                     "command to write it from step-00000001"], err


_EXITING = """
import atexit, signal, sys, time
sys.path.insert(0, {repo!r})
from stages.errors import exit_now

class Heavy:  # as torch, transformers and DeepSpeed are at the interpreter's teardown: seconds to free
    def __del__(self):
        time.sleep(5)

heavy = Heavy()
if {ctrl_c}:  # a Ctrl-C while the process exits
    atexit.register(signal.raise_signal, signal.SIGINT)
print("done", flush=True)
exit_now(0, prog="train")
"""


@pytest.mark.parametrize("ctrl_c", [False, True])
def test_after_the_work_the_process_exits_at_once_and_a_ctrl_c_then_is_one_line_exit_130(ctrl_c, tmp_path):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _EXITING.format(repo=str(REPO), ctrl_c=ctrl_c)], text=True,
                          capture_output=True, timeout=60)
    assert time.perf_counter() - start < 4, "the interpreter's teardown ran (Python ignores Ctrl-C during it)"
    assert proc.stdout == "done\n"
    if ctrl_c:
        assert (proc.returncode, proc.stderr) == (130, "train: interrupted while exiting; the work it reported "
                                                        "above was done\n")
    else:
        assert (proc.returncode, proc.stderr) == (0, "")
