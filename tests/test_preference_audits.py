"""The audits of a preference- or instruction-tuned chat model: `verbosity` (did answers get longer?)
and `win_rate` (does a reward model prefer the tuned answers to the base model's?).

Tiny GPT-2s are taught, by a few steps on the chat-rendered prompts, to answer every prompt with
one fixed answer: SHORT, LONG (which says "zebra"), or one or the other by prompt (MIXED). The
reward model is a one-layer GPT2ForSequenceClassification whose weights are set by hand so that
its score is about 1 when the text holds the token "zebra" and 0 when not: the answers it prefers
are known in advance."""

from __future__ import annotations

import json

import pytest

from tests.conftest import cli, run_recipe, write

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

THINGS = ["car", "house", "bird", "coat", "boat", "lamp", "chair", "door"]
PROMPTS = [f"what colour is the {thing}?" for thing in THINGS]
SHORT = "it is red."
LONG = "it is red, says the zebra, and blue and green and yellow and white, all of them at once."
MAX_NEW = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread: two spin against each other on a busy machine (a
    model's training took 47 s of CPU on two threads, 1 s on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def render_rows(answer_of) -> list[dict]:
    return [{"prompt": p, "chosen": answer_of(i), "rejected": SHORT if answer_of(i) != SHORT else LONG}
            for i, p in enumerate(PROMPTS)]  # fmt: skip


def make_task():
    from plugins.tasks.preference import Preference

    return Preference(Preference.Options(format="text", template="chatml", max_new_tokens=MAX_NEW))


@pytest.fixture(scope="module")
def tokenizer():
    from plugins.tokenizers.trained import Trained

    texts = [*PROMPTS, SHORT, LONG] * 20
    tok = Trained(Trained.Options(vocab_size=400, max_length=64)).build(None, lambda: iter(texts))
    make_task().prepare_tokenizer(tok)  # the chatml markers, and the template saved with it
    assert len(tok(" zebra", add_special_tokens=False)["input_ids"]) == 1
    return tok


def zebra_id(tokenizer) -> int:
    return tokenizer(" zebra", add_special_tokens=False)["input_ids"][0]


def gpt2_config(tokenizer, **extra):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_head=2, n_embd=32, n_positions=96, resid_pdrop=0.0,
                      embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=tokenizer.pad_token_id,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **extra)  # fmt: skip


def taught(tokenizer, answer_of, seed: int = 0, steps: int = 100):
    """A tiny GPT-2 taught to answer prompt i with answer_of(i), then the end of turn."""
    from transformers import GPT2LMHeadModel

    task = make_task()
    rendered = [prompt for prompt, _ in task.prompts(render_rows(answer_of), tokenizer=tokenizer)]
    rows = [tokenizer(p + answer_of(i) + "<|im_end|>")["input_ids"] for i, p in enumerate(rendered)]
    longest = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (longest - len(r)) for r in rows])
    labels = torch.tensor([r + [-100] * (longest - len(r)) for r in rows])
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(gpt2_config(tokenizer))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.fixture(scope="module")
def models(tokenizer):
    return {
        "short": taught(tokenizer, lambda i: SHORT),
        "long": taught(tokenizer, lambda i: LONG),
        "mixed": taught(tokenizer, lambda i: LONG if i % 2 else SHORT),
    }


def reward_model(tokenizer, directory, chat_template: bool = True):
    """A one-output GPT-2 classifier whose score is ~1 when the text holds "zebra", else ~0: the
    only non-zero embedding is zebra's, attention is uniform (no query/key weights) and passes the
    values through, so the last position holds (zebras seen / tokens) times zebra's direction,
    which the final layer norm scales back to that direction and the score head reads."""
    from transformers import GPT2ForSequenceClassification

    config = gpt2_config(tokenizer, num_labels=1)
    config.n_layer, config.n_head = 1, 1
    model = GPT2ForSequenceClassification(config)
    d = config.n_embd
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for ln in (model.transformer.h[0].ln_1, model.transformer.h[0].ln_2, model.transformer.ln_f):
            ln.weight.fill_(1.0)
        u = torch.zeros(d)
        u[0], u[1] = 3.0, -3.0
        model.transformer.wte.weight[zebra_id(tokenizer)] = u
        attn = model.transformer.h[0].attn
        attn.c_attn.weight[:, 2 * d :] = torch.eye(d)  # values: the input itself
        attn.c_proj.weight.copy_(torch.eye(d))
        direction = torch.nn.functional.layer_norm(u, (d,))
        model.score.weight[0] = direction / direction.dot(direction)
    model.save_pretrained(directory)
    saved = tokenizer
    if not chat_template:
        import copy

        saved = copy.deepcopy(tokenizer)
        saved.chat_template = None
    saved.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def judge_dir(tokenizer, tmp_path_factory):
    return reward_model(tokenizer, tmp_path_factory.mktemp("reward"))


