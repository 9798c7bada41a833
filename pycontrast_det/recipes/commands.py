"""Shell command lines as the plans print them (``reproduce``, ``finetune``): quoting that keeps config literals
readable, and long commands wrapped with ``\\`` continuations (a run's ``pycontrast-zoo train`` words:
:meth:`pycontrast_det.engine.run_options.RunOptions.train_words`)."""
from __future__ import annotations

import shlex
from typing import Sequence

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


__all__ = ["WIDTH", "join", "quote", "wrap"]
