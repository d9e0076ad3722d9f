"""The C library's memory calls, glibc's malloc_trim and mallopt, for the server and the controller's informers.
A leaf, stdlib only; where the C library has no such function (musl, macOS) there is nothing to call.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def function(name: str) -> Callable[..., int] | None:
    """A function of the C library, or None on one without it (glibc has malloc_trim and mallopt; musl has not)."""
    try:
        found: Callable[..., int] = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    return found


def trim_heap() -> None:
    """Hand the allocator's free pages back to the system (glibc's malloc_trim,
    https://man7.org/linux/man-pages/man3/malloc_trim.3.html): glibc shrinks its heap only from the top, so a
    process would otherwise keep the memory of its peak."""
    trim = function("malloc_trim")
    if trim is not None:
        trim(0)
