"""Steer SmolLM2 at one scale and measure what changes in the text.

    python examples/steer_smollm2.py     # a few minutes on one CPU thread
"""

import torch

import msma_lens as ml

torch.set_num_threads(1)
model = ml.load_model("smollm2-135m")
lens = ml.MSMA(model)

# 1. one steered generation: a contrastive direction at the global scale, added to generated tokens only, at every
#    layer of the scale on top of the previous copies (at="every", the published protocol behind the README's table;
#    the default at="held" keeps one copy in the stream)
pos = ["What a wonderful, happy day; everything went perfectly.", "I love this, it is brilliant and delightful."]
neg = ["What a terrible, awful day; everything went wrong.", "I hate this, it is dreadful and miserable."]
delta = lens.contrastive_direction(pos, neg, "global")  # captured with the lens's own scales and site
out = lens.generate(["The weather this morning"], [ml.Translate("global", delta, strength=0.25, at="every")],
                    phase="generated", max_new_tokens=24, do_sample=False)
print(out.texts[0])

# 2. the same edit through the context manager, composable with your own TransformerLens hooks
with lens.steer(ml.Translate("global", delta, strength=0.25, at="every"), phase="generated") as record:
    print(model.generate("The weather this morning", max_new_tokens=24, do_sample=False, verbose=False))
print(record.to_dict()["interventions"][0]["layers"])

# 3. the experiment grid: scales x interventions x strengths, effect sizes with bootstrap CIs and Holm p-values
prompts = [d.sentences[0].text for d in ml.load_corpus()[::15]]
res = lens.experiment(prompts, interventions=("translate", "rescale", "noise", "attention"),  # at="held" (default)
                      strengths={"translate": (0.5,), "rescale": (1.5,), "noise": (0.3,), "attention": (2.0,)},
                      seeds=(0,), max_new_tokens=32, top_p=0.9)
print(res.format(max_rows=20))
res.save("out/steering", figures=True)
