"""Every image input the library takes, turned into one form: an HWC uint8 RGB numpy array.

Files are read as detectron2 reads them (PIL, EXIF orientation applied). No torch import: tensors are
recognised by duck typing, so drawing and data code stay light.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DatasetError

if TYPE_CHECKING:
    from typing import TypeGuard  # Python 3.10+; only read by the type checker

    import torch

# what the library takes as an image: a file, a PIL image, an HWC (or HW) uint8 array, a CHW tensor
ImageLike = Union[str, Path, Image.Image, np.ndarray, "torch.Tensor"]


def read_image(path: Union[str, Path]) -> np.ndarray:
    """An image file as HWC uint8 RGB with EXIF orientation applied; DatasetError naming the file if unreadable."""
    try:
        with Image.open(path) as img:
            return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from None


def _is_tensor(image: object) -> TypeGuard[torch.Tensor]:
    """Whether ``image`` is a torch tensor, recognised without importing torch."""
    return hasattr(image, "detach") and hasattr(image, "is_floating_point")


def _tensor_to_array(image: torch.Tensor) -> np.ndarray:
    """A CHW torch tensor (uint8 0-255, or float 0-1) as HWC uint8."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"a tensor image must be CHW with 1 or 3 channels, got shape {tuple(image.shape)}")
    image = image.detach().cpu()
    if image.is_floating_point():
        image = (image.float() * 255).round().clamp(0, 255)
    array = image.numpy().astype(np.uint8, copy=False)
    return np.repeat(array, 3, axis=0).transpose(1, 2, 0) if array.shape[0] == 1 else array.transpose(1, 2, 0)


def as_rgb_array(image: ImageLike) -> np.ndarray:
    """HWC uint8 RGB (contiguous) from a path, a PIL image, an HWC/HW uint8 array or a CHW tensor."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if _is_tensor(image):
        image = _tensor_to_array(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"an array image must be uint8 (HWC RGB), got {image.dtype}")
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"an array image must be HWC RGB, got shape {image.shape}")
        return np.ascontiguousarray(image)
    raise TypeError(f"cannot read an image from {type(image).__name__}; pass a path, PIL image, HWC uint8 array "
                    "or CHW tensor")
