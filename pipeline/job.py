"""The Ray Data job: missing shard indices -> CPU decode tasks -> extractor actor pool -> stats rows.

The shard is the unit of work: one task decodes a shard's images, one actor computes and writes that
shard whole, so the number of actors or nodes cannot change what is computed. Ray is started
embedded (`ray.init()`) unless `ray_address` names a cluster (`auto`, `ray://head:10001`).
"""
from __future__ import annotations

import gc
import logging
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import ray

from pipeline.config import RunConfig
from stages.locations import REPO
from pipeline.errors import ExtractionError, WorkerError, logged_failure
from pipeline.rows import ShardStats, ShardTask
from pipeline.worker import ShardWorker, WorkerBuilder, decode_row
from stages.config import ConfigError
from stages.console import VERBOSE_ENV, verbose
from stages.preprocess import ImageSpec
from stages.store.objects import as_location

__all__ = ["PASSED_ENV", "start_ray", "restart_ray", "check_reachable", "check_embedded_budget", "run_shards",
           "WorkersLost", "actor_capacity"]

# what Ray workers inherit from the driver: the models, caches and hub settings it runs with
PASSED_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "TRANSFORMERS_OFFLINE", "DFC_EMBEDDED_HOME", "XDG_CACHE_HOME",
              "TOKENIZERS_PARALLELISM", "HF_HUB_DISABLE_PROGRESS_BARS", VERBOSE_ENV)
_DECODE_BASE_MEMORY = 512 << 20  # a decode worker imports torch and PIL (~250 MB resident)


def start_ray(run: RunConfig) -> tuple[bool, float]:
    """Connect to or start Ray; returns (whether we started it, seconds taken). A cluster that cannot be
    reached is a `ConfigError` saying so."""
    start = time.perf_counter()
    if ray.is_initialized():
        return False, 0.0
    _quiet_ray_logs()
    env = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", **{k: os.environ[k] for k in PASSED_ENV if k in os.environ}}
    if run.ray_address is None:  # "local": a fresh instance, never another process's cluster
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        ray.init(address="local", num_cpus=run.num_cpus, include_dashboard=False, configure_logging=False,
                 log_to_driver=verbose(), runtime_env={"env_vars": env})
    else:  # cluster nodes run their own install of this package (see docs/pipeline.md)
        check_reachable(run.ray_address)
        try:
            ray.init(address=run.ray_address, runtime_env={"env_vars": env}, log_to_driver=verbose(),
                     logging_level=logging.INFO if verbose() else logging.WARNING)
        except ConnectionError as exc:
            raise ConfigError(f"cannot connect to the Ray cluster at ray_address={run.ray_address!r}: {exc} "
                              "(start one with `ray start --head`, or leave ray_address unset for an "
                              "embedded Ray)") from exc
    return True, time.perf_counter() - start


def _auto_address(address: str) -> str:
    """The `host:port` Ray connects to for `auto` (RAY_ADDRESS, the address file `ray start` leaves, a
    running GCS: Ray's own discovery), a `ConfigError` when there is none; `address` as given when the
    discovery fails otherwise (then `ray.init` reports it)."""
    from ray._private import services

    try:
        return services.canonicalize_bootstrap_address_or_die(address)
    except ConnectionError as exc:
        raise ConfigError(f"cannot connect to the Ray cluster at ray_address={address!r}: {exc} (start one with "
                          "`ray start --head`, or leave ray_address unset for an embedded Ray)") from None
    except Exception:  # noqa: BLE001 - Ray's private helper changed or choked: ray.init decides
        return address


def check_reachable(address: str, *, timeout: float = 10.0) -> None:
    """A cluster address where nothing accepts a TCP connection (or `auto` with no cluster to find) is a
    `ConfigError` now: `ray.init` itself retries such an address for many minutes (measured: still
    retrying after 5). `pipeline.driver` calls this before the store is written, `start_ray` again."""
    target = _auto_address(address) if address == "auto" else address
    if target == "auto":
        return
    host, _, port = target.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"ray_address={address!r} is not auto, HOST:PORT (the head's GCS, `ray start --head "
                          "--port`) or ray://HOST:PORT (Ray Client)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"cannot connect to the Ray cluster at ray_address={address!r}: nothing accepts "
                          f"connections at {host}:{port} ({exc}); check the head's address and port (`ray status` "
                          "on the head), or leave ray_address unset for an embedded Ray") from exc


class WorkersLost(RuntimeError):
    """The attempt lost an actor, a node or an object to the cluster, not to an error of our code: the
    shards it left are worth running again on the nodes that are alive (`pipeline.driver`)."""


_LOST = (ray.exceptions.RayActorError, ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError)


