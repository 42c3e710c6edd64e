"""Hyperparameter search for the cross-scale maps (Optuna: seeded TPE with median pruning), scored by geometry.

Per pair, a study searches λ_info (with a switch for exactly 0), λ_curv, the residual width and the two learning
rates. A trial trains a map with :class:`~msma_lens.align.maps.MapTrainer` on the training split of
:func:`~msma_lens.align.protocol.prepare_pairs` (the document split and normalisation of ``fit_alignment``, same
seed) and reports its best *validation residual* so far at every evaluation; its value is the lowest validation
residual, the selection rule of ``fit_alignment`` itself. The validation diagonal KL and the critic's Î at that step
are recorded beside it; Î never scores a trial (it is the critic's own score and rises as the critic learns). The
held-out test split is never touched, so ``fit_alignment`` with the tuned configs still reports honest held-out
numbers; the best validation residual of a search is optimistically biased (it is a minimum over trials).

Seeded and resumable: each trial's sampler is seeded by ``(seed, pair, trial number)``, so a resumed search runs
the same trials as an uninterrupted one; with ``storage=`` (a directory) the studies live in an Optuna journal
file and a rerun completes only the missing trials.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..align.maps import MapTrainConfig, MapTrainer, geo_loss
from ..align.procrustes import procrustes
from ..align.protocol import AlignConfig, prepare_pairs
from ..analysis import metrics as M
from ..capture.activations import ScaleActivations
from ..errors import ArtifactError, ConfigError, NumericsError
from ..io.artifacts import json_clean, restore_nan, write_csv_atomic, write_json_atomic, write_text_atomic

__all__ = ["TuneConfig", "TuningResult", "tune_alignment", "TUNED_PARAMS", "JOURNAL_FILE"]

KIND = "msma_lens.TuningResult"
FORMAT_VERSION = 1
JOURNAL_FILE = "optuna_journal.log"
TUNED_PARAMS: tuple[str, ...] = ("residual_hidden", "lambda_info", "lambda_curv", "lr", "stiefel_lr")
_FINISHED = ("COMPLETE", "PRUNED", "FAIL")
_FP_ATTR = "msma_lens.fingerprint"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class TuneConfig:
    """The search: budget, schedule, seed and bounds (validated on construction; ConfigError names the field).

    ``n_trials`` per pair (the default, 12 trials of 150 steps, tunes both SmolLM2-135M pairs in about 4 minutes
    of one CPU thread), ``timeout_s`` an optional wall-clock cap for the whole call (split evenly over the pairs
    still to run; a trial that has started finishes). Every trial trains ``steps`` steps (cosine schedule),
    evaluating every ``eval_every``; the tuned configs keep both, so the fit reproduces the best trial.
    Log-uniform ranges ``(low, high)`` for ``lambda_info``, ``lambda_curv``, ``lr``, ``stiefel_lr``;
    ``residual_hidden`` is a set of widths (0: affine map). ``try_no_info`` adds a switch ``use_info`` whose
    ``False`` branch sets λ_info = 0 exactly. λ_curv is searched only for a residual width > 0 (it is identically
    inert for an affine map). TPE draws its first ``startup_trials`` at random; the median pruner stops a trial
    whose best validation residual after ``prune_warmup_steps`` steps is worse than the median of earlier trials
    at the same step, once ``prune_startup_trials`` trials have finished.
    """

    n_trials: int = 12
    timeout_s: float | None = None
    steps: int = 150
    eval_every: int = 25
    seed: int = 0
    lambda_info: tuple[float, float] = (1e-3, 1.0)
    try_no_info: bool = True
    lambda_curv: tuple[float, float] = (1e-3, 10.0)
    residual_hidden: tuple[int, ...] = (0, 32, 64, 128)
    lr: tuple[float, float] = (1e-4, 1e-2)
    stiefel_lr: tuple[float, float] = (1e-3, 0.3)
    startup_trials: int = 6
    prune_startup_trials: int = 3
    prune_warmup_steps: int = 25

    def __post_init__(self) -> None:
        def bad(name: str, rng: str) -> ConfigError:
            return ConfigError(f"TuneConfig.{name} must be {rng}, got {getattr(self, name)!r}")

        for name, lo in (("n_trials", 1), ("steps", 1), ("eval_every", 1), ("startup_trials", 0),
                         ("prune_startup_trials", 0), ("prune_warmup_steps", 0)):
            if not (_is_int(getattr(self, name)) and getattr(self, name) >= lo):
                raise bad(name, f"an integer >= {lo}")
        if self.eval_every > self.steps:
            raise bad("eval_every", f"<= steps ({self.steps})")
        if not _is_int(self.seed):
            raise bad("seed", "an integer")
        if self.timeout_s is not None and not (_num(self.timeout_s) and self.timeout_s > 0):
            raise bad("timeout_s", "None or a finite number of seconds > 0")
        if not isinstance(self.try_no_info, bool):
            raise bad("try_no_info", "True or False")
        for name in ("lambda_info", "lambda_curv", "lr", "stiefel_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (tuple, list)) and len(v) == 2 and all(_num(x) for x in v) and 0 < v[0] < v[1]):
                raise bad(name, "a log-uniform range (low, high) with 0 < low < high")
            setattr(self, name, (float(v[0]), float(v[1])))
        rh = self.residual_hidden
        if not (isinstance(rh, (tuple, list)) and rh and all(_is_int(x) and x >= 0 for x in rh) and len(set(rh)) == len(rh)):
            raise bad("residual_hidden", "a non-empty set of distinct integer widths >= 0")
        self.residual_hidden = tuple(int(x) for x in rh)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TuneConfig:
        d = dict(d)
        for k in ("lambda_info", "lambda_curv", "lr", "stiefel_lr", "residual_hidden"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def search_fields(self) -> dict:
        """The fields that define the trials (everything but the budget ``n_trials`` / ``timeout_s``)."""
        d = self.to_dict()
        d.pop("n_trials")
        d.pop("timeout_s")
        return d


def train_config(base: MapTrainConfig, tune: TuneConfig, params: dict, seed: int | None = None) -> MapTrainConfig:
    """``base`` with a trial's ``params`` (as Optuna records them) and the search's ``steps`` / ``eval_every``."""
    changes = {"steps": tune.steps, "eval_every": tune.eval_every, "residual_hidden": int(params["residual_hidden"]),
               "lr": float(params["lr"]), "stiefel_lr": float(params["stiefel_lr"])}
    changes["lambda_info"] = float(params["lambda_info"]) if params.get("use_info", True) else 0.0
    if "lambda_curv" in params:
        changes["lambda_curv"] = float(params["lambda_curv"])
    if seed is not None:
        changes["seed"] = seed
    return dataclasses.replace(base, **changes)


def _suggest(trial, tune: TuneConfig) -> dict:
    p = {"residual_hidden": trial.suggest_categorical("residual_hidden", list(tune.residual_hidden))}
    if not tune.try_no_info or trial.suggest_categorical("use_info", [True, False]):
        p["lambda_info"] = trial.suggest_float("lambda_info", *tune.lambda_info, log=True)
    if p["residual_hidden"] > 0:
        p["lambda_curv"] = trial.suggest_float("lambda_curv", *tune.lambda_curv, log=True)
    p["lr"] = trial.suggest_float("lr", *tune.lr, log=True)
    p["stiefel_lr"] = trial.suggest_float("stiefel_lr", *tune.stiefel_lr, log=True)
    return trial.params


def _kl_diag(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float(M.compute("kl_diag", pred, y))


def _best_attrs(tr: MapTrainer, Xv: torch.Tensor, Yv: torch.Tensor) -> dict:
    """Validation diagonal KL, Î and weighted terms at the trainer's best step (by validation residual)."""
    step = int(tr.stopper.best_step)
    row = next((r for r in tr.history if r["step"] == step), {})
    out = {"best_step": step, "steps_run": tr.steps_done, "val_residual": float(tr.stopper.best),
           "val_info": float(row.get("val_info", float("nan"))), "val_info_term": float(row.get("val_info_term", 0.0)),
           "val_curv_term": float(row.get("val_curv_term", 0.0)), "val_kl_diag": float("nan")}
    if tr.best_state is not None:
        tr.map.load_state_dict(tr.best_state["map"])
        with torch.no_grad():
            pred = tr.map.eval()(Xv.to(tr.device)).cpu()
        out["val_kl_diag"] = _kl_diag(pred, Yv)
    return out


