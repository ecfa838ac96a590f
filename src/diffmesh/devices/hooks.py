"""Named, ordered, removable forward hooks on modules ("hooks, not patches").

Streaming and casting attach to modules through `attach(module, name, pre, post, outer=...)` and
leave through `detach(module, name)`; nothing in torch, diffusers or transformers is patched.
Each module carries its own registry (`module._diffmesh_hooks`, instance state), so removing
every hook restores the module's original forward exactly.

Order: an `outer` hook wraps the inner ones: its pre-hook runs first and its post-hook last
(streaming is outer: weights arrive before a cast hook reads them and leave after it restores
them). Conflicts are refused: the same hook name twice, or a module already driven by
accelerate (`_hf_hook`) or diffusers' hook registry (`_diffusers_hook`), whose offloading
would fight ours.
"""

from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

_REGISTRY_ATTR = "_diffmesh_hooks"


class HookConflict(RuntimeError):
    """A hook would fight another hook already on the module."""


def _foreign_hooks(module: nn.Module) -> list[str]:
    found = []
    if getattr(module, "_hf_hook", None) is not None:
        found.append("accelerate (_hf_hook)")
    registry = getattr(module, "_diffusers_hook", None)
    if registry is not None and getattr(registry, "hooks", None):
        found.append(f"diffusers hooks {sorted(registry.hooks)}")
    return found


def attach(module: nn.Module, name: str, pre: Callable[..., Any] | None = None,
           post: Callable[..., Any] | None = None, *, outer: bool = False, with_kwargs: bool = False) -> None:
    """Register `pre(module, args)` / `post(module, args, output)` under `name`; with `with_kwargs`
    the pre-hook is `pre(module, args, kwargs)` and may return new `(args, kwargs)`."""
    registry: dict[str, list] = module.__dict__.setdefault(_REGISTRY_ATTR, {})
    if name in registry:
        raise HookConflict(f"{type(module).__name__} already has a diffmesh {name!r} hook; detach it first")
    foreign = _foreign_hooks(module)
    if foreign:
        raise HookConflict(f"{type(module).__name__} is already driven by {', '.join(foreign)}; "
                           f"remove those hooks before diffmesh {name!r} hooks can manage it")
    handles = []
    if pre is not None:
        handles.append(module.register_forward_pre_hook(pre, prepend=outer, with_kwargs=with_kwargs))
    if post is not None:
        handles.append(module.register_forward_hook(post, prepend=not outer))
    registry[name] = handles


def detach(module: nn.Module, name: str) -> bool:
    """Remove the hooks registered under `name`; False when there were none."""
    registry: dict[str, list] | None = module.__dict__.get(_REGISTRY_ATTR)
    if not registry or name not in registry:
        return False
    for handle in registry.pop(name):
        handle.remove()
    if not registry:
        del module.__dict__[_REGISTRY_ATTR]
    return True


def attached(module: nn.Module) -> list[str]:
    """Names of the diffmesh hooks on this module, in attach order."""
    return list(module.__dict__.get(_REGISTRY_ATTR, {}))


def detach_all(root: nn.Module, name: str) -> int:
    """Remove hook `name` from `root` and every submodule; returns how many modules had it."""
    return sum(detach(m, name) for m in root.modules())
