"""``--data``: a .bin token file (nanoGPT/Megatron layout) or text, a window per step, memory flat."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from executor.data import TokenData
from profiles.contract import UserError


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    pytest.skip("needs /proc (Linux)")


def test_bin_windows_are_the_files_tokens_in_order(tmp_path):
    tokens = np.arange(1000, dtype=np.uint16) % 997
    path = tmp_path / "train.bin"
    tokens.tofile(path)
    data = TokenData(path, vocab=1000)
    assert data.dtype == "uint16" and data.tokens == 1000
    n = 2 * (7 + 1)
    for step in (0, 1, 62, 63):  # 63 wraps past the end of the file
        x, y = data.batch(2, 7, step)
        want = torch.from_numpy(np.take(tokens, np.arange(n * step, n * (step + 1)), mode="wrap").astype(np.int64))
        assert torch.equal(x, want.view(2, 8)[:, :-1]) and torch.equal(y, want.view(2, 8)[:, 1:])
    big = tmp_path / "wide.bin"
    np.arange(300, dtype=np.uint32).tofile(big)
    assert TokenData(big, vocab=200_000).dtype == "uint32"  # by vocabulary: Llama 3's needs 32 bits
    assert TokenData(big, vocab=1000, dtype="uint32").batch(1, 3, 1)[0].tolist() == [[4, 5, 6]]
    with pytest.raises(UserError, match="token id 7 is beyond the model's vocabulary"):
        TokenData(big, vocab=5, dtype="uint32").batch(1, 3, 1)
    with pytest.raises(UserError, match="whole number of uint32"):
        (tmp_path / "odd.bin").write_bytes(b"\0" * 6)
        TokenData(tmp_path / "odd.bin", vocab=1000, dtype="uint32")


def test_text_is_its_bytes_modulo_the_vocabulary(tmp_path):
    path = tmp_path / "text.txt"
    path.write_bytes(bytes(range(200)))
    x, y = TokenData(path, vocab=64).batch(1, 4, 0)
    assert x.tolist() == [[0, 1, 2, 3]] and y.tolist() == [[1, 2, 3, 4]]
    assert TokenData(path, vocab=64).batch(1, 4, 20)[0].tolist() == [[36, 37, 38, 39]]  # 100..103 mod 64


def test_memory_stays_flat_over_steps(tmp_path):
    """64 MiB of tokens read a window at a time: the process holds no more after 2,000 steps
    than after the first (the whole file would be 64 MiB, as a Python list far more)."""
    path = tmp_path / "big.bin"
    np.random.default_rng(0).integers(0, 50257, size=32 * 2**20, dtype=np.uint16).tofile(path)
    data = TokenData(path, vocab=50257)
    data.batch(8, 512, 0)
    before = _rss()
    for step in range(2000):  # 2000 x 8 x 513 tokens: 8.2M tokens, a quarter of the file
        data.batch(8, 512, step)
    assert _rss() - before < 4 * 2**20
