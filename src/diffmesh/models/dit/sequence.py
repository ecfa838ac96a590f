"""The seam through which a diffusion transformer can run on a part of its image tokens.

Every DiT family's `forward` takes an optional `sequence` object (None = the whole sequence here,
`WHOLE`). The model calls three methods on it and nothing else:

    tokens = sequence.split(tokens)          # (B, N, ...) image tokens -> this worker's rows
    out    = sequence.attend(q, k, v, replicated)
                                             # q, k, v (B, H, L, D) of this worker's tokens, the
                                             # first `replicated` of them (text) held by every
                                             # worker, the rest its image rows; -> (B, H, L, D),
                                             # attention over the WHOLE sequence
    tokens = sequence.gather(tokens)         # this worker's rows -> all (B, N, ...) image tokens

Everything else a block does (projections, norms, MLPs, modulation, RoPE of its own positions)
is per token and runs unchanged on the rows a worker holds. `diffmesh.parallel.sequence` gives
the multi-worker implementation (Ulysses all-to-all over heads, ring attention over key blocks);
the model code does not know which one runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class WholeSequence:
    """One device: every token is here, attention is plain SDPA. Stateless."""

    world = 1

    def split(self, tokens: torch.Tensor, dim: int = 1) -> torch.Tensor:
        return tokens

    def gather(self, tokens: torch.Tensor, dim: int = 1) -> torch.Tensor:
        return tokens

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, replicated: int = 0) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)


WHOLE = WholeSequence()