def _objective(d: dict, base: MapTrainConfig, tune: TuneConfig, seed: int, reference: dict):
    import optuna

    Xtr, Ytr, Xv, Yv = d["X"]["train"], d["Y"]["train"], d["X"]["val"], d["Y"]["val"]

    def objective(trial) -> float:
        cfg = train_config(base, tune, _suggest(trial, tune), seed)
        for k, v in reference.items():
            trial.set_user_attr(k, v)
        try:
            return train(trial, cfg)
        except NumericsError as e:  # diverged: recorded as FAIL (with its message), never the best trial
            trial.set_user_attr("error", str(e))
            raise

    def train(trial, cfg: MapTrainConfig) -> float:
        tr = MapTrainer(Xtr, Ytr, Xv, Yv, cfg)
        tr.record()  # step 0: the closed-form initialisation
        while not tr.finished:
            tr.step()
            s = tr.steps_done
            if s % cfg.eval_every == 0 or s == cfg.steps:
                tr.record()
                tr.finished = tr.stopper.should_stop
                trial.report(float(tr.stopper.best), s)
                if trial.should_prune():
                    for k, v in _best_attrs(tr, Xv, Yv).items():
                        trial.set_user_attr(k, v)
                    raise optuna.TrialPruned()
            tr.finished = tr.finished or s == cfg.steps
        attrs = _best_attrs(tr, Xv, Yv)
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        return attrs["val_residual"]

    return objective


