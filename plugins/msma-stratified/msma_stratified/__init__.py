"""msma-lens plugin ``stratified``: stratified manifolds per scale (Li & Sarwate, arXiv 2502.13577), trained properly.

Per scale and seed: documents are split into train / validation (early stopping) / held-out test; the rows are
PCA-reduced (fitted on train); a mixture of sparse dictionary experts with an attention gate
(:mod:`msma_stratified.model`) is trained on a reconstruction objective so that the gate and the dictionaries
learn (the authors' code trains neither); the held-out rows are routed by the gate's argmax, and
:mod:`msma_stratified.stats` measures the strata: intrinsic dimension per expert (PCA at 75% variance, the
authors' rule, and TwoNN), gating entropy, principal angles between dictionaries and gate-key distances,
agreement with labels (NMI, ARI, permutation null) and cluster indices, with KMeans (same K, same PCA) beside.

>>> from msma_lens import plugins
>>> res = plugins.run("stratified", acts, labels={"topic": topics}, seeds=[0, 1, 2])
>>> print(res.summary()); res.most_stratified(); res.save("stratified", figures=True)
"""

from __future__ import annotations

from .analysis import StratifiedManifolds
from .model import MixtureOfDictionaryExperts, TrainConfig, contrastive_loss, topk_abs, train_mixture
from .result import StratifiedResult
from .stats import cluster_indices, gating_entropy, label_agreement, mean_ci, pca_dim_75, principal_angles, stratum_dimensions

__version__ = "0.1.0"
__all__ = ["MixtureOfDictionaryExperts", "StratifiedManifolds", "StratifiedResult", "TrainConfig", "cluster_indices",
           "contrastive_loss", "gating_entropy", "label_agreement", "mean_ci", "pca_dim_75", "principal_angles",
           "stratum_dimensions", "topk_abs", "train_mixture"]
