"""Metrics you can trust: local text metrics, their fast paths, bootstrap intervals, and the
generating tasks' prompts and batched greedy answers."""

import math
import random

import numpy as np
import pytest
import torch

from plugins.data.synthetic import as_chat, as_instruction, generate
from plugins.metrics import _local
from plugins.metrics import standard as M
from plugins.tasks._chat_templates import render
from plugins.tasks.instruction import Instruction, InstructionOptions
from plugins.tasks.seq2seq import Seq2Seq, Seq2SeqOptions
from plugins.tokenizers.trained import Trained, TrainedTokenizerOptions
from runner.evaluation.intervals import bootstrap, resampled_values

ROWS = [as_instruction(r, random.Random(0)) for r in generate(60, 0)]
CHATS = [as_chat(r, random.Random(1)) for r in generate(60, 1)]
WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "ran", "fast", "slow", "big", "red", ",", ".", "!"]


def metric(cls, **options):
    m = cls(cls.Options(**options))
    m.prepare(None)
    return m


def texts(n, seed=0, overlap=0.5):
    """Predictions and references that share about `overlap` of their words."""
    rng = random.Random(seed)
    refs = [" ".join(rng.choices(WORDS, k=rng.randint(1, 12))) for _ in range(n)]
    preds = [" ".join(w if rng.random() < overlap else rng.choice(WORDS) for w in r.split()) for r in refs]
    return preds, refs


def classes(n, p=0.8, k=4, seed=0):
    rng = np.random.default_rng(seed)
    references = rng.integers(0, k, n)
    right = np.zeros(n, dtype=bool)
    right[rng.permutation(n)[: round(p * n)]] = True  # exactly p*n correct rows
    wrong = (references + rng.integers(1, k, n)) % k
    return np.where(right, references, wrong), references


# Every local metric, with data of the kind it scores: (component, predictions, references).
def cases():
    pred, ref = classes(300, p=0.6, k=5, seed=3)
    pred[:40] = 5  # a class only predicted, never a reference
    rng = np.random.default_rng(4)
    tokens = rng.integers(1, 40, 300).astype(float)
    losses = tokens * rng.uniform(0.5, 3, 300)
    tag_rng = random.Random(5)
    tags = [[tag_rng.choice(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]) for _ in range(6)] for _ in range(200)]
    noisy = [[t if tag_rng.random() < 0.7 else "O" for t in row] for row in tags]
    hyp, refs = texts(200, seed=6)
    out = [(metric(M.Accuracy), pred, ref), (metric(M.Perplexity), losses, tokens)]
    out += [
        (metric(cls, average=a), pred, ref)
        for cls in (M.Precision, M.Recall, M.F1)
        for a in ("macro", "weighted", "micro")
    ]
    out += [(metric(M.MSE), losses, tokens), (metric(M.MAE), losses, tokens)]
    out += [(metric(cls), noisy, tags) for cls in (M.EntityF1, M.EntityPrecision, M.EntityRecall, M.TokenAccuracy)]
    out += [(metric(M.ExactMatch), hyp[:100] + refs[100:], refs), (metric(M.ExactMatch, ignore_case=True), hyp, refs)]
    out += [(metric(M.Bleu), hyp, refs), (metric(M.Bleu, tokenize="char", lowercase=True), hyp, refs)]
    out += [(metric(M.Rouge, variant=v), hyp, refs) for v in ("rouge1", "rouge2", "rougeL")]
    return out


CASES = cases()
IDS = [f"{i}-{m.key()}" for i, (m, _, _) in enumerate(CASES)]


def case(key):
    """The first case of the metric named `key`."""
    return next(c for c in CASES if c[0].key() == key)


# -- metric modules --------------------------------------------------------------------------------


def test_new_modules_load_offline_from_their_directories():
    import evaluate

    for name in ("exact_match", "bleu", "rouge", "confusion_matrix"):
        module = evaluate.load(str(_local.MODULES / name))  # conftest sets HF_HUB_OFFLINE=1: no network
        assert type(module).__module__.split(".")[-1] == name


def test_bleu_says_it_means_nothing_on_answers_shorter_than_its_n_grams():
    bleu = metric(M.Bleu)
    one_word = ["positive", "negative", "neutral", "the cat sat down"]
    three_right = ["positive", "negative", "neutral", "a dog ran off"]
    assert bleu.compute(three_right, one_word)["bleu"] < 25  # 3 of 4 answers right (exact match 0.75)
    assert "median length of 1 word," in bleu.meaningless(one_word)
    assert bleu.meaningless(["the cat sat on the mat", "a dog ran far away", "no"]) is None
    assert metric(M.ExactMatch).meaningless(one_word) is None


