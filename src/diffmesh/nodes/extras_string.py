"""Text nodes of ComfyUI's comfy_extras/nodes_string.py with ComfyUI's names, inputs, defaults and
results: Concatenate, Substring, Length, Convert Case, Trim, Replace, Contains, Compare, the three
regex nodes and Extract Text from JSON. ManualSigmas (nodes_custom_sampler.py) parses numbers from
text, so it lives here too."""

from __future__ import annotations

import json
import re
import string as ascii_names

import torch

from diffmesh.nodes.base import NodeContext
from diffmesh.nodes.dynamic_inputs import autogrow, nest
from diffmesh.nodes.extras_base import choice, outs, text, v3, v3_node

STRING = "comfy_extras.nodes_string"
NUMBER = re.compile(r"[-+]?(?:\d*\.*\d+)")         # ComfyUI's ManualSigmas pattern


def _flags(case_insensitive: bool, multiline: bool, dotall: bool) -> int:
    return ((re.IGNORECASE if case_insensitive else 0) | (re.MULTILINE if multiline else 0)
            | (re.DOTALL if dotall else 0))


def string_format(ctx: NodeContext, f_string: str, **inputs):
    """Python's str.format with the connected values by name (`{a}`, `{b:.2f}`), as ComfyUI."""
    return (f_string.format(**nest(inputs, "values")["values"]),)


def concatenate(ctx: NodeContext, string_a: str, string_b: str, delimiter: str):
    return (delimiter.join((string_a, string_b)),)


def substring(ctx: NodeContext, string: str, start: int, end: int):
    return (string[start:end],)


def length(ctx: NodeContext, string: str):
    return (len(string),)


def case_converter(ctx: NodeContext, string: str, mode: str):
    convert = {"UPPERCASE": str.upper, "lowercase": str.lower, "Capitalize": str.capitalize,
               "Title Case": str.title}.get(mode, str)
    return (convert(string),)


def trim(ctx: NodeContext, string: str, mode: str):
    return ({"Both": str.strip, "Left": str.lstrip, "Right": str.rstrip}.get(mode, str)(string),)


def replace(ctx: NodeContext, string: str, find: str, replace: str):  # noqa: A002 - ComfyUI's input name
    return (string.replace(find, replace),)


def contains(ctx: NodeContext, string: str, substring: str, case_sensitive: bool):
    if case_sensitive:
        return (substring in string,)
    return (substring.lower() in string.lower(),)


def compare(ctx: NodeContext, string_a: str, string_b: str, mode: str, case_sensitive: bool):
    a, b = (string_a, string_b) if case_sensitive else (string_a.lower(), string_b.lower())
    test = {"Equal": str.__eq__, "Starts With": str.startswith, "Ends With": str.endswith}[mode]
    return (test(a, b),)


def regex_match(ctx: NodeContext, string: str, regex_pattern: str, case_insensitive: bool, multiline: bool,
                dotall: bool):
    try:
        return (re.search(regex_pattern, string, _flags(case_insensitive, multiline, dotall)) is not None,)
    except re.error:
        return (False,)


def _extract(string: str, pattern: str, mode: str, flags: int, group_index: int) -> str:
    if mode == "First Match":
        match = re.search(pattern, string, flags)
        return match.group(0) if match else ""
    if mode == "All Matches":
        found = re.findall(pattern, string, flags)
        return "\n".join(m[0] if isinstance(m, tuple) else m for m in found)
    if mode == "First Group":
        match = re.search(pattern, string, flags)
        return match.group(group_index) if match and len(match.groups()) >= group_index else ""
    if mode == "All Groups":
        return "\n".join(m.group(group_index) for m in re.finditer(pattern, string, flags)
                         if m.groups() and len(m.groups()) >= group_index)
    return ""


def regex_extract(ctx: NodeContext, string: str, regex_pattern: str, mode: str, case_insensitive: bool,
                  multiline: bool, dotall: bool, group_index: int):
    try:
        return (_extract(string, regex_pattern, mode, _flags(case_insensitive, multiline, dotall), group_index),)
    except re.error:
        return ("",)


def regex_replace(ctx: NodeContext, string: str, regex_pattern: str, replace: str, case_insensitive: bool = True,
                  multiline: bool = False, dotall: bool = False, count: int = 0):
    flags = _flags(case_insensitive, multiline, dotall)
    return (re.sub(regex_pattern, replace, string, count=count, flags=flags),)


def json_extract(ctx: NodeContext, json_string: str, key: str):
    try:
        data = json.loads(json_string)
    except (json.JSONDecodeError, TypeError):
        return ("",)
    if isinstance(data, dict) and data.get(key) is not None:
        return (str(data[key]),)
    return ("",)


def manual_sigmas(ctx: NodeContext, sigmas: str):
    return (torch.FloatTensor([float(n) for n in NUMBER.findall(sigmas)]),)


