"""timm's MLP (same parameters, same function) whose first linear and GELU run as one fused
matmul in CPU inference (``tokenred.kernels.fused.linear_gelu``)."""
from __future__ import annotations

from torch import Tensor, nn
from timm.layers import Mlp as TimmMlp

from tokenred.kernels.fused import linear_gelu, linear_gelu_applies


class Mlp(TimmMlp):
    """fc1 -> act -> drop -> norm -> fc2 -> drop, as timm's ``Mlp``; in eval mode with a GELU
    activation, no norm and linear layers, fc1 and the GELU are one fused call where
    ``linear_gelu_applies`` (float32 CPU inference); everything else runs timm's forward."""

    def forward(self, x: Tensor) -> Tensor:
        fc1 = self.fc1
        if (not self.training and isinstance(self.act, nn.GELU) and isinstance(fc1, nn.Linear)
                and isinstance(self.norm, nn.Identity)
                and linear_gelu_applies(x, fc1.weight, fc1.bias)):
            return self.drop2(self.fc2(linear_gelu(x, fc1.weight, fc1.bias, self.act.approximate)))
        return super().forward(x)