def test_exact_match_normalises_whitespace_and_optionally_case():
    em = metric(M.ExactMatch)
    assert em.compute(["Paris", "a  b\n"], ["Paris", " a b"]) == {"exact_match": 1.0}
    assert em.compute(["Paris", "Rome"], ["London", "Oslo"]) == {"exact_match": 0.0}
    assert em.compute(["paris", "Rome"], ["Paris", "Rome"]) == {"exact_match": 0.5}
    assert metric(M.ExactMatch, ignore_case=True).compute(["paris", "ROME "], ["Paris", "Rome"]) == {"exact_match": 1.0}


def test_bleu_is_100_for_a_perfect_match_0_for_disjoint_text_and_sacrebleus_corpus_score():
    import sacrebleu

    bleu = metric(M.Bleu)
    refs = ["the cat sat on the mat today", "a big red dog ran very fast"]
    assert bleu.compute(refs, refs)["bleu"] == pytest.approx(100.0)
    assert bleu.compute(["one two three four five", "six seven eight nine ten"], refs)["bleu"] == 0.0
    hyp, ref = texts(50, seed=1)
    assert bleu.compute(hyp, ref)["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyp, [ref]).score)
    assert 0 < bleu.compute(hyp, ref)["bleu"] < 100


def test_rouge_known_values():
    for variant in ("rouge1", "rouge2", "rougeL"):
        rouge = metric(M.Rouge, variant=variant)
        assert rouge.compute(["the cat sat"], ["the cat sat"]) == {variant: 1.0}
        assert rouge.compute(["a dog ran"], ["the cat sat"]) == {variant: 0.0}
    # "the cat sat" vs "the cat ran": 2 of 3 words, 1 of 2 word pairs, a common subsequence of 2.
    # The second row is disjoint: the mean over rows halves each.
    pred, ref = ["the cat sat", "x"], ["the cat ran", "y"]
    assert metric(M.Rouge, variant="rouge1").compute(pred, ref)["rouge1"] == pytest.approx(1 / 3)
    assert metric(M.Rouge, variant="rouge2").compute(pred, ref)["rouge2"] == pytest.approx(1 / 4)
    assert metric(M.Rouge, variant="rougeL").compute(pred, ref)["rougeL"] == pytest.approx(1 / 3)


def test_rouge_tokenizer_matches_rouge_score_on_ascii_and_scores_other_scripts():
    from rouge_score import rouge_scorer

    hyp, ref = texts(100, seed=2)
    ours = _local.load_module("rouge")._compute(predictions=hyp, references=ref)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    theirs = [scorer.score(r, h) for h, r in zip(hyp, ref, strict=True)]
    for t in ("rouge1", "rouge2", "rougeL"):
        assert ours[t] == pytest.approx(np.mean([s[t].fmeasure for s in theirs]))
    assert metric(M.Rouge, variant="rouge1").compute(["猫が座った"], ["猫が座る"])["rouge1"] == pytest.approx(2 / 3)
    assert metric(M.Rouge, variant="rouge1").compute(["Привет мир"], ["привет всем"])["rouge1"] == pytest.approx(0.5)


def test_entity_scores_match_a_hand_count():
    predictions = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "O"]]
    references = [["B-PER", "I-PER", "O", "B-ORG"], ["B-LOC", "O"]]
    # 1 of 2 predicted entities is right, 1 of 3 reference entities is found, 4 of 6 tags are right
    expected = {"entity_precision": 1 / 2, "entity_recall": 1 / 3, "entity_f1": 2 / 5, "token_accuracy": 4 / 6}
    for key, value in expected.items():
        cls = next(c for c in (M.EntityPrecision, M.EntityRecall, M.EntityF1, M.TokenAccuracy) if c.name == key)
        assert metric(cls).compute(predictions, references)[key] == pytest.approx(value)


def test_confusion_matrix_counts_match_a_hand_count():
    predictions = [0, 1, 1, 2, 0, 2, 2, 1]
    references = [0, 1, 0, 2, 1, 1, 2, 1]
    hand = [[0] * 4 for _ in range(4)]
    for p, r in zip(predictions, references, strict=True):
        hand[r][p] += 1
    module = _local.load_module("confusion_matrix")
    assert module.compute(predictions=predictions, references=references)["confusion_matrix"] == [
        row[:3] for row in hand[:3]
    ]
    details = metric(M.F1).details(np.array(predictions), np.array(references), num_labels=4)
    assert details["confusion_matrix"]["matrix"] == hand  # class 3 has a row and a column, all zero
    assert details["confusion_matrix"]["rows"] == "reference"
    assert metric(M.Perplexity).details([1.0], [1.0]) == {}


