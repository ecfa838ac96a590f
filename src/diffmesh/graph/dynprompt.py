"""The prompt as it grows while it runs: the submitted nodes plus the ephemeral nodes that node
expansion adds (ComfyUI's DynamicPrompt; nodes with a DYNPROMPT hidden input receive this object).

An ephemeral node keeps the id the expanding node gave it, its parent (the expanding node) and a
display id (the node the UI shows it as: by default its parent's, else `override_display_id`).
The method names are ComfyUI's, because loop and control-flow packs call them.
"""

from __future__ import annotations

from typing import Any


class NodeNotFoundError(KeyError):
    """A node id that is neither in the prompt nor added by an expansion."""


class DuplicateNodeError(Exception):
    """An expansion reused a node id that already exists."""


class DynamicPrompt:
    def __init__(self, original_prompt: dict):
        self.original_prompt = original_prompt
        self.ephemeral_prompt: dict[str, dict] = {}
        self.ephemeral_parents: dict[str, str] = {}
        self.ephemeral_display: dict[str, str] = {}

    def get_node(self, node_id: str) -> dict:
        if node_id in self.ephemeral_prompt:
            return self.ephemeral_prompt[node_id]
        if node_id in self.original_prompt:
            return self.original_prompt[node_id]
        raise NodeNotFoundError(f"Node {node_id} not found")

    def has_node(self, node_id: str) -> bool:
        return node_id in self.original_prompt or node_id in self.ephemeral_prompt

    def add_ephemeral_node(self, node_id: str, node_info: dict, parent_id: str, display_id: str) -> None:
        self.ephemeral_prompt[node_id] = node_info
        self.ephemeral_parents[node_id] = parent_id
        self.ephemeral_display[node_id] = display_id

    def get_real_node_id(self, node_id: str) -> str:
        """The submitted node an ephemeral node descends from (itself for a submitted node)."""
        while node_id in self.ephemeral_parents:
            node_id = self.ephemeral_parents[node_id]
        return node_id

    def get_parent_node_id(self, node_id: str) -> str | None:
        return self.ephemeral_parents.get(node_id)

    def get_display_node_id(self, node_id: str) -> str:
        while node_id in self.ephemeral_display:
            node_id = self.ephemeral_display[node_id]
        return node_id

    def all_node_ids(self) -> set[str]:
        return set(self.original_prompt) | set(self.ephemeral_prompt)

    def get_original_prompt(self) -> dict:
        return self.original_prompt

    def view(self) -> "_MergedView":
        """A read-only mapping over every node (ephemeral ones included), for signatures."""
        return _MergedView(self)


class _MergedView(dict):
    """dict-like lookup over original + ephemeral nodes (only what signature code reads)."""

    def __init__(self, dyn: DynamicPrompt):
        super().__init__()
        self._dyn = dyn

    def __getitem__(self, key: str) -> Any:
        return self._dyn.get_node(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._dyn.has_node(key)

    def get(self, key, default=None):
        return self._dyn.get_node(key) if key in self else default
