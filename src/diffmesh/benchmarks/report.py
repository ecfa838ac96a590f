"""Writing a benchmark's JSON report: the one way the bench scripts leave their figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_report(path: str | Path, report: dict[str, Any], echo: bool = True) -> Path:
    """`report` as indented JSON at `path` (folders made as needed), and on stdout when `echo`."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=1)
    out.write_text(text)
    if echo:
        print(text)
    return out