def _fingerprint(tune: TuneConfig, cfg: AlignConfig, base: MapTrainConfig, d: dict) -> dict:
    data = []
    for part in ("X", "Y"):
        for split in ("train", "val"):
            t = d[part][split].double()
            data.append([list(t.shape), float(t.sum()), float(t.square().sum())])
    align = {k: v for k, v in cfg.to_dict().items() if k in ("held_out", "val_fraction", "max_train_rows", "max_eval_rows",
                                                              "normalise", "outlier_factor", "seed")}
    return json_clean({"search": tune.search_fields(), "train": base.result_fields(), "align": align, "data": data})


def _open_study(key: str, storage, tune: TuneConfig, fp: dict):
    import optuna

    study = optuna.create_study(study_name=key, storage=storage, direction="minimize", load_if_exists=True,
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=tune.prune_startup_trials,
                                                                   n_warmup_steps=tune.prune_warmup_steps))
    old = study.user_attrs.get(_FP_ATTR)
    if old is None and study.trials:
        raise ArtifactError(f"tuning storage holds a study {key!r} that msma_lens did not write; use another storage directory")
    if old is not None and old != fp:
        diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
        raise ArtifactError(f"tuning storage holds study {key!r} made with a different search, training config or data "
                            f"(differs in: {', '.join(diff)}); use another storage directory or delete it")
    if old is None:
        study.set_user_attr(_FP_ATTR, fp)
    # a trial left RUNNING by an interrupted process never finishes: mark it failed (without an "error"), so that it is rerun
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return study


def _counts(t) -> bool:
    """A trial that used the budget: complete, pruned, or failed by diverging (not one interrupted by the user)."""
    return t.state.name in ("COMPLETE", "PRUNED") or (t.state.name == "FAIL" and "error" in t.user_attrs)


def _sampler(tune: TuneConfig, key: str, number: int):
    import numpy as np
    import optuna

    seed = int(np.random.SeedSequence([tune.seed, zlib.crc32(key.encode()), number]).generate_state(1)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # `group` is marked experimental
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=tune.startup_trials, multivariate=True, group=True)


def _trial_row(t) -> dict:
    dur = t.duration.total_seconds() if t.duration is not None else float("nan")
    return {"number": t.number, "state": t.state.name, "value": float("nan") if t.value is None else float(t.value),
            "params": dict(t.params), "user_attrs": dict(t.user_attrs), "duration_s": dur}


