"""Cross-scale alignment: closed-form Procrustes (:mod:`.procrustes`), Stiefel maps and their trainer
(:mod:`.maps`), mutual-information estimators (:mod:`.mi`), and the fit/evaluate protocol with ablations
(:mod:`.protocol`)."""

from .procrustes import ProcrustesFit, as_matrix, check_finite, procrustes

__all__ = ["ProcrustesFit", "as_matrix", "check_finite", "procrustes"]
