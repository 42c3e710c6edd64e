"""Generation against independent oracles: Hugging Face's own ``generate`` and forward pass on the same weights,
and KV-cached vs uncached decoding step by step; plus the runtime KV guard (msma_lens.guard)."""

import pytest
import torch

from msma_lens import MSMA
from msma_lens import tl as _tl
from msma_lens.errors import ConfigError, KVCacheError
from msma_lens.guard import check_kv_cache, guard_generation, kv_cache_usable
from msma_lens.io.models import load_hf_model, load_model

PROMPTS = ["Rain fell on the city while the market", "She asked why the train was late", "Mix the flour with water, then"]
N_NEW = 12


def _hf_greedy(hf, tok, ids: torch.Tensor, n: int) -> list[int]:
    """Hugging Face's own greedy decoding (KV cache on), cut at the first EOS."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, pad_token_id=pad)
    return _cut(out[0, ids.shape[1]:].tolist(), tok.eos_token_id)


def _cut(ids: list[int], eos: int | None) -> list[int]:
    return ids[: ids.index(eos)] if eos is not None and eos in ids else ids


def _check_against_hf(model, name: str, prompts=PROMPTS, n: int = N_NEW) -> None:
    hf, tok = load_hf_model(name)
    lens = MSMA(model)
    eos = tok.eos_token_id
    for p in prompts:
        ids = model.to_tokens(p)  # BOS included: the exact ids every path gets
        assert ids[0, 0].item() == tok.bos_token_id
        want = _hf_greedy(hf, tok, ids, n)
        assert len(want) >= 4, f"HF stopped after {len(want)} tokens for {p!r}: a weak oracle"
        # TransformerLens's own generate (KV cache on), past any fallback the guard may have installed on the instance
        raw = _tl.original_generate(model)
        direct = raw(ids, max_new_tokens=n, do_sample=False, verbose=False, return_type="tokens")
        assert _cut(direct[0, ids.shape[1]:].tolist(), eos) == want, f"model.generate differs from HF for {p!r}"
        res = lens.generate([p], max_new_tokens=n, do_sample=False)
        assert res.generated[0] == want, f"lens.generate differs from HF for {p!r}"
        assert res.tokens[0, : ids.shape[1]].tolist() == ids[0].tolist()


def _check_logits(model, name: str, atol: float) -> None:
    """KV-cached logits == uncached logits at each of the first 4 decoding steps, and both == HF's forward."""
    hf, _ = load_hf_model(name)
    for p in PROMPTS:
        ids = model.to_tokens(p)
        cached, uncached, seq = _tl.kv_decoding_logits(model, ids, 4)
        assert cached.shape[1] == 4
        with torch.no_grad():
            ref = hf(seq, attention_mask=torch.ones_like(seq)).logits[:, ids.shape[1] - 1: ids.shape[1] + 3].float()
        for step in range(4):
            torch.testing.assert_close(cached[:, step], uncached[:, step], atol=atol, rtol=0, msg=f"step {step}")
            torch.testing.assert_close(uncached[:, step], ref[:, step], atol=atol, rtol=0, msg=f"HF step {step}")


def test_greedy_generation_equals_hugging_face(tiny_model):
    _check_against_hf(tiny_model, tiny_model.msma_model_id)


def test_kv_cached_logits_equal_uncached_and_hugging_face(tiny_model):
    _check_logits(tiny_model, tiny_model.msma_model_id, atol=1e-4)


def test_oracle_is_sensitive_tiny_models_do_not_just_repeat(tiny_model):
    """The tiny models are non-degenerate: greedy text is not one repeated token, so a broken cache shows."""
    hf, tok = load_hf_model(tiny_model.msma_model_id)
    outs = [_hf_greedy(hf, tok, tiny_model.to_tokens(p), N_NEW) for p in PROMPTS]
    assert all(len(set(o)) >= 3 for o in outs), outs


@pytest.mark.slow
@pytest.mark.oracle
def test_smollm2_greedy_generation_equals_hugging_face(smollm2):
    _check_against_hf(smollm2, "smollm2-135m", prompts=["The capital of France is", *PROMPTS[:2]], n=16)


@pytest.mark.slow
@pytest.mark.oracle
def test_smollm2_kv_cached_logits_equal_uncached_and_hugging_face(smollm2):
    _check_logits(smollm2, "smollm2-135m", atol=2e-3)  # |logit| ~ 30; bridge eager vs HF sdpa ~ 5e-5


@pytest.mark.slow
@pytest.mark.oracle
def test_smollm2_answers_paris(smollm2):
    res = MSMA(smollm2).generate(["The capital of France is"], max_new_tokens=6)
    assert "Paris" in res.texts[0] and "---" not in res.texts[0], res.texts[0]
    assert smollm2.msma_kv_check.ok is True


