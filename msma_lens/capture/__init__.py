"""From a model to per-scale activations: the partition (:mod:`.scales`), the per-scale hook points
(:mod:`.hookpoints`), the capture itself (:mod:`.collect`) and its result (:mod:`.activations`)."""

from .collect import SHARD_KIND, ShardedCapture, capture, capture_shards, check_texts

__all__ = ["SHARD_KIND", "ShardedCapture", "capture", "capture_shards", "check_texts"]
