"""CompareConfig: the budget and settings of the comparison suite (validated on construction)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import ConfigError

TASKS: tuple[str, ...] = ("discovery", "alignment", "steering", "crossmodel")  # the default grid
# "plugins": every installed analysis plugin (msma_lens.plugins, e.g. stratified, intrinsic-dim) per model; opt-in
ALL_TASKS: tuple[str, ...] = (*TASKS, "plugins")
DEFAULT_MODELS: tuple[str, ...] = ("smollm2-135m", "gemma3-270m", "qwen2.5-0.5b", "minilm-l6")
ALIGN_ON: tuple[str, ...] = ("words", "documents")


def _pos_int(name: str, v: object, lo: int = 1) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"CompareConfig.{name} must be an int >= {lo}, got {v!r}")


@dataclass
class CompareConfig:
    """Budget of every work unit. The defaults fit the 4-model suite into ~30 minutes on 2 CPU cores
    (benchmarks/compare/RESULTS.md says where the time goes); :meth:`quick` is the setting of the fast tests.

    ``discovery_docs`` / ``discovery_boot`` / ``discovery_tokens`` / ``discovery_probes``: documents, bootstrap
    replicates, sampled tokens and probes of scale discovery;
    ``align_docs``, ``align_rows`` (training rows), ``align_eval_rows``, ``align_steps`` (map training steps);
    ``steer_prompts``, ``max_new_tokens``, ``strengths`` (one per intervention kind), ``steer_metrics`` (text
    metrics of decoders); ``encoder_docs`` (documents of the representation-level effects of encoders);
    ``cka_docs`` / ``cka_rows`` / ``align_on`` (cross-model CKA: documents, sampled rows, ``"words"`` or
    ``"documents"``); ``batch_size``; ``baseline_check`` (steering's degenerate-baseline ratio, None: off);
    ``progress``: tqdm bars; ``device``: where models run.
    """

    discovery_docs: int = 40
    discovery_boot: int = 50
    discovery_tokens: int = 1500
    discovery_probes: tuple[str, ...] = ("pos", "sentence_type", "sentiment", "topic", "register")
    align_docs: int = 48
    align_rows: int = 4000
    align_eval_rows: int = 1024
    align_steps: int = 100
    steer_prompts: int = 8
    max_new_tokens: int = 32
    strengths: dict[str, float] = field(default_factory=lambda: {"translate": 1.0, "rescale": 1.5, "noise": 0.5,
                                                                 "attention": 2.0})
    # the published table's metrics (papers.md §B.6: lexical diversity, sentence count and length, coherence) + degeneration
    steer_metrics: tuple[str, ...] = ("ttr", "distinct_2", "sentence_count", "mean_sentence_length", "coherence",
                                      "repetition_rate")
    encoder_docs: int = 40
    cka_docs: int = 24
    cka_rows: int = 1024
    align_on: str = "words"
    batch_size: int = 8
    baseline_check: float | None = 3.0
    progress: bool = False
    device: str | None = None

    def __post_init__(self) -> None:
        for name in ("discovery_docs", "align_docs", "encoder_docs", "cka_docs"):
            _pos_int(name, getattr(self, name), 4)
        for name in ("discovery_tokens", "align_steps", "align_rows", "align_eval_rows", "steer_prompts", "max_new_tokens",
                     "cka_rows", "batch_size"):
            _pos_int(name, getattr(self, name), 1)
        _pos_int("discovery_boot", self.discovery_boot, 0)
        if self.align_rows < 16 or self.align_eval_rows < 16:
            raise ConfigError(f"CompareConfig.align_rows and align_eval_rows must be >= 16, got {self.align_rows}, "
                              f"{self.align_eval_rows}")
        if self.align_on not in ALIGN_ON:
            raise ConfigError(f"CompareConfig.align_on must be one of {list(ALIGN_ON)}, got {self.align_on!r}")
        if not isinstance(self.strengths, dict) or not self.strengths:
            raise ConfigError(f"CompareConfig.strengths must be a non-empty dict kind -> strength, got {self.strengths!r}")
        bad = [k for k in self.strengths if k not in ("translate", "rescale", "noise", "attention")]
        if bad:
            raise ConfigError(f"CompareConfig.strengths: unknown intervention kind {bad[0]!r}; valid: translate, rescale, "
                              "noise, attention")
        self.discovery_probes = tuple(self.discovery_probes)
        self.steer_metrics = tuple(self.steer_metrics)
        if not self.steer_metrics:
            raise ConfigError("CompareConfig.steer_metrics is empty: name at least one text metric")
        if self.baseline_check is not None and not self.baseline_check > 1:
            raise ConfigError(f"CompareConfig.baseline_check must be None or > 1, got {self.baseline_check!r}")

    @classmethod
    def quick(cls, **kw) -> CompareConfig:
        """Seconds per unit on tiny random models (tests, smoke runs): few documents, steps and prompts."""
        base = dict(discovery_docs=10, discovery_boot=5, discovery_tokens=300, discovery_probes=("topic", "register"),
                    align_docs=10, align_rows=400,
                    align_eval_rows=128, align_steps=10, steer_prompts=8, max_new_tokens=6,
                    strengths={"translate": 1.0, "rescale": 1.5}, steer_metrics=("ttr", "repetition_rate"),
                    encoder_docs=12, cka_docs=6, cka_rows=256, baseline_check=None)
        return cls(**{**base, **kw})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CompareConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"CompareConfig: unknown field {unknown[0]!r}")
        return cls(**d)
