"""Text for the model card: YAML front matter and Markdown, with every user-provided string made inert.

A model card is read on the Hub and in editors that render Markdown and load what it links. Label
names, descriptions, run and audit names come from recipes and data, so in prose they are escaped:
no link, image, emphasis, heading, list or raw HTML can come out of them, and no bare address is
turned into a link.
"""

from __future__ import annotations

import json
import re
from typing import Any

# -- YAML front matter (no YAML library needed to write it) ---------------------------------------
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_RESERVED = frozenset({"true", "false", "null", "yes", "no", "on", "off", "y", "n"})


def _yaml_string(text: str) -> str:
    """A double-quoted YAML scalar: JSON's escapes, plus the characters YAML may not hold raw."""
    quoted = json.dumps(text, ensure_ascii=False)
    out = []
    for ch in quoted:
        code = ord(ch)
        # C1 controls, surrogates, byte-order marks, and U+2028/9 (YAML line breaks, which it would fold)
        if 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF or code in (0x2028, 0x2029, 0xFEFF, 0xFFFE, 0xFFFF):
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return ".nan"
        if value in (float("inf"), float("-inf")):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        # YAML 1.1 readers (PyYAML) take 1e-05 for a string: a float needs its dot.
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return text
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _yaml_string(str(value))


def _yaml_key(key: str) -> str:
    return key if _PLAIN_KEY.fullmatch(key) and key.lower() not in _RESERVED else _yaml_string(key)


def _yaml_lines(value: Any, indent: int = 0) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{_yaml_key(str(key))}:")
                lines += _yaml_lines(item, indent + 2)
            else:
                lines.append(f"{pad}{_yaml_key(str(key))}: {_yaml_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                inner = _yaml_lines(item, indent + 2)
                lines.append(f"{pad}- {inner[0][indent + 2 :]}")
                lines += inner[1:]
            else:
                lines.append(f"{pad}- {_yaml_scalar(item)}")
    return lines


def to_yaml(mapping: dict[str, Any]) -> str:
    """Block-style YAML for nested dicts, lists and scalars; strings always quoted."""
    return "\n".join(_yaml_lines(mapping)) + "\n"


# -- Markdown ------------------------------------------------------------------------------------
# Every character CommonMark gives a meaning inside a line: backslash-escaped, it is plain text.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]{}()!#|~])")
# What starts a list, a heading or a block quote at the start of a line.
_MD_LINE_START = re.compile(r"^(\s*)([-+=]|\d+(?=[.)]))")
# Addresses that GitHub-flavoured Markdown links without any syntax: scheme:// and www.
_AUTOLINK = re.compile(r"(?i)(?<=[a-z0-9])(:)(?=//)|\b(www)(\.)")


def md(value: Any) -> str:
    """User text inside Markdown prose or a table cell: one line, no table breaks, no raw HTML, and no
    Markdown syntax (links, images, emphasis, code, headings, lists) or bare links."""
    text = " ".join(str(value).split())
    text = _MD_SPECIAL.sub(r"\\\1", text)
    text = text.replace("<", "&lt;").replace(">", "&gt;")
    text = _AUTOLINK.sub(lambda m: "\\:" if m.group(1) else f"{m.group(2)}\\.", text)
    return _MD_LINE_START.sub(lambda m: f"{m.group(1)}\\{m.group(2)}", text)


def md_code(value: Any) -> str:
    """Inline code that survives backticks in the value."""
    text = " ".join(str(value).split()).replace("|", "\\|")
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}" if "`" in text else f"{fence}{text}{fence}"


def md_fenced(text: str, lang: str = "") -> str:
    """A fenced code block longer than any run of backticks inside it."""
    fence = "`" * max(3, max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table of cells already escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
