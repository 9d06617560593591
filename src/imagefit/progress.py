"""Progress bars and terminal-safe text. Bars go to stderr and can be switched off (`--quiet`)."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True,
                 initial: int = 0) -> tqdm:
    """A tqdm bar on stderr; a disabled bar accepts the same calls and prints nothing."""
    # Bars only on a terminal: in logs and CI they are noise.
    return tqdm(total=total, desc=desc, unit=unit, disable=not (enabled and sys.stderr.isatty()),
                file=sys.stderr, initial=initial,
                leave=False, dynamic_ncols=True, mininterval=0.5)


def printable(text: str) -> str:
    """Escape control characters (terminal escape sequences in file names) for printing."""
    return "".join(ch if ch.isprintable() or ch == " " else repr(ch)[1:-1] for ch in str(text))
