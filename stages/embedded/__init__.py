"""Embedded defaults: tiny real-architecture models and a sample dataset, built locally on first use.

Nothing here is downloaded or committed as a binary. `resolve_model("embedded:tiny-sd")` builds the
named artefact deterministically (seeded weights, safetensors, hand-written tokenizer files) into
`<home>/<name>-v<version>` and returns that directory; any other spec (a local directory or a hub id)
is returned unchanged, so callers pass the result straight to `from_pretrained`.

`<home>` is `$DFC_EMBEDDED_HOME`, else `~/.cache/diffusion-feature-cache/embedded`. A build runs in a
temporary sibling directory that is renamed into place only when complete, so a directory with the
final name is always whole, and two processes racing to build the same artefact both end up using the
one that was renamed first. Bump an artefact's `version` whenever its bytes change.

Providers register themselves on import (`register_embedded`); the modules below are imported lazily
on first use so that importing this package pulls in neither torch nor diffusers.
"""
from __future__ import annotations

import errno
import hashlib
import importlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from stages.config import ConfigError

__all__ = [
    "EMBEDDED_PREFIX",
    "MANIFEST_NAME",
    "embedded_home",
    "embedded_model",
    "register_embedded",
    "registered_names",
    "resolve_model",
    "materialize",
]

EMBEDDED_PREFIX = "embedded:"
MANIFEST_NAME = "embedded.json"
_HOME_ENV = "DFC_EMBEDDED_HOME"

# Name -> module whose import registers it. Lets `resolve_model` work without importing every provider.
_PROVIDERS = {
    "tiny-sd": "stages.embedded.sd",
    "tiny-sd15": "stages.embedded.sd_variants",
    "tiny-sd21-768": "stages.embedded.sd_variants",
    "tiny-sdxl": "stages.embedded.sdxl",
    "tiny-clip-vision": "stages.embedded.clip_vision",
    "tiny-llm": "stages.embedded.llm",
    "sample": "stages.embedded.sample",
}


@dataclass(frozen=True)
class _Entry:
    name: str
    version: int
    build_fn: Callable[[Path], None]


_REGISTRY: dict[str, _Entry] = {}


def embedded_home() -> Path:
    """Root under which embedded artefacts are materialised (read from the environment on every call)."""
    env = os.environ.get(_HOME_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "diffusion-feature-cache" / "embedded"


def register_embedded(name: str, *, version: int, build_fn: Callable[[Path], None]) -> None:
    """Make `embedded:<name>` resolvable. `build_fn(dir)` writes the artefact into an existing empty dir.

    Re-registering the same name with the same version and function is a no-op (module re-imports);
    anything else is a programming error.
    """
    entry = _Entry(name=name, version=int(version), build_fn=build_fn)
    old = _REGISTRY.get(name)
    if old is not None and (old.version, old.build_fn.__qualname__) != (entry.version, build_fn.__qualname__):
        raise ValueError(f"embedded artefact {name!r} is already registered (version {old.version})")
    _REGISTRY[name] = entry


def registered_names() -> list[str]:
    """Every name `resolve_model` accepts after `embedded:` (providers that fail to import are skipped)."""
    for name in _PROVIDERS:
        _load_provider(name)
    return sorted(_REGISTRY)


def _load_provider(name: str) -> _Entry | None:
    """Import the module that registers `name`; a provider module that does not exist yields None."""
    if name not in _REGISTRY and name in _PROVIDERS:
        try:
            importlib.import_module(_PROVIDERS[name])
        except ModuleNotFoundError as exc:
            if exc.name != _PROVIDERS[name]:
                raise  # the provider exists but one of its own imports is missing
    return _REGISTRY.get(name)


def resolve_model(spec: str) -> str:
    """`embedded:<name>` -> path of the materialised artefact (built on first use); other specs unchanged."""
    if not spec.startswith(EMBEDDED_PREFIX):
        return spec
    name = spec[len(EMBEDDED_PREFIX):]
    entry = _load_provider(name)
    if entry is None:
        valid = ", ".join(EMBEDDED_PREFIX + n for n in registered_names())
        raise ConfigError(f"unknown embedded model {spec!r}; valid: {valid}")
    target = embedded_home() / f"{entry.name}-v{entry.version}"
    return str(materialize(target, entry.build_fn))


def embedded_model(model: str | Path) -> str | None:
    """The embedded artefact `model` names — `embedded:<name>`, or a directory `materialize` built (it holds
    the manifest; named `embedded:<name>` without its version) — or None for any other weights. Embedded
    models are tiny and their weights seeded random: what they compute shows that a code path runs, never
    what a real model would give."""
    text = str(model)
    if text.startswith(EMBEDDED_PREFIX):
        return text
    path = Path(text).expanduser()
    return EMBEDDED_PREFIX + re.sub(r"-v\d+$", "", path.name) if (path / MANIFEST_NAME).is_file() else None


def _manifest(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by POSIX relative path (written last, so it marks completion)."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def materialize(target: Path, build_fn: Callable[[Path], None]) -> Path:
    """Build `target` atomically with `build_fn` unless a complete copy exists; return `target`.

    Complete means `target/embedded.json` exists. An existing empty directory is replaced; a non-empty
    one without the manifest is refused rather than overwritten.
    """
    target = Path(target)
    if (target / MANIFEST_NAME).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the artefact is meant to be shared
    try:
        build_fn(tmp)
        manifest = json.dumps(_manifest(tmp), indent=1, sort_keys=True) + "\n"
        (tmp / MANIFEST_NAME).write_text(manifest)
        try:
            os.rename(tmp, target)  # atomic; replaces `target` only if it is an empty directory
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            if not (target / MANIFEST_NAME).is_file():
                raise FileExistsError(
                    f"{target} exists, is not empty and holds no {MANIFEST_NAME}; "
                    "remove it or choose another directory") from exc
            # Lost a race with another builder: its complete copy is already in place.
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
