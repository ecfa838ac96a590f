"""`{a|b}` dynamic prompts, expanded the way the ComfyUI frontend expands them when it queues.

The frontend (1.58) expands only widgets whose input spec says `dynamicPrompts: true` (CLIPTextEncode's
`text`, for one), and only string values; the rules, read from its `processDynamicPrompt`:

- comments go first: `/* ... */` (across lines) and `// ...` to the end of the line;
- `{a|b|c}` picks one option uniformly at random; options may nest (`{a|{b|c}}`), the picked option is
  expanded again; an unclosed `{` runs to the end of the text;
- a backslash keeps the next character literally inside the pass (`\\{` is no choice), and at the
  end `\\{`, `\\}` and `\\|` lose their backslash while other escapes (`\\n`, `\\\\`) stay as written.

The frontend draws with `Math.random`; here the caller passes a `random.Random` so a run can be
seeded (diffmesh's own choice: the frontend has no seed).
"""

from __future__ import annotations

import random
import re

_COMMENTS = re.compile(r"/\*[\s\S]*?\*/|//.*")
_UNESCAPE = re.compile(r"\\([{}|])")


def expand(text: str, rng: random.Random) -> str:
    """The text with every `{a|b}` choice made and comments removed (see the module doc)."""
    return _UNESCAPE.sub(r"\1", _expand(text, rng))


def _expand(text: str, rng: random.Random) -> str:
    text = _COMMENTS.sub("", text)
    out: list[str] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        pos += 1
        if char == "\\":
            out.append(text[pos - 1:pos + 1])         # the backslash and the character it keeps
            pos += 1
        elif char == "{":
            options, pos = _choice_block(text, pos)
            out.append(_expand(rng.choice(options), rng))
        else:
            out.append(char)
    return "".join(out)


def _choice_block(text: str, pos: int) -> tuple[list[str], int]:
    """The options of the `{...}` that starts before `pos`, and the position after its `}`."""
    options: list[str] = []
    current: list[str] = []
    depth = 0
    while pos < len(text):
        char = text[pos]
        pos += 1
        if char == "\\":
            current.append(text[pos - 1:pos + 1])
            pos += 1
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            if depth == 0:
                break
            depth -= 1
        elif char == "|" and depth == 0:
            options.append("".join(current))
            current = []
            continue
        current.append(char)
    options.append("".join(current))
    return options, pos