def tune_alignment(acts: ScaleActivations, cfg: AlignConfig | None = None, tune: TuneConfig | None = None, *,
                   storage: str | os.PathLike | None = None, progress: bool = True) -> TuningResult:
    """Search each configured pair's training hyperparameters on the validation split (see the module docstring).

    ``cfg`` gives the pairs, the document split (``cfg.seed``), normalisation and the base training config
    (``cfg.train``, or its ``pair_train`` entry) whose untuned fields every trial keeps. ``storage``: a directory
    for the Optuna journal (``JOURNAL_FILE``); a rerun with the same search, config and data completes the missing
    trials up to ``tune.n_trials`` (ArtifactError if the stored study was made otherwise). ``progress``: a tqdm bar
    per pair over its trials. Trials whose training diverges (NumericsError) are recorded as FAIL.
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from tqdm.auto import tqdm

    cfg = cfg or AlignConfig()
    tune = tune or TuneConfig()
    if not isinstance(cfg, AlignConfig):
        raise ConfigError(f"cfg must be an AlignConfig, got {type(cfg).__name__}")
    if not isinstance(tune, TuneConfig):
        raise ConfigError(f"tune must be a TuneConfig, got {type(tune).__name__}")
    data = prepare_pairs(acts, cfg)
    store = None
    if storage is not None:
        Path(storage).mkdir(parents=True, exist_ok=True)
        store = JournalStorage(JournalFileBackend(str(Path(storage) / JOURNAL_FILE)))
    t0 = time.monotonic()
    deadline = None if tune.timeout_s is None else t0 + tune.timeout_s
    pairs: dict[str, dict] = {}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        for i, (key, d) in enumerate(data.items()):
            base = cfg.train_for(key)
            Xtr, Ytr, Xv, Yv = d["X"]["train"], d["Y"]["train"], d["X"]["val"], d["Y"]["val"]
            cf = procrustes(Xtr, Ytr)
            with torch.no_grad():
                pred = cf.apply(Xv)
                reference = {"closed_form_val_residual": float(geo_loss(pred.double(), Yv.double())),
                             "closed_form_val_kl_diag": _kl_diag(pred, Yv)}
            study = _open_study(key, store, tune, _fingerprint(tune, cfg, base, d))
            done = sum(_counts(t) for t in study.get_trials(deepcopy=False))
            pair_deadline = None if deadline is None else time.monotonic() + (deadline - time.monotonic()) / (len(data) - i)
            objective = _objective(d, base, tune, cfg.seed, reference)
            n_new = 0
            with tqdm(total=tune.n_trials, initial=min(done, tune.n_trials), desc=f"tune {key}", unit="trial", leave=False,
                      disable=not progress) as bar:
                while done < tune.n_trials and (pair_deadline is None or time.monotonic() < pair_deadline):
                    study.sampler = _sampler(tune, key, len(study.trials))
                    study.optimize(objective, n_trials=1, catch=(NumericsError,), gc_after_trial=False)
                    n_new += 1
                    if _counts(study.trials[-1]):
                        done += 1
                        bar.update()
                    if any(t.state.name == "COMPLETE" for t in study.trials):
                        bar.set_postfix(best=f"{study.best_value:.4g}", refresh=False)
            trials = [_trial_row(t) for t in study.get_trials(deepcopy=False) if _counts(t)]
            complete = [t for t in trials if t["state"] == "COMPLETE"]
            best = min(complete, key=lambda t: (t["value"], t["number"])) if complete else None
            pairs[key] = {"best": best, "closed_form": {"val_residual": reference["closed_form_val_residual"],
                                                        "val_kl_diag": reference["closed_form_val_kl_diag"]},
                          "trials": trials, "n_new_trials": n_new}
    finally:
        optuna.logging.set_verbosity(verbosity)
    return TuningResult(pairs, {"tune": tune.to_dict(), "align": cfg.to_dict()}, dict(acts.meta), time.monotonic() - t0)


# ----- the result ----------------------------------------------------------------------------------------
def _fmt(v, spec: str = ".4g") -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


@dataclass
class TuningResult:
    """The search per pair: ``pairs[key]`` holds ``best`` (the complete trial with the lowest validation residual,
    or None), ``closed_form`` (its validation residual and diagonal KL, for reference), ``trials`` (every finished
    trial: ``number``, ``state`` (COMPLETE / PRUNED / FAIL), ``value``, ``params``, ``user_attrs``, ``duration_s``)
    and ``n_new_trials`` (run by the call that made this result); ``config`` holds the TuneConfig and AlignConfig."""

    pairs: dict[str, dict]
    config: dict
    provenance: dict = field(default_factory=dict)
    wall_s: float = float("nan")

    @property
    def tune_config(self) -> TuneConfig:
        return TuneConfig.from_dict(self.config["tune"])

    @property
    def best_params(self) -> dict[str, dict]:
        """Per pair, the best trial's parameters as Optuna records them (pairs without a complete trial are left out)."""
        return {k: dict(p["best"]["params"]) for k, p in self.pairs.items() if p["best"] is not None}

    def beats_closed_form(self, key: str) -> bool:
        """Whether the best trial's validation residual is below the closed form's (the rule of ``fit_alignment``)."""
        from ..align.protocol import SELECTION_RTOL

        p = self.pairs[key]
        return p["best"] is not None and p["best"]["value"] < p["closed_form"]["val_residual"] * (1 - SELECTION_RTOL)

    def best_train_configs(self, base: MapTrainConfig | None = None) -> dict[str, MapTrainConfig]:
        """Per pair, ``base`` (default: the tuned AlignConfig's ``train``) with the best trial's parameters and the
        search's ``steps`` / ``eval_every``: ``AlignConfig(pair_train=...)`` then refits the best trial exactly."""
        if base is None:
            base = MapTrainConfig(**self.config["align"]["train"])
        if not isinstance(base, MapTrainConfig):
            raise ConfigError(f"base must be a MapTrainConfig, got {type(base).__name__}")
        tune = self.tune_config
        return {k: train_config(base, tune, params) for k, params in self.best_params.items()}

    def align_config(self, cfg: AlignConfig | None = None) -> AlignConfig:
        """``cfg`` (default: the AlignConfig that was tuned) with ``pair_train`` set to :meth:`best_train_configs`."""
        cfg = cfg or AlignConfig.from_dict(self.config["align"])
        return dataclasses.replace(cfg, pair_train={**cfg.pair_train, **self.best_train_configs(cfg.train)})

    def rows(self) -> list[dict]:
        """One flat row per trial (pair, number, state, value, parameters, recorded attributes), for CSV."""
        out = []
        for k, p in self.pairs.items():
            for t in p["trials"]:
                row = {"pair": k, "number": t["number"], "state": t["state"], "value": t["value"],
                       "duration_s": t["duration_s"], "best": p["best"] is not None and t["number"] == p["best"]["number"]}
                row.update({n: t["params"].get(n, float("nan")) for n in ("use_info", *TUNED_PARAMS)})
                row.update({n: v for n, v in t["user_attrs"].items() if n != "error"})
                out.append(row)
        return out

    def table(self) -> str:
        """Chosen values and the search history per pair, as fixed-width text."""
        lines = []
        for k, p in self.pairs.items():
            n = {s: sum(t["state"] == s for t in p["trials"]) for s in _FINISHED}
            cf = p["closed_form"]
            lines.append(f"{k}: {len(p['trials'])} trials ({n['COMPLETE']} complete, {n['PRUNED']} pruned, {n['FAIL']} failed), "
                         "scored by validation residual (never by the critic's MI)")
            lines.append(f"  closed form: validation residual {cf['val_residual']:.4f}, validation diag KL {cf['val_kl_diag']:.4g}")
            b = p["best"]
            if b is None:
                lines.append("  best: none (no trial completed)")
            else:
                a, rel = b["user_attrs"], b["value"] / cf["val_residual"] - 1
                verdict = "fit_alignment keeps the trained map" if self.beats_closed_form(k) else "fit_alignment keeps the closed form"
                info = _fmt(a.get("val_info"), ".3f")
                lines.append(f"  best: trial {b['number']}, validation residual {b['value']:.4f} ({rel:+.2%} vs closed form: {verdict}), "
                             f"diag KL {_fmt(a.get('val_kl_diag'))}, critic's info bound "
                             f"{info + ' nats' if info else 'n/a (λ_info = 0)'}, at step {a.get('best_step')}")
                lines.append("  chosen: " + ", ".join(f"{n}={_fmt(b['params'][n]) if isinstance(b['params'][n], float) else b['params'][n]}"
                                                     for n in ("residual_hidden", "use_info", "lambda_info", "lambda_curv", "lr",
                                                               "stiefel_lr") if n in b["params"]))
            lines.append(f"  {'#':>3} {'state':<9}{'val resid':>10}{'val KL':>9}{'Î nats':>10}{'step':>6}{'hidden':>7}"
                         f"{'λ_info':>9}{'λ_curv':>9}{'lr':>9}{'stiefel':>9}{'time s':>8}")
            for t in p["trials"]:
                a, q = t["user_attrs"], t["params"]
                li = q.get("lambda_info", 0.0 if q.get("use_info") is False else None)
                lines.append(f"  {t['number']:>3} {t['state']:<9}{_fmt(t['value'], '.4f'):>10}{_fmt(a.get('val_kl_diag')):>9}"
                             f"{_fmt(a.get('val_info'), '.3g'):>10}{a.get('best_step', ''):>6}{q.get('residual_hidden', ''):>7}"
                             f"{_fmt(li, '.3g'):>9}{_fmt(q.get('lambda_curv'), '.3g'):>9}{_fmt(q.get('lr'), '.3g'):>9}"
                             f"{_fmt(q.get('stiefel_lr'), '.3g'):>9}{_fmt(t['duration_s'], '.1f'):>8}")
        lines.append(f"search wall time: {self.wall_s:.0f} s (this call)")
        return "\n".join(lines)

    def figures(self) -> dict:
        """Plotly figures: ``history`` (validation residual per trial, best so far and the closed form, per pair)
        and ``params`` (each tuned parameter against the trial's validation residual, per pair)."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        keys = list(self.pairs)
        colours = {"COMPLETE": "#1f77b4", "PRUNED": "#aaaaaa", "FAIL": "#d62728"}
        hist = make_subplots(rows=1, cols=len(keys), subplot_titles=keys)
        params = make_subplots(rows=len(keys), cols=len(TUNED_PARAMS), subplot_titles=[f"{k}: {n}" for k in keys for n in TUNED_PARAMS])
        for i, k in enumerate(keys, 1):
            p, first = self.pairs[k], i == 1
            for state in ("COMPLETE", "PRUNED"):
                ts = [t for t in p["trials"] if t["state"] == state]
                hist.add_trace(go.Scatter(x=[t["number"] for t in ts], y=[t["value"] for t in ts], mode="markers", name=state.lower(),
                                          marker={"color": colours[state], "symbol": "circle" if state == "COMPLETE" else "x"},
                                          showlegend=first, legendgroup=state), 1, i)
                for j, n in enumerate(TUNED_PARAMS, 1):
                    pts = [t for t in ts if n in t["params"]]
                    params.add_trace(go.Scatter(x=[t["params"][n] for t in pts], y=[t["value"] for t in pts], mode="markers",
                                                marker={"color": colours[state]}, name=state.lower(), legendgroup=state,
                                                showlegend=first and j == 1), i, j)
            best, xs, ys = math.inf, [], []
            for t in p["trials"]:
                if t["state"] == "COMPLETE":
                    best = min(best, t["value"])
                if math.isfinite(best):
                    xs.append(t["number"])
                    ys.append(best)
            hist.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"shape": "hv"}, name="best so far", showlegend=first,
                                      legendgroup="best"), 1, i)
            hist.add_hline(y=p["closed_form"]["val_residual"], line_dash="dash", annotation_text="closed form", row=1, col=i)
            for j, n in enumerate(TUNED_PARAMS, 1):
                if n != "residual_hidden":
                    params.update_xaxes(type="log", row=i, col=j)
        hist.update_xaxes(title_text="trial")
        hist.update_yaxes(title_text="validation residual", col=1)
        hist.update_layout(title="hyperparameter search: validation residual per trial (lower is better)")
        params.update_yaxes(title_text="validation residual", col=1)
        params.update_layout(title="tuned parameters against the validation residual", height=320 * len(keys))
        return {"history": hist, "params": params}

    def write_html(self, path: str | os.PathLike) -> Path:
        parts = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(self.figures().values())]
        return write_text_atomic(path, "<html><head><meta charset='utf-8'><title>msma-lens tuning</title></head><body>"
                                 + "".join(parts) + "</body></html>")

    def to_dict(self) -> dict:
        return {"kind": KIND, "format_version": FORMAT_VERSION, "pairs": self.pairs, "config": self.config,
                "provenance": self.provenance, "wall_s": self.wall_s}

    def save(self, path: str | os.PathLike) -> Path:
        """``path/tuning.json`` (everything), ``tuning.csv`` (one row per trial), ``tuning.html`` (figures) and
        ``tuning.txt`` (:meth:`table`), each written atomically."""
        path = Path(path)
        write_json_atomic(path / "tuning.json", self.to_dict())
        write_csv_atomic(path / "tuning.csv", self.rows())
        self.write_html(path / "tuning.html")
        write_text_atomic(path / "tuning.txt", self.table() + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TuningResult:
        """Read a result written by :meth:`save` (ArtifactError if missing or not a tuning result)."""
        import json

        f = Path(path) / "tuning.json"
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise ArtifactError(f"cannot read tuning result {f}: {e}") from None
        if not isinstance(d, dict) or d.get("kind") != KIND:
            raise ArtifactError(f"{f} is not a {KIND}")
        if d.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{f} has format_version {d.get('format_version')!r}; this version reads {FORMAT_VERSION}")
        pairs = restore_nan(d["pairs"])
        for p in pairs.values():  # restore_nan turned the JSON null of "no best trial" into NaN
            if not isinstance(p["best"], dict):
                p["best"] = None
        return cls(pairs, d["config"], d["provenance"], float(restore_nan(d["wall_s"])))
