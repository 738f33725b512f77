"""Safe image loading: any PIL-readable file -> (3, H, W) float32 RGB in [0, 1].

Why a module of its own: dataset files come from the internet and user folders, so every
failure mode (zero-byte, truncated, corrupt, decompression bomb, exotic modes) must end
in a `DataError` that names the file, never in a crash, a silent clip or a huge allocation.

Conversions (documented choices):
- EXIF orientation is applied first (`ImageOps.exif_transpose`), as viewers show it.
- Alpha (RGBA, LA, P/PA with transparency) is composited on white, the way a page shows a
  transparent image; the RGB stored under fully transparent pixels is arbitrary.
- 16-bit grey (`I;16*`, and `I` as PIL opens 16-bit PNG/TIFF) is scaled by 65535, float
  grey (`F`) is taken as [0, 1]; values are clipped to [0, 1] and rounded to 8 bits, so
  every image goes through the same 8-bit RGB pipeline.
- CMYK/YCbCr/LAB/HSV use PIL's conversion to RGB. Embedded ICC profiles are ignored.
- Multi-frame files (GIF, MPO, TIFF) give their first frame.

Geometry policies (`size` is (H, W)):
- `none`: keep the size.
- `resize`: resize to exactly (H, W), bicubic with antialiasing (PIL's filter support
  widens with the scale factor).
- `center-crop`: resize so the image covers (H, W), then crop the centre.
- `crop`: centre crop without resizing; an image smaller than (H, W) is refused.

Images above `MAX_PIXELS` are refused from their header, before any pixel is decoded.
JPEGs that will be shrunk are decoded at a reduced scale (`Image.draft`), so a
10000x10000 JPEG resized to 384x512 never occupies 300 MB.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from benchmark.errors import DataError

POLICIES = ("none", "resize", "center-crop", "crop")
MAX_PIXELS = 100_000_000  # 100 MP: larger files are refused as likely decompression bombs

_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}  # orientations that swap width and height


def check_policy(policy: str, size: tuple[int, int] | None) -> None:
    """Validate a policy/size pair; raises DataError (callers reading cards re-raise as ConfigError)."""
    if policy not in POLICIES:
        raise DataError(f"unknown image policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if policy == "none":
        return
    if size is None or len(size) != 2 or any(not isinstance(v, int) or v <= 0 for v in size):
        raise DataError(
            f"image policy {policy!r} needs size = [height, width] of positive integers, got {size!r}"
        )


def load_image(
    path: str | Path,
    policy: str = "none",
    size: tuple[int, int] | None = None,
    max_pixels: int = MAX_PIXELS,
) -> torch.Tensor:
    """Read `path` as a (3, H, W) float32 tensor in [0, 1] under the geometry `policy`."""
    return to_tensor(load_pil(path, policy, size, max_pixels))


def load_pil(
    path: str | Path,
    policy: str = "none",
    size: tuple[int, int] | None = None,
    max_pixels: int = MAX_PIXELS,
) -> Image.Image:
    """Like `load_image` but returns the 8-bit RGB PIL image (used by builders and tests)."""
    check_policy(policy, size)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel cap below; PIL's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise DataError(
                        f"{path}: {width}x{height} image exceeds the {max_pixels / 1e6:g} MP limit "
                        "(refused as a possible decompression bomb)"
                    )
                if policy in ("resize", "center-crop") and size is not None:
                    _draft(im, policy, size)
                im.load()
                im = ImageOps.exif_transpose(im) or im
                rgb = to_rgb8(im)
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise DataError(
            f"{path}: image exceeds the {max_pixels / 1e6:g} MP limit (refused as a possible "
            f"decompression bomb): {exc}"
        ) from exc
    except Image.UnidentifiedImageError as exc:
        raise DataError(f"{path}: not a readable image (unknown format or corrupt header)") from exc
    except (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError) as exc:
        # PIL reports truncation/corruption through a zoo of exception types.
        raise DataError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    return apply_policy(rgb, policy, size, where=str(path))


def _draft(im: Image.Image, policy: str, size: tuple[int, int]) -> None:
    """Ask the JPEG decoder for a reduced scale that is still >= what the policy needs."""
    if im.format != "JPEG":
        return
    height, width = size
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block is not our concern here
        orientation = 1
    src_w, src_h = im.size
    if orientation in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    if policy == "center-crop":
        scale = max(width / src_w, height / src_h)
        width, height = int(np.ceil(src_w * scale)), int(np.ceil(src_h * scale))
    im.draft(im.mode, (width, height))


def to_rgb8(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (see the module docstring for the choices)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im).astype(np.float64)
        if mode != "F":
            arr = arr / 65535.0
        arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)
        grey = np.clip(np.rint(np.clip(arr, 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def apply_policy(
    im: Image.Image, policy: str, size: tuple[int, int] | None, where: str = "image"
) -> Image.Image:
    """Resize/crop an RGB PIL image according to `policy`; `where` names it in errors."""
    check_policy(policy, size)
    if policy == "none" or size is None:
        return im
    height, width = size
    src_w, src_h = im.size
    if policy == "resize":
        if (src_w, src_h) == (width, height):
            return im
        return im.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=3.0)
    if policy == "center-crop":
        scale = max(width / src_w, height / src_h)
        new_w = max(width, round(src_w * scale))
        new_h = max(height, round(src_h * scale))
        if (new_w, new_h) != (src_w, src_h):
            im = im.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
        return _center_crop(im, height, width)
    # policy == "crop"
    if src_w < width or src_h < height:
        raise DataError(f"{where}: {src_w}x{src_h} image is smaller than the {width}x{height} crop")
    return _center_crop(im, height, width)


def _center_crop(im: Image.Image, height: int, width: int) -> Image.Image:
    left = (im.width - width) // 2
    top = (im.height - height) // 2
    return im.crop((left, top, left + width, top + height))


def to_tensor(im: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> (3, H, W) float32 tensor in [0, 1]."""
    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def to_uint8_array(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) tensor in [0, 1] -> (H, W, 3) uint8 array (rounded)."""
    return x.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
