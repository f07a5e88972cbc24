"""Built-in rewards (`[[rewards]] type = ...`), for the trainers that learn from rewards (`grpo`), and the
answer extractors they name:

- `answer_match` (answer_match.py): the answer an extractor finds in the completion against a
  reference column of the row;
- the extractors (extractors.py, `extract = ...`): the last number, a `\\boxed{}` value, a JSON field,
  the text after a marker, the whole text;
- `format` and `length_penalty` (text_rules.py): a regular expression the completion must match,
  and a penalty on completions longer than a limit;
- `reward_model` (model_score.py): a trained reward model's score (a reward run of this runner, a
  model folder or a Hub id; _reward_model.py, which the `win_rate` audit loads its judge with too).
"""
