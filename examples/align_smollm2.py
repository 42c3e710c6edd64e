"""Capture SmolLM2 activations per scale, fit f_GI and f_IL, print held-out metrics and an ablation table.

    python examples/align_smollm2.py            # ~10-15 min on one CPU thread
"""

import torch

import msma_lens as ml
from msma_lens.align.maps import MapTrainConfig
from msma_lens.align.protocol import AlignConfig

torch.set_num_threads(1)
model = ml.load_model("smollm2-135m")
lens = ml.MSMA(model)  # local 0-9, intermediate 10-19, global 20-29
acts = lens.capture(ml.load_corpus().texts, pooling="token")
cfg = AlignConfig(train=MapTrainConfig(steps=300, residual_hidden=64, eval_every=50), max_train_rows=8192)
result = lens.fit(acts, cfg)
print(result.table())
ablation = lens.ablate(acts, cfg, seeds=(0, 1, 2))
print(ablation.table())
result.save("out/alignment")
ablation.write_html("out/ablation.html")
