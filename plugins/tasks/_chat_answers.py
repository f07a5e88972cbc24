"""What the tasks on chat-templated text share (`instruction`, `preference`): the chat template
set on the tokenizer (and saved with it), a causal language model's spec, and answering prompts
greedily for samples, `finetune generate` and text metrics.

A task built on it takes `ChatOptions` (template, system, roles, sample prompts, answer length).
"""

from __future__ import annotations

from pydantic import Field, field_validator

from plugins.tasks import _chat_templates as chat_templates
from plugins.tasks import _conversations as conversations
from runner import FinetuneError, ModelSpec, Options, Task, clip


class ChatOptions(Options):
    """The options of every task on chat-templated text; a task's own options subclass it."""

    roles: dict[str, conversations.Role] = Field(
        default_factory=dict,
        description="The data's role names as system, user or assistant, added to the format's own: system, user, "
        "assistant (openai); system, human and user, gpt and assistant (sharegpt).",
    )
    template: str = Field(
        default="alpaca",
        description="'alpaca', 'chatml', 'plain', 'tokenizer' (its own chat template), or a Jinja chat template. "
        "Use the one the model was tuned with.",
    )
    system: str | None = Field(default=None, description="A system message put before every conversation.")
    sample_prompts: list[str] = Field(
        default_factory=list, description="Prompts answered after training; written to samples.jsonl."
    )
    max_new_tokens: int = Field(default=64, gt=0, description="Longest generated answer (samples, predict).")

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        if value in (*chat_templates.BUILTIN, "tokenizer"):
            return value
        if "{" not in value:
            known = ", ".join([*chat_templates.BUILTIN, "tokenizer"])
            raise ValueError(f"unknown template '{clip(value)}': name one of {known}, or write a Jinja chat template")
        problem = chat_templates.check_template(value)
        if problem:
            raise ValueError(problem)
        return value


class ChatTask(Task):
    """A task whose rows are rendered with a chat template and whose model answers prompts."""

    head = "causal_lm"

    def __init__(self, options):
        super().__init__(options)
        self.template_source: str | None = None

    def prepare_tokenizer(self, tokenizer) -> str | None:
        template = self.options.template
        if template == "tokenizer":
            if not tokenizer.chat_template:
                raise FinetuneError("task.template = 'tokenizer', but this tokenizer has no chat template")
            self.template_source = tokenizer.chat_template
            return None
        self.template_source = chat_templates.BUILTIN.get(template, template)
        tokenizer.chat_template = self.template_source  # saved with the tokenizer, used at inference
        markers = chat_templates.MARKERS.get(template, [])
        missing = [m for m in markers if m not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_special_tokens({"additional_special_tokens": missing})
            return f"added the template's markers {', '.join(missing)} as tokens"
        return None

    def _template(self, tokenizer) -> str:
        if self.template_source is None:
            self.template_source = tokenizer.chat_template  # a saved tokenizer carries it
        return self.template_source

    def model_spec(self, tokenizer, max_length: int) -> ModelSpec:
        return ModelSpec(
            head=self.head,
            vocab_size=len(tokenizer),
            max_length=max_length,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )

    def stop_tokens(self, tokenizer) -> list[int]:
        """Generation ends at the end-of-sequence token and at the template's end of turn: the named
        template's, or any known one the template in use writes (a tokenizer's, a recipe's own)."""
        name = self.options.template
        if name in chat_templates.BUILTIN:
            markers = [chat_templates.END_OF_TURN[name]] if name in chat_templates.END_OF_TURN else []
        else:
            template = self.template_source or tokenizer.chat_template or ""
            markers = [m for m in chat_templates.TURN_ENDS if m in template]
        vocab = tokenizer.get_vocab()
        ids = [tokenizer.eos_token_id, *(tokenizer.convert_tokens_to_ids(m) for m in markers if m in vocab)]
        return [i for i in ids if i is not None]

    def generate(
        self, model, tokenizer, prompts: list[str], max_length: int, max_new_tokens: int | None = None,
        batch_size: int = 16,
    ) -> list[str]:  # fmt: skip
        """Greedy answers to rendered prompts, batched with left padding, each stopped at the end of
        sequence or the template's end-of-turn token, at most `max_new_tokens` (default: the task's
        option) long. A prompt longer than max_length tokens keeps its last max_length tokens: the
        end, where the answer starts."""
        from plugins.tasks._generation import greedy

        inputs = [tokenizer(prompt)["input_ids"][-max_length:] for prompt in prompts]
        return greedy(model, tokenizer, inputs, max_new_tokens or self.options.max_new_tokens,
                      self.stop_tokens(tokenizer), batch_size)  # fmt: skip

    def predict(self, model, tokenizer, texts, max_length, max_new_tokens: int | None = None):
        template = self._template(tokenizer)
        prompts = []
        for text in texts:
            messages = [{"role": "user", "content": text}]
            if self.options.system:
                messages.insert(0, {"role": "system", "content": self.options.system})
            prompts.append(chat_templates.render(tokenizer, template, messages, generation_prompt=True))
        answers = self.generate(model, tokenizer, prompts, max_length, max_new_tokens=max_new_tokens)
        return [{"prompt": text, "response": answer} for text, answer in zip(texts, answers, strict=True)]

    def samples(self, model, tokenizer, max_length) -> list[dict]:
        return (
            self.predict(model, tokenizer, self.options.sample_prompts, max_length)
            if self.options.sample_prompts
            else []
        )
