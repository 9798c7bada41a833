"""MaskRCNN: detectron2's GeneralizedRCNN semantics (normalise, pad, backbone, RPN, ROI heads, postprocess)
plus ``predict`` for plain images."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence, Union, overload

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..coco_classes import CategoryMap
from ..images import ImageLike, as_rgb_array
from .boxes import Size
from .fuse import FastPath, clear_fold_caches
from .postprocess import rescale
from .preprocess import resize_shortest_edge

if TYPE_CHECKING:
    from ..config import CfgNode
    from .backbone import Backbone
    from .hub import CardInfo
    from .roi_heads import ROIHeads
    from .rpn import RPN

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def precision_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager[None]:
    """The autocast context for ``precision`` on ``device`` (a no-op for fp32); ValueError for fp16 off CUDA."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    if dtype is torch.float16 and device.type != "cuda":
        raise ValueError(f"precision fp16 needs a CUDA device (the model is on {device}); use bf16 on the CPU")
    return torch.autocast(device.type, dtype=dtype)


def _output_size(item: Mapping[str, Any], key: str, default: int) -> Size:
    """The requested output height or width (an int; a traced 0-dim tensor stays one)."""
    value = item.get(key, default)
    return value if isinstance(value, Tensor) and torch.jit.is_tracing() else int(value)


