"""The mixture of sparse dictionary experts (arXiv 2502.13577, trained properly) and its trainer.

* **Gate** (attention): query q = MLP(x) (``gate_hidden`` > 0; a linear W_q x + b with 0, the authors' form),
  scores q·k_j / (√h · T) against K learned expert keys k_j, softmax. A linear query cannot route strata that
  pass through a common point (x and -x lie in the same stratum but get opposite linear scores), hence the MLP.
* **Experts**: expert j is a dictionary D_j (``code_dim`` unit-norm atoms) with a bias c_j and its own sparsity
  level s_j; its code comes from a LISTA encoder, z ← TopK_{s_j}(W x̃ + S z) unrolled ``n_layers`` times
  (x̃ = x - c_j, z₀ = 0), W and S initialised at iterative hard thresholding for D_j (W = D_jᵀ/L, S = I - D_jᵀD_j/L).
  TopK keeps the s_j largest |z| (the gradient flows through the kept entries). x̂_j = c_j + D_j z_j.
* **Objective** ``"recon"``: ‖x - Σ_j g_j x̂_j‖² (``mixing="blend"``) or Σ_j g_j ‖x - x̂_j‖² (``"expected"``,
  the default: each expert must reconstruct alone, which makes them specialise), per coordinate, + λ_sparse ·
  Σ_j g_j ‖z_j‖₁ / code_dim + λ_balance · KL(mean gate ‖ uniform). g is the softmax (``gate_mode="soft"``) or a
  straight-through Gumbel-softmax sample (``"gumbel"``). ``"supcon"``: the authors' contrastive loss on a
  projection head of Σ_j g_j z_j with labels. ``train_gate=False`` freezes the gate at its random
  initialisation and routes training by its argmax (the authors' code: the gate never receives a gradient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


def topk_abs(z: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` entries of largest magnitude in each row of ``z`` (zero the rest); gradient through the kept ones."""
    if k >= z.shape[-1]:
        return z
    idx = z.detach().abs().topk(k, dim=-1).indices
    return z * torch.zeros_like(z).scatter_(-1, idx, 1.0)


class SparseExpert(nn.Module):
    """A dictionary of ``code_dim`` unit-norm atoms in R^dim with bias, coded by a LISTA encoder with top-``sparsity``."""

    def __init__(self, dim: int, code_dim: int, sparsity: int, n_layers: int, generator: torch.Generator) -> None:
        super().__init__()
        self.sparsity, self.n_layers = sparsity, n_layers
        self.atoms = nn.Parameter(torch.empty(dim, code_dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.W = nn.Parameter(torch.empty(code_dim, dim))
        self.S = nn.Parameter(torch.empty(code_dim, code_dim))
        self.set_dictionary(torch.randn(dim, code_dim, generator=generator))

    @torch.no_grad()
    def set_dictionary(self, atoms: torch.Tensor) -> None:
        """Set the atoms (normalised) and the encoder to iterative hard thresholding for them."""
        d = atoms / atoms.norm(dim=0).clamp_min(1e-8)
        lip = float(torch.linalg.matrix_norm(d, ord=2)) ** 2
        self.atoms.copy_(d)
        self.W.copy_(d.T / lip)
        self.S.copy_(torch.eye(d.shape[1]) - d.T @ d / lip)

    def dictionary(self) -> torch.Tensor:
        """D [dim, code_dim] with unit-norm columns."""
        return self.atoms / self.atoms.norm(dim=0).clamp_min(1e-8)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        b = (x - self.bias) @ self.W.T
        z = topk_abs(b, self.sparsity)
        for _ in range(self.n_layers - 1):
            z = topk_abs(b + z @ self.S.T, self.sparsity)
        return z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.bias + z @ self.dictionary().T


class AttentionGate(nn.Module):
    """softmax(q(x)·K / (√h T)): a query (MLP with ``hidden`` units, or linear) against K learned expert keys."""

    def __init__(self, dim: int, n_experts: int, key_dim: int, hidden: int, generator: torch.Generator) -> None:
        super().__init__()
        self.query = (nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, key_dim)) if hidden
                      else nn.Linear(dim, key_dim))
        for m in self.query.modules():
            if isinstance(m, nn.Linear):
                bound = 1 / math.sqrt(m.in_features)
                with torch.no_grad():
                    m.weight.copy_(torch.rand(m.weight.shape, generator=generator) * 2 * bound - bound)
                    m.bias.copy_(torch.rand(m.bias.shape, generator=generator) * 2 * bound - bound)
        self.keys = nn.Parameter(torch.randn(n_experts, key_dim, generator=generator))

    def forward(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Gate logits [B, K] (already divided by √h and the temperature)."""
        return self.query(x) @ self.keys.T / (math.sqrt(self.keys.shape[1]) * temperature)


class MixtureOfDictionaryExperts(nn.Module):
    """Attention gate + K sparse dictionary experts (see the module docstring)."""

    def __init__(self, dim: int, sparsity: tuple[int, ...], code_dim: int, n_layers: int = 5, key_dim: int = 32,
                 gate_hidden: int = 64, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.gate = AttentionGate(dim, len(sparsity), key_dim, gate_hidden, g)
        self.experts = nn.ModuleList(SparseExpert(dim, code_dim, s, n_layers, g) for s in sparsity)
        self.head = nn.Sequential(nn.Linear(code_dim, code_dim), nn.ReLU(), nn.Linear(code_dim, dim))  # supcon only
        self.sparsity = tuple(sparsity)

    def forward(self, x: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gate logits [B, K], codes [B, K, code_dim], reconstructions [B, K, dim])."""
        codes = torch.stack([e.encode(x) for e in self.experts], 1)
        recon = torch.stack([e.decode(codes[:, j]) for j, e in enumerate(self.experts)], 1)
        return self.gate(x, temperature), codes, recon

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, generator: torch.Generator) -> None:
        """Seed each expert's dictionary with the top principal directions of the angular neighbourhood of one
        training point (uncentred local PCA, 3 × code_dim cosine neighbours), seeds drawn k-means++-style with
        probability ∝ the squared residual to the experts already seeded (k-subspaces++)."""
        code_dim = self.experts[0].atoms.shape[1]
        xn = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        k = min(x.shape[0], 3 * code_dim)
        resid = None
        for e in self.experts:
            w = torch.ones(x.shape[0]) if resid is None else resid.cpu().double().clamp_min(0) + 1e-12
            i = int(torch.multinomial(w, 1, generator=generator))
            nn_idx = (xn @ xn[i]).topk(k).indices
            vh = torch.linalg.svd(x[nn_idx], full_matrices=False).Vh  # [min(k, dim), dim]
            atoms = torch.randn(x.shape[1], code_dim, generator=generator).to(x) * 1e-2
            r = min(code_dim, vh.shape[0])
            atoms[:, :r] += vh[:r].T
            e.set_dictionary(atoms)
            basis = torch.linalg.qr(atoms).Q
            res = (x - x @ basis @ basis.T).pow(2).sum(1)
            resid = res if resid is None else torch.minimum(resid, res)

    def dictionaries(self) -> list[torch.Tensor]:
        return [e.dictionary().detach() for e in self.experts]