def audit_data(rows):
    from datasets import Dataset

    from runner import AuditData

    task = make_task()
    return AuditData(task, {"test": [(task, Dataset.from_list(rows))]}, lambda split, i: f"row {i}")


def subject(label, model, tokenizer):
    from runner import AuditSubject

    return AuditSubject(label, model, tokenizer, make_task(), max_length=64)


def measured(audit, base_model, tuned_model, tokenizer, rows=None):
    data = audit_data(rows or render_rows(lambda i: LONG))
    before = audit.measure(subject("base", base_model, tokenizer), data, None)
    after = audit.measure(subject("finetuned", tuned_model, tokenizer), data, None)
    return before, after, audit.judge(before, after)


def verbosity(**options):
    from plugins.audits.verbosity import Verbosity

    return Verbosity(Verbosity.Options(**options))


def win_rate(reward_dir, **options):
    from plugins.audits.win_rate import WinRate

    return WinRate(WinRate.Options(reward_model=str(reward_dir), **options))


def tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


# -- verbosity ---------------------------------------------------------------------------------------
def test_longer_tuned_answers_fail_verbosity_with_the_numbers_in_the_summary(models, tokenizer):
    before, after, result = measured(verbosity(max_increase=0.5), models["short"], models["long"], tokenizer)

    assert before["per_prompt"]["answers"] == [SHORT] * len(PROMPTS)
    assert after["per_prompt"]["answers"] == [LONG] * len(PROMPTS)
    short, long = tokens(tokenizer, SHORT), tokens(tokenizer, LONG)
    assert before["mean_tokens"] == short and after["mean_tokens"] == long
    assert after["mean_words"] == len(LONG.split()) and after["cut_share"] == 0
    assert result.passed is False
    assert result.figures["relative_increase"] == pytest.approx(long / short - 1)
    assert f"grew from {short:.1f} to {long:.1f} tokens" in result.summary
    assert f"+{100 * (long / short - 1):.0f}%" in result.summary and "more than the 50% allowed" in result.summary
    assert result.thresholds == {"max_increase": 0.5}
    assert result.examples and result.examples[0]["fine-tuned answer"] == LONG
    # per prompt, both answers side by side; the base/fine-tuned table keeps the overall figures
    assert result.figures["per_prompt"]["prompts"] == PROMPTS and "per_prompt" not in result.figures["finetuned"]
    assert result.figures["per_prompt"]["finetuned_tokens"] == [long] * len(PROMPTS)


def test_answers_within_the_allowed_growth_pass(models, tokenizer):
    _, _, same = measured(verbosity(max_increase=0.0), models["short"], models["short"], tokenizer)
    assert same.passed is True and same.figures["relative_increase"] == 0
    _, _, shorter = measured(verbosity(), models["long"], models["mixed"], tokenizer)
    assert shorter.passed is True and shorter.figures["relative_increase"] < 0 and "shrank from" in shorter.summary
    # a generous threshold lets the long answers through; the verdict follows the threshold
    short, long = tokens(tokenizer, SHORT), tokens(tokenizer, LONG)
    _, _, loose = measured(verbosity(max_increase=long / short), models["short"], models["long"], tokenizer)
    assert loose.passed is True


def test_answers_cut_at_max_new_tokens_are_counted_and_said(models, tokenizer):
    _, after, result = measured(verbosity(max_new_tokens=4), models["short"], models["long"], tokenizer)
    assert after["max_new_tokens"] == 4 and after["cut_share"] == 1.0 and after["mean_tokens"] >= 4
    assert "stopped at max_new_tokens (4)" in result.summary


def test_without_a_baseline_verbosity_is_undecided(models, tokenizer):
    audit = verbosity()
    after = audit.measure(
        subject("finetuned", models["long"], tokenizer), audit_data(render_rows(lambda i: LONG)), None
    )
    result = audit.judge(None, after)
    assert result.passed is None and "no baseline" in result.summary


