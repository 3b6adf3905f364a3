"""Process-wide tuning for a process that hosts a runtime: the cyclic garbage collector.

CPython 3.11 runs a young collection every 700 net allocations (``gc.get_threshold()``), and
every collection that reaches the old generation walks every live container. A runtime holds
a few dozen long-lived objects per thread actor, so at 100,000 actors the collector, not the
actors, sets the pace of activations: ``python -m bench.actors`` measured 9,100 activations/s
with the defaults and 19,000/s with a young threshold of 10,000, and bare trio tasks gain
alike (16,000/s to 35,000/s). Garbage kept between collections stays at a few MB.

``threadline serve`` calls ``tune_gc()`` at start. A program that embeds a runtime owns its
process and decides for itself; it is not called by ``open_runtime()``.
"""

from __future__ import annotations

import gc

GC_THRESHOLD = (10_000, 10, 10)


def tune_gc(threshold: tuple[int, int, int] = GC_THRESHOLD) -> None:
    """Freeze what is alive now (imports, configuration: never garbage) out of the collector's
    walks, and make young collections rarer. Process-wide; call once, at start."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*threshold)


def raise_fd_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit (one socket per
    connection: the usual soft limit of 1,024 caps a server far below what it can hold).
    Returns the new soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
