"""Where one component's weights live: on the device, in a host-side store, or streamed per block.

`Placement(root, device, account)` owns the tensors of one `nn.Module`:

- `host` is the host-side store: CPU tensors (pinned when the device is CUDA) that hold the
  weights while they are not on the device. A weight is either live on the device (accounted
  through `account(+bytes)`) or only in the store (its module slot then holds a placeholder with
  the weight's shape, dtype and device but one element of memory, so code that reads
  `next(model.parameters()).device` or `.dtype` keeps working; it is NaN, so a weight read outside
  its module's forward poisons the output, and the equivalence tests against highvram catch it).
- `load_all()` / `offload_all()` move the whole component (highvram, normalvram).
- `place_partial(resident_bytes, limit, prefetch)` keeps a prefix of blocks resident and streams
  the rest (lowvram; novram is `resident_bytes=0`): each streamed block gets removable forward
  hooks that copy its weights in before its forward and drop them after. On CUDA the next block
  (learned from the order blocks actually ran in) is prefetched on a side stream.

Blocks are found generically by size: descend the module tree from the root and stop at the first
module whose weights fit `limit` (or that holds weights itself, has no children or declares
`_stream_whole`). Modules without a forward of their own (`ModuleList`, holders like CLIP's
embeddings) are never blocks because nothing calls them; weights held directly by them, buffers
and embedding tables (read by code outside their own forward, like CLIP's
`position_embedding.weight[:n]`) stay resident in every mode. Any module called
through `__call__` can carry hooks; weights are only needed while their module runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from diffmesh.devices import hooks

STREAM_HOOK = "stream"


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def module_bytes(module: nn.Module) -> int:
    """Bytes of the parameters and buffers of `module` (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for t in list(module.parameters()) + list(module.buffers()):
        seen.setdefault(id(t), tensor_bytes(t))
    return sum(seen.values())


@dataclass
class _Slot:
    owner: nn.Module
    attr: str
    is_buffer: bool


@dataclass
class Block:
    name: str
    module: nn.Module
    names: list[str]                         # qualified tensor names owned by this block
    nbytes: int


@dataclass
class _Entry:
    slots: list[_Slot]
    nbytes: int
    placeholder: torch.Tensor
    pinned: bool                             # buffers and always-resident weights: never streamed


def _placeholder(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A stand-in with `t`'s shape, dtype and the target device that holds one element of memory:
    NaN for floating weights, so a weight read outside its module's forward poisons the output."""
    fill = float("nan") if t.dtype.is_floating_point else 0
    return torch.full((), fill, dtype=t.dtype, device=device).expand(t.shape)


def _keep_whole(module: nn.Module) -> bool:
    """A module declaring `_stream_whole = True` is one block (its forward reads its children's weights)."""
    return bool(getattr(module, "_stream_whole", False))


def _never_called(module: nn.Module) -> bool:
    """Containers and weight holders without a forward of their own (`ModuleList`, CLIP's embeddings)."""
    return type(module).forward is nn.Module.forward


def _always_resident(module: nn.Module) -> bool:
    """Embedding tables are often read directly (`position_embedding.weight[:n]`) by code outside their
    own forward, so their weights never stream; a module can also declare `_stream_resident = True`."""
    return isinstance(module, nn.Embedding) or bool(getattr(module, "_stream_resident", False))


def choose_source(bandwidth: dict[str, float], room: dict[str, float], need: int) -> str:
    """The store to stream from: the fastest measured source (bytes/s; "cpu" for host memory, else a
    donor device) whose spare memory (`room`, bytes; host memory unlimited) holds the `need` bytes."""
    fitting = [s for s in bandwidth if s == "cpu" or room.get(s, 0) >= need]
    return max(fitting, key=lambda s: bandwidth[s]) if fitting else "cpu"


def find_blocks(root: nn.Module, limit: int) -> list[tuple[str, nn.Module]]:
    """Modules that partition `root`'s parameters, each at most `limit` bytes where possible."""
    out: list[tuple[str, nn.Module]] = []
    visited: set[int] = set()

    def visit(prefix: str, module: nn.Module) -> None:
        if id(module) in visited:
            return
        visited.add(id(module))
        size = sum(tensor_bytes(p) for p in module.parameters())
        if size == 0:
            return
        own = any(p is not None for p in module._parameters.values())
        children = list(module.named_children())
        if _never_called(module):  # ModuleList, or a holder without forward: its hooks would never fire
            for name, child in children:
                visit(f"{prefix}.{name}" if prefix else name, child)
            return
        if own or not children or size <= limit or _keep_whole(module):
            out.append((prefix or "<root>", module))
            return
        for name, child in children:
            visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", root)
    return out


class Placement:
    """The weights of one component on one device (see the module docstring)."""

    def __init__(self, root: nn.Module, device: torch.device, account: Callable[[int], None]):
        self.root = root
        self.device = torch.device(device)
        self.account = account                 # account(+n) reserves (may raise OOM), account(-n) frees
        self.entries: dict[str, _Entry] = {}
        self._ids: dict[int, str] = {}         # id of an original tensor -> its name (ties share a name)
        self._owned: dict[int, list[str]] = {}  # id of a module -> names of the tensors in its own slots
        self._collect()
        self.host: dict[str, torch.Tensor] = {}
        self.live: set[str] = set()            # names whose slot holds an accounted device tensor
        self.streamed: list[Block] = []
        self.resident_blocks: list[str] = []
        self._live_blocks: dict[str, Block] = {}
        self._pending: dict[str, tuple[dict[str, torch.Tensor], object]] = {}
        self._successor: dict[str, str] = {}
        self._last: str | None = None
        self._side_stream = None
        self.prefetch = False
        self.source = torch.device("cpu")     # where the store lives: CPU memory, or a donor device (use_source)

    def _collect(self) -> None:
        for mod_name, module in self.root.named_modules(remove_duplicate=False):
            for table, is_buffer in ((module._parameters, False), (module._buffers, True)):
                for attr, t in table.items():
                    if t is None:
                        continue
                    name = self._ids.get(id(t))
                    if name is None:
                        name = f"{mod_name}.{attr}" if mod_name else attr
                        self._ids[id(t)] = name
                        self.entries[name] = _Entry([], tensor_bytes(t), _placeholder(t, self.device),
                                                    is_buffer or _always_resident(module))
                    slots = self.entries[name].slots
                    if not any(s.owner is module and s.attr == attr for s in slots):
                        slots.append(_Slot(module, attr, is_buffer))
                        self._owned.setdefault(id(module), []).append(name)

    # -- sizes --------------------------------------------------------------------------------------
    @property
    def total_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())

    @property
    def device_bytes(self) -> int:
        return sum(self.entries[n].nbytes for n in self.live)

    def _current(self, name: str) -> torch.Tensor:
        slot = self.entries[name].slots[0]
        table = slot.owner._buffers if slot.is_buffer else slot.owner._parameters
        return table[slot.attr]

    def _set(self, name: str, t: torch.Tensor) -> None:
        for slot in self.entries[name].slots:
            if slot.is_buffer:
                slot.owner._buffers[slot.attr] = t
            else:
                slot.owner._parameters[slot.attr] = nn.Parameter(t, requires_grad=False)

    def _copy_in(self, name: str, non_blocking: bool = False) -> torch.Tensor:
        return self.host[name].to(self.device, copy=True, non_blocking=non_blocking)

    # -- whole-component moves ---------------------------------------------------------------------
    def adopt(self, on_device: bool) -> None:
        """Take over freshly built weights: accounted on the device, or moved to the host store."""
        if on_device:
            total = self.total_bytes
            try:
                self.account(total)
            except torch.OutOfMemoryError:
                self._all_to_host()
                raise
            self.live = set(self.entries)
        else:
            self._all_to_host()

    def use_source(self, source: torch.device | str) -> None:
        """Keep the store on `source` (a donor device with spare memory, or "cpu"): streamed blocks are
        then copied donor -> device (NVLink/PCIe peer copy) instead of host -> device. Moves what is
        stored already; the donor's memory is the caller's to account (`choose_source`)."""
        source = torch.device(source)
        if source == self.source:
            return
        for name, tensor in list(self.host.items()):
            self.host[name] = tensor.to(source) if source.type != "cpu" else \
                torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=self.device.type == "cuda").copy_(tensor)
        self.source = source

    def _to_host(self, name: str) -> None:
        current = self._current(name)
        if name not in self.host and self.source.type != "cpu":   # a donor store: one copy there
            self.host[name] = current.detach().to(self.source, copy=True)
        if name not in self.host:  # the first offload keeps the weight; later ones just drop the device copy
            if current.device.type == "cpu":
                host = current.detach()
                if self.device.type == "cuda" and not host.is_pinned():
                    host = host.pin_memory()
            else:
                host = torch.empty(current.shape, dtype=current.dtype, pin_memory=self.device.type == "cuda")
                host.copy_(current.detach())
            self.host[name] = host
        self._set(name, self.entries[name].placeholder)
        if name in self.live:
            self.live.discard(name)
            self.account(-self.entries[name].nbytes)

    def _all_to_host(self) -> None:
        for name in self.entries:
            self._to_host(name)

    def load_all(self) -> None:
        """Every weight onto the device (reserves the bytes first; nothing changes if that fails)."""
        self.offload_streaming()
        missing = [n for n in self.entries if n not in self.live]
        self.account(sum(self.entries[n].nbytes for n in missing))
        for name in missing:
            self._set(name, self._copy_in(name))
            self.live.add(name)

    def offload_all(self) -> None:
        """Every weight to the host store; streaming hooks removed."""
        self.offload_streaming()
        self._all_to_host()

    # -- partial placement and streaming ---------------------------------------------------------------
    def place_partial(self, resident_bytes: int, limit: int, prefetch: bool) -> None:
        """Buffers and a prefix of blocks fitting `resident_bytes` stay; the other blocks stream."""
        self.offload_all()
        blocks = self.blocks(limit)
        in_blocks = {n for b in blocks for n in b.names}
        buffers = [n for n, e in self.entries.items() if e.pinned or n not in in_blocks]
        budget_left = resident_bytes - sum(self.entries[n].nbytes for n in buffers)
        resident: list[Block] = []
        streamed: list[Block] = []
        for block in blocks:
            if not streamed and block.nbytes <= budget_left:
                resident.append(block)
                budget_left -= block.nbytes
            else:
                streamed.append(block)
        keep = buffers + [n for b in resident for n in b.names]
        self.account(sum(self.entries[n].nbytes for n in keep))
        for name in keep:
            self._set(name, self._copy_in(name))
            self.live.add(name)
        self.resident_blocks = [b.name for b in resident]
        self.streamed = streamed
        self.prefetch = prefetch and self.device.type == "cuda"
        for block in streamed:
            hooks.attach(block.module, STREAM_HOOK, self._pre_hook(block), self._post_hook(block), outer=True)

    def blocks(self, limit: int) -> list[Block]:
        blocks: list[Block] = []
        taken: set[str] = set()
        for name, module in find_blocks(self.root, max(1, limit)):
            names = []
            for sub in module.modules():
                for qualified in self._owned.get(id(sub), ()):
                    if not self.entries[qualified].pinned and qualified not in taken:
                        names.append(qualified)
                        taken.add(qualified)
            if names:
                blocks.append(Block(name, module, names, sum(self.entries[n].nbytes for n in names)))
        return blocks

    def max_block_bytes(self, limit: int) -> int:
        return max((b.nbytes for b in self.blocks(limit)), default=0)

    def _pre_hook(self, block: Block):
        def pre(module, args):
            self.bring(block)
        return pre

    def _post_hook(self, block: Block):
        def post(module, args, output):
            self.drop(block)
        return post

    def bring(self, block: Block) -> None:
        """Make `block`'s weights live on the device (from a prefetch when one is pending)."""
        if block.name in self._live_blocks:
            return
        pending = self._pending.pop(block.name, None)
        if pending is not None:
            tensors, event = pending
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(event)
            for t in tensors.values():
                t.record_stream(stream)
        else:
            self.account(block.nbytes)
            tensors = {n: self._copy_in(n, non_blocking=self.device.type == "cuda") for n in block.names}
        for name, t in tensors.items():
            self._set(name, t)
        self._live_blocks[block.name] = block
        if self._last is not None and self._last != block.name:
            self._successor[self._last] = block.name
        self._last = block.name
        if self.prefetch:
            self._prefetch_after(block)

    def _prefetch_after(self, block: Block) -> None:
        nxt_name = self._successor.get(block.name)
        nxt = next((b for b in self.streamed if b.name == nxt_name), None)
        if nxt is None or nxt.name in self._live_blocks or nxt.name in self._pending:
            return
        try:
            self.account(nxt.nbytes)
        except torch.OutOfMemoryError:
            return  # no room to prefetch: it loads synchronously when it runs
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(self.device)
        self._side_stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._side_stream):
            tensors = {n: self._copy_in(n, non_blocking=True) for n in nxt.names}
            event = torch.cuda.Event()
            event.record(self._side_stream)
        self._pending[nxt.name] = (tensors, event)

    def drop(self, block: Block) -> None:
        """Free `block`'s device copies (the host store keeps the weights)."""
        if self._live_blocks.pop(block.name, None) is None:
            return
        for name in block.names:
            self._set(name, self.entries[name].placeholder)
        self.account(-block.nbytes)

    def release_transient(self) -> None:
        """Drop every streamed block still live and every pending prefetch (end of a call, or after OOM)."""
        for block in list(self._live_blocks.values()):
            self.drop(block)
        for name in list(self._pending):
            self._pending.pop(name)
            block = next(b for b in self.streamed if b.name == name)
            self.account(-block.nbytes)
        self._last = None

    def offload_streaming(self) -> None:
        """Remove the streaming hooks (weights stay in the host store)."""
        self.release_transient()
        for block in self.streamed:
            hooks.detach(block.module, STREAM_HOOK)
        self.streamed = []
        self.resident_blocks = []
        self._successor.clear()

    def streamed_bytes(self) -> int:
        return sum(b.nbytes for b in self.streamed)
