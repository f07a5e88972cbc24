"""Rendering a recipe's chat template without letting it exhaust the machine.

Jinja's sandbox stops a template from running code, not from running long or growing huge:
`{% for i in range(100000) %}{% for j in range(100000) %}` spins for hours, `'x' * 10**10` asks for
10 GB. `trial_render` renders a template on a sample conversation at validation, in a sandbox that
also refuses huge strings, lists and powers and stops after `RENDER_SECONDS`; `time_limit` stops any
render (transformers' own, at run time) that takes longer than that.

Only jinja2 is imported here, never transformers: `finetune validate` stays light.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from runner import clip

RENDER_SECONDS = 5.0
"""Longest one rendering of a chat template may take (a real one takes milliseconds)."""

MAX_TEXT = 1_000_000
"""Most characters (or items) a template may build in one string or list."""

# What transformers passes to a chat template besides the messages (its special tokens, tools).
_SAMPLE_KWARGS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "sep_token": "<sep>",
    "pad_token": "<pad>",
    "cls_token": "<cls>",
    "mask_token": "<mask>",
    "additional_special_tokens": [],
    "tools": None,
    "documents": None,
}
_SAMPLE = [{"role": "user", "content": "Hello", "input": "some input"}, {"role": "assistant", "content": "Hi"}]


class RenderStopped(Exception):
    """A template rendered for longer than RENDER_SECONDS."""


@contextmanager
def time_limit(seconds: float | None = None) -> Iterator[None]:
    """Raise RenderStopped in the block once `seconds` (default RENDER_SECONDS) have passed.

    A timer signal interrupts even a loop that calls nothing. Signals reach the main thread only;
    elsewhere the block runs unbounded (the sandbox of `trial_render` still checks its clock)."""
    seconds = RENDER_SECONDS if seconds is None else seconds
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def stop(signum, frame):
        raise RenderStopped(f"stopped after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)


def _environment(deadline: float):
    """transformers' chat-template environment, plus limits on time and size."""
    import jinja2.ext
    from jinja2.exceptions import SecurityError, TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def check_clock():
        if time.monotonic() > deadline:
            raise RenderStopped(f"stopped after {RENDER_SECONDS:g} s")

    def check_size(n: int):
        if n > MAX_TEXT:
            raise SecurityError(f"the template builds a value of {n:,} characters or items (at most {MAX_TEXT:,})")

    class Bounded(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+"})

        def call_binop(self, context, operator, left, right):
            check_clock()
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, str | list | tuple) and isinstance(n, int):
                        check_size(len(seq) * n)
            elif operator == "**" and isinstance(right, int | float) and abs(right) > 256:
                raise SecurityError(f"the template raises a number to the power {clip(repr(right))}")
            elif operator == "+" and isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                check_size(len(left) + len(right))
            return super().call_binop(context, operator, left, right)

        def call(self, context, obj, /, *args, **kwargs):
            check_clock()
            return super().call(context, obj, *args, **kwargs)

        def getattr(self, obj, attribute):
            check_clock()
            return super().getattr(obj, attribute)

        def getitem(self, obj, argument):
            check_clock()
            return super().getitem(obj, argument)

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = Bounded(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def trial_render(source: str) -> str | None:
    """Why `source` cannot render a sample conversation (an exception, too long, too large), or None."""
    deadline = time.monotonic() + RENDER_SECONDS
    try:
        with time_limit(RENDER_SECONDS):
            template = _environment(deadline).from_string(source)
            for messages, prompt in ((_SAMPLE, False), (_SAMPLE[:1], True)):
                text = template.render(messages=messages, add_generation_prompt=prompt, **_SAMPLE_KWARGS)
                if len(text) > MAX_TEXT:
                    return f"the chat template renders a short sample conversation as {len(text):,} characters"
    except RenderStopped:
        return f"the chat template did not finish rendering a short sample conversation in {RENDER_SECONDS:g} s"
    except Exception as exc:  # the sandbox's refusal, raise_exception(), a RecursionError, a MemoryError, ...
        detail = clip(str(exc).strip()) or "(no message)"
        return f"the chat template failed to render: {type(exc).__name__}: {detail} (on a short sample conversation)"
    return None
