"""The ``stratified`` analysis: per scale and seed, split documents, PCA, train the mixture, held-out statistics."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from msma_lens.capture.activations import ScaleActivations
from msma_lens.errors import ConfigError

from .model import MixtureOfDictionaryExperts, TrainConfig, train_mixture
from .result import StratifiedResult
from .stats import cluster_indices, gating_entropy, label_agreement, principal_angles, stratum_dimensions

OBJECTIVES = ("recon", "supcon")
MIXINGS = ("expected", "blend")
GATE_MODES = ("soft", "gumbel")
INITS = ("data", "random")


def _err(msg: str) -> ConfigError:
    return ConfigError(f"StratifiedManifolds: {msg}")


def _int(name: str, v: object, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise _err(f"{name} must be an integer >= {lo}, got {v!r}")
    return v


def _num(name: str, v: object, lo: float, lo_open: bool = True, hi: float = math.inf) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > lo if lo_open else v >= lo) and v < hi
    if not ok:
        raise _err(f"{name} must be a number {'>' if lo_open else '>='} {lo}{f' and < {hi}' if hi < math.inf else ''}, got {v!r}")
    return float(v)


def _choice(name: str, v: object, valid: tuple[str, ...]) -> str:
    if v not in valid:
        raise _err(f"{name} must be one of {list(valid)}, got {v!r}")
    return v  # type: ignore[return-value]


def _int_list(name: str, v: object, lo: int) -> tuple[int, ...]:
    if isinstance(v, str):
        try:
            v = [int(x) for x in v.split(",")]
        except ValueError:
            raise _err(f"{name} must be integers >= {lo}, got {v!r}") from None
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not (isinstance(v, (list, tuple)) and v and all(isinstance(x, int) and not isinstance(x, bool) and x >= lo for x in v)):
        raise _err(f"{name} must be a non-empty list of integers >= {lo}, got {v!r}")
    return tuple(v)


@dataclass
class StratifiedManifolds:
    """Stratified manifolds per scale: a trained mixture of sparse dictionary experts (arXiv 2502.13577) vs KMeans."""

    description = ("Stratified manifolds per scale: trained mixture of sparse dictionary experts (attention gate), "
                   "held-out strata, intrinsic dimension per stratum, label agreement vs KMeans and a permutation null")

    pca_dim: int = 64                                   # PCA (fitted on the training split) before the mixture
    sparsity: tuple[int, ...] = (8, 12, 16, 20, 24, 28, 32)  # one expert per level (the authors' K = 7)
    code_dim: int = 32                                  # atoms per dictionary
    n_layers: int = 5                                   # unrolled LISTA layers
    key_dim: int = 32                                   # gate query/key width
    gate_hidden: int = 64                               # query MLP width (0: linear query, the authors' form)
    temperature: float = 1.0
    objective: str = "recon"                            # "recon" or the authors' "supcon"
    mixing: str = "expected"                            # "expected": Σ g‖x - x̂_j‖²; "blend": ‖x - Σ g x̂_j‖²
    gate_mode: str = "soft"                             # "soft" or straight-through "gumbel"
    train_gate: bool = True                             # False: the authors' untrained gate (negative control)
    init: str = "data"                                  # dictionaries from local PCA of the data, or "random"
    lambda_sparse: float = 1e-3
    lambda_balance: float = 0.1                         # KL(mean gate ‖ uniform): without it experts collapse
    lr: float = 1e-2
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 20
    val_fraction: float = 0.15                          # documents for early stopping
    test_fraction: float = 0.25                         # documents for every reported statistic
    seeds: tuple[int, ...] = (0,)                       # one fit per seed (split, PCA, init, batches)
    labels: Mapping[str, Sequence] | None = None        # {name: one label per row}, e.g. topic, register
    groups: Sequence[int] | None = None                 # split unit per row (default: acts.doc_ids)
    supcon_label: str | None = None                     # label for objective="supcon" (default: the first)
    variance: float = 0.75                              # PCA dimension rule (the authors': 75%)
    n_perm: int = 200                                   # permutations for the label-agreement null
    scales: list[str] | str | None = None
    device: str = "cpu"
    progress: bool = False
    _label_names: list[str] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        for name, lo in (("pca_dim", 2), ("code_dim", 1), ("n_layers", 1), ("key_dim", 1), ("gate_hidden", 0),
                         ("batch_size", 2), ("max_epochs", 1), ("patience", 1), ("n_perm", 0)):
            setattr(self, name, _int(name, getattr(self, name), lo))
        self.sparsity = _int_list("sparsity", self.sparsity, 1)
        if len(self.sparsity) < 2:
            raise _err(f"sparsity needs one level per expert and at least 2 experts, got {self.sparsity!r}")
        if max(self.sparsity) > self.code_dim:
            raise _err(f"sparsity level {max(self.sparsity)} exceeds code_dim={self.code_dim}")
        self.seeds = _int_list("seeds", self.seeds, 0)
        if len(set(self.seeds)) != len(self.seeds):
            raise _err(f"seeds must be distinct, got {self.seeds!r}")
        for name, lo, hi in (("temperature", 0, math.inf), ("lr", 0, math.inf), ("val_fraction", 0, 1),
                             ("test_fraction", 0, 1), ("variance", 0, 1.0 + 1e-12)):
            setattr(self, name, _num(name, getattr(self, name), lo, True, hi))
        for name in ("lambda_sparse", "lambda_balance"):
            setattr(self, name, _num(name, getattr(self, name), 0, False))
        if self.val_fraction + self.test_fraction >= 1:
            raise _err(f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction} leaves no training documents")
        self.objective = _choice("objective", self.objective, OBJECTIVES)
        self.mixing = _choice("mixing", self.mixing, MIXINGS)
        self.gate_mode = _choice("gate_mode", self.gate_mode, GATE_MODES)
        self.init = _choice("init", self.init, INITS)
        if not isinstance(self.train_gate, bool):
            raise _err(f"train_gate must be true or false, got {self.train_gate!r}")
        if self.labels is not None:
            if not (isinstance(self.labels, Mapping) and self.labels and all(isinstance(k, str) and k for k in self.labels)):
                raise _err(f"labels must be a mapping {{name: one label per row}}, got {type(self.labels).__name__}")
            self.labels = {k: [str(x) for x in v] for k, v in self.labels.items()}
            self._label_names = list(self.labels)
        if self.objective == "supcon":
            if not self._label_names:
                raise _err("objective='supcon' needs labels={name: one label per row}")
            if self.supcon_label is None:
                self.supcon_label = self._label_names[0]
            if self.supcon_label not in self._label_names:
                raise _err(f"supcon_label {self.supcon_label!r} is not one of the labels {self._label_names}")
        if isinstance(self.scales, str):
            self.scales = [s.strip() for s in self.scales.split(",")]
        if self.scales is not None and not (isinstance(self.scales, (list, tuple)) and self.scales
                                            and all(isinstance(s, str) and s for s in self.scales) and len(set(self.scales)) == len(self.scales)):
            raise _err(f"scales must be distinct scale names, got {self.scales!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise _err(f"invalid device {self.device!r}") from None

    # ------------------------------------------------------------------------------------------------
    def config(self) -> dict:
        d = asdict(self)
        d.pop("_label_names")
        d.pop("labels")
        d["groups"] = None if self.groups is None else "given"
        d["sparsity"], d["seeds"] = list(self.sparsity), list(self.seeds)
        d["scales"] = None if self.scales is None else list(self.scales)
        d["label_names"] = list(self._label_names)
        return d

    def fit(self, acts: ScaleActivations) -> StratifiedResult:
        names = list(self.scales or acts.scale_names)
        bad = [s for s in names if s not in acts.acts]
        if bad:
            raise _err(f"unknown scale(s) {bad}; the activations have {acts.scale_names}")
        n = len(acts)
        for k, v in (self.labels or {}).items():
            if len(v) != n:
                raise _err(f"label {k!r} has {len(v)} entries, the activations have {n} rows")
        groups = acts.doc_ids if self.groups is None else torch.as_tensor(list(self.groups))
        if groups.shape != (n,):
            raise _err(f"groups has {groups.numel()} entries, the activations have {n} rows")
        acts.check_finite()
        per: dict[tuple[int, int], dict] = {}
        for si, s in enumerate(names):
            for ri, seed in enumerate(self.seeds):
                per[si, ri] = self._one(acts[s], groups, seed, f"{s} seed {seed}")
        return StratifiedResult(names, list(self.seeds), per, self.labels or {}, self.config())

    def split(self, groups: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        """Row indices ``{"train", "val", "test"}`` with whole groups (documents) on one side."""
        ids = torch.unique(groups)
        if ids.numel() < 3:
            raise _err(f"a split by document needs >= 3 documents, got {ids.numel()}")
        perm = ids[torch.randperm(ids.numel(), generator=torch.Generator().manual_seed(seed))]
        n_test = min(max(1, round(self.test_fraction * ids.numel())), ids.numel() - 2)
        n_val = min(max(1, round(self.val_fraction * ids.numel())), ids.numel() - n_test - 1)
        parts = {"test": perm[:n_test], "val": perm[n_test:n_test + n_val], "train": perm[n_test + n_val:]}
        return {k: torch.nonzero(torch.isin(groups, v)).squeeze(1) for k, v in parts.items()}

    def _one(self, x_all: torch.Tensor, groups: torch.Tensor, seed: int, desc: str) -> dict:
        from sklearn.cluster import KMeans
        from sklearn.decomposition import PCA

        rows = self.split(groups, seed)
        x64 = x_all.double().cpu().numpy()
        k = min(self.pca_dim, x64.shape[1], rows["train"].numel() - 1)
        pca = PCA(k, random_state=seed).fit(x64[rows["train"].numpy()])
        z = {p: pca.transform(x64[r.numpy()]) for p, r in rows.items()}
        scale = math.sqrt(float((z["train"] ** 2).mean()))  # unit mean variance per coordinate
        z = {p: torch.tensor(v / scale, dtype=torch.float32) for p, v in z.items()}
        code_dim = min(self.code_dim, k)
        sparsity = tuple(min(s, code_dim) for s in self.sparsity)
        model = MixtureOfDictionaryExperts(k, sparsity, code_dim, self.n_layers, self.key_dim, self.gate_hidden, seed)
        dev = torch.device(self.device)
        model.to(dev)
        cfg = TrainConfig(objective=self.objective, mixing=self.mixing, gate_mode=self.gate_mode, train_gate=self.train_gate,
                          init=self.init, temperature=self.temperature, lambda_sparse=self.lambda_sparse,
                          lambda_balance=self.lambda_balance, lr=self.lr, batch_size=self.batch_size,
                          max_epochs=self.max_epochs, patience=self.patience, seed=seed)
        y = {}
        if self.objective == "supcon":
            codes = {v: i for i, v in enumerate(sorted(set(self.labels[self.supcon_label])))}
            lab = torch.tensor([codes[v] for v in self.labels[self.supcon_label]])
            y = {p: lab[r].to(dev) for p, r in rows.items()}
        log = train_mixture(model, z["train"].to(dev), z["val"].to(dev), cfg, y_train=y.get("train"), y_val=y.get("val"),
                            progress=self.progress, desc=desc)
        xt = z["test"].to(dev)
        with torch.no_grad():
            logits, codes_t, recon = model(xt, self.temperature)
        probs = logits.softmax(-1).cpu()
        assign = probs.argmax(1)
        err = (xt[:, None, :] - recon).pow(2).mean(-1).cpu()
        n_exp = len(sparsity)
        km = KMeans(n_exp, n_init=10, random_state=seed).fit(z["train"].numpy())
        km_assign = km.predict(z["test"].numpy())
        xt_np = z["test"].numpy()
        pca_d, two_d, count = stratum_dimensions(z["test"], assign, n_exp, self.variance)
        km_pca, km_two, _ = stratum_dimensions(z["test"], torch.as_tensor(km_assign), n_exp, self.variance)
        sc = {"recon_mse": float(err.gather(1, assign[:, None]).mean()), "best_epoch": log["best_epoch"],
              "epochs": log["epochs"], "best_val_loss": log["best_val"], "n_train": rows["train"].numel(),
              "n_test": rows["test"].numel(), "pca_dim_used": k, "n_used_experts": int((count > 0).sum()),
              "weighted_sparsity": float((probs.double() * torch.tensor(sparsity, dtype=torch.float64)).sum(1).mean())}
        sc |= gating_entropy(probs)
        sc |= cluster_indices(xt_np, assign.numpy())
        sc |= {f"km_{a}": b for a, b in cluster_indices(xt_np, km_assign).items()}
        rng = np.random.default_rng(seed)
        test_rows = rows["test"].numpy()
        for name in self._label_names:
            lab = np.asarray(self.labels[name], dtype=object)[test_rows].astype(str)
            sc |= {f"{a}_{name}": b for a, b in label_agreement(assign.numpy(), lab, self.n_perm, rng).items()}
            sc |= {f"km_{a}_{name}": b for a, b in label_agreement(km_assign, lab, self.n_perm, rng).items()}
        dicts = [d.cpu() for d in model.dictionaries()]
        keys = model.gate.keys.detach().cpu().double()
        return {"scalars": sc, "test_rows": rows["test"], "assign": assign, "km_assign": torch.as_tensor(km_assign, dtype=torch.int64),
                "probs": probs.float(), "proj": z["test"][:, :3].clone(), "pca_dim": pca_d, "twonn": two_d, "count": count,
                "km_pca_dim": km_pca, "km_twonn": km_two, "angles": principal_angles(dicts), "key_dist": torch.cdist(keys, keys),
                "sparsity": torch.tensor(sparsity, dtype=torch.int64)}
