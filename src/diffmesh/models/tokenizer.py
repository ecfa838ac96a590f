"""CLIP BPE tokenizer (from the shipped vocabulary) and ComfyUI's chunking of weighted prompts.

The BPE follows OpenAI CLIP's `simple_tokenizer`: text is HTML-unescaped, whitespace-collapsed and
lower-cased, split by CLIP's regex, byte-mapped to unicode and merged by rank. The vocabulary is
256 byte symbols, the same with `</w>`, one entry per merge, then the start/end tokens (49408).

Chunking (spec §6.8): each chunk is start + up to 75 tokens + end, padded to 77. Tokens stay
grouped per weighted text segment and per embedding; a group of 8 or more tokens that does not
fit is split at the chunk boundary, a smaller one moves whole to the next chunk.
"""

from __future__ import annotations

import gzip
import html
from importlib import resources
from typing import Callable, Union

import regex
import torch

START_TOKEN = 49406
END_TOKEN = 49407
CHUNK_LENGTH = 77
MIN_SPLIT_GROUP = 8  # groups this long may be split across chunks
EMBEDDING_PREFIX = "embedding:"

Token = Union[int, torch.Tensor]          # a token id, or one textual-inversion vector (D,)
WeightedToken = tuple[Token, float]

_PATTERN = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")


def _bytes_to_unicode() -> dict[int, str]:
    """Reversible byte -> printable unicode map (bytes that print as themselves keep their code)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(keep, codes)}


class CLIPTokenizer:
    """Text -> CLIP token ids (without start/end tokens)."""

    def __init__(self, vocab_path: str | None = None):
        if vocab_path is None:
            ref = resources.files("diffmesh.models") / "data" / "bpe_simple_vocab_16e6.txt.gz"
            data = ref.read_bytes()
        else:
            with open(vocab_path, "rb") as f:
                data = f.read()
        lines = gzip.decompress(data).decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
        self.byte_encoder = _bytes_to_unicode()
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.pattern = regex.compile(_PATTERN, regex.IGNORECASE)
        self._cache: dict[str, list[str]] = {}

    def _bpe(self, word: str) -> list[str]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        text = html.unescape(html.unescape(text)).strip()
        text = regex.sub(r"\s+", " ", text).strip().lower()
        ids: list[int] = []
        for piece in self.pattern.findall(text):
            mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(mapped))
        return ids


EmbeddingLookup = Callable[[str], "torch.Tensor | None"]


def _split_embedding_names(segment: str) -> list[str]:
    """Split before every ` embedding:` / newline+`embedding:`; the first piece is plain text."""
    pieces = regex.split(r"[ \n]" + regex.escape(EMBEDDING_PREFIX), segment)
    out = [pieces[0]] + [EMBEDDING_PREFIX + p for p in pieces[1:]]
    return [p for p in out if p != ""]


def _embedding_group(piece: str, lookup: EmbeddingLookup | None, weight: float) -> tuple[list, str]:
    """(group of weighted vectors or [], leftover text) for a piece starting with `embedding:`."""
    words = piece[len(EMBEDDING_PREFIX):].strip("\n").split()
    if not words:
        return [], ""
    name, leftover = words[0], " ".join(words[1:])
    vectors = lookup(name) if lookup else None
    if vectors is None:
        stripped = name.strip(",")
        if stripped != name and lookup:
            vectors = lookup(stripped)
            leftover = f"{name[len(stripped):]} {leftover}"
    if vectors is None:
        return [], leftover
    vectors = vectors.reshape(-1, vectors.shape[-1])
    return [(vectors[i], weight) for i in range(vectors.shape[0])], leftover


def token_groups(tokenizer: CLIPTokenizer, segments: list[tuple[str, float]],
                 lookup: EmbeddingLookup | None = None) -> list[list[WeightedToken]]:
    """Weighted segments -> groups of weighted tokens (one per text piece / embedding)."""
    groups: list[list[WeightedToken]] = []
    for text, weight in segments:
        for piece in _split_embedding_names(text):
            if piece.startswith(EMBEDDING_PREFIX) and lookup is not None:
                group, piece = _embedding_group(piece, lookup, weight)
                if group:
                    groups.append(group)
                if not piece:
                    continue
            groups.append([(t, weight) for t in tokenizer.encode(piece)])
    return groups


def chunk_tokens(groups: list[list[WeightedToken]], pad_token: int) -> list[list[WeightedToken]]:
    """Groups -> chunks of exactly 77 weighted tokens (start, body, end, padding)."""
    chunks: list[list[WeightedToken]] = []
    chunk: list[WeightedToken] = [(START_TOKEN, 1.0)]
    for group in groups:
        splittable = len(group) >= MIN_SPLIT_GROUP
        while group:
            if len(chunk) + len(group) <= CHUNK_LENGTH - 1:
                chunk.extend(group)
                break
            room = CHUNK_LENGTH - 1 - len(chunk)
            if splittable:
                chunk.extend(group[:room])
                group = group[room:]
                chunk.append((END_TOKEN, 1.0))
            else:
                chunk.append((END_TOKEN, 1.0))
                chunk.extend([(pad_token, 1.0)] * room)
            chunks.append(chunk)
            chunk = [(START_TOKEN, 1.0)]
    chunk.append((END_TOKEN, 1.0))
    chunk.extend([(pad_token, 1.0)] * (CHUNK_LENGTH - len(chunk)))
    chunks.append(chunk)
    return chunks


def empty_tokens(pad_token: int, length: int = CHUNK_LENGTH) -> list[int]:
    """The empty prompt (start, end, padding) used as the base of weight interpolation."""
    return ([START_TOKEN, END_TOKEN] + [pad_token] * length)[:length]
