"""Model loading: the embedded offline models, Hugging Face ids/paths, and tiny random models for tests.

``load_model`` always returns a TransformerLens model (a ``TransformerBridge`` on TL 3.x/4.x, or a
``HookedTransformer`` on TL 2.x/3.x when ``backend="hooked"``) with ``msma_model_id`` set. Nothing here
downloads silently: when a hub is needed and unreachable the error says so and lists the offline names.
The offline names (packages, split GGUF parts, pinned hashes, licences) live in :mod:`msma_lens.io.registry`; a GGUF
model is reassembled and verified once, dequantised to fp32 and cached as safetensors under :func:`cache_dir`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import tl
from ..errors import ConfigError, ModelLoadError
from ..guard import KV_POLICIES, guard_generation
from ..io.artifacts import current_umask, sha256_file, write_json_atomic
from ..io.hub import hub_offline, hub_reachable
from ..io.registry import REGISTRY, OfflineModel, assemble_gguf, get_model_spec, pip_command

DEFAULT_MODEL = "smollm2-135m"

# name -> one-line description; the full entries (packages, hashes, licences) are in msma_lens.io.registry
OFFLINE_MODELS: dict[str, str] = {name: spec.description for name, spec in REGISTRY.items()}
BACKENDS = ("auto", "bridge", "hooked")


def cache_dir() -> Path:
    """User cache for converted weights and tokenizers (``$MSMA_LENS_CACHE`` or ``~/.cache/msma-lens``)."""
    root = os.environ.get("MSMA_LENS_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "msma-lens")
    return Path(root)


def list_models() -> list[dict]:
    """Offline names with availability, whether a converted copy is cached, licence, weights note and install command."""
    rows = []
    for name, spec in REGISTRY.items():
        missing = spec.missing()
        lic = spec.licence_path()
        rows.append({"name": name, "description": spec.description, "available": not missing,
                     "cached": (cache_dir() / name / "manifest.json").is_file() if spec.kind == "gguf" else None,
                     "install": None if not missing else pip_command(spec.packages),
                     "missing_packages": [p.dist for p in missing], "packages": spec.requirements,
                     "licence": spec.licence, "licence_file": str(lic) if lic else None, "weights": spec.weights,
                     "n_layers": spec.n_layers, "d_model": spec.d_model, "architecture": spec.architecture, "notes": spec.notes})
    return rows


def ensure_architectures(hf: Any) -> Any:
    """Set ``config.architectures`` from the model class when missing (GGUF configs carry none; the bridge needs it)."""
    if not getattr(hf.config, "architectures", None):
        hf.config.architectures = [type(hf).__name__]
    return hf


def available_backends() -> list[str]:
    """Backends the installed TransformerLens offers: ``bridge`` (TL >= 3) and/or ``hooked`` (TL < 4)."""
    major = tl.tl_major()
    return [b for b, ok in (("bridge", major >= 3), ("hooked", major < 4)) if ok]


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; valid: {list(BACKENDS)}")
    major = tl.tl_major()
    if backend == "auto":
        return "bridge" if major >= 3 else "hooked"
    if backend == "bridge" and major < 3:
        raise ConfigError(f"TransformerBridge needs TransformerLens >= 3, installed: {tl.tl_version()}")
    if backend == "hooked" and major >= 4:
        raise ConfigError(f"HookedTransformer was removed in TransformerLens 4 (installed: {tl.tl_version()}); use backend='bridge'")
    return backend


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}
    if dtype not in table:
        raise ConfigError(f"unknown dtype {dtype!r}; valid: {sorted(table)}")
    return table[dtype]


def load_model(name_or_path: str = DEFAULT_MODEL, *, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None,
               backend: str = "auto", seed: int = 0, n_layers: int | None = None, d_model: int | None = None,
               kv_check: str = "fallback", progress: bool = True) -> Any:
    """Load a model by offline name, Hugging Face id, local directory or ``.gguf`` path.

    ``backend``: ``"bridge"`` (TransformerBridge, TL >= 3), ``"hooked"`` (HookedTransformer, TL < 4) or
    ``"auto"``. ``seed``/``n_layers``/``d_model`` apply to the tiny random models only. ``kv_check``: the
    KV-cache self-check run on every load (:func:`msma_lens.guard.guard_generation`): ``"fallback"`` switches a
    model whose cached decoding is broken to uncached decoding with a warning, ``"error"`` raises, ``"off"`` skips.
    ``progress``: show the one-time reassembly bar of split GGUFs. Offline GGUF models set ``msma_weights`` (what
    the weights are: quantised, dequantised to fp32) for provenance.
    """
    if kv_check not in KV_POLICIES:
        raise ConfigError(f"kv_check must be one of {list(KV_POLICIES)}, got {kv_check!r}")
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ConfigError(f"model name must be a non-empty string, got {name_or_path!r}")
    be = _resolve_backend(backend)
    dt = _dtype(dtype)
    local = name_or_path in OFFLINE_MODELS or name_or_path.endswith(".gguf") or Path(name_or_path).exists()
    with hub_offline() if local else contextlib.nullcontext():
        model = _load(name_or_path, be, seed=seed, n_layers=n_layers, d_model=d_model, progress=progress)
    model.msma_model_id = name_or_path
    spec = REGISTRY.get(name_or_path)
    model.msma_weights = spec.weights if spec is not None else None
    model.eval()
    if str(device) != "cpu":
        model = model.to(torch.device(device))
    if dt != torch.float32:
        model = model.to(dt)  # separate calls: HookedTransformer 2.x's .to() takes no keywords
    guard_generation(model, kv_check)
    return model


_CAUSAL = [n for n, s in REGISTRY.items() if s.kind in ("gguf", "random") and s.causal]


def load_hf_model(name: str = DEFAULT_MODEL, *, seed: int = 0, n_layers: int | None = None,
                  d_model: int | None = None, progress: bool = True) -> tuple[Any, Any]:
    """A fresh Hugging Face ``(model, tokenizer)`` with the same weights as ``load_model(name)``; no TransformerLens.

    The independent oracle for the TransformerLens paths: Hugging Face's own ``generate`` and forward pass on
    the weights the lens sees. Offline causal-LM names only (the GGUF models and ``tiny-gpt2``/``tiny-llama``; not ``tiny-bert``).
    """
    if name not in _CAUSAL:
        raise ConfigError(f"load_hf_model takes an offline causal-LM name ({_CAUSAL}), got {name!r}")
    with hub_offline():
        if REGISTRY[name].kind == "random":
            hf, tok, _ = _tiny_hf(name, seed=seed, n_layers=n_layers or 4, d_model=d_model or 64)
        else:
            hf, tok, _ = gguf_hf(name, progress=progress)
    return hf, tok


def _load(name_or_path: str, be: str, *, seed: int, n_layers: int | None, d_model: int | None, progress: bool) -> Any:
    spec = REGISTRY.get(name_or_path)
    if spec is not None and not spec.causal and be == "hooked":  # the BERT-style encoders (MiniLM, tiny-bert)
        raise ConfigError(f"{name_or_path} is available through TransformerBridge only (backend='bridge', TL >= 3)")
    if spec is not None and spec.kind == "random":
        model = _load_tiny(name_or_path, be, seed=seed, n_layers=n_layers or 4, d_model=d_model or 64)
    elif spec is not None and spec.kind == "gguf":
        hf, tok, local = gguf_hf(name_or_path, progress=progress)
        model = _wrap_hf(hf, tok, local, be, name_or_path)
    elif spec is not None and spec.kind == "encoder":
        from transformer_lens.model_bridge import TransformerBridge

        local = str(spec.part_paths()[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = TransformerBridge.boot_transformers(local, device="cpu")
    elif name_or_path.endswith(".gguf") or Path(name_or_path).exists():
        model = _load_local(name_or_path, be)
    elif "/" in name_or_path:
        model = _load_hub(name_or_path, be)
    else:
        raise ModelLoadError(f"unknown model {name_or_path!r}: not an offline name, a local path or a Hugging Face id "
                             f"(owner/name). Offline names: {list(OFFLINE_MODELS)}")
    return model


# ----- offline GGUF models: (parts ->) GGUF -> cached safetensors ------------------------------------------
def gguf_hf(name: str, *, progress: bool = True) -> tuple[Any, Any, str]:
    """The HF model and tokenizer of an offline GGUF model, converted once and cached as safetensors.

    Split GGUFs are reassembled into ``<cache>/gguf/`` and verified against the pinned sha256 first
    (:func:`msma_lens.io.registry.assemble_gguf`). A cached conversion whose manifest or weights hash does not
    match is converted again, with a warning. Returns ``(model, tokenizer, cache directory)``.
    """
    from safetensors.torch import load_model as st_load
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = get_model_spec(name)
    if spec.kind != "gguf":
        raise ConfigError(f"{name!r} is not an offline GGUF model")
    spec.require()
    target = cache_dir() / name
    manifest = target / "manifest.json"
    if manifest.is_file():
        try:
            info = json.loads(manifest.read_text())
            ok = (info.get("gguf_size") == _expected_gguf_size(spec) and info.get("gguf_sha256", spec.sha256) == spec.sha256
                  and sha256_file(target / "model.safetensors") == info.get("model_sha256"))
        except (OSError, json.JSONDecodeError):
            ok = False
        if not ok:
            warnings.warn(f"cached {spec.label} conversion at {target} failed its integrity check; converting again", stacklevel=3)
            shutil.rmtree(target, ignore_errors=True)
    if not manifest.is_file():
        gguf = assemble_gguf(spec, cache_dir() / "gguf", progress=progress)
        convert_gguf(spec, gguf, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # from_pretrained skips the random initialisation that from_config does (15 s for Gemma); fall back to
        # from_config + a strict safetensors load if any weight did not come from the file
        model, info = AutoModelForCausalLM.from_pretrained(str(target), local_files_only=True, dtype=torch.float32,
                                                           output_loading_info=True)
        if info.get("missing_keys") or info.get("unexpected_keys") or info.get("mismatched_keys"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(target), local_files_only=True), dtype=torch.float32)
            st_load(model, str(target / "model.safetensors"))
        tok = AutoTokenizer.from_pretrained(str(target), local_files_only=True)
    return ensure_architectures(model).eval(), tok, str(target)


def _expected_gguf_size(spec: OfflineModel) -> int:
    return spec.size if spec.size is not None else spec.part_paths()[0].stat().st_size


def convert_gguf(spec: OfflineModel, gguf: Path, target: Path) -> None:
    """Dequantise ``gguf`` into ``target`` (safetensors, config with ``architectures``, tokenizer, manifest).

    Announces itself on stderr with the expected time (and peak memory) first; transformers shows a tensor bar.
    """
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    mem = f", peak ~{spec.peak_gb:g} GB RAM" if spec.peak_gb else ""
    print(f"msma-lens: converting {spec.label} GGUF to safetensors once (~{spec.convert_s} s{mem}) into {target}",
          file=sys.stderr, flush=True)
    t0 = time.time()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=target.parent))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        save_model(model, str(tmp / "model.safetensors"))
        cfg = ensure_architectures(model).config.to_dict()
        cfg.pop("quantization_config", None)
        write_json_atomic(tmp / "config.json", cfg)
        tok.save_pretrained(str(tmp))
        write_json_atomic(tmp / "manifest.json", {
            "model": spec.name, "upstream": spec.upstream, "packages": spec.requirements, "source": str(gguf),
            "gguf_size": gguf.stat().st_size, "gguf_sha256": spec.sha256, "weights": spec.weights,
            "licence": spec.licence, "model_sha256": sha256_file(tmp / "model.safetensors"),
            "converted_in_s": round(time.time() - t0, 1)})
        del model
        mode = 0o666 & ~current_umask()
        for f in tmp.iterdir():
            os.chmod(f, mode)
        os.chmod(tmp, mode | 0o111 & ~current_umask())  # mkdtemp makes 0700
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----- wrapping an HF model ------------------------------------------------------------------------------
def _wrap_hf(hf: Any, tok: Any, local_dir: str, backend: str, name: str) -> Any:
    if backend == "bridge":
        from transformer_lens.model_bridge import TransformerBridge

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return TransformerBridge.boot_transformers(local_dir, hf_model=ensure_architectures(hf), tokenizer=tok, device="cpu")
    return _hooked_from_hf(hf, tok, name)


def _hooked_from_hf(hf: Any, tok: Any, name: str) -> Any:
    """HookedTransformer from an HF Llama/GPT-2 model without the hub (TL 2.x/3.x)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    c = hf.config
    arch = type(hf).__name__
    if arch.startswith("Llama"):
        from transformer_lens.pretrained.weight_conversions import convert_llama_weights

        cfg = HookedTransformerConfig(
            d_model=c.hidden_size, d_head=c.hidden_size // c.num_attention_heads, n_heads=c.num_attention_heads,
            d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers, n_ctx=min(c.max_position_embeddings, 8192),
            d_vocab=c.vocab_size, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
            rotary_dim=c.hidden_size // c.num_attention_heads, rotary_base=getattr(c, "rope_theta", None) or _rope_theta(c),
            final_rms=True, gated_mlp=True, eps=c.rms_norm_eps, n_key_value_heads=c.num_key_value_heads,
            rotary_adjacent_pairs=False, original_architecture="LlamaForCausalLM", model_name=name,
        )
        sd = convert_llama_weights(hf, cfg)
    elif arch.startswith("GPT2"):
        from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

        cfg = HookedTransformerConfig(
            d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head, d_mlp=4 * c.n_embd, n_layers=c.n_layer,
            n_ctx=c.n_positions, d_vocab=c.vocab_size, act_fn="gelu_new", normalization_type="LN", eps=c.layer_norm_epsilon,
            original_architecture="GPT2LMHeadModel", model_name=name,
        )
        sd = convert_gpt2_weights(hf, cfg)
    else:
        raise ConfigError(f"backend='hooked' supports Llama and GPT-2 architectures offline, not {arch}")
    model = HookedTransformer(cfg, tokenizer=tok)
    model.load_and_process_state_dict(sd, fold_ln=False, center_writing_weights=False, center_unembed=False)
    return model


