"""Causal networks run a few frames at a time, each convolution's left input kept between calls
instead of recomputed: the state of a live stream (voicetrain.tasks.svc_incremental).

A `CausalConv1d` of kernel k and dilation d reads the (k - 1) * d frames before each output frame.
Offline they are zeros before the input's first frame; here they are the cache, which starts as
those zeros and then holds the last (k - 1) * d frames the layer was given. So a causal network
run on frames [0, a) and then on [a, b) with its caches gives exactly what it gives on [0, b)
at once: no frame is recomputed, whatever the network's reach back.

`BackboneStep` is a causal `ConvNeXtBackbone`'s forward in this form, with the caches as explicit
inputs and outputs, so it exports to ONNX as one graph (`--backend onnx` of the stream).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from voicetrain.tasks.layers.causal import CausalConv1d
from voicetrain.tasks.layers.generators import ConvNeXtBackbone


def empty_cache(layer: CausalConv1d, batch: int = 1) -> torch.Tensor:
    """The cache before a stream's first frame: the zeros a causal convolution pads its input with."""
    return torch.zeros(batch, layer.in_channels, layer.causal_padding, dtype=layer.weight.dtype)


def causal_step(layer: CausalConv1d, frames: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`layer` on the new frames [B, C, n] read after its cache [B, C, (k - 1) * d] -> (output [B, C_out, n],
    the cache for the next call: the last (k - 1) * d frames of cache and input together)."""
    joined = torch.cat([cache, frames], dim=-1)
    output = functional.conv1d(joined, layer.weight, layer.bias, dilation=layer.dilation, groups=layer.groups)
    return output, joined[..., frames.shape[-1]:]


def causal_layers(module: nn.Module) -> list[CausalConv1d]:
    return [layer for layer in module.modules() if isinstance(layer, CausalConv1d)]


class BackboneStep(nn.Module):
    """forward(frames [B, C_in, n], condition [B, S], *caches) -> (features [B, dim, n], *caches) of a
    causal ConvNeXtBackbone: its forward on new frames, the input convolution's and each block's
    depthwise convolution's caches in and out (one per layer, in `initial_caches()` order)."""

    def __init__(self, backbone: ConvNeXtBackbone):
        super().__init__()
        layers = [backbone.embed, *(block.depthwise for block in backbone.blocks)]
        if not all(isinstance(layer, CausalConv1d) for layer in layers):
            raise ValueError("BackboneStep needs a causal ConvNeXtBackbone (causal=True); a centred one reads "
                             "frames ahead, which a stream has not received")
        self.backbone = backbone

    def initial_caches(self, batch: int = 1) -> list[torch.Tensor]:
        backbone = self.backbone
        return [empty_cache(backbone.embed, batch), *(empty_cache(block.depthwise, batch) for block in backbone.blocks)]

    def forward(self, frames: torch.Tensor, condition: torch.Tensor | None,
                *caches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        backbone = self.backbone
        hidden, first_cache = causal_step(backbone.embed, frames, caches[0])  # type: ignore[arg-type]
        hidden = backbone.first_norm(hidden.transpose(1, 2), condition).transpose(1, 2)
        new_caches = [first_cache]
        for block, cache in zip(backbone.blocks, caches[1:]):
            mixed, block_cache = causal_step(block.depthwise, hidden, cache)  # type: ignore[arg-type]
            new_caches.append(block_cache)
            branch = block.project(functional.gelu(block.expand(block.norm(mixed.transpose(1, 2), condition))))
            hidden = hidden + (block.scale * branch).transpose(1, 2)
        return (backbone.last_norm(hidden.transpose(1, 2)).transpose(1, 2), *new_caches)