# ----- the runtime guard -------------------------------------------------------------------------------------
def _break_kv_cache(model) -> torch.utils.hooks.RemovableHandle:
    """Simulate the transformers 5.24 breakage: cached decoding steps (one new position) get corrupted logits."""
    junk = 7

    def hook(mod, args, out):
        if out.shape[1] == 1:
            out = out.clone()
            out[..., junk] += 1e3
        return out

    return model.unembed.register_forward_hook(hook)


def test_guard_passes_on_the_locked_versions(tiny_model):
    check = tiny_model.msma_kv_check  # run by load_model
    assert check.ok is True and check.steps == 3 and check.max_abs_diff < 1e-4, check
    assert check.versions["transformers"] and check.versions["transformer_lens"] == _tl.tl_version()
    assert kv_cache_usable(tiny_model)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_guard_detects_a_broken_cache_and_falls_back(name):
    from msma_lens.io.models import available_backends

    be = available_backends()[0]
    hf, tok = load_hf_model(name)
    ids = load_model(name, backend=be, kv_check="off").to_tokens(PROMPTS[0])
    want = _hf_greedy(hf, tok, ids, N_NEW)

    unguarded = load_model(name, backend=be, kv_check="off")
    handle = _break_kv_cache(unguarded)
    bad = unguarded.generate(ids, max_new_tokens=N_NEW, do_sample=False, verbose=False, stop_at_eos=False)
    assert bad[0, ids.shape[1] + 1:].tolist() == [7] * (N_NEW - 1)  # the simulation really corrupts generation
    handle.remove()

    model = load_model(name, backend=be, kv_check="off")
    _break_kv_cache(model)
    check = check_kv_cache(model)
    assert check.ok is False and check.max_abs_diff > 100 and "FAILED" in str(check)
    with pytest.warns(RuntimeWarning, match=r"transformer-lens \S+ \+ transformers \S+ corrupt cached generation"):
        guard_generation(model, "fallback")
    assert not kv_cache_usable(model)
    with pytest.warns(RuntimeWarning, match="decoding without it"):
        out = model.generate(ids, max_new_tokens=N_NEW, do_sample=False, verbose=False)
    assert _cut(out[0, ids.shape[1]:].tolist(), tok.eos_token_id) == want
    res = MSMA(model).generate([PROMPTS[0]], max_new_tokens=N_NEW)
    assert res.generated[0] == want and res.settings["kv_cache_fallback"] is True


def test_guard_error_policy_raises_with_versions():
    model = load_model("tiny-llama", kv_check="off")
    _break_kv_cache(model)
    with pytest.raises(KVCacheError, match=r"transformer-lens .* transformers .*locked versions"):
        MSMA(model, kv_check="error")


def test_guard_policy_is_validated(tiny_gpt2):
    with pytest.raises(ConfigError, match="kv_check must be one of"):
        load_model("tiny-gpt2", kv_check="warn")
    with pytest.raises(ConfigError, match="kv_check must be one of"):
        MSMA(tiny_gpt2, kv_check=True)


# ----- token-id prompts ----------------------------------------------------------------------------------------
def test_generate_accepts_token_ids(tiny_model):
    lens = MSMA(tiny_model)
    text = lens.generate(PROMPTS[:1], max_new_tokens=8)
    toks = lens.generate(tiny_model.to_tokens(PROMPTS[0]), max_new_tokens=8)
    assert toks.generated == text.generated and toks.settings["input"] == "token_ids"


def test_generate_token_ids_batched_with_mask_equals_one_by_one(tiny_model):
    lens = MSMA(tiny_model)
    rows = [tiny_model.to_tokens(p)[0] for p in PROMPTS]
    T = max(len(r) for r in rows)
    tokens = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):  # right padding: generate must re-pad on the left
        tokens[i, : len(r)], mask[i, : len(r)] = r, 1
    single = [lens.generate(r[None], max_new_tokens=8).generated[0] for r in rows]
    if _tl.backend(tiny_model) == "HookedTransformer":
        with pytest.raises(ConfigError, match="takes no attention_mask"):
            lens.generate(tokens, attention_mask=mask, max_new_tokens=8)
        return
    batched = lens.generate(tokens, attention_mask=mask, max_new_tokens=8)
    assert batched.generated == single


def test_generate_token_id_errors(tiny_gpt2):
    lens = MSMA(tiny_gpt2)
    with pytest.raises(ConfigError, match="prompts must hold integer token ids"):
        lens.generate(torch.zeros(1, 3), max_new_tokens=2)
    with pytest.raises(ConfigError, match="attention_mask goes with token-id prompts"):
        lens.generate(["hi"], attention_mask=torch.ones(1, 2), max_new_tokens=2)
