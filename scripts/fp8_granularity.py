"""Scale granularity for fp8 host KV: one scale per (token, head) vs per (page, head), on synthetic K/V.

Prints, for token norms spread log-normally by sigma (0 = every token alike), the relative error
||x^ - x|| / ||x|| over all tokens, the worst single token's relative error, and the bytes per
token-head row of 256 values. Usage: PYTHONPATH=. python3 scripts/fp8_granularity.py
"""

from __future__ import annotations

import torch

from kernels.fp8_rows_ref import dequantize_fp8_reference, quantize_fp8_reference

PAGE, HEADS, DIM, PAGES = 32, 3, 256, 64


def round_trip(x: torch.Tensor, per_page: bool) -> torch.Tensor:
    """x [pages, P, H, D] quantised with one scale per token-head or per page-head."""
    if not per_page:
        return dequantize_fp8_reference(*quantize_fp8_reference(x), torch.float32)
    grouped = x.permute(0, 2, 1, 3).reshape(PAGES, HEADS, PAGE * DIM)
    back = dequantize_fp8_reference(*quantize_fp8_reference(grouped), torch.float32)
    return back.view(PAGES, HEADS, PAGE, DIM).permute(0, 2, 1, 3)


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    print(f"{'sigma':>5} {'scale per':>10} {'rel err':>8} {'worst token':>11} {'B/row':>6}")
    for sigma in (0.0, 1.0, 2.0, 4.0):
        x = torch.randn(PAGES, PAGE, HEADS, DIM, generator=gen).to(torch.bfloat16).float()
        x *= torch.exp(sigma * torch.randn(PAGES, PAGE, HEADS, 1, generator=gen))
        for per_page in (False, True):
            err = round_trip(x, per_page) - x
            token = err.norm(dim=-1) / x.norm(dim=-1)
            row_bytes = DIM + (1 / PAGE if per_page else 1)
            print(f"{sigma:5.1f} {'page' if per_page else 'token':>10} {float(err.norm() / x.norm()):8.4f} "
                  f"{float(token.max()):11.4f} {row_bytes:6.2f}")


if __name__ == "__main__":
    main()
