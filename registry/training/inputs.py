"""What a run is given: the base checked, the tokenizer, the chat-template decision, the trainer rows.

Everything here runs before any model weights are loaded, so a base without a
tokenizer, chat data without a chat template, or a prompt longer than ``max_length``
fails fast, as one line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pvreg.registry.errors import NotFoundError, PreferenceDataError, TrainOptionsError
from pvreg.registry.training.data import PreferenceData, PreferencePair, Side
from pvreg.registry.training.runtime import first_line

if TYPE_CHECKING:
    from pvreg.schemas.training import TrainOptions

__all__ = ["check_base", "check_prompt_lengths", "load_tokenizer", "rows_sha256", "trainer_row", "use_chat_template"]


def trainer_row(pair: PreferencePair, *, swap: bool, chat: bool) -> dict[str, Side]:
    """The row TRL gets; plain strings become one user and one assistant turn when a chat template is used."""
    row = pair.as_row(swap=swap)
    if chat and isinstance(pair.prompt, str):
        return {
            "prompt": [{"role": "user", "content": str(row["prompt"]).strip()}],
            "chosen": [{"role": "assistant", "content": str(row["chosen"]).strip()}],
            "rejected": [{"role": "assistant", "content": str(row["rejected"]).strip()}],
        }
    return row


def rows_sha256(rows: Any) -> str:
    """sha256 of rows as canonical JSON lines: identifies exactly what a trainer consumed, in order."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def check_base(base: Path) -> Path:
    """The resolved base directory, refused unless it is a Hugging Face model directory."""
    base = base.expanduser().resolve()
    if not base.is_dir():
        raise NotFoundError(f"{base}: no such base model directory")
    if not (base / "config.json").is_file():
        raise TrainOptionsError(f"{base}: not a Hugging Face model directory (no config.json)")
    return base


def load_tokenizer(base: Path) -> Any:
    """The base's tokenizer, from local files only (training never touches the network)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(base, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise TrainOptionsError(
            f"{base}: cannot load a tokenizer from the base directory ({first_line(exc)})"
        ) from None


def use_chat_template(tokenizer: Any, data: PreferenceData, base: Path, options: TrainOptions) -> bool:
    """Whether to apply the tokenizer's chat template: chat data needs one; plain data follows the option."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if data.conversational:
        if options.chat_template == "off":
            raise TrainOptionsError(f"{data.path} holds chat messages, which need a chat template; chat_template=off")
        if not has:
            raise TrainOptionsError(f"{data.path} holds chat messages but the tokenizer of {base} has no chat template")
        return True
    if options.chat_template == "on" and not has:
        raise TrainOptionsError(f"chat_template=on but the tokenizer of {base} has no chat template")
    return has if options.chat_template == "auto" else options.chat_template == "on"


def check_prompt_lengths(
    tokenizer: Any, data: PreferenceData, pairs: list[PreferencePair], chat: bool, max_length: int
) -> None:
    """Refuse pairs TRL would silently drop: a prompt that fills ``max_length`` leaves no completion."""
    for pair in pairs:
        prompt = trainer_row(pair, swap=False, chat=chat)["prompt"]
        if isinstance(prompt, list):
            ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
            n = len(ids["input_ids"])
        else:
            n = len(tokenizer(text=prompt)["input_ids"])
        if n >= max_length:
            raise PreferenceDataError(
                f"{data.path}: row {pair.row}: the prompt is {n} tokens, which leaves no room for the completion "
                f"within max_length {max_length}; raise max_length or shorten the prompt"
            )
