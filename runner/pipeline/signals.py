"""Ctrl-C and SIGTERM during training: finish the step, save a checkpoint, stop.

A second Ctrl-C stops at once (KeyboardInterrupt); the last complete checkpoint still stands.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def graceful_stop(on_first: Callable[[str], None]) -> Iterator[threading.Event]:
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers can only be installed from the main thread
        return

    def handler(signum, frame):
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()
        name = signal.Signals(signum).name
        on_first(f"{name}: stopping after this step and saving a checkpoint (Ctrl-C again to stop at once)")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