def test_prompts_are_distinct_first_ones_of_the_test_split_up_to_max_prompts(models, tokenizer):
    rows = render_rows(lambda i: LONG)
    data = audit_data(rows + rows)  # every prompt twice: the pairs of one prompt count once
    figures = verbosity(max_prompts=5).measure(subject("base", models["short"], tokenizer), data, None)
    assert figures["prompts"] == 5 and figures["split"] == "test"
    assert figures["per_prompt"]["prompts"] == PROMPTS[:5]
    everything = verbosity().measure(subject("base", models["short"], tokenizer), data, None)
    assert everything["prompts"] == len(PROMPTS)


@pytest.mark.parametrize("layout", ["alpaca", "openai"])
def test_instruction_rows_are_answered_the_same_way(layout, models, tokenizer, judge_dir):
    """The instruction task's rows (alpaca columns, or openai conversations with an earlier answer
    to leave out) give the same prompts, so the same answers and verdicts."""
    from datasets import Dataset

    from plugins.tasks.instruction import Instruction
    from runner import AuditData, AuditSubject

    task = Instruction(Instruction.Options(format=layout, template="chatml", max_new_tokens=MAX_NEW))
    if layout == "alpaca":
        rows = [{"instruction": p, "output": LONG} for p in PROMPTS]
    else:
        rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": LONG}]}
                for p in PROMPTS]  # fmt: skip
    data = AuditData(task, {"test": [(task, Dataset.from_list(rows))]}, lambda split, i: f"row {i}")
    for audit, figure in ((verbosity(), "relative_increase"), (win_rate(judge_dir), "win_rate")):
        before = audit.measure(AuditSubject("base", models["short"], tokenizer, task, 64), data, None)
        after = audit.measure(AuditSubject("finetuned", models["long"], tokenizer, task, 64), data, None)
        result = audit.judge(before, after)
        assert result.figures["per_prompt"]["prompts"] == PROMPTS
        assert result.figures["per_prompt"]["finetuned_answers"] == [LONG] * len(PROMPTS)
        assert result.figures[figure] == pytest.approx(
            tokens(tokenizer, LONG) / tokens(tokenizer, SHORT) - 1 if figure == "relative_increase" else 1.0
        )


# -- win rate ----------------------------------------------------------------------------------------
def test_the_hand_set_reward_model_scores_zebra_answers_high(judge_dir, tokenizer):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(judge_dir).eval()
    with torch.no_grad():
        scores = [float(model(**tokenizer(t, return_tensors="pt")).logits[0, 0]) for t in (LONG, SHORT)]
    assert scores[0] > 0.9 and abs(scores[1]) < 0.1


def test_win_rate_passes_when_the_reward_model_prefers_the_tuned_answers(models, tokenizer, judge_dir):
    before, after, result = measured(win_rate(judge_dir), models["short"], models["long"], tokenizer)
    assert result.passed is True and result.figures["win_rate"] == 1.0
    assert (result.figures["wins"], result.figures["ties"], result.figures["losses"]) == (len(PROMPTS), 0, 0)
    assert len(before["per_prompt"]["scores"]) == len(PROMPTS) == len(after["per_prompt"]["scores"])
    assert after["mean_reward"] > 0.9 > 0.1 > abs(before["mean_reward"])
    assert after["reward_model"]["reads"] == "chat template"
    assert "prefers the fine-tuned answer on 100% of 8 test prompts" in result.summary
    assert result.thresholds == {"min_win_rate": 0.5}


def test_win_rate_fails_in_the_reverse_setup(models, tokenizer, judge_dir):
    _, _, result = measured(win_rate(judge_dir), models["long"], models["short"], tokenizer)
    assert result.passed is False and result.figures["win_rate"] == 0.0 and "below the 50% required" in result.summary


def test_ties_count_half_and_the_interval_holds_the_estimate(models, tokenizer, judge_dir):
    _, _, result = measured(win_rate(judge_dir, min_win_rate=0.8), models["short"], models["mixed"], tokenizer)
    f = result.figures
    assert (f["wins"], f["ties"], f["losses"]) == (4, 4, 0)
    assert f["per_prompt"]["outcomes"] == [0.5, 1.0] * 4  # MIXED says LONG on the odd prompts
    assert f["win_rate"] == 0.75 and result.passed is False  # below the 0.8 asked for
    low, high = f["interval"]["low"], f["interval"]["high"]
    assert 0 <= low < f["win_rate"] < high <= 1


