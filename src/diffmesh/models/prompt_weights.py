"""Prompt weighting syntax, as ComfyUI reads it (spec §6.8).

`(text)` multiplies the weight by 1.1 per nesting level; `(text:1.3)` sets the weight of its
content to 1.3 (replacing, not multiplying, the inherited weight); `\\(` and `\\)` are literal
parentheses. An unclosed `(` keeps the rest of the text as plain text; so does a stray `)`.
"""

from __future__ import annotations

# Escaped parentheses are swapped for private markers before parsing and restored after.
_ESC_OPEN, _ESC_CLOSE = "\0\2", "\0\1"


def escape_parentheses(text: str) -> str:
    return text.replace("\\)", _ESC_CLOSE).replace("\\(", _ESC_OPEN)


def unescape_parentheses(text: str) -> str:
    return text.replace(_ESC_CLOSE, ")").replace(_ESC_OPEN, "(")


def split_top_level(text: str) -> list[str]:
    """Split into plain runs and top-level parenthesised groups (groups keep their parentheses)."""
    parts: list[str] = []
    current = ""
    depth = 0
    for ch in text:
        if ch == "(":
            if depth == 0 and current:
                parts.append(current)
                current = ""
            current += ch
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                parts.append(current + ")")
                current = ""
            else:
                # depth < 0 (a `)` that closes nothing) is kept as in ComfyUI: the `)` stays text and
                # the rest of the prompt is read as plain text
                current += ch
        else:
            current += ch
    if current:
        parts.append(current)
    return parts


def _weighted(text: str, weight: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for part in split_top_level(text):
        if len(part) >= 2 and part[0] == "(" and part[-1] == ")":
            inner = part[1:-1]
            inner_weight = weight * 1.1
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    inner_weight = float(inner[colon + 1:])
                    inner = inner[:colon]
                except ValueError:
                    pass  # "(a:b)" with a non-number after the colon is plain text at x1.1
            out.extend(_weighted(inner, inner_weight))
        else:
            out.append((part, weight))
    return out


def parse_prompt_weights(text: str) -> list[tuple[str, float]]:
    """Text -> [(segment, weight)], escapes resolved in the segments."""
    return [(unescape_parentheses(seg), w) for seg, w in _weighted(escape_parentheses(text), 1.0)]
