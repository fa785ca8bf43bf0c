"""Decode one image file into a uint8 [C, H, W] tensor, whatever real folders throw at us.

JPEG and PNG go through torchvision.io.decode_image (libjpeg-turbo / libpng, no PIL object in between);
everything else, and the few JPEG/PNG variants torchvision decodes differently from what a
person sees (CMYK JPEG, PNG with a transparent colour key), goes through PIL. Either way the
result follows one convention:

* 1 channel for grayscale sources, 3 for everything else (palette, CMYK, YCbCr -> RGB);
* transparency is composited on WHITE (a transparent pixel of a logo is paper, not ink);
* 16-bit samples are scaled to 8 bits as round(v * 255 / 65535), never clipped;
* EXIF orientation is applied, and the format is found from the bytes, not the extension.
"""
from __future__ import annotations

import io
import os
import contextlib
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image

from imgcls.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_PALETTE = 3  # IHDR colour type of an indexed-colour PNG
_GRAY_MODES = ("1", "L", "LA", "La", "I", "F")  # PIL modes we decode to one channel (plus "I;16*")


class BadImageError(UserError):
    """An image file that cannot be decoded (missing, empty, truncated, not an image)."""

    def __init__(self, path: str | os.PathLike, reason: str | None = None):
        if reason is None:
            # DataLoader workers re-raise an exception as `type(exc)(message)`; keep that message.
            super().__init__(str(path))
            self.path, self.reason = None, None
            return
        super().__init__(f"cannot read image '{path}': {reason}; remove it or set data.on_bad_image=skip")
        self.path, self.reason = str(path), reason

    def __reduce__(self):
        return (type(self), (self.path, self.reason) if self.reason is not None else (str(self),))


PIL_MAX_PIXELS = 89_478_485  # PIL's own default Image.MAX_IMAGE_PIXELS (about 0.25 GB of RGB)


@dataclass(frozen=True)
class ImageLimits:
    """Which image sizes are accepted, the same for training (data.min_image_side, data.max_image_pixels,
    checked before the run starts), check-data, and predict/evaluate/report (read from model.json)."""
    min_side: int = 8                          # px: a 1x1 "image" is a broken export, not a photo
    max_pixels: Optional[int] = PIL_MAX_PIXELS  # width x height; None = no limit (trusted data only)

    def problem(self, width: int, height: int) -> Optional[str]:
        if self.max_pixels is not None and width * height > self.max_pixels:
            return (f"too large: {width}x{height} pixels is over the limit of {self.max_pixels} pixels "
                    "")
        if min(width, height) < self.min_side:
            return f"too small: {width}x{height} pixels (minimum side {self.min_side})"
        return None