def _rope_theta(c: Any) -> float:
    rp = getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {}
    return float(rp.get("rope_theta", 10000.0)) if isinstance(rp, dict) else 10000.0


# ----- local paths and hub ids ---------------------------------------------------------------------------
def _load_local(path: str, backend: str) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model path {path!r} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if p.suffix == ".gguf":
                tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
                hf = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
                # the bridge reads the architecture from a config directory: one per GGUF file, in the cache
                key = hashlib.sha256(f"{p.resolve()}:{p.stat().st_size}".encode()).hexdigest()[:16]
                local = str(cache_dir() / "gguf-configs" / key)
                cfg = ensure_architectures(hf).config.to_dict()
                cfg.pop("quantization_config", None)
                write_json_atomic(Path(local) / "config.json", cfg)
            else:
                if backend == "bridge":
                    from transformer_lens.model_bridge import TransformerBridge

                    return TransformerBridge.boot_transformers(str(p), device="cpu")
                tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
                hf = AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True, dtype=torch.float32)
                local = str(p)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load model from {path!r}: {e}") from e
    return _wrap_hf(hf.eval(), tok, local, backend, str(p))


def _load_hub(model_id: str, backend: str) -> Any:
    from transformers import AutoConfig

    try:  # already in the local HF cache?
        AutoConfig.from_pretrained(model_id, local_files_only=True)
        in_cache = True
    except (OSError, ValueError):
        in_cache = False
    if not in_cache and not hub_reachable(f"api/models/{model_id}"):
        raise ModelLoadError(f"model {model_id!r} is not in the local Hugging Face cache and the hub is unreachable "
                             f"(offline). Offline names: {list(OFFLINE_MODELS)}; or pass a local directory or .gguf path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if backend == "bridge":
                from transformer_lens.model_bridge import TransformerBridge

                return TransformerBridge.boot_transformers(model_id, device="cpu")
            from transformer_lens import HookedTransformer

            return HookedTransformer.from_pretrained(model_id, device="cpu")
    except OSError as e:
        raise ModelLoadError(f"cannot load {model_id!r} from the hub: {e}. Offline names: {list(OFFLINE_MODELS)}") from e


# ----- tiny random models --------------------------------------------------------------------------------
_TOKENIZER_TEXT = (
    "The quick brown fox jumps over the lazy dog. A model reads words, sentences and whole documents. "
    "Rain fell on the city while the market opened. Mix the flour with water, then bake it for twenty minutes. "
    "She asked why the train was late! The team won the match and the crowd cheered loudly. "
    "Prices rose again this week, and investors worried about the bank. Birds sing at dawn in spring. "
)


def _cached_tokenizer(name: str, build: Callable[[], Any]) -> Any:
    """The tokenizer cached under ``<cache>/tokenizers/name``, made by ``build()`` (a ``PreTrainedTokenizerFast``) once
    and saved atomically; always reloaded from disk (TransformerLens reloads tokenizers by ``name_or_path``)."""
    from transformers import AutoTokenizer

    d = cache_dir() / "tokenizers" / name
    if not (d / "tokenizer.json").is_file():
        fast = build()
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=d.parent))
        fast.save_pretrained(str(tmp))
        # transformers 5 writes "TokenizersBackend", which transformers 4 (TL 2.x) cannot load
        tc = json.loads((tmp / "tokenizer_config.json").read_text())
        tc["tokenizer_class"] = "PreTrainedTokenizerFast"
        write_json_atomic(tmp / "tokenizer_config.json", tc)
        try:
            os.replace(tmp, d)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    return AutoTokenizer.from_pretrained(str(d), local_files_only=True)