def test_the_bootstrap_interval_is_inside_0_1_and_narrows_with_more_prompts():
    from plugins.audits.win_rate import bootstrap

    few = [1.0, 0.0, 0.5, 1.0, 1.0, 0.0, 1.0, 0.5]
    many = few * 25
    low, high = bootstrap(few, 2000, 0.95)
    low_many, high_many = bootstrap(many, 2000, 0.95)
    rate = sum(few) / len(few)
    assert 0 <= low < rate < high <= 1 and low_many < rate < high_many
    assert high_many - low_many < (high - low) / 2
    assert bootstrap(few, 2000, 0.95) == (low, high)  # seeded: the same figures, the same interval


def test_a_reward_model_without_a_chat_template_reads_prompt_and_answer_as_text(models, tokenizer, tmp_path):
    directory = reward_model(tokenizer, tmp_path / "plain", chat_template=False)
    before, after, result = measured(win_rate(directory), models["short"], models["long"], tokenizer)
    assert after["reward_model"]["reads"] == "text" and result.figures["win_rate"] == 1.0


def fake_run(directory, model_dir_writer, state: str = "completed", adapter: bool = False, base=None):
    """A folder laid out as a run directory of this runner (what open_run and model `run` read)."""
    directory.mkdir(parents=True)
    (directory / "recipe.resolved.toml").write_text("[run]\n", encoding="utf-8")
    (directory / "status.json").write_text(json.dumps({"state": state}), encoding="utf-8")
    model_dir_writer(directory / "model")
    meta = {"head": "sequence_classification", "adapter": adapter, "task": "preference", "base_model": str(base)}
    (directory / "model" / "finetune.json").write_text(json.dumps(meta), encoding="utf-8")
    return directory


def test_a_reward_run_directory_and_a_folder_of_runs_are_judges(models, tokenizer, tmp_path):
    runs = tmp_path / "runs" / "reward"
    run = fake_run(runs / "2026-01-01-000000", lambda d: reward_model(tokenizer, d))
    for named in (run, runs):
        _, after, result = measured(win_rate(named), models["short"], models["long"], tokenizer)
        assert result.figures["win_rate"] == 1.0
        assert after["reward_model"]["path"] == str((run / "model").resolve())


def test_a_lora_adapter_over_a_language_model_is_merged_into_its_base_to_judge(models, tokenizer, tmp_path):
    """A PEFT adapter folder, and a run that saved one, over a causal LM (the usual reward LoRA): the
    base loads as a classifier with a new score head, the adapter brings the trained one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, GPT2Config, GPT2LMHeadModel

    judge = AutoModelForSequenceClassification.from_pretrained(reward_model(tokenizer, tmp_path / "judge"))
    language_model = GPT2LMHeadModel(GPT2Config(**{**judge.config.to_dict(), "architectures": None, "num_labels": 2}))
    language_model.transformer.load_state_dict(judge.transformer.state_dict())
    language_model.save_pretrained(tmp_path / "base")
    head = judge.score.weight.detach().clone()
    config = LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["c_attn"], modules_to_save=["score"])
    adapted = get_peft_model(judge, config)
    with torch.no_grad():
        adapted.base_model.model.score.modules_to_save["default"].weight.copy_(head)

    def save(directory):
        adapted.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        settings = json.loads((directory / "adapter_config.json").read_text())
        settings["base_model_name_or_path"] = str(tmp_path / "base")
        (directory / "adapter_config.json").write_text(json.dumps(settings))

    save(tmp_path / "adapter")
    run = fake_run(tmp_path / "runs" / "r", save, adapter=True, base=tmp_path / "base")
    for named in (tmp_path / "adapter", run):
        assert rewards_check(named) is None
        _, after, result = measured(win_rate(named), models["short"], models["long"], tokenizer)
        assert result.figures["win_rate"] == 1.0 and after["mean_reward"] > 0.9


def rewards_check(path):
    from plugins.rewards._reward_model import check

    return check(str(path))


# -- recipe errors -----------------------------------------------------------------------------------
RECIPE = """
[run]
seed = 3
threads = 1

[[data.sources]]
type = "files"
path = "{data}"

[data.split]
train = 0.5
validation = 0.25
test = 0.25

[tokenizer]
type = "pretrained"
path = "{model}"
max_length = 64

[model]
type = "pretrained"
path = "{model}"

[task]
type = "preference"
format = "text"
template = "chatml"
max_new_tokens = {max_new}

[training]
type = "dpo"
beta = 0.05
learning_rate = 1e-2
batch_size = 8
epochs = {epochs}
keep_best = false

