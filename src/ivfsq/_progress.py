"""Progress reports of long operations (k-means, encoding, writing).

The library reports steps with :func:`report`; nothing happens unless a
caller (the command line) installed a callback with :func:`reporting`. The
callback is process-wide while installed and may be called from ivfsq's
worker threads, so it must be thread-safe (rich's progress bars are).
"""

import contextlib
import threading

_lock = threading.Lock()
_callback = None


@contextlib.contextmanager
def reporting(callback):
    """Send ``callback(stage, done, total)`` the reports made inside the block."""
    global _callback
    with _lock:
        previous, _callback = _callback, callback
    try:
        yield
    finally:
        with _lock:
            _callback = previous


def report(stage, done, total):
    """``done`` of ``total`` units of ``stage`` are finished."""
    callback = _callback
    if callback is not None:
        callback(stage, done, total)
