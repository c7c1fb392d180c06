"""The operator hands back what an apply storm made it allocate: freed memory leaves the
resident size once trimmed, instead of staying at the storm's peak."""

import subprocess
import sys
import textwrap

import pytest

# A storm in miniature, in a fresh interpreter so that nothing else shares its heap: threads
# (each with an arena of its own, as the API threads have) parse many small replies, keep one
# in fifty (as the indexes keep the objects they watch) and drop the rest.
STORM = textwrap.dedent(
    """
    import json, threading
    from exo_operator import heap

    def rss_mib():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

    kept = []
    def replies():
        parsed = [json.loads('{"status": "%s"}' % ("x" * (900 + i % 7))) for i in range(40_000)]
        kept.extend(parsed[::50])

    threads = [threading.Thread(target=replies) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    before = rss_mib()
    trimmed = heap.trim()
    print(before, rss_mib(), trimmed, len(kept))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_trim_returns_the_freed_memory_of_every_thread_to_the_system():
    out = subprocess.run(
        [sys.executable, "-c", STORM], capture_output=True, text=True, check=True
    ).stdout.split()
    before, after, trimmed = float(out[0]), float(out[1]), out[2] == "True"
    assert trimmed
    # About 150 MiB was parsed and freed; 3 MiB of it is kept.
    assert before - after > 80, (before, after)
