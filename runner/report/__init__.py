"""What a run leaves for people to read: report.html, the model card, the run record, compare.

Owns the report page (`page` and its `sections`), its charts (`charts`, drawn in `chart_frame`),
the value formatting they share (`values`), the model card (`model_card`, `card_text`), the
machine-readable run record (`run_record`) and `finetune compare` (`compare`). Reads a run
directory; may import the public API, `recipe` (its key paths, `recipe.keys`), `toolkit`, `storage`
and `evaluation` (its verdicts).
"""
