"""The bare SmolLM2 on AG News and SST-2 (50 examples x 2 templates) under four joining rules:
which delimiter, and whether the EOS that training appends is scored (results/prompt_format/cpu/)."""
import json, torch
torch.set_num_threads(1)
from ctr.core.backbone import load_backbone
from ctr.config import CTRConfig
from ctr.core.model import CTRModel
from ctr.inference.evaluate import EvalConfig, evaluate
bb, tok = load_backbone("smollm2")
out = {}
for delim, eos in [("\n", True), ("\n", False), (" ", True), (" ", False)]:
    m = CTRModel(bb, CTRConfig(use_codes=False, backbone="smollm2", target_delimiter=delim, target_eos=eos), tok)
    r = evaluate(m, EvalConfig(suite="near", tasks=["ag_news", "glue_sst2"], max_examples=50, max_templates=2,
                               output_dir="runs/prompt_format_variants"), progress=False)
    out[f"{delim!r} eos={eos}"] = {t: v["median"] for t, v in r["tasks"].items()}
    print(out, flush=True)
json.dump(out, open("results/prompt_format/cpu/backbone_variants.json", "w"), indent=1)
