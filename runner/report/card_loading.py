"""The model card's "How to load it": the lines that load the run's model with plain transformers
or peft, and the `finetune` command that does the same from the run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.components.models import HEADS
from runner.report.card_text import md_fenced
from runner.report.run_record import read_json_object


def _final_dir(model_dir: Path) -> Path:
    """Where the model will be read from: a card written into the temporary directory that is renamed
    into place when complete (`.model.tmp`, see runner.storage.rundir.publish) names the final directory."""
    name = model_dir.name
    if name.startswith(".") and name.endswith(".tmp") and len(name) > 5:
        return model_dir.with_name(name[1:-4])
    return model_dir


# The peft methods (adapter_config.json's peft_type) whose model plain peft feeds inputs_embeds.
EMBEDDING_PROMPTS = ("PROMPT_TUNING", "P_TUNING")


def how_to_load(model_dir: Path, meta: dict[str, Any], run_dir: Path) -> list[str]:
    head = str(meta.get("head") or "sequence_classification")
    suffix = HEADS.get(head, HEADS["sequence_classification"]).removeprefix("AutoModel")
    max_length = meta.get("max_length") or 512
    if meta.get("adapter"):
        cls = f"AutoPeftModel{suffix}"
        imports = f"from peft import {cls}\nfrom transformers import AutoTokenizer"
        note = "# peft loads the base model named in adapter_config.json, then the adapter on top"
    else:
        cls = f"AutoModel{suffix}"
        imports = f"from transformers import {cls}, AutoTokenizer"
        note = ""
    use = {
        "sequence_classification": 'inputs = tokenizer(["an example text"], return_tensors="pt", truncation=True, '
        f"max_length={max_length})\nlabel = model(**inputs).logits.argmax(-1).item()\n"
        "print(model.config.id2label[label])",
        "token_classification": f'inputs = tokenizer(["an example text"], return_tensors="pt", truncation=True, '
        f"max_length={max_length})\ntags = model(**inputs).logits.argmax(-1)[0].tolist()\n"
        "print([model.config.id2label[t] for t in tags])",
    }.get(
        head,
        'inputs = tokenizer(["an example prompt"], return_tensors="pt")\n'
        "output = model.generate(**inputs, max_new_tokens=50)\n"
        "print(tokenizer.decode(output[0], skip_special_tokens=True))",
    )
    code = (
        f"{imports}\n\npath = {str(_final_dir(model_dir))!r}  # this directory, or its Hub repository once uploaded\n"
        + (f"{note}\n" if note else "")
        + f"model = {cls}.from_pretrained(path)\ntokenizer = AutoTokenizer.from_pretrained(path)\n\n{use}"
    )
    command, flag = ("generate", "--prompt") if head in ("causal_lm", "seq2seq_lm") else ("predict", "--text")
    where = f'"{run_dir}"' if " " in str(run_dir) else str(run_dir)
    caveat = []
    peft = read_json_object(model_dir, "adapter_config.json") or {}  # what peft recorded of its adapter
    if head == "sequence_classification" and peft.get("peft_type") in EMBEDDING_PROMPTS:
        caveat = [
            "Classify one text at a time with plain peft: it feeds this model embeddings, so a classifier "
            "that reads the last token (GPT-2, Llama) reads padding in a padded batch. `finetune predict` "
            "reads each row's last real token in batches too.",
            "",
        ]
    return [
        "## How to load it",
        "",
        md_fenced(code, "python"),
        "",
        *caveat,
        "Or with finetune-runner, from the run directory:",
        "",
        md_fenced(f'finetune {command} {where} {flag} "an example"', "bash"),
    ]
