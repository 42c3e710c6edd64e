"""Hugging Face hub access: a fast reachability probe and an offline scope. Nothing here may hang."""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator


def env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(resource: str = "", timeout: float = 3.0) -> bool:
    """Whether the hub answers an HTTP request for ``resource`` (e.g. ``api/models/gpt2``) within ``timeout`` s.

    Any HTTP status counts as an answer. The probe runs in a daemon thread so neither a hanging DNS lookup nor
    a silent server blocks the caller; a bare TCP connect is not enough (captive proxies accept everything).
    Returns False at once when ``HF_HUB_OFFLINE`` is set.
    """
    if env_true("HF_HUB_OFFLINE"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/{urllib.parse.quote(resource, safe='/')}"
    answered: list[bool] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
                pass
            answered.append(True)
        except urllib.error.HTTPError:  # the server replied (404, 401, ...)
            answered.append(True)
        except (OSError, ValueError):  # DNS, refused, TLS, timeout, malformed endpoint
            pass

    t = threading.Thread(target=probe, name="msma-hub-probe", daemon=True)
    t.start()
    t.join(timeout)
    return bool(answered)


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Treat the hub as offline inside the block, so loading local files never probes the network."""
    import huggingface_hub.constants as hc

    saved_env = os.environ.get("HF_HUB_OFFLINE")
    saved = hc.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hc.HF_HUB_OFFLINE = True
    th = importlib.import_module("transformers.utils.hub")
    saved_th = getattr(th, "_is_offline_mode", None)
    if saved_th is not None:
        th._is_offline_mode = True
    try:
        yield
    finally:
        hc.HF_HUB_OFFLINE = saved
        if saved_th is not None:
            th._is_offline_mode = saved_th
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env
