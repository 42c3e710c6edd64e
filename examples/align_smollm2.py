"""Capture SmolLM2 activations per scale, tune and fit f_GI and f_IL, print held-out metrics and an ablation table.

    python examples/align_smollm2.py            # ~20 minutes on one idle CPU thread (the 5-seed ablation is most of it)
"""

import torch

import msma_lens as ml
from msma_lens.align.protocol import AlignConfig, default_train_config
from msma_lens.align.tuning import TuneConfig

torch.set_num_threads(1)
model = ml.load_model("smollm2-135m")
lens = ml.MSMA(model)  # local 0-9, intermediate 10-19, global 20-29
acts = lens.capture(ml.load_corpus().texts, pooling="token")
cfg = AlignConfig(train=default_train_config(steps=300, eval_every=50), max_train_rows=8192)
tuned = lens.tune(acts, cfg, TuneConfig(n_trials=12), storage="out/tuning/study")  # resumable
print(tuned.table())
result = lens.fit(acts, tuned.align_config(cfg))      # the tuned per-pair configs
print(result.table())
print("kept maps:", result.selected)
published = lens.fit(acts, AlignConfig.published(max_train_rows=8192))  # the paper's objective, for comparison
print("published objective, kept maps:", published.selected)
ablation = lens.ablate(acts, cfg)                     # 5 seeds of the untuned default objective
print(ablation.table())
result.save("out/alignment")
tuned.save("out/tuning")
ablation.write_html("out/ablation.html")
