"""How fast a training stage ran: tokens per second per GPU, model FLOPs utilisation, peak memory.

MFU = model FLOPs per token x tokens per second per GPU / the GPU's dense bf16 peak.
Model FLOPs per token, for a decoder with N weights in its matrix multiplies (every
parameter but the input embedding, whose lookup is no multiply; a tied lm_head counts
once), L layers of width d and sequences of length S:
    6 N  (forward and backward through the weights)  +  12 L d S  (attention scores and values)
which is the PaLM paper's accounting. Activation recomputation is not counted, so MFU
falls when gradient checkpointing is on, as it should: recomputed FLOPs are not progress.
"""

from __future__ import annotations

from typing import Any

# Dense bf16 tensor-core peak, TFLOP/s, from the vendors' data sheets (SXM parts).
PEAK_BF16_TFLOPS = {
    "B200": 2250.0,
    "H200": 989.0,
    "H100": 989.0,
    "H800": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "A10G": 125.0,
    "A10": 125.0,
    "L4": 121.0,
}


def matmul_parameters(config: Any, total_parameters: int) -> int:
    """Parameters that take part in matrix multiplies: all but an untied input embedding."""
    embedding = config.vocab_size * config.hidden_size
    return total_parameters if getattr(config, "tie_word_embeddings", False) else total_parameters - embedding


def flops_per_token(config: Any, total_parameters: int, seq_len: int) -> float:
    layers, width = config.num_hidden_layers, config.hidden_size
    return 6.0 * matmul_parameters(config, total_parameters) + 12.0 * layers * width * seq_len


def peak_tflops(device_name: str | None, given: float | None = None) -> float | None:
    """The bf16 peak of a GPU by its name (the longest table key it contains), or `given`."""
    if given:
        return float(given)
    if not device_name:
        return None
    matches = [key for key in PEAK_BF16_TFLOPS if key in device_name.upper()]
    return PEAK_BF16_TFLOPS[max(matches, key=len)] if matches else None


def stage_throughput(tokens: int | None, runtime_s: float | None, world_size: int, config: Any,
                     total_parameters: int, seq_len: int, device_name: str | None,
                     given_peak: float | None = None) -> dict[str, Any]:
    """The throughput record of a finished stage (None where a number is unknown, e.g. on CPU)."""
    if not tokens or not runtime_s:
        return {"tokens": tokens, "tokens_per_s_per_gpu": None, "mfu": None}
    per_gpu = tokens / runtime_s / world_size
    peak = peak_tflops(device_name, given_peak)
    flops = flops_per_token(config, total_parameters, seq_len)
    return {
        "tokens": int(tokens),
        "tokens_per_s_per_gpu": round(per_gpu, 1),
        "model_tflops_per_s_per_gpu": round(flops * per_gpu / 1e12, 2),
        "flops_per_token": flops,
        "peak_tflops": peak,
        "mfu": round(flops * per_gpu / (peak * 1e12), 4) if peak else None,
        "device": device_name,
    }
