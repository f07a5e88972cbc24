"""Failing fast without the Hugging Face Hub.

Without a network, huggingface_hub retries each request for tens of seconds before giving up. One
quick connection attempt before anything is loaded tells whether the Hub is reachable; if not, the
process switches to offline mode, where cached models and datasets still load and anything else
fails at once with a clear message.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from runner.errors import FinetuneError

TRUE = ("1", "true", "yes", "on")


def is_offline() -> bool:
    return any(os.environ.get(name, "").lower() in TRUE for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def go_offline_if_unreachable(timeout: float = 3.0) -> str | None:
    """Set HF_HUB_OFFLINE=1 when the Hub cannot be reached; return a note saying so.

    Must run before huggingface_hub is imported: it reads the variable once, at import."""
    if is_offline():
        return None
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout).close()
        return None
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        return f"{url.hostname} is unreachable: working offline (only cached Hub models and datasets load)"


def hub_load_error(what: str, path: str, exc: Exception) -> FinetuneError:
    """One clear message for a model, tokenizer or config that could not be loaded by id or path."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if is_offline() and not os.path.isdir(path):
        return FinetuneError(
            f"cannot load {what} '{path}': working offline and it is not in the local cache",
            hint="run once with network access to cache it, or point `path` at a local directory",
        )
    return FinetuneError(f"cannot load {what} '{path}': {reason}")
