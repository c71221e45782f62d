"""Where a run's step metrics go besides `metrics.jsonl` (`report_to`): TensorBoard event files under
`<output_dir>/tensorboard/`, a Weights & Biases run under `<output_dir>/wandb/`, or nowhere (`none`).

Both trackers log the same scalars, `train/<metric>` at each optimizer step. A resumed run continues its
tracker: TensorBoard purges the events past the start step, wandb resumes the run of the id recorded in
`<output_dir>/wandb/run-id` (a new id when the run starts at step 0). wandb runs online when it has an API
key and its server answers; `WANDB_MODE` decides when set; otherwise it writes an offline run (one line says
where, and `wandb sync DIR` uploads it later).
"""
from __future__ import annotations

import importlib.util
import netrc
import os
import secrets
import socket
from pathlib import Path
from typing import Any, Mapping, Protocol
from urllib.parse import urlparse

from stages.config import ConfigError
from stages.console import status, verbose

__all__ = ["REPORT_TO", "TENSORBOARD_DIR", "WANDB_DIR", "Tracker", "check_tracker", "open_tracker", "wandb_offline_reason"]

REPORT_TO = ("tensorboard", "wandb", "none")
TENSORBOARD_DIR = "tensorboard"  # under output_dir: `tensorboard --logdir runs/`
WANDB_DIR = "wandb"  # under output_dir: wandb's own `wandb/` folder (offline-run-*/, run-*/)
WANDB_PROJECT = "diffusion-feature-cache"  # unless WANDB_PROJECT says
_RUN_ID = "run-id"


class Tracker(Protocol):
    def log(self, scalars: Mapping[str, float], step: int) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class _TensorBoard:
    def __init__(self, output_dir: Path, *, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(output_dir / TENSORBOARD_DIR), purge_step=start_step + 1)

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def wandb_offline_reason(environ: Mapping[str, str] = os.environ, *, timeout: float = 3.0) -> str | None:
    """Why a wandb run is written offline, or None: `WANDB_MODE` decides when set (None: wandb reads it),
    else no API key (`WANDB_API_KEY`, or `wandb login`'s netrc entry) or no answer from the server."""
    if environ.get("WANDB_MODE"):
        return None
    url = urlparse(environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host, port = url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)
    try:
        login = netrc.netrc(environ.get("NETRC")).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        login = None
    if not environ.get("WANDB_API_KEY") and login is None:
        return "there is no W&B API key (WANDB_API_KEY, `wandb login`)"
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"{host}:{port} cannot be reached ({exc.strerror or exc})"
    return None


class _Wandb:
    def __init__(self, output_dir: Path, *, start_step: int, config: Mapping[str, Any], prog: str) -> None:
        import wandb

        root = output_dir / WANDB_DIR
        root.mkdir(parents=True, exist_ok=True)
        id_file = root / _RUN_ID
        run_id = id_file.read_text().strip() if start_step and id_file.is_file() else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        offline = wandb_offline_reason()
        self.run = wandb.init(dir=str(output_dir), project=os.environ.get("WANDB_PROJECT", WANDB_PROJECT),
                              name=output_dir.name, id=run_id, resume="allow", config=dict(config),
                              mode="offline" if offline else None,
                              settings=wandb.Settings(silent=not verbose(), console="off"))
        if self.run.offline:
            why = f", as {offline}" if offline else ""
            status(prog, f"wandb: offline run in {self.run.settings.sync_dir}{why}; `wandb sync DIR` uploads it")
        else:
            status(prog, f"wandb: {self.run.url}")

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        self.run.log(dict(scalars), step=step)

    def flush(self) -> None:
        pass  # wandb writes each logged step to its run file as it comes

    def close(self) -> None:
        self.run.finish()


def check_tracker(report_to: str) -> None:
    """Before any training: the package `report_to` needs is installed (wandb is an optional dependency)."""
    if report_to == "wandb" and importlib.util.find_spec("wandb") is None:
        raise ConfigError("report_to=wandb needs the wandb package (`pip install wandb`); or report_to=tensorboard|none")


def open_tracker(report_to: str, output_dir: Path, *, start_step: int, config: Mapping[str, Any],
                 prog: str) -> Tracker | None:
    """The tracker of `report_to` for a run in `output_dir` starting after `start_step`; None for `none`."""
    if report_to == "tensorboard":
        return _TensorBoard(output_dir, start_step=start_step)
    if report_to == "wandb":
        return _Wandb(output_dir, start_step=start_step, config=config, prog=prog)
    return None