class MaskRCNN(nn.Module):
    """Mask R-CNN taking detectron2-style batched inputs (``image``, ``height``, ``width``, ``instances`` in
    training)."""

    pixel_mean: Tensor
    pixel_std: Tensor

    def __init__(self, cfg: CfgNode, arch: str, backbone: Backbone, rpn: RPN, roi_heads: ROIHeads,
                 classes: CategoryMap) -> None:
        super().__init__()
        self.cfg = cfg
        self.arch = arch  # "fpn" or "c4": the checkpoint key layout (pycontrast_det.checkpoints.d2_to_model)
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.classes = classes  # names and dataset category ids in contiguous order; checkpoints store them
        self.fast_path = FastPath()  # inference optimisations in eval mode (pycontrast_det.modeling.fuse)
        self.size_divisibility = backbone.size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1), persistent=False)

    @property
    def class_names(self) -> list[str]:
        """Each class's name in contiguous order (``classes.names``)."""
        return list(self.classes.names)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def default_batch_size(self) -> int:
        """Images per forward pass in :meth:`predict` when none is given: 4 on an accelerator, 1 on the CPU."""
        return 1 if self.device.type == "cpu" else 4

    def save_pretrained(self, folder: Union[str, os.PathLike], info: Optional["CardInfo"] = None) -> Path:
        """Write this model as a folder ``pycontrast_det.load(folder)`` reads back: ``model.safetensors``, the
        effective ``config.yaml``, ``classes.json``, a model card and ``SHA256SUMS`` (:mod:`.hub`)."""
        from .hub import save_pretrained

        return save_pretrained(self, folder, info)

    def push_to_hub(self, repo_id: str, *, private: bool = False, create_pr: bool = False,
                    revision: Optional[str] = None, message: str = "pycontrast-zoo push",
                    info: Optional["CardInfo"] = None) -> str:
        """Upload :meth:`save_pretrained`'s folder to the Hub repository ``repo_id`` (created if needed; the token
        from HF_TOKEN or ``hf auth login``); ``pycontrast_det.load("hf://" + repo_id)`` loads it. Returns the
        commit's URL (the pull request's with ``create_pr``)."""
        from .hub import push_to_hub

        return push_to_hub(self, repo_id, info=info, private=private, create_pr=create_pr, revision=revision,
                           message=message)

    def preprocess(self, batched_inputs: Sequence[Mapping[str, Any]]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Normalised images padded (zeros, bottom/right) to the batch maximum, rounded up to the
        backbone's size divisibility; and each image's unpadded (h, w) (0-dim tensors when traced)."""
        images = [x["image"].to(self.device, non_blocking=True) for x in batched_inputs]
        sizes = [(im.shape[-2], im.shape[-1]) for im in images]
        max_h, max_w = max(s[0] for s in sizes), max(s[1] for s in sizes)
        if self.size_divisibility > 1:
            d = self.size_divisibility
            max_h, max_w = (max_h + d - 1) // d * d, (max_w + d - 1) // d * d
        if len(images) == 1:
            image = (images[0] - self.pixel_mean) / self.pixel_std
            return F.pad(image, [0, max_w - sizes[0][1], 0, max_h - sizes[0][0]]).unsqueeze(0), sizes
        # one padded batch, normalised in one pass: padding filled with the mean normalises to exactly zero
        batch = self.pixel_mean.expand(len(images), -1, max_h, max_w).contiguous()
        for image, slot in zip(images, batch):
            slot[:, :image.shape[-2], :image.shape[-1]].copy_(image)
        return batch.sub_(self.pixel_mean).div_(self.pixel_std), sizes

    def train(self, mode: bool = True) -> "MaskRCNN":
        """nn.Module.train; entering training also drops the inference folds (training changes the weights)."""
        if mode:
            clear_fold_caches(self)
        return super().train(mode)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> "MaskRCNN":
        clear_fold_caches(self)  # .to() / .half() / ...: the folds refer to the old tensors
        return super()._apply(fn, recurse)

    def forward(self, batched_inputs: Sequence[Mapping[str, Any]]
                ) -> Union[dict[str, Tensor], list[dict[str, Tensor]]]:
        """Training: the five losses. Eval: per image boxes/scores/classes(/masks) in original pixels."""
        with self.fast_path.active():
            return self._forward(batched_inputs)

    def _forward(self, batched_inputs: Sequence[Mapping[str, Any]]
                 ) -> Union[dict[str, Tensor], list[dict[str, Tensor]]]:
        images, sizes = self.preprocess(batched_inputs)
        if self.training:
            features = self.backbone(images)
            targets = [self._target(x) for x in batched_inputs]
            proposals, losses = self.rpn(features, sizes, [t["boxes"] for t in targets])
            _, roi_losses = self.roi_heads(features, proposals, sizes, targets)
            return {**losses, **roi_losses}
        if self.fast_path.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.backbone(images)
        proposals, _ = self.rpn(features, sizes)
        detections, _ = self.roi_heads(features, proposals, sizes)
        return [rescale(det, size, _output_size(x, "height", size[0]), _output_size(x, "width", size[1]))
                for det, size, x in zip(detections, sizes, batched_inputs)]

    def _target(self, item: Mapping[str, Any]) -> dict[str, Any]:
        if "instances" not in item:
            raise ValueError("training inputs need an 'instances' dict with boxes, classes and masks")
        inst = dict(item["instances"])
        inst["boxes"] = torch.as_tensor(inst["boxes"], dtype=torch.float32).reshape(-1, 4).to(self.device)
        inst["classes"] = torch.as_tensor(inst["classes"], dtype=torch.int64).to(self.device)
        if isinstance(inst.get("masks"), Tensor):
            inst["masks"] = inst["masks"].to(self.device)
        return inst

    def to_input(self, image: ImageLike) -> dict[str, Any]:
        """A batched-input dict for one image: RGB uint8 -> config channel order -> detectron2's test resize."""
        rgb = as_rgb_array(image)
        array = rgb[:, :, ::-1] if self.cfg.INPUT.FORMAT == "BGR" else rgb
        resized = resize_shortest_edge(np.ascontiguousarray(array), self.cfg.INPUT.MIN_SIZE_TEST,
                                       self.cfg.INPUT.MAX_SIZE_TEST)
        tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))  # uint8: 4x less to copy
        return {"image": tensor, "height": rgb.shape[0], "width": rgb.shape[1]}

    @overload
    def predict(self, images: ImageLike, score_thresh: float | None = None, batch_size: Optional[int] = None,
                precision: str = "fp32") -> dict[str, Any]: ...

    @overload
    def predict(self, images: Union[list[ImageLike], tuple[ImageLike, ...]], score_thresh: float | None = None,
                batch_size: Optional[int] = None, precision: str = "fp32") -> list[dict[str, Any]]: ...

    @torch.inference_mode()
    def predict(self, images: Union[ImageLike, list[ImageLike], tuple[ImageLike, ...]],
                score_thresh: float | None = None, batch_size: Optional[int] = None, precision: str = "fp32"
                ) -> Union[dict[str, Any], list[dict[str, Any]]]:
        """Detect objects in one image or a list (paths, PIL images, HWC uint8 RGB arrays, CHW tensors).

        Returns per image ``boxes`` [N, 4] XYXY pixels, ``scores``, ``labels`` (0-based), ``label_names``,
        ``masks`` bool [N, H, W] (CPU tensors). ``score_thresh`` replaces ROI_HEADS.SCORE_THRESH_TEST.
        ``batch_size``: images per forward pass, padded once to a common size (default 4 on CUDA, 1 on the CPU,
        where batching does not pay and padding to a batch's size changes outputs slightly). ``precision``:
        ``"fp32"``, or autocast to ``"fp16"`` (CUDA) / ``"bf16"``.
        """
        autocast = precision_context(precision, self.device)
        if batch_size is None:
            batch_size = self.default_batch_size()
        single = not isinstance(images, (list, tuple))
        items: list[ImageLike] = list(images) if isinstance(images, (list, tuple)) else [images]
        was_training = self.training
        saved_thresh = self.roi_heads.score_thresh
        self.eval()
        if score_thresh is not None:
            self.roi_heads.score_thresh = float(score_thresh)
        try:
            results = []
            for start in range(0, len(items), batch_size):
                batch = [self.to_input(im) for im in items[start:start + batch_size]]
                with autocast:
                    outputs = self(batch)
                for out in outputs:
                    labels = out["classes"].cpu()
                    result = {"boxes": out["boxes"].float().cpu(), "scores": out["scores"].float().cpu(),
                              "labels": labels, "label_names": [self.class_names[i] for i in labels.tolist()]}
                    if "masks" in out:
                        result["masks"] = out["masks"].cpu()
                    results.append(result)
        finally:
            self.roi_heads.score_thresh = saved_thresh
            self.train(was_training)
        return results[0] if single else results