def tiny_tokenizer() -> Any:
    """A small byte-level BPE tokenizer (vocab 512) built offline, saved in the cache and reloaded from disk."""

    def build() -> Any:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast

        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<|bos|>", "<|eos|>", "<|pad|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tk.train_from_iterator([_TOKENIZER_TEXT] * 4, trainer=trainer)
        return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>")

    return _cached_tokenizer("tiny-bpe-512-v2", build)


def tiny_wordpiece_tokenizer() -> Any:
    """A small BERT-style WordPiece tokenizer (fixed vocabulary: characters, "##" characters and the words of a short
    text; lower-cased; ``[CLS] text [SEP]``) built offline and cached."""

    def build() -> Any:
        import re

        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast

        # a fixed vocabulary, not a trained one: WordPiece training orders the "##" pieces differently from one
        # process to the next, which would change which embedding row a token gets under the same seed
        chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
        words = sorted(set(re.findall(r"[a-z]+", _TOKENIZER_TEXT.lower())))
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars if c.isalnum()), *words]
        tk = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
        tk.normalizer = normalizers.BertNormalizer(lowercase=True)
        tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tk.decoder = decoders.WordPiece()
        tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                          special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                       sep_token="[SEP]", mask_token="[MASK]")

    return _cached_tokenizer("tiny-wordpiece-v2", build)


