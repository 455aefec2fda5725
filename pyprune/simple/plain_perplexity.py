"""Perplexity of an exported model in plain transformers, in a process that never imports pyprune.

Run as a script (``python plain_perplexity.py MODEL_DIR IDS.pt``), not as a
module of the package: it imports only torch and transformers, loads the
model with ``AutoModelForCausalLM.from_pretrained`` (``AutoModelForSeq2SeqLM`` for an
encoder-decoder; IDS.pt then holds ``input_ids``, ``attention_mask`` and ``labels``, -100 on
padding) and prints one JSON line
``{"perplexity": ..., "pyprune_imported": false}``. ``pyprune simple
evaluate`` runs it on every uniform export, so the table shows that what a
user downloads scores what pyprune reported.
"""
import json
import math
import sys

import torch
import torch.nn.functional as F
import transformers


@torch.no_grad()
def main(model_dir: str, ids_path: str, batch_size: int = 8) -> None:
    config = transformers.AutoConfig.from_pretrained(model_dir)
    auto = transformers.AutoModelForSeq2SeqLM if config.is_encoder_decoder else transformers.AutoModelForCausalLM
    model = auto.from_pretrained(model_dir, dtype=torch.float32).eval()
    data = torch.load(ids_path)
    rows = data if isinstance(data, dict) else {"input_ids": data}
    total, count = 0.0, 0
    for start in range(0, len(rows["input_ids"]), batch_size):
        batch = {key: value[start:start + batch_size] for key, value in rows.items()}
        logits = model(**batch).logits.float()
        if "labels" in batch:
            targets = batch["labels"]
        else:
            logits, targets = logits[:, :-1], batch["input_ids"][:, 1:]
        total += float(F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"))
        count += int((targets != -100).sum())
    print(json.dumps({"perplexity": math.exp(total / count), "model_class": type(model).__name__,
                      "pyprune_imported": any(name.split(".")[0] == "pyprune" for name in sys.modules)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
