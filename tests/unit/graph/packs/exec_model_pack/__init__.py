"""A custom node pack written the way ComfyUI users write them (V1 classes, sync and async, lazy
inputs, node expansion incl. a while loop, list mapping, hidden inputs, VALIDATE_INPUTS and
IS_CHANGED in their various spellings), used by the execution-model tests."""

from .nodes import NODE_CLASS_MAPPINGS  # noqa: F401
