"""Built-in chat templates, and the split of a rendered conversation into prompt and response.

A template is a Jinja chat template in the transformers convention (`messages`,
`add_generation_prompt`, `eos_token`), rendered by the tokenizer's `apply_chat_template`, which
runs it in a sandbox: a template in a recipe can format text, never run code.

Which characters are the response is found by rendering: the text of assistant turn k is what
rendering the first k+1 messages adds to rendering the first k with a generation prompt. That
holds for every assistant turn of a multi-turn conversation, not only the last, and for any
template that renders a conversation as the concatenation of its turns, which all common ones do;
a template that does not is an error, never a silently wrong mask. Any other turn (a user turn
trained by its own `train` flag) is all that rendering it adds.
"""

from __future__ import annotations

from plugins.tasks._template_sandbox import time_limit, trial_render
from runner import FinetuneError, clip

DEFAULT_SYSTEM = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)

# Turn separators open the next turn rather than close the previous one, so that an assistant
# turn is exactly its content and end marker: the separator is never trained as a response.
# Newlines are written as {{ NL }} expressions: transformers renders templates with trim_blocks,
# which swallows a newline that follows a tag.
_NL = "{{ '\\n' }}"
ALPACA = (
    "{% if messages[0]['role'] != 'system' %}" + DEFAULT_SYSTEM + "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}NLNL### Instruction:NL{{ message['content'] }}"
    "{% if message.get('input') %}NLNL### Input:NL{{ message['input'] }}{% endif %}"
    "NLNL### Response:NL"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}"
    "{% endif %}{% endfor %}"
).replace("NL", _NL)

# ChatML's newline between turns opens the next turn (the usual template writes it after
# <|im_end|>, which would train it, and whatever the tokenizer makes of it, as part of the answer).
# A whole conversation renders to the same text, less a newline at its very end.
CHATML = (
    "{% for message in messages %}"
    "{% if not loop.first %}NL{% endif %}<|im_start|>{{ message['role'] }}NL{{ message['content'] }}"
    "{% if message.get('input') %}NLNL{{ message['input'] }}{% endif %}<|im_end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}{% if messages %}NL{% endif %}<|im_start|>assistantNL{% endif %}"
).replace("NL", _NL)

PLAIN = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}NL"
    "{% elif message['role'] == 'user' %}{% if not loop.first %}NL{% endif %}User: {{ message['content'] }}"
    "{% if message.get('input') %}NL{{ message['input'] }}{% endif %}NLAssistant: "
    "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}"
    "{% endif %}{% endfor %}"
).replace("NL", _NL)

BUILTIN = {"alpaca": ALPACA, "chatml": CHATML, "plain": PLAIN}
# Special tokens a template's markers need, so that each is one token and can end generation.
MARKERS = {"chatml": ["<|im_start|>", "<|im_end|>"]}
END_OF_TURN = {"chatml": "<|im_end|>"}
# The end-of-turn tokens of common model families' templates (ChatML, Llama 3, Gemma, Phi-3): a
# template taken from the tokenizer, or written in the recipe, that writes one ends answers with it.
TURN_ENDS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


def check_template(source: str) -> str | None:
    """What is wrong with a template, or None: a syntax error, or a failure to render a short sample
    conversation within the sandbox's limits of time and size (see _template_sandbox)."""
    import jinja2

    try:
        jinja2.Environment().parse(source)
    except jinja2.TemplateSyntaxError as exc:
        return f"template syntax error on its line {exc.lineno}: {exc.message}"
    except RecursionError:
        return "the template nests its blocks too deeply to be read"
    return trial_render(source)


def render(tokenizer, template: str, messages: list[dict], generation_prompt: bool = False) -> str:
    """The conversation rendered by the template; any failure, or a render that takes longer than
    RENDER_SECONDS, is a FinetuneError naming task.template (a recipe's template is user input)."""
    try:
        with time_limit():
            return tokenizer.apply_chat_template(
                messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
            )
    except FinetuneError:
        raise
    except Exception as exc:  # the sandbox's refusal, raise_exception(), RenderStopped, a RecursionError, ...
        raise FinetuneError(
            f"task.template: the chat template failed to render: {type(exc).__name__}: {clip(str(exc))}",
            hint="fix the template, or use a built-in one (alpaca, chatml, plain)",
        ) from None


def turn_spans(tokenizer, template: str, messages: list[dict], turns) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the turns numbered in `turns`. An
    assistant turn's span is its response: what it adds to the conversation before it rendered with
    a generation prompt, up to its end marker. Any other turn's is all that rendering it adds."""
    rendered: dict[tuple[int, bool], str] = {}

    def upto(k: int, generation_prompt: bool = False) -> str:  # the first k messages, rendered once
        if k == 0 and not generation_prompt:
            return ""
        if (k, generation_prompt) not in rendered:
            rendered[k, generation_prompt] = render(tokenizer, template, messages[:k], generation_prompt)
        return rendered[k, generation_prompt]

    text = upto(len(messages))
    spans = []
    for k in sorted(turns):
        assistant = messages[k]["role"] == "assistant"
        before, after = upto(k, generation_prompt=assistant and k > 0), upto(k + 1)
        if not after.startswith(before) or not text.startswith(after):
            raise FinetuneError(
                "the chat template does not render a conversation turn by turn, so the response "
                "tokens cannot be told from the prompt",
                hint="use a built-in template (alpaca, chatml, plain) or one that renders turns in order",
            )
        end = _end_at_marker(text, len(before), len(after), tokenizer.all_special_tokens) if assistant else len(after)
        spans.append((len(before), end))
    return text, spans


def _end_at_marker(text: str, start: int, end: int, markers: list[str]) -> int:
    """Where a turn's trained span ends: at its end marker, when the template writes only
    whitespace after it (a separator between turns, as the usual ChatML template's newline)."""
    kept = text[start:end].rstrip()
    return start + len(kept) if any(marker and kept.endswith(marker) for marker in markers) else end
