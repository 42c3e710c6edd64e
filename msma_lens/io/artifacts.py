"""Artifacts on disk: a directory holding ``cfg.json`` and ``tensors.safetensors``, written atomically.

Every artifact's ``cfg.json`` carries ``{"format": <kind>, "format_version": 1, ...}`` plus provenance, a
SHA-256 of the tensor file (``tensor_sha256``) and a SHA-256 of the metadata itself (``cfg_sha256``), so a
truncated, corrupted or hand-edited artifact is detected on load.

JSON is written strictly (no bare ``NaN``/``Infinity``): non-finite floats become ``null``; loaders that need
them back use :func:`restore_nan`. Files and directories get the modes ``open()``/``mkdir()`` would give under
the current umask. Temp names carry the writer's pid and host tag (``.NAME.tmp.<pid>.<host>.<random>``), so the
next write to the same path removes leftovers of killed writers, never those of a live process.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import ArtifactError

FORMAT_VERSION = 1
TENSOR_FILE = "tensors.safetensors"
CFG_FILE = "cfg.json"
CFG_HASH_KEY = "cfg_sha256"
_HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


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


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (``/proc``), else set-and-restore."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_prefix(name: str, what: str = "tmp") -> str:
    return f".{name}.{what}.{os.getpid()}.{_HOST}."


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's process) or cannot tell: keep its files
    return True


def remove_stale_temps(parent: str | os.PathLike, name: str) -> list[Path]:
    """Remove temp files/dirs of ``parent/name`` left by writers on this host that are no longer running.

    Matches ``.NAME.tmp.<pid>.<host>.*`` and ``.NAME.old.<pid>.<host>`` (and the older ``.NAME.old.<pid>``).
    Entries of live processes, of other hosts (shared filesystems) and of unknown pid are left alone.
    """
    parent, removed = Path(parent), []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for e in entries:
        for what in ("tmp", "old"):
            head = f".{name}.{what}."
            if not e.name.startswith(head):
                continue
            parts = e.name[len(head):].split(".")
            if not parts[0].isdigit():
                continue
            if len(parts) >= 2 and parts[1] != _HOST:
                continue  # written on another host: its pid means nothing here
            if len(parts) == 1 and what == "tmp":
                continue  # not a name this module writes
            if _pid_alive(int(parts[0])):
                continue
            p = Path(e.path)
            try:
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
            except OSError as err:
                warnings.warn(f"could not remove stale temp {p}: {err}", stacklevel=3)
    return removed


def _write_text(path: Path, text: str, mode: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path.name), dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temp file in the same directory and an atomic rename.

    The file gets mode ``0o666 & ~umask``, as a plain ``open(path, "w")`` would.
    """
    return _write_text(Path(path), text, 0o666 & ~current_umask())


def json_clean(obj: Any) -> Any:
    """``obj`` as plain JSON data: tensors/arrays to lists, tuples/sets to lists, non-str keys to str, and
    non-finite floats (NaN, ±Infinity) to ``None`` (``null``), recursively."""
    if isinstance(obj, str) or obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {_json_key(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_clean(v) for v in obj]
    return json_clean(_json_default(obj))


def _json_key(k: Any) -> str:
    if isinstance(k, str):
        return k
    if k is None or isinstance(k, (bool, int, float)):
        return json.dumps(json_clean(k))  # json's own key spelling: true, null, 3, 1.5
    raise TypeError(f"JSON object keys must be str, int, float, bool or None, not {type(k).__name__}")


def restore_nan(obj: Any) -> Any:
    """Inverse of the NaN → ``null`` step of :func:`json_clean` for numeric data: every ``None`` becomes NaN."""
    if obj is None:
        return float("nan")
    if isinstance(obj, dict):
        return {k: restore_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [restore_nan(v) for v in obj]
    return obj


def dumps_strict(obj: Any) -> str:
    """Strict, human-readable JSON (sorted keys, indent 2); non-finite floats are written as ``null``."""
    return json.dumps(json_clean(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def cfg_digest(cfg: dict) -> str:
    """SHA-256 of the canonical JSON of ``cfg`` (sorted keys, no whitespace) without its ``cfg_sha256`` field."""
    body = {k: v for k, v in json_clean(cfg).items() if k != CFG_HASH_KEY}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=True)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as strict JSON (see :func:`dumps_strict`: NaN/±Infinity become ``null``), atomically."""
    return write_text_atomic(path, dumps_strict(obj))


def write_csv_atomic(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Rows as CSV (columns in first-seen order; NaN/Inf written as empty cells), atomically."""
    import csv
    import io

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
    if isinstance(o, (set, frozenset, tuple, range)):
        return list(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def save_artifact(path: str | os.PathLike, kind: str, tensors: dict[str, torch.Tensor], cfg: dict) -> Path:
    """Write ``tensors`` and ``cfg`` into directory ``path`` atomically (a temp dir renamed into place).

    An existing artifact directory at ``path`` is replaced only after the new one is complete. Temp dirs of
    earlier writers of ``path`` that were killed are removed first. The directory gets mode ``0o777 & ~umask``
    and its files ``0o666 & ~umask``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ArtifactError(f"{path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not (path / CFG_FILE).exists():
        raise ArtifactError(f"refusing to overwrite {path}: it is a non-empty directory that is not an msma-lens artifact")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    umask = current_umask()
    fmode, dmode = 0o666 & ~umask, 0o777 & ~umask
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path.name), dir=path.parent))
    try:
        flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(flat, str(tmp / TENSOR_FILE))
        os.chmod(tmp / TENSOR_FILE, fmode)
        full = json_clean({"format": kind, "format_version": FORMAT_VERSION, **cfg,
                           "tensor_sha256": sha256_file(tmp / TENSOR_FILE)})
        full[CFG_HASH_KEY] = cfg_digest(full)
        _write_text(tmp / CFG_FILE, dumps_strict(full), fmode)
        os.chmod(tmp, dmode)
        if path.exists():
            old = path.with_name(_tmp_prefix(path.name, "old") + os.urandom(4).hex())
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
    """Read an artifact written by :func:`save_artifact`, checking its kind, version and both checksums.

    Non-finite floats in the metadata come back as ``None`` (see :func:`restore_nan`).
    """
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
    if CFG_HASH_KEY in cfg:
        if cfg[CFG_HASH_KEY] != cfg_digest(cfg):
            raise ArtifactError(f"{cfg_path}: metadata checksum mismatch ({CFG_HASH_KEY}): the metadata was modified "
                                "after it was written (hand edits make it inconsistent with the tensors); re-create the artifact")
    else:
        warnings.warn(f"{cfg_path}: no {CFG_HASH_KEY} (written by an older msma-lens); its metadata cannot be verified",
                      stacklevel=3)
    if not t_path.is_file():
        raise ArtifactError(f"{path}: {TENSOR_FILE} missing")
    if cfg.get("tensor_sha256") and sha256_file(t_path) != cfg["tensor_sha256"]:
        raise ArtifactError(f"{t_path}: checksum mismatch (file corrupt or modified)")
    try:
        tensors = load_file(str(t_path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{t_path}: corrupt safetensors file ({e})") from e
    return tensors, cfg
