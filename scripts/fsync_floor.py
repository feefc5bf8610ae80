#!/usr/bin/env python3
"""The disk's own floor under a durable commit: 32 KB written, then fdatasync, in a
loop, reusing the first 16 MB of the file as a WAL that starts over does.

    python3 scripts/fsync_floor.py [seconds] [directory]

With `store.synchronous_full = true` (the default) every group commit waits on one
such flush, so no publish→deliver latency percentile can beat these.
"""
import os, sys, tempfile, time

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 20
directory = sys.argv[2] if len(sys.argv) > 2 else tempfile.gettempdir()
fd, path = tempfile.mkstemp(dir=directory)
block, waits = b"x" * 32768, []
end = time.time() + seconds
try:
    while time.time() < end:
        os.write(fd, block)
        if len(waits) % 512 == 511:
            os.lseek(fd, 0, 0)
        t = time.perf_counter()
        os.fdatasync(fd)
        waits.append(time.perf_counter() - t)
finally:
    os.close(fd)
    os.unlink(path)
waits.sort()
n = len(waits)
ms = lambda q: waits[min(n - 1, int(n * q))] * 1e3
print(f"fdatasync of 32 KB, {n} in {seconds:.0f} s: p50 {ms(0.5):.3f} ms, p99 {ms(0.99):.3f} ms, "
      f"p99.9 {ms(0.999):.3f} ms, max {waits[-1] * 1e3:.1f} ms")
