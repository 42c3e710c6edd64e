"""Artifacts on disk: a directory holding ``cfg.json`` and ``tensors.safetensors``, written atomically.

Every artifact's ``cfg.json`` carries ``{"format": <kind>, "format_version": 1, ...}`` plus provenance, and
a SHA-256 of the tensor file so a truncated or edited file is detected on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import ArtifactError

FORMAT_VERSION = 1
TENSOR_FILE = "tensors.safetensors"
CFG_FILE = "cfg.json"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_texts(texts) -> str:
    """Hash of a corpus: the texts in order, each length-prefixed."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temp file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_csv_atomic(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Rows as CSV (columns in first-seen order; NaN/Inf written as empty cells), atomically."""
    import csv
    import io
    import math

    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()})
    return write_text_atomic(path, buf.getvalue())


def _json_default(o: Any) -> Any:
    if isinstance(o, (torch.dtype, torch.device, Path)):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple, range)):
        return list(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def save_artifact(path: str | os.PathLike, kind: str, tensors: dict[str, torch.Tensor], cfg: dict) -> Path:
    """Write ``tensors`` and ``cfg`` into directory ``path`` atomically (a temp dir renamed into place).

    An existing artifact directory at ``path`` is replaced only after the new one is complete.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ArtifactError(f"{path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not (path / CFG_FILE).exists():
        raise ArtifactError(f"refusing to overwrite {path}: it is a non-empty directory that is not an msma-lens artifact")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp.", dir=path.parent))
    try:
        flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(flat, str(tmp / TENSOR_FILE))
        full = {"format": kind, "format_version": FORMAT_VERSION, **cfg, "tensor_sha256": sha256_file(tmp / TENSOR_FILE)}
        write_json_atomic(tmp / CFG_FILE, full)
        if path.exists():
            old = path.with_name(f".{path.name}.old.{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_artifact(path: str | os.PathLike, kind: str, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Read an artifact written by :func:`save_artifact`, checking its kind, version and checksum."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    cfg_path, t_path = path / CFG_FILE, path / TENSOR_FILE
    if not cfg_path.is_file():
        raise ArtifactError(f"{path}: not an msma-lens artifact ({CFG_FILE} missing)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{cfg_path}: corrupt JSON ({e})") from e
    if not isinstance(cfg, dict) or cfg.get("format") != kind:
        found = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
        raise ArtifactError(f"{cfg_path}: expected a {kind!r} artifact, found format {found!r}")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{cfg_path}: unsupported format_version {cfg.get('format_version')!r} (expected {FORMAT_VERSION})")
    if not t_path.is_file():
        raise ArtifactError(f"{path}: {TENSOR_FILE} missing")
    if cfg.get("tensor_sha256") and sha256_file(t_path) != cfg["tensor_sha256"]:
        raise ArtifactError(f"{t_path}: checksum mismatch (file corrupt or modified)")
    try:
        tensors = load_file(str(t_path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{t_path}: corrupt safetensors file ({e})") from e
    return tensors, cfg
