"""Linear maps between a quantizer's latent width and the width of its implicit codes (FSQ, LFQ, BSQ).

Backends whose codes live in a fixed small space (FSQ: one coordinate per level, LFQ/BSQ: one per bit)
project latents of another width in with a Linear and back out with another, as the reference
implementations do when ``dim`` differs from the code width. Both maps return fp32 whatever the
module's dtype, so the quantization that follows always runs in fp32.
"""

from __future__ import annotations

from torch import Tensor, nn


class CodeProjection(nn.Module):
    """``project_in`` (D -> C) and ``project_out`` (C -> D): Linear layers when D != C, identities otherwise.

    Args:
        dim: width D of the latents.
        code_dim: width C of the codes.
    """

    def __init__(self, dim: int, code_dim: int) -> None:
        super().__init__()
        self.active = dim != code_dim
        self.project_in = nn.Linear(dim, code_dim) if self.active else nn.Identity()
        self.project_out = nn.Linear(code_dim, dim) if self.active else nn.Identity()

    def to_code(self, z: Tensor) -> Tensor:
        """(..., D) latents -> (..., C) fp32 (run in the layer's own dtype when the module was cast)."""
        if self.active:
            return self.project_in(z.to(self.project_in.weight.dtype)).float()
        return z.float()

    def from_code(self, codes: Tensor) -> Tensor:
        """(..., C) codes -> (..., D) fp32."""
        if self.active:
            return self.project_out(codes.to(self.project_out.weight.dtype)).float()
        return codes.float()
