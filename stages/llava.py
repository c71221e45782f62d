"""LLaVA JSON records (558k pretrain, mix665k SFT): reading them, the caption rule and the prompt sources
an extraction takes from a record.

Shared by the extraction manifest (which caption conditions an image's cached features), feature serving
(which prompt sources a store can hold) and the trainer (which caption a sample carries), so all read the
same records and the same caption.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from stages.errors import UserError

__all__ = ["DataError", "load_llava_json", "first_reply", "PROMPT_TEXT", "QUESTION", "PROMPT_SOURCES"]


class DataError(UserError, ValueError):
    """A LLaVA JSON file or record that cannot be used as given."""


def load_llava_json(path: str | Path, *, error: type[Exception] = DataError) -> list[dict[str, Any]]:
    """The records of a LLaVA JSON file, unchanged: a list of objects, each with a `conversations` list.

    Any problem (missing file, bad JSON, wrong structure) raises `error` naming the file; the `image`
    entries are left to the caller (the manifest refuses bad ones one by one, the trainer rejects them).
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as fh:
            records = json.load(fh)
    except FileNotFoundError:
        raise error(f"LLaVA JSON {path} does not exist") from None
    except IsADirectoryError:
        raise error(f"LLaVA JSON {path} is a directory; name the JSON file in it") from None
    except UnicodeDecodeError as exc:  # (a ValueError, like JSONDecodeError: caught first)
        raise error(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); LLaVA JSON files are "
                    "UTF-8: convert it (e.g. `iconv -t UTF-8`)") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path} is not valid JSON: {exc}") from exc
    except OSError as exc:  # unreadable: permissions, a FIFO that errors, an I/O error
        raise error(f"LLaVA JSON {path} cannot be read: {exc.strerror or exc}") from None
    except RecursionError:  # nesting deeper than Python's JSON parser goes
        raise error(f"{path} nests JSON too deeply to be a LLaVA file") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise error(f"{path} must hold a JSON list of sample objects (LLaVA format)")
    for i, record in enumerate(records):
        if not isinstance(record.get("conversations"), list):
            raise error(f"{path}: record {i} has no 'conversations' list: {str(record)[:200]}")
    return records


def first_reply(conversations: Sequence[Mapping[str, Any]]) -> str:
    """The first assistant (`gpt`) turn, "" if none: the caption of a LLaVA-558k pretrain sample."""
    for turn in conversations:
        if isinstance(turn, Mapping) and turn.get("from") == "gpt":
            return str(turn.get("value", ""))
    return ""


# prompt source name -> the function taking its text from a LLaVA sample (an image's first sample supplies it)
PROMPT_TEXT: Mapping[str, Callable[[Mapping[str, Any]], str]] = {"caption": lambda s: first_reply(s["conversations"])}
# the prompt source given per sample when features are served, never stored: a training sample's question (its
# first human turn), an evaluation item's prompt; its X_c comes from a U-Net pass (`stages.serving.needs_unet_pass`)
QUESTION = "question"
PROMPT_SOURCES = (QUESTION, *PROMPT_TEXT)  # every source guidance may take X_c's prompt from
