"""The numpy conversions the streaming methods use, against torch's own casts."""

import numpy as np
import torch

from hpcadapt_merge import kernels


def awkward_floats() -> np.ndarray:
    """Normals, subnormals, exact ties, infinities and NaNs with assorted payloads and signs."""
    rng = np.random.default_rng(0)
    values = rng.standard_normal(100_000).astype(np.float32) * np.float32(3)
    bits = values.view(np.uint32)
    bits[::97] = (bits[::97] & 0xFFFF0000) | 0x8000  # halfway: round to even
    bits[1::97] = rng.integers(0, 1 << 23, bits[1::97].size, dtype=np.uint32)  # subnormals
    bits[2::97] = 0x7F800000  # +inf
    bits[3::97] = 0xFF800000  # -inf
    bits[4::97] = 0x7FFFFFFF  # NaN whose rounding carry would overflow
    bits[5::97] = 0xFFC00001  # negative NaN
    bits[6::97] = 0x7F7FFFFF  # largest finite: rounds to inf
    return values


def test_bf16_encoding_rounds_as_torch_does():
    values = awkward_floats()
    ours = kernels._encode(values.copy(), "BF16").view(np.uint16)
    theirs = torch.from_numpy(values.copy()).bfloat16().view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(values)
    assert np.array_equal(ours[~nan], theirs[~nan])
    assert (ours[nan] == 0x7FC0).all()  # a NaN stays a NaN (torch's vector cast writes 0xFFFF, its scalar one 0x7FC0)


def test_bf16_decoding_is_exact():
    raw = np.arange(1 << 16, dtype=np.uint16)  # every bf16 bit pattern
    out = np.empty(raw.size, dtype=np.float32)
    kernels._decode(raw.view(np.int16), "BF16", out)
    theirs = torch.from_numpy(raw.view(np.int16).copy()).view(torch.bfloat16).float().numpy()
    assert np.array_equal(out.view(np.uint32), theirs.view(np.uint32))