@dataclass
class TrainConfig:
    """Training options (validated by the analysis that builds them)."""

    objective: str = "recon"       # "recon" | "supcon"
    mixing: str = "expected"       # "expected" | "blend"
    gate_mode: str = "soft"        # "soft" | "gumbel"
    train_gate: bool = True
    init: str = "data"             # "data" (k-subspaces++ local PCA) | "random"
    temperature: float = 1.0
    lambda_sparse: float = 1e-3
    lambda_balance: float = 0.1
    margin: float = 1.0            # supcon margin
    lr: float = 1e-2
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 20
    seed: int = 0


def contrastive_loss(y: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """The authors' pairwise loss: mean over all pairs of d² (same label) or max(0, m - d)² (different label)."""
    d = torch.cdist(y, y)
    same = labels[:, None] == labels[None, :]
    return torch.where(same, d**2, F.relu(margin - d) ** 2).mean()


def loss_terms(model: MixtureOfDictionaryExperts, x: torch.Tensor, cfg: TrainConfig, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The training objective on a batch: ``{"loss", "recon", "sparse", "balance"}`` (plus ``"supcon"``)."""
    logits, codes, recon = model(x, cfg.temperature)
    probs = logits.softmax(-1)
    if not cfg.train_gate:  # the authors' behaviour: the gate only picks an index, no gradient reaches it
        g = F.one_hot(probs.argmax(-1), probs.shape[1]).to(x.dtype)
    elif cfg.gate_mode == "gumbel" and model.training:
        u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype).to(logits.device).clamp(1e-9, 1 - 1e-9)
        g = _st_gumbel(logits, -torch.log(-torch.log(u)))
    else:
        g = probs
    err = (x[:, None, :] - recon).pow(2).mean(-1)  # [B, K]
    if cfg.mixing == "expected":
        rec = (g * err).sum(1).mean()
    else:
        rec = (x - (g[:, :, None] * recon).sum(1)).pow(2).mean()
    sparse = (g * codes.abs().mean(-1)).sum(1).mean()
    mean_g = probs.mean(0)
    balance = (mean_g * (mean_g.clamp_min(1e-12) * mean_g.numel()).log()).sum()
    out = {"recon": rec, "sparse": sparse, "balance": balance}
    if cfg.objective == "supcon":
        out["supcon"] = contrastive_loss(model.head((g[:, :, None] * codes).sum(1)), labels, cfg.margin)
        out["loss"] = out["supcon"] + cfg.lambda_balance * balance * cfg.train_gate
    else:
        out["loss"] = rec + cfg.lambda_sparse * sparse + cfg.lambda_balance * balance * cfg.train_gate
    return out


def _st_gumbel(logits: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    soft = (logits + noise).softmax(-1)
    hard = F.one_hot(soft.argmax(-1), soft.shape[1]).to(soft.dtype)
    return hard - soft.detach() + soft


def train_mixture(model: MixtureOfDictionaryExperts, x_train: torch.Tensor, x_val: torch.Tensor, cfg: TrainConfig, *,
                  y_train: torch.Tensor | None = None, y_val: torch.Tensor | None = None, progress: bool = False,
                  desc: str = "stratified") -> dict:
    """Adam on minibatches, early stopping on the validation loss (the best state is restored). Returns a log."""
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(cfg.seed)
    if cfg.init == "data":
        model.init_from_data(x_train, g)
    if not cfg.train_gate:
        model.gate.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    dev = x_train.device
    best, best_state, best_epoch, history = math.inf, None, -1, []
    bar = tqdm(range(cfg.max_epochs), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        perm = torch.randperm(x_train.shape[0], generator=g).to(dev)
        for i in range(0, x_train.shape[0], cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            terms = loss_terms(model, x_train[idx], cfg, None if y_train is None else y_train[idx], g)
            opt.zero_grad()
            terms["loss"].backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val = float(loss_terms(model, x_val, cfg, y_val)["loss"])
        history.append(val)
        bar.set_postfix(val=f"{val:.4g}")
        if math.isfinite(val) and (best_state is None or val < best - 1e-6 * abs(best)):
            best, best_epoch = val, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= cfg.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"best_val": best, "best_epoch": best_epoch, "epochs": len(history), "history": history}