def _flag_inputs(section: str = "required") -> tuple:
    return (v3("case_insensitive", "BOOLEAN", section, advanced=True, default=True),
            v3("multiline", "BOOLEAN", section, advanced=True, default=False))


DOTALL_TIP = ("When enabled, the dot (.) character will match any character including newline characters. "
              "When disabled, dots won't match newlines.")
COUNT_TIP = ("Maximum number of replacements to make. Set to 0 to replace all occurrences (default). Set to 1 to "
             "replace only the first match, 2 for the first two matches, etc.")


def _node(name, display, inputs, outputs, function, aliases, **fields):
    return v3_node(name, display, "text", inputs, outputs, function, STRING, search_aliases=aliases, **fields)


NODES = (
    _node("StringFormat", "Format Text",
          (autogrow("values", v3("value", "*"), names=list(ascii_names.ascii_lowercase), min=0),
           text("f_string", True, default="{a}")),
          outs("STRING"), string_format, ("string", "format"),
          description="Same as Python's string format method. Supports all of Python's format options and features."),
    _node("StringConcatenate", "Concatenate Text",
          (text("string_a", True), text("string_b", True), text("delimiter", False, default="")),
          outs("STRING"), concatenate,
          ("concatenate", "text concat", "join text", "merge text", "combine strings", "string concat",
           "append text", "combine text")),
    _node("StringSubstring", "Substring", (text("string", True), v3("start", "INT"), v3("end", "INT")),
          outs("STRING"), substring, ("substring", "extract text", "text portion")),
    _node("StringLength", "Text Length", (text("string", True),), outs(("INT", "length")), length,
          ("character count", "text size", "string length")),
    _node("CaseConverter", "Convert Text Case",
          (text("string", True), choice("mode", ["UPPERCASE", "lowercase", "Capitalize", "Title Case"])),
          outs("STRING"), case_converter, ("case converter", "text case", "uppercase", "lowercase", "capitalize")),
    _node("StringTrim", "Trim Text", (text("string", True), choice("mode", ["Both", "Left", "Right"])),
          outs("STRING"), trim, ("trim", "clean whitespace", "remove whitespace", "remove spaces", "strip")),
    _node("StringReplace", "Replace Text", (text("string", True), text("find", True), text("replace", True)),
          outs("STRING"), replace, ("replace", "find and replace", "substitute", "swap text")),
    _node("StringContains", "Contains Text",
          (text("string", True), text("substring", True),
           v3("case_sensitive", "BOOLEAN", advanced=True, default=True)),
          outs(("BOOLEAN", "contains")), contains, ("contains", "text includes", "string includes")),
    _node("StringCompare", "Compare Text",
          (text("string_a", True), text("string_b", True), choice("mode", ["Starts With", "Ends With", "Equal"]),
           v3("case_sensitive", "BOOLEAN", advanced=True, default=True)),
          outs("BOOLEAN"), compare, ("compare", "text match", "string equals", "starts with", "ends with")),
    _node("RegexMatch", "Match Text",
          (text("string", True), text("regex_pattern", True), *_flag_inputs(),
           v3("dotall", "BOOLEAN", advanced=True, default=False)),
          outs(("BOOLEAN", "matches")), regex_match,
          ("regex match", "regex", "pattern match", "text contains", "string match")),
    _node("RegexExtract", "Extract Text",
          (text("string", True), text("regex_pattern", True),
           choice("mode", ["First Match", "All Matches", "First Group", "All Groups"]), *_flag_inputs(),
           v3("dotall", "BOOLEAN", advanced=True, default=False),
           v3("group_index", "INT", advanced=True, default=1, min=0, max=100)),
          outs("STRING"), regex_extract, ("regex extract", "regex", "pattern extract", "text parser", "parse text")),
    _node("RegexReplace", "Replace Text (Regex)",
          (text("string", True), text("regex_pattern", True), text("replace", True), *_flag_inputs("optional"),
           v3("dotall", "BOOLEAN", "optional", tooltip=DOTALL_TIP, advanced=True, default=False),
           v3("count", "INT", "optional", tooltip=COUNT_TIP, advanced=True, default=0, min=0, max=100)),
          outs("STRING"), regex_replace, ("regex replace", "regex", "pattern replace", "substitution"),
          description="Find and replace text using regex patterns."),
    _node("JsonExtractString", "Extract Text from JSON", (text("json_string", True), text("key", False)),
          outs("STRING"), json_extract, ("json", "extract json", "parse json", "json value", "read json")),
    v3_node("ManualSigmas", "ManualSigmas", "model/sampling/sigmas", (text("sigmas", False, default="1, 0.5"),),
            outs("SIGMAS"), manual_sigmas, "comfy_extras.nodes_custom_sampler", experimental=True,
            search_aliases=("custom noise schedule", "define sigmas")),
)