@contextlib.contextmanager
def pil_limit(limits: Optional[ImageLimits]):
    """PIL's decompression-bomb guard set to our limit while one file is read (None: PIL's own)."""
    if limits is None:
        yield
        return
    saved = Image.MAX_IMAGE_PIXELS
    # PIL raises only above twice its limit (and warns between): we check the size ourselves.
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _header_size(path: str | os.PathLike, data: bytearray) -> tuple[int, int]:
    """(width, height) from the file's header, before any pixel is decoded."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise BadImageError(path, _pil_reason(exc)) from None


def load_image(path: str | os.PathLike, channels: int | None = None,
               limits: Optional[ImageLimits] = None) -> torch.Tensor:
    """Decode `path` to a uint8 tensor [C, H, W]; `channels` None keeps 1 or 3, 1 makes gray, 3 makes RGB.

    With `limits`, an image outside them is a BadImageError (read from the header, so an oversized
    file is refused before it is decoded).
    """
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
    return decode_bytes(_read_bytes(path), channels, limits, name=path)


def decode_bytes(data: bytes | bytearray, channels: int | None = None, limits: Optional[ImageLimits] = None,
                 name: str | os.PathLike = "<bytes>") -> torch.Tensor:
    """An encoded image held in memory (an upload) -> uint8 [C, H, W], exactly as ``load_image`` decodes the
    same file; ``name`` is what a BadImageError calls it. The size limit is checked from the header first."""
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
    if not data:
        raise BadImageError(name, "empty (0 bytes)")
    data = data if isinstance(data, bytearray) else bytearray(data)  # writable, for torch.frombuffer
    with pil_limit(limits):
        if limits is not None:
            why = limits.problem(*_header_size(name, data))
            if why:
                raise BadImageError(name, why)
        return _decode(name, data, channels)


def _decode(path: str | os.PathLike, data: bytearray, channels: int | None) -> torch.Tensor:
    head = bytes(data[:64])
    img = None
    if _fast_path_ok(head):
        try:
            img = _decode_torchvision(data, ImageReadMode.UNCHANGED)
            if head.startswith(_JPEG_MAGIC) and img.shape[0] == 4:
                # 4 channels from a JPEG are CMYK (often Adobe-inverted); torchvision's RGB mode converts it.
                img = _decode_torchvision(data, ImageReadMode.RGB)
        except RuntimeError:
            img = None  # let PIL try and, if it fails too, word the reason
    if img is None:
        img = _decode_pil(path, data)
    img = _to_uint8(img)
    if img.shape[0] in (2, 4):
        img = _composite_on_white(img)
    return _convert_channels(img, channels)


def pil_image_to_tensor(im: Image.Image, channels: int | None = None) -> torch.Tensor:
    """An in-memory PIL image -> uint8 [C,H,W], exactly as the same image would decode from a file
    (EXIF rotation, 16-bit scaling, transparency on white, channel conversion)."""
    img = _to_uint8(_pil_to_tensor(ImageOps.exif_transpose(im), "<PIL image>"))
    if img.shape[0] in (2, 4):
        img = _composite_on_white(img)
    return _convert_channels(img, channels)


def convert_channels(img: torch.Tensor, channels: int | None) -> torch.Tensor:
    """uint8 [C,H,W] -> ``channels`` channels (luma for gray, repeat for RGB); None keeps it."""
    return _convert_channels(img, channels)


def image_channels(path: str | os.PathLike) -> int:
    """Channels `load_image(path)` returns (1 or 3), read from the header only (no pixel decode)."""
    _read_bytes(path, header_only=True)
    try:
        with pil_limit(ImageLimits(max_pixels=None)), Image.open(path) as im:  # header only: no bomb to fear
            mode = im.mode
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImageError(path, _pil_reason(exc)) from None
    return 1 if mode in _GRAY_MODES or mode.startswith("I;16") else 3


def check_image(path: str | os.PathLike, limits: ImageLimits = ImageLimits()) -> str | None:
    """Describe what is wrong with an image file (empty, not an image, truncated, outside ``limits``), or None.

    It decodes fully with the loader training and predict use, so "check passes" means "both can read it".
    """
    try:
        load_image(path, limits=limits)
    except BadImageError as exc:
        return exc.reason
    return None


def _read_bytes(path: str | os.PathLike, header_only: bool = False) -> bytearray | None:
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise BadImageError(path, "no such file") from None
    except OSError as exc:
        raise BadImageError(path, exc.strerror or str(exc)) from None
    if Path(path).is_dir():
        raise BadImageError(path, "it is a folder, not a file")
    if size == 0:
        raise BadImageError(path, "empty file (0 bytes)")
    if header_only:
        return None
    try:
        with open(path, "rb") as f:
            return bytearray(f.read())  # writable, so torch.frombuffer can share it without a warning
    except OSError as exc:
        raise BadImageError(path, f"cannot open the file ({exc.strerror or exc})") from None


def _decode_torchvision(data: bytearray, mode: ImageReadMode) -> torch.Tensor:
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its codecs in favour of TorchCodec (not a dependency of ours);
        # left alone, the warning would fire once per decoded image.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        return decode_image(torch.frombuffer(data, dtype=torch.uint8), mode=mode, apply_exif_orientation=True)


def _fast_path_ok(head: bytes) -> bool:
    """True for JPEG and for PNGs torchvision decodes the way PIL would (no palette, no colour key)."""
    if head.startswith(_JPEG_MAGIC):
        return True
    if not head.startswith(_PNG_MAGIC) or len(head) < 26:
        return False  # a PNG shorter than its header is left to PIL, which words the error
    colour_type = head[25]  # 8-byte signature, 4-byte length, "IHDR", w, h, bit depth, colour type
    return colour_type != _PNG_PALETTE and not _png_has_colour_key(head)


def _png_has_colour_key(head: bytes) -> bool:
    # A tRNS chunk on a gray/RGB PNG marks one colour as transparent; torchvision's UNCHANGED mode
    # ignores it. Chunks before IDAT are small, but `head` is only 64 bytes, so a tRNS after a
    # long chunk (iCCP, text) is missed; such files are rare and still decode (opaque).
    pos = 8
    while pos + 8 <= len(head):
        length, kind = struct.unpack(">I4s", head[pos : pos + 8])
        if kind == b"tRNS":
            return True
        if kind == b"IDAT":
            return False
        pos += 12 + length
    return False


def _decode_pil(path: str | os.PathLike, data: bytearray) -> torch.Tensor:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return _pil_to_tensor(im, path)
    except BadImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadImageError(path, _pil_reason(exc)) from None


def _pil_to_tensor(im: Image.Image, path: str | os.PathLike) -> torch.Tensor:
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit gray (PIL says "I" for some 16-bit files): keep the full range for _to_uint8.
        arr = np.clip(np.asarray(im, dtype=np.int64), 0, 65535).astype(np.uint16)
        return torch.from_numpy(arr)[None]
    if mode == "F":
        raise BadImageError(path, "32-bit float pixels are not supported; convert the file to 8 or 16 bits")
    transparent = "transparency" in im.info
    if mode == "1":
        im = im.convert("L")
    elif mode == "L":
        im = im.convert("LA") if transparent else im
    elif mode == "La":
        im = im.convert("LA")
    elif mode in ("P", "PA", "RGB", "RGBa"):
        im = im.convert("RGBA") if transparent or mode in ("PA", "RGBa") else im.convert("RGB")
    elif mode not in ("LA", "RGBA"):
        im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV
    arr = np.asarray(im)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _pil_reason(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, UnidentifiedImageError):
        return "not an image (or a format PIL cannot read)"
    if isinstance(exc, Image.DecompressionBombError):
        return "larger than PIL's decompression-bomb limit"
    if "truncat" in text.lower():
        return "truncated file"
    return f"corrupt file ({text})" if text else "corrupt file"


def _to_uint8(img: torch.Tensor) -> torch.Tensor:
    if img.dtype == torch.uint8:
        return img
    if img.dtype != torch.uint16:
        raise TypeError(f"unexpected decoded dtype {img.dtype}")
    # round(v * 255 / 65535) in integers; 65535 is odd, so there are no ties to break.
    wide = img.to(torch.int64)
    return ((wide * 255 + 32767) // 65535).to(torch.uint8)


def _composite_on_white(img: torch.Tensor) -> torch.Tensor:
    """[C+1, H, W] uint8 with alpha last -> [C, H, W] on a white background, rounded to nearest."""
    colour, alpha = img[:-1].to(torch.int32), img[-1:].to(torch.int32)
    return ((colour * alpha + 255 * (255 - alpha) + 127) // 255).to(torch.uint8)


def _convert_channels(img: torch.Tensor, channels: int | None) -> torch.Tensor:
    if channels is None or channels == img.shape[0]:
        return img
    if channels == 3:
        return img.expand(3, -1, -1).contiguous()
    # ITU-R 601-2 luma with PIL's fixed-point weights (convert("L")), so both give the same bytes.
    r, g, b = img.to(torch.int32)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8)[None]