def _actor_request(run: RunConfig, *, use_gpus: bool) -> dict[str, float]:
    """What one extractor actor asks of a node: its CPUs, a GPU on GPU clusters, `actor_resources`."""
    return {"CPU": run.cpus_per_actor, **({"GPU": 1.0} if use_gpus else {}), **run.actor_resources}


def actor_capacity(nodes: Sequence[dict[str, float]], request: dict[str, float], *, actors: int) -> int:
    """Extractor actors the `nodes` (their resource totals) can hold at once, each on one node."""
    per_node = [min([int(node.get(name, 0) // amount) for name, amount in request.items() if amount > 0],
                    default=actors) for node in nodes]
    return sum(per_node)


def _placeable_actors(run: RunConfig, *, actors: int, use_gpus: bool, decode_memory: int, shrink: bool) -> int:
    """How many actors to start: `actors`, or (`shrink`: after a lost node) as many as the alive nodes hold.
    A request no node can satisfy is refused: Ray waits forever for it, whatever the cluster's totals.
    Every actor must fit on one node (its CPUs, a GPU on GPU clusters, its `actor_resources`), and a
    decode task on some node."""
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    request = _actor_request(run, use_gpus=use_gpus)
    custom = [name for name in request if name not in ("CPU", "GPU")]
    listing = "; ".join(f"node {i}: {n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU, "
                        f"{n.get('memory', 0) / 2**30:.1f} GiB" + "".join(f", {n.get(c, 0):g} {c}" for c in custom)
                        for i, n in enumerate(nodes))
    fit = actor_capacity(nodes, request, actors=actors)
    if fit < actors and not (shrink and fit > 0):
        need = ", ".join(f"{amount:g} {name}" for name, amount in request.items())
        raise ConfigError(f"{actors} extractor actors need {need} each on one node, but the Ray cluster's nodes "
                          f"fit {fit} ({listing}); lower num_actors, cpus_per_actor or actor_resources")
    if not any(n.get("CPU", 0) >= 1 and n.get("memory", 0) >= decode_memory for n in nodes):
        raise ConfigError(f"a decode task needs 1 CPU and {decode_memory / 2**30:.1f} GiB of memory on one node, "
                          f"which no node of the Ray cluster has ({listing}); lower shard_size")
    return min(actors, fit)


def _quiet_ray_logs() -> None:
    """Keep Ray's chatter off the terminal: the token-authentication notice of a fresh local Ray, and Ray
    Data's console log (a worker failure's tracebacks go to our log file instead; Ray Data's own log file,
    `<ray session>/logs/ray-data/ray-data.log`, keeps everything). Workers load models without progress
    bars (HF_HUB_DISABLE_PROGRESS_BARS, set in `start_ray` unless given), and their output reaches the
    terminal only with `--verbose` (`log_to_driver`; it stays in `<ray session>/logs/worker-*`): a worker's
    failure reaches the driver as its exception."""
    import ray.data  # configures its loggers on import: first, so that the change below sticks

    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setLevel(logging.CRITICAL)


def _root_cause(exc: BaseException) -> str:
    """The last line of a worker traceback, e.g. `ModelLoadError: cannot load unet/ of '/x': ...`."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    causes = [line for line in lines if ": " in line and not line.startswith(("File ", "^", "ray::"))]
    return causes[-1] if causes else (lines[-1] if lines else type(exc).__name__)


def _use_gpus(run: RunConfig, *, gpus: float) -> bool:
    """Whether the actors take a GPU each, given how many GPUs there are."""
    return gpus > 0 if run.device == "auto" else run.device.startswith("cuda")


def _check_cpu_budget(run: RunConfig, *, actors: int, cpus: float, where: str) -> None:
    if actors * run.cpus_per_actor > cpus - 1:
        raise ConfigError(f"{actors} CPU actors x cpus_per_actor={run.cpus_per_actor} leave none of the "
                          f"{cpus:g} CPUs {where} for decoding images; lower num_actors or "
                          "cpus_per_actor (fractions are fine: cpus_per_actor=0.5)")


def check_embedded_budget(run: RunConfig, *, n_tasks: int) -> None:
    """Before starting an embedded Ray: CPU actors must leave a CPU of `num_cpus` (default: all) free."""
    import torch

    if not _use_gpus(run, gpus=torch.cuda.device_count()):
        _check_cpu_budget(run, actors=min(run.num_actors, n_tasks), cpus=run.num_cpus or os.cpu_count() or 1,
                          where="of this machine" if run.num_cpus is None else "given by num_cpus")


def run_shards(tasks: Sequence[ShardTask], *, builder: WorkerBuilder, image_root: str, image_spec: ImageSpec,
               run: RunConfig, on_stats: Callable[[ShardStats], None], shrink: bool = False) -> None:
    """Compute and write every shard of `tasks` (rows: `pipeline.rows`), calling `on_stats` with each
    shard's stats as it completes (in completion order). Raises `WorkersLost` when the cluster loses an
    actor or node (actors are not restarted: one could wait forever for a node that never comes back;
    the driver runs the shards left on the nodes alive, `shrink` then starting as many actors as fit)."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver shows one bar over images
    context.print_on_execution_start = False
    context.raise_original_map_exception = True  # a worker's WorkerError, not Ray Data's UserCodeException
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    use_gpus = _use_gpus(run, gpus=gpus)
    actors = min(run.num_actors, len(tasks))
    if use_gpus and gpus < actors and not shrink:  # Ray would wait forever for the missing GPUs
        raise ConfigError(f"{actors} extractor actors need a GPU each (device={run.device}), but the Ray "
                          f"cluster has {gpus:g} GPUs; lower num_actors or use device=cpu")
    # The decode tasks declare their memory (their output is one shard of uint8 pixels). Besides
    # sizing the scheduler, the differing resources keep Ray Data from fusing the decode into the
    # actor, which would serialise decoding with the GPU work.
    shard_bytes = len(tasks[0].keys) * image_spec.resolution**2 * 3  # the store's shard size
    decode_memory = _DECODE_BASE_MEMORY + 2 * shard_bytes
    actors = _placeable_actors(run, actors=actors, use_gpus=use_gpus, decode_memory=decode_memory, shrink=shrink)
    if not use_gpus:  # a cluster's (or an already running Ray's) CPUs are known only once connected
        _check_cpu_budget(run, actors=actors, cpus=resources.get("CPU", 0), where="in this Ray cluster")
    dataset = ray.data.from_items([t.to_row() for t in tasks], override_num_blocks=len(tasks))
    dataset = dataset.map(decode_row, fn_kwargs={"image_root": image_root, "image_spec": image_spec},
                          num_cpus=1, memory=decode_memory)
    with warnings.catch_warnings():  # max_restarts has no named parameter: Ray 2.60 deprecates passing it
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
        dataset = dataset.map_batches(
            ShardWorker, fn_constructor_kwargs={"builder": builder}, batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=1 if use_gpus else 0,
            num_cpus=run.cpus_per_actor, resources=dict(run.actor_resources) or None, max_restarts=0,
            zero_copy_batch=True)
    lost = None
    try:
        for row in dataset.iter_rows():
            on_stats(ShardStats.from_row(row))
    except ray.exceptions.RayError as exc:
        cause = _cause(exc, lambda e: isinstance(e, _LOST) and not getattr(e, "actor_init_failed", False))
        if cause is None or _worker_error(exc) is not None:
            raise _failure(exc, log_dir=as_location(builder.store_path) / "logs") from exc
        lost = _lost_reason(cause)
    if lost is not None:  # raised here, not chained: the Ray error's frames would keep the pool alive
        raise WorkersLost(lost)


def restart_ray(run: RunConfig) -> None:
    """Reconnect as a new Ray job, so that the cluster ends the previous job's actors: Ray Data leaves a
    failed pool's actors to reference counting, and a survivor would keep its node's resources (an
    `actor_resources` slot) from the next attempt's actors."""
    gc.collect()
    ray.shutdown()
    start_ray(run)


def _lost_reason(exc: BaseException) -> str:
    """`ActorDiedError: The actor died unexpectedly ... (The actor is dead because its node has died.)`"""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    why = [line for line in lines[1:] if line.startswith(("The actor", "The node", "The object"))]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}" + (f" ({' '.join(why)})" if why else "")


def _is_worker_error(error: BaseException) -> bool:
    """The original `WorkerError` (Ray's `RayTaskError(WorkerError)` copy lacks its attributes)."""
    return isinstance(error, WorkerError) and not isinstance(error, ray.exceptions.RayError)


def _worker_error(exc: BaseException) -> WorkerError | None:
    """The `WorkerError` a Ray error carries: the cause of a failed task, or of an actor's failed
    creation task (an `ActorDiedError` holding a `RayTaskError`)."""
    error = _cause(exc, _is_worker_error)
    return error if isinstance(error, WorkerError) else None


def _cause(exc: BaseException, wanted: Callable[[BaseException], bool]) -> BaseException | None:
    """The first exception in `exc`'s causes (`cause`, `__cause__`, arguments: how Ray nests a failed
    task's or an actor creation's error) that is `wanted`."""
    pending, seen = [exc], set()
    while pending:
        error = pending.pop()
        if wanted(error):
            return error
        if id(error) not in seen:
            seen.add(id(error))
            pending += [c for c in (getattr(error, "cause", None), error.__cause__, *error.args)
                        if isinstance(c, BaseException)]
    return None


def _failure(exc: BaseException, *, log_dir: Path) -> ExtractionError:
    """The run's one-line error for a Ray error, the tracebacks in a log file (`logged_failure`)."""
    return logged_failure(exc, _worker_error(exc), log_dir=log_dir, root_cause=_root_cause(exc))
