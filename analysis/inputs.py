"""Which images an analysis looks at: keys and captions of a LLaVA JSON (default: the bundled sample's pretrain
file), and each image as the backbone sees it (preprocessed per the extraction spec), for figures."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from stages.config import ConfigError
from stages.llava import first_reply, load_llava_json
from stages.locations import is_sample_data, resolve_sample_data
from stages.preprocess import ImageSpec
from stages.serving import load_images

__all__ = ["DEFAULT_DATA", "ImageSet", "image_set", "view"]

DEFAULT_DATA = "embedded:sample-pretrain"


@dataclass(frozen=True)
class ImageSet:
    image_root: Path
    keys: tuple[str, ...]
    captions: tuple[str, ...]  # the first reply of each image's first sample (the LLaVA caption rule)


def image_set(data: str = DEFAULT_DATA, *, image_root: str | Path | None = None, keys: Sequence[str] | None = None,
              limit: int | None = None) -> ImageSet:
    """The images of `data` (a bundled-sample name or a LLaVA JSON with `image_root`): the given `keys` (each
    must be in the data), else the first `limit` (all when None), in file order."""
    if is_sample_data(data):
        paths, root = resolve_sample_data(data)
    elif image_root is None:
        raise ConfigError(f"data {data!r} is a file: also give --image-root, the folder its image keys are under")
    else:
        paths, root = [Path(data)], Path(image_root)
    captions: dict[str, str] = {}
    for path in paths:
        for record in load_llava_json(path):
            if isinstance(record.get("image"), str):
                captions.setdefault(record["image"], first_reply(record["conversations"]))
    if keys:
        unknown = [k for k in keys if k not in captions]
        if unknown:
            raise ConfigError(f"keys {unknown} are not images of {data}; e.g. {list(captions)[:3]}")
        chosen = list(keys)
    else:
        chosen = list(captions)[:limit]
    if not chosen:
        raise ConfigError(f"{data} holds no images")
    return ImageSet(image_root=Path(image_root or root), keys=tuple(chosen),
                    captions=tuple(captions[k] for k in chosen))


def view(image_root: Path, key: str, spec: ImageSpec) -> np.ndarray:
    """`(R, R, 3)` uint8: the image as a backbone receives it (`image_spec_for(cache_spec)`: padded or
    cropped, resized)."""
    return load_images(image_root, [key], spec)[0]