# -- fast paths --------------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_fast_compute_equals_evaluates_public_compute(index):
    m, predictions, references = CASES[index]
    public = m._module().compute(predictions=predictions, references=references, **m._args())
    assert m.compute(predictions, references)[m.key()] == pytest.approx(public[m.result], rel=1e-12)


@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_summed_row_statistics_give_the_metric_of_any_resample(index):
    m, predictions, references = CASES[index]
    stats = m.statistics(predictions, references)
    assert stats is not None and len(stats) == len(predictions)
    rng = np.random.default_rng(index)
    draws = [rng.integers(0, len(predictions), len(predictions)) for _ in range(5)]
    draws.append(np.arange(len(predictions)))
    draws += [np.arange(10), np.arange(40, 44)]  # small subsets, where some classes are missing
    sums = np.stack([stats[d].sum(axis=0) for d in draws])
    values = m.from_statistics(sums)[m.key()]
    take = (lambda x, d: x[d]) if isinstance(predictions, np.ndarray) else (lambda x, d: [x[i] for i in d])
    for d, value in zip(draws, values, strict=True):
        assert value == pytest.approx(m.compute(take(predictions, d), take(references, d))[m.key()], rel=1e-9)


# -- bootstrap intervals -------------------------------------------------------------------------


class ComputeOnly:
    """A metric without statistics (as a Hub metric): the bootstrap recomputes it per draw."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def compute(self, predictions, references):
        self.calls += 1
        return self.inner.compute(predictions, references)


@pytest.mark.parametrize("key", ["accuracy", "f1_macro", "perplexity", "bleu", "rouge2", "exact_match"])
def test_interval_contains_the_estimate_and_repeats_with_its_seed(key):
    m, predictions, references = case(key)
    estimate = m.compute(predictions, references)[m.key()]
    interval = bootstrap(m, predictions, references, resamples=300, seed=1)[m.key()]
    assert interval["low"] <= estimate <= interval["high"] and interval["low"] < interval["high"]
    assert interval["confidence"] == 0.95 and interval["resamples"] == 300
    assert bootstrap(m, predictions, references, resamples=300, seed=1)[m.key()] == interval
    assert bootstrap(m, predictions, references, resamples=300, seed=2)[m.key()] != interval


@pytest.mark.parametrize("key", ["accuracy", "recall_weighted", "perplexity", "bleu", "rougeL", "entity_f1"])
def test_statistics_path_gives_the_same_draws_as_recomputing(key):
    m, predictions, references = case(key)
    slow = ComputeOnly(m)
    recomputed = resampled_values(slow, predictions, references, resamples=40, seed=3)[m.key()]
    assert slow.calls == 40
    fast = resampled_values(m, predictions, references, resamples=40, seed=3)[m.key()]
    assert fast == pytest.approx(recomputed, rel=1e-9)


def test_builtin_metrics_are_never_recomputed_per_draw(monkeypatch):
    m, predictions, references = case("f1_macro")

    def refuse(*args):
        raise AssertionError("compute called per draw")

    monkeypatch.setattr(m, "compute", refuse)
    assert bootstrap(m, predictions, references, resamples=50)


def test_accuracy_interval_width_is_the_binomial_one():
    n, p = 1000, 0.8
    predictions, references = classes(n, p=p)
    interval = bootstrap(metric(M.Accuracy), predictions, references, resamples=2000)["accuracy"]
    expected = 2 * 1.96 * math.sqrt(p * (1 - p) / n)
    assert interval["high"] - interval["low"] == pytest.approx(expected, rel=0.1)
    assert interval["low"] < p < interval["high"]


def test_interval_narrows_with_more_rows():
    acc = metric(M.Accuracy)
    few = bootstrap(acc, *classes(100, seed=1))["accuracy"]
    many = bootstrap(acc, *classes(2000, seed=1))["accuracy"]
    assert many["high"] - many["low"] < 0.5 * (few["high"] - few["low"])  # about 1/sqrt(20)
    bleu = metric(M.Bleu)
    few = bootstrap(bleu, *texts(50, seed=3))["bleu"]
    many = bootstrap(bleu, *texts(1000, seed=3))["bleu"]
    assert many["high"] - many["low"] < 0.5 * (few["high"] - few["low"])


def test_metrics_with_one_seed_see_the_same_draws_and_no_rows_give_no_interval():
    predictions, references = classes(200)
    metrics = [metric(M.Accuracy), metric(M.F1), metric(M.F1, average="micro")]
    merged = {}
    for m in metrics:  # as runner.evaluation.evaluator collects the test intervals
        merged.update(bootstrap(m, predictions, references, resamples=100, confidence=0.9))
    assert set(merged) == {"accuracy", "f1_macro", "f1_micro"}
    assert all(v["confidence"] == 0.9 for v in merged.values())
    # micro F1 of single-label classes is accuracy, and both see the same draws
    assert merged["f1_micro"]["low"] == pytest.approx(merged["accuracy"]["low"])
    assert bootstrap(metrics[0], np.array([]), np.array([])) == {}
    with pytest.raises(ValueError):
        bootstrap(metrics[0], predictions, references, confidence=1.5)


def test_perplexity_draws_without_tokens_are_left_out():
    interval = bootstrap(metric(M.Perplexity), np.array([2.0, 0.0]), np.array([1.0, 0.0]), resamples=200)
    assert interval["perplexity"]["low"] == pytest.approx(math.exp(2.0))
    assert interval["perplexity"]["high"] == pytest.approx(math.exp(2.0))


# -- generating tasks ------------------------------------------------------------------------------


def instruction(**options):
    task = Instruction(InstructionOptions(**options))
    rows = CHATS if options.get("format") == "chat" else ROWS
    tokenizer = Trained(TrainedTokenizerOptions(vocab_size=300)).build(None, lambda: task.training_texts(rows))
    task.prepare_tokenizer(tokenizer)
    return task, tokenizer


def tiny_gpt2(tokenizer, positions=512):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    # Weights larger than GPT-2's usual 0.02: a random model then answers with varied tokens, not
    # with an end of sequence at once (nothing to compare).
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_head=2, n_embd=32, n_positions=positions,
                        initializer_range=0.2, pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    return GPT2LMHeadModel(config)


def tiny_t5(tokenizer):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=64, d_kv=16, num_layers=1, num_heads=2,
                      initializer_factor=5.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)  # fmt: skip
    return T5ForConditionalGeneration(config)


@pytest.mark.parametrize("template", ["alpaca", "chatml", "plain"])
@pytest.mark.parametrize("format", ["alpaca", "chat"])
def test_instruction_prompt_ends_where_the_answer_starts(template, format):
    task, tokenizer = instruction(template=template, format=format)
    rows = (CHATS if format == "chat" else ROWS)[:5]
    if format == "chat":  # a second exchange: the reference is the last answer
        rows = [{"messages": [*r["messages"], {"role": "user", "content": "Sure?"},
                              {"role": "assistant", "content": "Quite sure."}]} for r in rows]  # fmt: skip
    pairs = task.prompts(rows, tokenizer=tokenizer)
    for row, (prompt, reference) in zip(rows, pairs, strict=True):
        whole = render(tokenizer, task.template_source, task.conversation(row))
        assert whole.startswith(prompt) and whole[len(prompt) :].startswith(reference)
        assert reference == ("Quite sure." if format == "chat" else row["output"])
        if format == "chat":
            assert row["messages"][3]["content"] in prompt  # the earlier answer is part of the prompt


def test_few_shot_prompts_show_the_solved_shots_first():
    task, tokenizer = instruction(template="chatml", system="Be brief.")
    shots = ROWS[50:53]
    chat_shot = CHATS[0]  # a shot from a source in the other format
    row = ROWS[0]
    (prompt, reference), = task.prompts([row], shots=[*shots, chat_shot], tokenizer=tokenizer)  # fmt: skip
    (alone, _), = task.prompts([row], tokenizer=tokenizer)  # fmt: skip
    assert reference == row["output"]
    positions = [prompt.index(shot["input"]) for shot in shots] + [prompt.index(chat_shot["messages"][0]["content"])]
    assert positions == sorted(positions) and positions[-1] < prompt.rindex(row["input"])
    answer = "<|im_start|>assistant\n" + shots[0]["output"] + "<|im_end|>"
    assert answer in prompt and answer not in alone
    assert prompt.startswith("<|im_start|>system\nBe brief.") and prompt.count("Be brief.") == 1
    assert prompt.endswith(alone[len("<|im_start|>system\nBe brief.<|im_end|>\n") :])
    with pytest.raises(Exception, match="tokenizer"):
        task.prompts([row])


@pytest.mark.parametrize("template", ["alpaca", "chatml"])
def test_batched_greedy_answers_equal_answers_one_at_a_time(template):
    task, tokenizer = instruction(template=template, max_new_tokens=8)
    model = tiny_gpt2(tokenizer)
    model.train()
    side = tokenizer.padding_side
    prompts = [p for p, _ in task.prompts(ROWS[:10], tokenizer=tokenizer)]
    prompts[3] = prompts[3][-60:]  # lengths differ a lot: heavy left padding in the batch
    assert len({len(tokenizer(p)["input_ids"]) for p in prompts}) > 3
    batch = task.generate(model, tokenizer, prompts, max_length=200, batch_size=5)
    assert batch == [task.generate(model, tokenizer, [p], max_length=200)[0] for p in prompts]
    assert all(isinstance(a, str) for a in batch) and sum(bool(a) for a in batch) >= 5
    assert tokenizer.padding_side == side and model.training  # nothing the caller set is changed
    texts = [r["instruction"] for r in ROWS[:3]]
    rendered = [render(tokenizer, task.template_source, [{"role": "user", "content": t}], True) for t in texts]
    assert [r["response"] for r in task.predict(model, tokenizer, texts, 200)] == task.generate(
        model, tokenizer, rendered, 200
    )


def spy_on_generate(model):
    """Record each model.generate call's input and output lengths."""
    calls, original = [], model.generate

    def generate(**kwargs):
        output = original(**kwargs)
        calls.append((kwargs["input_ids"].shape[1], kwargs["max_new_tokens"], output.shape[1]))
        return output

    model.generate = generate
    return calls


