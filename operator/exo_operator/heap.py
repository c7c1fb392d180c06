"""Hands the memory the operator freed back to the system.

An apply storm (hundreds of models created at once) has the watches, the API threads and
kopf's queues hold far more than the operator keeps once it settles: Python frees it, but
glibc's allocator keeps the freed pages of each thread's arena for reuse, so the resident
size stays at the storm's peak for the life of the process. `malloc_trim` returns every
free page (not only the top of the heap), a few milliseconds' work.
"""

import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from functools import cache

log = logging.getLogger(__name__)


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        function = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        function = None
    if function is None:
        log.info("no malloc_trim in this C library: freed memory stays with the process")
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def trim() -> bool:
    """Returns the allocator's free pages to the system; False where it cannot."""
    function = _malloc_trim()
    if function is None:
        return False
    function(0)
    return True