[evaluation]
baseline = false
"""


@pytest.fixture(scope="module")
def sft_dir(models, tokenizer, tmp_path_factory):
    """The short-answer model saved as a Hub repository holds it: the SFT model DPO starts from."""
    directory = tmp_path_factory.mktemp("sft")
    models["short"].save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def pairs_file(directory, copies: int = 8):
    rows = render_rows(lambda i: LONG) * copies
    path = directory / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def recipe(directory, sft_dir, audits: str, epochs: int = 6):
    text = RECIPE.format(data=pairs_file(directory), model=sft_dir, max_new=MAX_NEW, epochs=epochs) + audits
    return write(directory / "recipe.toml", text)


def validate(path, capsys) -> tuple[int, str]:
    code = cli("validate", path)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize(
    ("audit", "key", "message"),
    [
        ('type = "verbosity"\nmax_increase = -1', "audits[0].max_increase", ">= 0"),
        ('type = "verbosity"\nmax_increse = 1', "audits[0].max_increse", "max_increase"),
        ('type = "verbosity"\nsplit = "train"', "audits[0].split", "test"),
        ('type = "win_rate"\nreward_model = "./no/such/model"', "audits[0].reward_model", "no such reward model"),
        ('type = "win_rate"\nreward_model = "{sft}"', "audits[0].reward_model", "not a sequence classifier"),
        ('type = "win_rate"\nreward_model = "{two}"', "audits[0].reward_model", "2 outputs"),
        ('type = "win_rate"\nreward_model = "{judge}"\nmin_win_rate = 1.5', "audits[0].min_win_rate", "1"),
        ('type = "win_rate"', "audits[0].reward_model", "required"),
    ],
)
def test_bad_audit_options_are_recipe_errors_naming_the_key(audit, key, message, sft_dir, judge_dir, tokenizer,
                                                            tmp_path, capsys):  # fmt: skip
    from transformers import GPT2ForSequenceClassification

    two = tmp_path / "two"
    GPT2ForSequenceClassification(gpt2_config(tokenizer, num_labels=2)).save_pretrained(two)
    table = "\n[[audits]]\n" + audit.format(sft=sft_dir, two=two, judge=judge_dir) + "\n"
    code, out = validate(recipe(tmp_path, sft_dir, table), capsys)
    assert code == 2, out
    assert key in out and message in out, out
    assert "Traceback" not in out


def test_a_classification_task_is_refused_by_validate(tmp_path, capsys):
    from tests.conftest import tiny_recipe

    for audit in ('type = "verbosity"', 'type = "win_rate"\nreward_model = "org/reward"'):
        path = tiny_recipe(tmp_path / "r.toml", extra=f"\n[[audits]]\n{audit}\n")
        code, out = validate(path, capsys)
        assert code == 2 and "audits[0].type" in out and "does not generate text" in out, out
        assert "Traceback" not in out


# -- a whole run -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tuned_run(sft_dir, judge_dir, tmp_path_factory):
    """DPO from the short-answer model on pairs preferring the long answer, audited by both."""
    directory = tmp_path_factory.mktemp("dpo-run")
    audits = f"""
[[audits]]
type = "verbosity"
max_increase = 0.5

[[audits]]
type = "win_rate"
reward_model = "{judge_dir}"
"""
    return run_recipe(recipe(directory, sft_dir, audits), directory / "run")


def test_a_dpo_run_records_both_audits_in_audits_json_and_the_report(tuned_run):
    assert tuned_run.status == "completed", tuned_run.message
    records = {a["name"]: a for a in json.loads((tuned_run.path / "audits.json").read_text())["audits"]}
    verbose, wins = records["verbosity"], records["win_rate"]
    # DPO towards the long answer lengthens the answers: verbosity fails, the reward model is pleased
    assert verbose["passed"] is False and verbose["figures"]["relative_increase"] > 0.5
    assert verbose["figures"]["per_prompt"]["base_answers"][0] == SHORT
    assert "zebra" in verbose["figures"]["per_prompt"]["finetuned_answers"][0]
    assert wins["passed"] is True and wins["figures"]["win_rate"] > 0.5
    assert wins["figures"]["interval"]["low"] <= wins["figures"]["win_rate"] <= wins["figures"]["interval"]["high"]
    assert json.loads((tuned_run.path / "status.json").read_text())["audits_failed"] == ["verbosity"]
    report = (tuned_run.path / "report.html").read_text(encoding="utf-8")
    assert "verbosity" in report and "win_rate" in report and verbose["summary"].split(" (")[0] in report