def test_answers_stop_at_the_end_of_turn_and_fit_the_position_limit():
    task, tokenizer = instruction(template="chatml", max_new_tokens=30)
    model = tiny_gpt2(tokenizer)
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert stop != tokenizer.eos_token_id
    with torch.no_grad():  # make <|im_end|> the model's every next token
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(model.transformer.wte.weight[stop] * 100)
    calls = spy_on_generate(model)
    prompts = [p for p, _ in task.prompts(ROWS[:3], tokenizer=tokenizer)]
    assert task.generate(model, tokenizer, prompts, max_length=200) == ["", "", ""]
    (prompt_length, _, output_length), = calls  # fmt: skip
    assert output_length == prompt_length + 1  # stopped at the end of turn, not after 30 tokens
    small = tiny_gpt2(tokenizer, positions=48)  # prompts of ~40 tokens and 30 new ones do not fit in 48
    calls = spy_on_generate(small)
    answers = task.generate(small, tokenizer, prompts, max_length=200)
    assert len(answers) == 3 and any(answers)
    (prompt_length, new, output_length), = calls  # fmt: skip
    assert prompt_length == 48 - 30 and new == 30 and output_length <= 48


def test_seq2seq_prompts_shots_and_batched_answers():
    task = Seq2Seq(Seq2SeqOptions(format="pairs", prefix="translate: ", max_new_tokens=6))
    rows = [{"source": f"source {i} " + "word " * i, "target": f"target {i}"} for i in range(8)]
    tokenizer = Trained(TrainedTokenizerOptions(vocab_size=200)).build(None, lambda: task.training_texts(rows))
    pairs = task.prompts(rows)
    assert pairs[2] == ("translate: source 2 word word ", "target 2")
    (prompt, reference), = task.prompts(rows[:1], shots=rows[5:7])  # fmt: skip
    assert reference == "target 0" and prompt.startswith("translate: source 5")
    assert prompt.index("target 5") < prompt.index("target 6") < prompt.index("source 0")
    assert prompt.count("translate: ") == 1
    model = tiny_t5(tokenizer)
    prompts = [p for p, _ in pairs]
    batch = task.generate(model, tokenizer, prompts, max_length=64, batch_size=3)
    assert batch == [task.generate(model, tokenizer, [p], max_length=64)[0] for p in prompts]
    assert any(batch)
    predicted = task.predict(model, tokenizer, [r["source"] for r in rows[:2]], 64)
    assert [p["response"] for p in predicted] == batch[:2]


def test_row_text_and_default_metrics():
    chat = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                         {"role": "assistant", "content": "A"}]}  # fmt: skip
    assert Instruction(InstructionOptions(format="chat")).row_text(chat) == "Q\nA"
    assert Instruction(InstructionOptions()).row_text({"instruction": "I", "input": "", "output": "O"}) == "I\nO"
    seq = Seq2Seq(Seq2SeqOptions(prefix="p: "))
    assert seq.row_text({"instruction": "I", "input": "X", "output": "O"}) == "I\nX\nO"
    from runner.plugins.manager import get_plugins

    registry = get_plugins().registry
    for task in (Instruction, Seq2Seq):
        assert task.generates and task.default_metrics[0] == {"type": "perplexity"}
        text = [registry.get("metric", m["type"]) for m in task.default_metrics[1:]]
        assert [cls.name for cls in text] == ["exact_match", "bleu", "rouge"]
        assert all(cls.consumes == {"text"} for cls in text)
