"""A MaskRCNN as one function of one image tensor (the form that tracing turns into an exported graph)."""
from __future__ import annotations

from torch import Tensor, nn

from .meta_arch import MaskRCNN
from .preprocess import resize_shortest_edge_tensor


class ImageDetector(nn.Module):
    """One HWC uint8 RGB image in; boxes (XYXY, input pixels), scores, 0-based classes and (N, H, W) bool masks
    (a box-only model: none) out, as ``model.predict`` computes them (detectron2's resize done in tensor
    operations, bit-exact with PIL).

    Every step is a tensor operation with no Python branch on values, so ``torch.jit.trace`` of it holds for
    images of any size.
    """

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        cfg = self.model.cfg
        pixels = image.flip(-1) if cfg.INPUT.FORMAT == "BGR" else image
        resized = resize_shortest_edge_tensor(pixels, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        item = {"image": resized.permute(2, 0, 1), "height": image.shape[0], "width": image.shape[1]}
        out = self.model([item])[0]
        if "masks" not in out:  # a box-only model (MODEL.MASK_ON False)
            return out["boxes"], out["scores"], out["classes"]
        return out["boxes"], out["scores"], out["classes"], out["masks"]
