"""``--data FILE``: token batches read from a file, a window per step, never the whole file.

Two kinds of file, by name:

- ``*.bin``: a flat array of token ids, the convention of nanoGPT (``train.bin``, ``np.uint16``)
  and of Megatron's indexed datasets' ``.bin`` (``uint16`` for vocabularies below 65,500, wider
  above). The width is ``--data-dtype uint16|uint32``, by default ``uint16`` when the model's
  vocabulary fits (at most 65,536 ids) and ``uint32`` otherwise. An id beyond the vocabulary
  fails with the file, the id and the fix.
- anything else: text, its bytes as tokens (byte value modulo the vocabulary).

Step ``index`` takes the ``index``-th window of ``batch x (seq_len + 1)`` tokens, wrapping around
the end of the file. Each window is read through its own ``np.memmap`` of just those tokens,
unmapped after, so host memory stays flat however many steps run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from profiles.contract import UserError

__all__ = ["TokenData", "DATA_DTYPES", "data_dtype"]

DATA_DTYPES = {"uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32}


def data_dtype(path: Path, vocab: int, given: str | None = None) -> str:
    """The element type of ``path``'s tokens: ``uint8`` (text), or a ``.bin``'s width."""
    if Path(path).suffix != ".bin":
        if given:
            raise UserError(f"--data-dtype {given}: {path} is read as text (bytes); only a .bin file takes a width")
        return "uint8"
    if given:
        if given not in ("uint16", "uint32"):
            raise UserError(f"--data-dtype {given}: a .bin token file is uint16 or uint32")
        return given
    return "uint16" if vocab <= 2**16 else "uint32"


class TokenData:
    """Batches of ``(inputs, next-token targets)`` from ``path`` (see the module docstring)."""

    def __init__(self, path: Path, vocab: int, dtype: str | None = None):
        self.path, self.vocab = Path(path), vocab
        self.dtype = data_dtype(self.path, vocab, dtype)
        self.text = self.dtype == "uint8"
        self.item = item = np.dtype(DATA_DTYPES[self.dtype]).itemsize
        size = self.path.stat().st_size
        if size % item:
            raise UserError(
                f"--data {path}: {size} bytes is not a whole number of {self.dtype} tokens: check --data-dtype"
            )
        self.tokens = size // item
        if self.tokens < 2:
            raise UserError(f"--data {path}: needs at least 2 tokens")

    def _read(self, start: int, count: int) -> np.ndarray:
        """``count`` tokens from ``start``, wrapping around the end of the file."""
        parts, pos = [], start % self.tokens
        while count > 0:
            take = min(count, self.tokens - pos)
            view = np.memmap(self.path, dtype=DATA_DTYPES[self.dtype], mode="r", offset=pos * self.item, shape=(take,))
            parts.append(np.array(view, dtype=np.int64))  # a copy: the mapping goes with `view`
            del view
            count, pos = count - take, 0
        return np.concatenate(parts)

    def batch(self, batch: int, seq_len: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = batch * (seq_len + 1)
        flat = torch.from_numpy(self._read(n * index, n))
        if self.text:
            flat %= self.vocab
        elif int(flat.max()) >= self.vocab:
            bad = int(flat.max())
            raise UserError(
                f"--data {self.path}: token id {bad} is beyond the model's vocabulary ({self.vocab}): a file "
                f"of another tokenizer, or of another width (read as {self.dtype}; see --data-dtype)"
            )
        flat = flat.view(batch, seq_len + 1)
        return flat[:, :-1].contiguous(), flat[:, 1:].contiguous()
