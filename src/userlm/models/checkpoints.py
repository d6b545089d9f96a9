"""Where a model's checkpoint is, checked before any engine loads it (``hf:`` and ``vllm:`` alike)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from ..errors import UserError


def check_source(path: str) -> None:
    """Fail fast, in one sentence, on a model that cannot be there: a mistyped folder, a folder
    without a model, or a hub id that is neither cached nor downloadable (offline)."""
    import os

    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(f"{path} is a folder but holds no model (no config.json); give the folder a model was saved to.")
        return
    if local.exists():
        raise UserError(f"{path} is a file; give the model's folder (or a hub id such as microsoft/UserLM-8b).")
    looks_local = path.startswith(("/", "./", "../", "~")) or path.count("/") > 1 or (
        "/" in path and Path(path.split("/", 1)[0]).is_dir())
    if looks_local:
        raise UserError(f"{path}: no such model folder; check the path.")
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(path, "config.json")
    if isinstance(cached, str):
        return
    if constants.HF_HUB_OFFLINE or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        raise UserError(f"hf:{path}: no such model folder here, and not in the local hub cache (offline mode); download it "
                        f"first (hf download {path}) or give a local folder.")
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    if not _reachable(host):
        raise UserError(f"hf:{path}: no such model folder here, not in the local hub cache, and {host} cannot be reached; "
                        f"check the name, download it first (hf download {path}), or give a local folder.")


def _reachable(host: str, timeout_s: float = 5.0) -> bool:
    """Whether ``host`` resolves within ``timeout_s`` (a machine without network fails at once or times out)."""
    import socket
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as Timeout

    pool = ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(socket.getaddrinfo, host, 443).result(timeout=timeout_s)
        return True
    except (OSError, Timeout):
        return False
    finally:
        pool.shutdown(wait=False)