# Untied embeddings and a wider initialisation than HF's 0.02: with the defaults, a random model's residual stream
# is its input embedding and greedy decoding repeats the last prompt token forever, so generation tests (KV-cache
# parity, the Hugging Face oracle) could not tell a correct decoder from a broken one.
_TINY_INIT = 0.1


def _tiny_hf(name: str, *, seed: int, n_layers: int, d_model: int) -> tuple[Any, Any, str]:
    """The Hugging Face model behind a tiny random model, its tokenizer and its config directory."""
    if n_layers < 1 or d_model < 8 or d_model % 4:
        raise ConfigError(f"tiny models need n_layers >= 1 and d_model a multiple of 4 (>= 8), got {n_layers}, {d_model}")
    tok = tiny_wordpiece_tokenizer() if name == "tiny-bert" else tiny_tokenizer()
    V = len(tok)
    torch.manual_seed(seed)
    if name == "tiny-bert":
        from transformers import BertConfig, BertForMaskedLM

        cfg = BertConfig(hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=4, intermediate_size=2 * d_model,
                         vocab_size=V, max_position_embeddings=1024, initializer_range=_TINY_INIT,
                         pad_token_id=tok.pad_token_id, architectures=["BertForMaskedLM"],
                         attn_implementation="eager")  # as the bridge loads BERT itself: TL 3.x hooks no SDPA pattern
        hf = BertForMaskedLM(cfg)
    elif name == "tiny-gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(n_layer=n_layers, n_embd=d_model, n_head=4, vocab_size=V, n_positions=1024,
                         initializer_range=_TINY_INIT, tie_word_embeddings=False,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        hf = GPT2LMHeadModel(cfg)
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=V, max_position_embeddings=1024, tie_word_embeddings=False,
                          initializer_range=_TINY_INIT,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        hf = LlamaForCausalLM(cfg)
    # the bridge reads the architecture from a local config directory; keep one per (name, shape)
    key = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]
    local = cache_dir() / "tiny" / f"{name}-{key}"
    if not (local / "config.json").is_file():
        cfg.save_pretrained(str(local))
    return hf.eval(), tok, str(local)


def _load_tiny(name: str, backend: str, *, seed: int, n_layers: int, d_model: int) -> Any:
    hf, tok, local = _tiny_hf(name, seed=seed, n_layers=n_layers, d_model=d_model)
    return _wrap_hf(hf, tok, local, backend, name)
