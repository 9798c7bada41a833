"""Shell command lines as the plans print them (``reproduce``, ``finetune``): quoting that keeps config literals
readable, long commands wrapped with ``\\`` continuations, and the ``pycontrast-zoo train`` command of a run."""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional, Sequence, Union

WIDTH = 110  # printed lines are wrapped to this width


def quote(word: object) -> str:
    """Shell quoting that keeps config literals readable: "('shapes_train',)" rather than shlex's escapes."""
    text = str(word)
    quoted = shlex.quote(text)
    if quoted == text or "'" not in text or any(c in text for c in '"$`\\!'):
        return quoted
    return f'"{text}"'


def join(words: Sequence[object]) -> str:
    """``words`` as one shell command line."""
    return " ".join(quote(w) for w in words)


def wrap(words: Sequence[object], pairs: Sequence[object]) -> str:
    """A shell command over several lines (``\\`` continuations; each KEY VALUE pair on one line), copy-pasteable."""
    chunks = [quote(w) for w in words] + [f"{quote(k)} {quote(v)}" for k, v in zip(pairs[::2], pairs[1::2])]
    lines, current = [], "  " + chunks[0]
    for chunk in chunks[1:]:
        if len(current) + 1 + len(chunk) > WIDTH - 2:
            lines.append(current + " \\")
            current = "      " + chunk
        else:
            current += " " + chunk
    return "\n".join(lines + [current])


def train_words(config: Union[str, Path], *, device: str, num_gpus: int, num_machines: int = 1,
                machine_rank: int = 0, dist_url: str = "auto", resume: bool = False, amp: Optional[bool] = None,
                scale_to_batch: Optional[int] = None) -> list[str]:
    """The program and options of the ``pycontrast-zoo train`` command of a run (its KEY VALUE pairs go after)."""
    words = ["pycontrast-zoo", "train", "--config", str(config), "--device", device, "--num-gpus", str(num_gpus)]
    if num_machines > 1:
        words += ["--num-machines", str(num_machines), "--machine-rank", str(machine_rank), "--dist-url", dist_url]
    if resume:
        words.append("--resume")
    if amp:
        words.append("--amp")
    if scale_to_batch:
        words += ["--scale-to-batch", str(scale_to_batch)]
    return words


__all__ = ["WIDTH", "join", "quote", "train_words", "wrap"]
