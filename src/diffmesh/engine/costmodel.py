"""Cost model: predicted step time and memory of every strategy for one model, prompt and device set.

Inputs (plain data):
  - `ModelFacts`: weight bytes (total, per block, largest block, outside the blocks), forward
    FLOPs at this resolution, the hidden state passed between blocks, attention layers, family kind.
    `model_facts(path, ...)` reads them from the file header (no tensor is read).
  - `DeviceFacts`: effective FLOP/s (or a measured step time), the budget, and link speeds to the
    host and to the peers (bytes/s) with a per-exchange latency. `DEVICES` and `LINKS` are the
    documented table used for GPU predictions; CPU workers use measured numbers.
  - the prompt: cfg (two rows per forward when cfg != 1) and batch.

Per strategy (N devices, t = one forward's compute time on one device, S = weight bytes,
A = activations estimate, bw = link bytes/s; one forward per step, cond+uncond batched):
  resident      t                                            needs S + A
  streamed      t + (S - room) / host_bw   (room: what stays)   needs kept + 2 blocks + A
  donor         t + (S - room) / peer_bw                      the same, blocks kept on a donor device
  shard         compute + S (N-1)/N / peer_bw, overlapped by `overlap` (prefetch); compute =
                t/N + sequence exchanges for a transformer, t for a UNet (every member runs it all)
                                                             needs S/N + kept + 2 blocks + A(/N)
  layersplit    t (M+N-1)/(M N) + blocks x act x (N-1) / peer_bw   (M = rows: one-row micro-batches
                pipelined through the N stages; M = 1: serial)   needs its share S/N + kept + A
  sequence      t/N + blocks x 4 act (N-1)/N^2 / peer_bw     (Ulysses: q,k,v out, o back) needs S + A/N
  cfg           t/2 + latent / peer_bw                       (cfg != 1, 2 devices) needs S + A/2
  cfg_sequence  t/N + sequence exchanges over N/2            (cfg != 1, 4+ devices) needs S + A/N
  patch         t/N + attention layers x 2 act (N-1)/N / peer_bw + halos (S7's exact UNet patch
                parallel: full keys/values gathered per attention layer)   needs S + A/N
  cfg_patch     t/N + patch exchanges over N/2 of half the rows + latent   (cfg != 1, UNet, 4+ devices)
  batch_patch   t/N + patch exchanges over N/G of 1/G of the rows   (G = min(batch, N/2) >= 2 groups)
Every exchange also costs `latency` per collective. A split divides only the part of t that
grows with the work: `DeviceFacts.fixed_s` (measured by `diffmesh bench --scenarios costmodel` as
one forward at the smallest latent; 0 in the documented table) is paid whole by every member, so
t/N above reads fixed + (t - fixed)/N. Kernel efficiency falling on small shards beyond that is
not modelled, so splits are predicted optimistic where per-device work gets small.
Activations (A): `ModelFacts.activation_bytes` is the peak one forward allocates beyond its weights,
measured per family and resolution (`engine.activations`: a table fitted by bench/activations.py from
sampler steps of random-weight models at several widths and sizes, rows (a T W + b T^2 + c W) + d W^2,
scaled so that every measured peak lies under it). Facts without a family, token count and width,
or a family not in the table, fall back to the hidden state times a per-kind factor
(`ACTIVATION_FACTOR`: an estimate, not measured).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

ACTIVATION_FACTOR = {"unet": 24.0, "dit": 12.0}     # peak live activations / one hidden state (estimate)
BLOCK_KEY = re.compile(r"^(.*?\.\d+)\.")             # "input_blocks.3.", "double_blocks.12."

# Documented device and link table for predictions on GPUs (effective, not peak, throughput).
DEVICES = {
    "H100-SXM": {"flops": 450e12, "memory": 80e9},
    "A100-SXM": {"flops": 170e12, "memory": 80e9},
    "RTX4090": {"flops": 90e12, "memory": 24e9},
    "RTX4060Ti-16G": {"flops": 25e12, "memory": 16e9},
}
LINKS = {   # bytes/s one way, seconds per collective
    "nvlink4": {"bw": 350e9, "latency": 15e-6},      # H100 SXM NVLink 4 (450 GB/s nominal)
    "nvlink3": {"bw": 230e9, "latency": 15e-6},      # A100 SXM NVLink 3 (300 GB/s nominal)
    "pcie4": {"bw": 22e9, "latency": 30e-6},         # PCIe 4.0 x16 (32 GB/s nominal), also host<->device
    "pcie5": {"bw": 45e9, "latency": 30e-6},
    "gloo-loopback": {"bw": 2e9, "latency": 2e-4},   # CPU workers here: replaced by a measurement
}
STRATEGIES = ("resident", "streamed", "donor", "shard", "layersplit", "sequence", "cfg", "cfg_sequence", "patch",
              "cfg_patch", "batch_patch")
ONE_IMAGE = ("sequence", "cfg", "cfg_sequence", "patch", "cfg_patch")
PREFERENCE = ("resident", "sequence", "cfg", "cfg_sequence", "patch", "cfg_patch", "batch_patch", "streamed", "donor",
              "layersplit", "shard")


@dataclass(frozen=True)
class ModelFacts:
    kind: str                      # "unet" | "dit"
    total_bytes: int
    block_bytes: tuple[int, ...]
    flops: float                   # one forward, this resolution, batch rows included
    hidden_bytes: int              # the state passed between blocks (all rows)
    attention_layers: int = 0
    family: str = ""               # for the measured activation table (engine.activations); "" = estimate
    tokens: int = 0                # latent pixels (UNet) or image patches (transformer), per row
    width: int = 0                 # model_channels (UNet) or hidden size (transformer)
    rows: int = 1
    bytes_per: int = 4

    @property
    def max_block(self) -> int:
        return max(self.block_bytes, default=0)

    @property
    def kept_bytes(self) -> int:
        return self.total_bytes - sum(self.block_bytes)

    @property
    def activation_bytes(self) -> int:
        """Measured per family and resolution where the table has the family, else the factor estimate."""
        if self.family and self.tokens and self.width:
            from diffmesh.engine.activations import activation_bytes

            measured = activation_bytes(self.family, self.width, self.tokens, self.rows, self.bytes_per)
            if measured is not None:
                return measured
        return int(self.hidden_bytes * ACTIVATION_FACTOR.get(self.kind, 16.0))


@dataclass(frozen=True)
class DeviceFacts:
    flops: float                   # effective FLOP/s
    budget: float                  # bytes for weights + activations
    host_bw: float                 # host -> device bytes/s (streaming from CPU memory)
    peer_bw: float                 # device <-> device bytes/s (groups, donor)
    latency: float = 30e-6
    overlap: float = 1.0           # share of gathers hidden behind compute by prefetch (1 on CUDA)
    step_s: float | None = None    # measured forward time (overrides flops)
    fixed_s: float = 0.0           # per-forward time a split does not divide (dispatch, per-layer calls)


@dataclass
class Prediction:
    strategy: str
    devices: int
    step_s: float | None           # None: not applicable
    memory: float                  # bytes each device needs
    fits: bool
    note: str = ""
    measured_s: float | None = field(default=None)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_facts_from_shapes(shapes: dict[str, tuple], bytes_per: int, kind: str, tokens: int, width: int,
                            rows: int, attention_layers: int = 0, family: str = "") -> ModelFacts:
    """Block sizes from tensor names (a block = a name up to its first index), FLOPs ~ 2 x params x tokens."""
    blocks: dict[str, int] = {}
    total = 0
    for key, shape in shapes.items():
        nbytes = math.prod(shape) * bytes_per
        total += nbytes
        match = BLOCK_KEY.match(key)
        if match:
            blocks[match.group(1)] = blocks.get(match.group(1), 0) + nbytes
    params = total / bytes_per
    flops = 2.0 * params * tokens * rows
    if kind == "dit":
        flops += 4.0 * tokens * tokens * width * len(blocks) * rows
    elif any(key.startswith("input_blocks.") for key in shapes):
        flops = unet_flops(shapes, tokens) * rows
    return ModelFacts(kind, total, tuple(blocks.values()), flops, tokens * width * bytes_per * rows,
                      attention_layers, family, tokens, width, rows, bytes_per)


UNET_LEVEL = re.compile(r"^(input_blocks|output_blocks)\.(\d+)\.")


def unet_flops(shapes: dict[str, tuple], tokens: int) -> float:
    """One row's forward FLOPs of a UNet in ComfyUI's layout (`input_blocks.N`, `middle_block`,
    `output_blocks.N`): each weight is applied at every position of its block's resolution level
    (2 x params x tokens / 4^level; a downsampler `input_blocks.N.0.op` starts the next level, an
    upsampler `output_blocks.N.M.conv` ends its block's level), and each self-attention layer adds
    its two T x T products (4 T^2 x width). Most of a UNet's weights sit at the coarse levels, so
    2 x params x full tokens, the transformer estimate, is several times too high for a UNet."""
    down = sorted({int(m.group(2)) for k in shapes if (m := UNET_LEVEL.match(k)) and m.group(1) == "input_blocks"
                   and k.startswith(f"input_blocks.{m.group(2)}.0.op.")})
    up = sorted({int(m.group(2)) for k in shapes if (m := UNET_LEVEL.match(k)) and m.group(1) == "output_blocks"
                 and re.match(rf"output_blocks\.{m.group(2)}\.\d+\.conv\.weight$", k)})
    deepest = len(down)

    def level(key: str) -> int:
        match = UNET_LEVEL.match(key)
        if key.startswith("middle_block."):
            return deepest
        if match is None:                          # conv_in/out, norms, time and label embeddings
            return 0
        index = int(match.group(2))
        if match.group(1) == "input_blocks":
            return sum(1 for d in down if d <= index)
        return deepest - sum(1 for u in up if u < index)

    flops = 0.0
    for key, shape in shapes.items():
        if key.startswith(("time_embed.", "label_emb.")):
            flops += 2.0 * math.prod(shape)        # applied once per row, not per position
            continue
        at = tokens / 4 ** level(key)
        flops += 2.0 * math.prod(shape) * at
        if key.endswith("attn1.to_q.weight"):
            flops += 4.0 * at * at * shape[0]
    return flops


def model_facts(path: str, component_prefix: str | None, kind: str, tokens: int, width: int, rows: int,
                bytes_per: int = 4) -> ModelFacts:
    """ModelFacts of the model part of a file, from its header only."""
    from diffmesh.models import detect

    shapes = detect.read_shapes(path)
    if component_prefix is None:
        found = detect.dit_family(shapes) if kind == "dit" else None
        component_prefix = found[1] if found else (detect.unet_prefix(shapes.keys()) or "")
    part = {k[len(component_prefix):]: v for k, v in shapes.items() if k.startswith(component_prefix)}
    layers = sum(1 for k in part if k.endswith("attn1.to_q.weight"))
    return model_facts_from_shapes(part, bytes_per, kind, tokens, width, rows, layers)


def _compute(model: ModelFacts, device: DeviceFacts) -> float:
    return device.step_s if device.step_s is not None else model.flops / device.flops


def _share(t: float, n: int, device: DeviceFacts) -> float:
    """One member's compute when `n` split a forward of `t` seconds: the fixed part stays whole."""
    fixed = min(device.fixed_s, t)
    return fixed + (t - fixed) / n


def _xfer(nbytes: float, bw: float, count: int, latency: float) -> float:
    return nbytes / bw + count * latency


def _sequence_comm(model: ModelFacts, device: DeviceFacts, n: int) -> float:
    blocks = len(model.block_bytes)
    per_block = 4.0 * model.hidden_bytes * (n - 1) / (n * n)
    return _xfer(blocks * per_block + model.hidden_bytes * (n - 1) / n, device.peer_bw, 2 * blocks + 1,
                 device.latency)


def predict(model: ModelFacts, device: DeviceFacts, n: int, cfg: float = 1.0) -> list[Prediction]:
    """Every strategy for `n` devices alike (one device for resident/streamed)."""
    t = _compute(model, device)
    s, a, kept, block = model.total_bytes, model.activation_bytes, model.kept_bytes, model.max_block
    blocks = len(model.block_bytes)
    out: list[Prediction] = []

    def add(strategy: str, devices: int, step: float | None, memory: float, note: str = "") -> None:
        out.append(Prediction(strategy, devices, step, memory, step is not None and memory <= device.budget, note))

    add("resident", 1, t, s + a)
    room = max(0.0, device.budget - a - 2 * block - kept)
    moved = max(0.0, s - kept - room)
    add("streamed", 1, t + _xfer(moved, device.host_bw, blocks, device.latency), kept + 2 * block + a,
        f"{moved / 1e9:.2f} GB streamed per step")
    add("donor", 1, t + _xfer(moved, device.peer_bw, blocks, device.latency), kept + 2 * block + a,
        "blocks from a donor device's memory")
    if n < 2:
        return out
    dit = model.kind == "dit"
    compute = _share(t, n, device) + _sequence_comm(model, device, n) if dit else t
    gather = _xfer(s * (n - 1) / n, device.peer_bw, blocks, device.latency)
    shard = max(compute, gather) + (1.0 - device.overlap) * min(compute, gather)
    add("shard", n, shard, s / n + kept + 2 * block + (a / n if dit else a),
        "tokens split too" if dit else "each member runs the whole UNet")
    hops = _xfer(blocks * model.hidden_bytes * (n - 1), device.peer_bw, blocks, device.latency)
    m = max(1, model.rows)            # 2+ rows run as one-row micro-batches through the stages (pipeline)
    add("layersplit", n, t * (m + n - 1) / (m * n) + hops, s / n + kept + a,
        f"pipeline of {m} micro-batches" if m > 1 else "serial: one device computes at a time")
    if dit:
        add("sequence", n, _share(t, n, device) + _sequence_comm(model, device, n), s + a / n)
    if cfg != 1.0 and n >= 2:
        add("cfg", 2, _share(t, 2, device) + _xfer(model.hidden_bytes, device.peer_bw, 1, device.latency),
            s + a / 2)
    if cfg != 1.0 and dit and n >= 4:
        add("cfg_sequence", n, _share(t, n, device) + _sequence_comm(model, replace(device), n // 2), s + a / n)
    if not dit:
        add("patch", n, _share(t, n, device) + _patch_comm(model, device, n), s + a / n,
            "exact patch parallel (parallel/patch.py)")
        if cfg != 1.0 and n >= 4:     # cond and uncond halves, each patch-split over n/2
            add("cfg_patch", n, _share(t, n, device) + _patch_comm(model, device, n // 2, 0.5)
                + _xfer(model.hidden_bytes / 2, device.peer_bw, 1, device.latency), s + a / n,
                "cond and uncond halves, each patch-split")
        batch = model.rows // (2 if cfg != 1.0 else 1)
        groups = min(batch, n // 2)
        if groups >= 2:               # the batch over groups, each group patch-splitting its rows
            add("batch_patch", n, _share(t, n, device) + _patch_comm(model, device, n // groups, 1 / groups),
                s + a / n, f"{groups} groups of {n // groups}, each patch-split")
    return out


def _patch_comm(model: ModelFacts, device: DeviceFacts, n: int, rows_share: float = 1.0) -> float:
    """Exact patch parallel's exchanges on n devices holding `rows_share` of the rows: keys and values
    gathered per attention layer, halo rows and norm statistics per block (small, latency-bound)."""
    blocks = len(model.block_bytes)
    return _xfer(model.attention_layers * 2 * model.hidden_bytes * rows_share * (n - 1) / n, device.peer_bw,
                 model.attention_layers + 2 * blocks, device.latency)


def choose(predictions: list[Prediction], allowed: tuple[str, ...] = STRATEGIES) -> Prediction | None:
    """The fastest prediction that fits among `allowed` (ties: the simpler strategy, `PREFERENCE`)."""
    fitting = [p for p in predictions if p.fits and p.strategy in allowed and p.step_s is not None]
    return min(fitting, key=lambda p: (round(p.step_s, 9), PREFERENCE.index(p.strategy))) if fitting else None


def table(predictions: list[Prediction], chosen: str | None = None) -> str:
    """The `--explain` table: one line per strategy."""
    lines = [f"{'strategy':<13} {'devices':>7} {'step s':>10} {'memory/device':>14} {'fits':>5}  note"]
    for p in predictions:
        step = "-" if p.step_s is None else f"{p.step_s:.4g}"
        mark = " <" if p.strategy == chosen else ""
        lines.append(f"{p.strategy:<13} {p.devices:>7} {step:>10} {p.memory / 2**20:>11.1f} MB "
                     f"{'yes' if p.fits else 'no':>5}  {p.note}{mark}")
    return "\n".join(lines)


# ------------------------------------------------------------------ GPU predictions beside published figures

def _dit(params: float, blocks: int, width: int, tokens: int, rows: int = 1, bytes_per: int = 2) -> ModelFacts:
    flops = rows * (2.0 * params * tokens + 4.0 * tokens * tokens * width * blocks)
    return ModelFacts("dit", int(params * bytes_per), (int(params * bytes_per * 0.98 / blocks),) * blocks, flops,
                      tokens * width * bytes_per * rows)


def _unet(params: float, pixels: int, flops_per_row: float, rows: int = 2, bytes_per: int = 2) -> ModelFacts:
    blocks = 25
    return ModelFacts("unet", int(params * bytes_per), (int(params * bytes_per * 0.95 / blocks),) * blocks,
                      flops_per_row * rows, pixels * 320 * bytes_per * rows, attention_layers=70)


# Public model sizes; FLOPs of the SDXL UNet from ~6.4 TFLOP per 1024^2 row, scaled with pixels (estimate).
GPU_MODELS = {
    "flux-dev 1024^2": _dit(11.9e9, 57, 3072, 4096 + 512),
    "hunyuanvideo 720p 129f": _dit(13e9, 60, 3072, 33 * 45 * 80 + 256),
    "qwen-image 1328^2": _dit(20.4e9, 60, 3072, 83 * 83 + 256, rows=2),
    "sdxl 1024^2": _unet(2.6e9, 128 * 128, 6.4e12),
    "sdxl 2048^2": _unet(2.6e9, 256 * 256, 4 * 6.4e12),
    "sdxl 3840^2": _unet(2.6e9, 480 * 480, 14.1 * 6.4e12),
}
ANCHORS = [   # (model, devices, link, figure) as reported by each project
    ("flux-dev 1024^2", 4, "H100-SXM/nvlink4", "xDiT USP 2.63x"),
    ("hunyuanvideo 720p 129f", 8, "H100-SXM/nvlink4", "xDiT USP 5.6x"),
    ("flux-dev 1024^2", 2, "RTX4090/pcie4", "raylight USP 1.75x (2 GPUs)"),
    ("sdxl 1024^2", 8, "A100-SXM/nvlink3", "DistriFusion 2.8x (stale activations)"),
    ("sdxl 2048^2", 8, "A100-SXM/nvlink3", "DistriFusion 4.9x"),
    ("sdxl 3840^2", 8, "A100-SXM/nvlink3", "DistriFusion 6.1x"),
    ("qwen-image 1328^2", 2, "RTX4060Ti-16G/pcie4", "raylight FSDP: OOM on one 16 GB card -> 5.68 s/it on two"),
]
SETUPS = {"H100-SXM/nvlink4": ("H100-SXM", "nvlink4"), "H100-SXM/pcie5": ("H100-SXM", "pcie5"),
          "A100-SXM/nvlink3": ("A100-SXM", "nvlink3"), "A100-PCIe/pcie4": ("A100-SXM", "pcie4"),
          "RTX4090/pcie4": ("RTX4090", "pcie4"), "RTX4060Ti-16G/pcie4": ("RTX4060Ti-16G", "pcie4")}


def gpu_predictions(counts: tuple[int, ...] = (2, 4, 8)) -> list[dict[str, Any]]:
    """Predicted step time and speed-up of the best strategy per (model, setup, device count)."""
    rows = []
    for model_name, model in GPU_MODELS.items():
        for setup, (dev_name, link_name) in SETUPS.items():
            dev, link = DEVICES[dev_name], LINKS[link_name]
            facts = DeviceFacts(flops=dev["flops"], budget=dev["memory"] * 0.9, host_bw=LINKS["pcie4"]["bw"],
                                peer_bw=link["bw"], latency=link["latency"], overlap=1.0)
            one = choose(predict(model, facts, 1), ("resident", "streamed"))
            for n in counts:
                preds = predict(model, facts, n, cfg=1.0 if model.kind == "dit" else 7.0)
                best = choose(preds, ("resident", "streamed", "shard", "layersplit") + ONE_IMAGE)
                anchor = [a[3] for a in ANCHORS if a[0] == model_name and a[1] == n and a[2] == setup]
                rows.append({"model": model_name, "setup": setup, "devices": n,
                             "one_device_s": None if one is None else round(one.step_s, 4),
                             "one_device_strategy": None if one is None else one.strategy,
                             "best": None if best is None else best.strategy,
                             "step_s": None if best is None else round(best.step_s, 4),
                             "speedup": None if best is None or one is None else round(one.step_s / best.step_s, 2),
                             "anchor": anchor[0] if anchor else ""})
    return rows
