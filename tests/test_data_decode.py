"""load_image / image_channels / check_image on the kinds of files real folders contain.

References are PIL's own conversions and numpy arithmetic written from the definitions, never
values copied from our implementation.
"""
from __future__ import annotations

import pickle
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from imgcls.data.decode import BadImageError, IMAGE_EXTENSIONS, ImageLimits, check_image, image_channels, load_image
from imgcls.errors import UserError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (10, 14, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (10, 14), dtype=np.uint8)


def hwc(t: torch.Tensor) -> np.ndarray:
    assert t.dtype == torch.uint8 and t.ndim == 3
    return t.permute(1, 2, 0).numpy().astype(np.int64)


def on_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha compositing over white, from the definition, in floats."""
    a = alpha.astype(np.float64)[..., None] / 255.0
    return np.round(colour.astype(np.float64) * a + 255.0 * (1.0 - a)).astype(np.int64)


def write_png16(path, array: np.ndarray) -> None:
    """A 16-bit PNG written by hand (gray [H,W] or RGB [H,W,3]); PIL cannot write 16-bit RGB."""
    height, width = array.shape[:2]
    colour_type = 0 if array.ndim == 2 else 2
    rows = array.reshape(height, -1).astype(">u2").tobytes()
    stride = rows and len(rows) // height
    raw = b"".join(b"\x00" + rows[i * stride : (i + 1) * stride] for i in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def scale16(v: np.ndarray) -> np.ndarray:
    return np.round(v.astype(np.float64) * 255.0 / 65535.0).astype(np.int64)


def test_gray_png_stays_one_channel(tmp_path):
    Image.fromarray(GRAY).save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (1, 10, 14)
    np.testing.assert_array_equal(out[0].numpy(), GRAY)


def test_rgb_jpeg_matches_pil(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "c.jpg", quality=90)
    out = load_image(tmp_path / "c.jpg")
    assert out.shape == (3, 10, 14)
    ref = np.asarray(Image.open(tmp_path / "c.jpg"), dtype=np.int64)
    assert np.abs(hwc(out) - ref).max() <= 1  # two libjpeg builds may round the IDCT differently


def test_palette_png_becomes_rgb(tmp_path):
    Image.fromarray(RGB).convert("P", palette=Image.ADAPTIVE, colors=16).save(tmp_path / "p.png")
    out = load_image(tmp_path / "p.png")
    ref = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    np.testing.assert_array_equal(hwc(out), ref)


def test_palette_transparency_composited_on_white(tmp_path):
    im = Image.fromarray(RGB).convert("P", palette=Image.ADAPTIVE, colors=16)
    index = np.asarray(im)[0, 0]
    im.save(tmp_path / "pt.png", transparency=int(index))
    out = hwc(load_image(tmp_path / "pt.png"))
    rgba = np.asarray(Image.open(tmp_path / "pt.png").convert("RGBA"))
    np.testing.assert_array_equal(out, on_white(rgba[..., :3], rgba[..., 3]))
    assert (out[np.asarray(im) == index] == 255).all()
    assert out.shape[-1] == 3


def test_rgba_png_composited_on_white(tmp_path):
    alpha = RNG.integers(0, 256, (10, 14), dtype=np.uint8)
    alpha[0, 0], alpha[0, 1] = 0, 255
    rgb = RGB.copy()
    rgb[0, 0] = 0  # a transparent BLACK pixel must come out white, not black
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "a.png")
    out = hwc(load_image(tmp_path / "a.png"))
    np.testing.assert_array_equal(out, on_white(rgb, alpha))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == rgb[0, 1].tolist()


def test_gray_alpha_png_composited_stays_gray(tmp_path):
    alpha = RNG.integers(0, 256, (10, 14), dtype=np.uint8)
    Image.merge("LA", [Image.fromarray(GRAY), Image.fromarray(alpha)]).save(tmp_path / "la.png")
    out = load_image(tmp_path / "la.png")
    assert out.shape == (1, 10, 14)
    np.testing.assert_array_equal(out[0].numpy(), on_white(GRAY[..., None], alpha)[..., 0])


def test_rgb_colour_key_transparency(tmp_path):
    key = tuple(int(v) for v in RGB[2, 3])
    Image.fromarray(RGB).save(tmp_path / "k.png", transparency=key)
    out = hwc(load_image(tmp_path / "k.png"))
    keyed = (RGB == np.array(key)).all(axis=-1)
    assert (out[keyed] == 255).all()
    np.testing.assert_array_equal(out[~keyed], RGB[~keyed])


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.fromarray(RGB).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    out = load_image(tmp_path / "cmyk.jpg")
    ref = np.asarray(Image.open(tmp_path / "cmyk.jpg").convert("RGB"), dtype=np.int64)
    assert out.shape == (3, 10, 14)
    assert np.abs(hwc(out) - ref).max() <= 2


def test_16bit_gray_png_scaled_not_clipped(tmp_path):
    values = np.array([[0, 1, 128, 257, 32768, 65535]], dtype=np.uint16)
    values = np.concatenate([values, RNG.integers(0, 65536, (1, 6), dtype=np.uint16)])
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    out = load_image(tmp_path / "g16.png")
    assert out.shape == (1, 2, 6) and out.dtype == torch.uint8
    np.testing.assert_array_equal(out[0].numpy(), scale16(values))
    assert out[0, 0, -1] == 255 and out[0, 0, -2] == 128 and out[0, 0, 3] == 1


def test_16bit_rgb_png(tmp_path):
    values = RNG.integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    values[0, 0] = [65535, 32768, 0]
    write_png16(tmp_path / "c16.png", values)
    out = hwc(load_image(tmp_path / "c16.png"))
    np.testing.assert_array_equal(out, scale16(values))
    assert out[0, 0].tolist() == [255, 128, 0]


def test_16bit_tiff_through_pil_path(tmp_path):
    values = RNG.integers(0, 65536, (4, 5), dtype=np.uint16)
    values[0, 0] = 65535
    Image.fromarray(values).save(tmp_path / "g16.tif")
    out = load_image(tmp_path / "g16.tif")
    np.testing.assert_array_equal(out[0].numpy(), scale16(values))


@pytest.mark.parametrize("fmt", ["bmp", "gif", "tif", "webp"])
def test_other_formats_match_pil(tmp_path, fmt):
    path = tmp_path / f"x.{fmt}"
    Image.fromarray(RGB).save(path, **({"lossless": True} if fmt == "webp" else {}))
    out = load_image(path)
    np.testing.assert_array_equal(hwc(out), np.asarray(Image.open(path).convert("RGB")))


def test_one_bit_image_is_gray_0_255(tmp_path):
    Image.fromarray(GRAY > 128).save(tmp_path / "b.bmp")
    out = load_image(tmp_path / "b.bmp")
    assert out.shape == (1, 10, 14)
    np.testing.assert_array_equal(out[0].numpy(), np.where(GRAY > 128, 255, 0))


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_exif_orientation_applied(tmp_path, ext):
    im = Image.fromarray(RGB)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / f"r.{ext}"
    im.save(path, exif=exif, **({"quality": 95} if ext == "jpg" else {}))
    out = load_image(path)
    assert out.shape == (3, 14, 10)
    ref = np.asarray(ImageOps.exif_transpose(Image.open(path)), dtype=np.int64)
    assert np.abs(hwc(out) - ref).max() <= 1


def test_wrong_extension_decodes_by_content(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "really_png.jpg", format="PNG")
    Image.fromarray(RGB).save(tmp_path / "really_bmp.png", format="BMP")
    np.testing.assert_array_equal(hwc(load_image(tmp_path / "really_png.jpg")), RGB)
    np.testing.assert_array_equal(hwc(load_image(tmp_path / "really_bmp.png")), RGB)


def test_channels_conversions(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "c.png")
    Image.fromarray(GRAY).save(tmp_path / "g.png")
    gray_of_rgb = load_image(tmp_path / "c.png", channels=1)
    assert gray_of_rgb.shape == (1, 10, 14)
    # ITU-R 601 luma exactly as PIL computes "L"
    np.testing.assert_array_equal(gray_of_rgb[0].numpy(), np.asarray(Image.fromarray(RGB).convert("L")))
    rgb_of_gray = load_image(tmp_path / "g.png", channels=3)
    assert rgb_of_gray.shape == (3, 10, 14)
    for c in range(3):
        np.testing.assert_array_equal(rgb_of_gray[c].numpy(), GRAY)
    assert torch.equal(load_image(tmp_path / "g.png", channels=1), load_image(tmp_path / "g.png"))
    assert torch.equal(load_image(tmp_path / "c.png", channels=3), load_image(tmp_path / "c.png"))
    with pytest.raises(ValueError):
        load_image(tmp_path / "c.png", channels=4)


def test_gray_of_rgba_composites_first(tmp_path):
    rgba = np.dstack([RGB, np.full((10, 14), 0, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "t.png")
    assert (load_image(tmp_path / "t.png", channels=1) == 255).all()


def _bad_files(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "good.jpg", quality=90)
    Image.fromarray(RGB).save(tmp_path / "good.png")
    jpg, png = (tmp_path / "good.jpg").read_bytes(), (tmp_path / "good.png").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(jpg[: len(jpg) // 2])
    (tmp_path / "trunc.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.png").write_text("these are not pixels\n")
    return {
        "trunc.jpg": "truncated",
        "trunc.png": "truncated",
        "empty.jpg": "empty",
        "notes.png": "not an image",
        "missing.png": "no such file",
    }


def test_bad_files_raise_bad_image_error(tmp_path):
    for name, reason in _bad_files(tmp_path).items():
        with pytest.raises(BadImageError) as info:
            load_image(tmp_path / name)
        err = info.value
        assert isinstance(err, UserError)
        assert reason in err.reason
        message = str(err)
        assert message.startswith(f"cannot read image '{tmp_path / name}': ")
        assert "data.on_bad_image=skip" in message and "\n" not in message


def test_bad_image_error_survives_pickling_and_worker_reraise():
    err = BadImageError("a/b.jpg", "truncated file")
    back = pickle.loads(pickle.dumps(err))
    assert (str(back), back.path, back.reason) == (str(err), "a/b.jpg", "truncated file")
    # torch's DataLoader re-raises a worker error as type(err)(formatted_message)
    assert str(BadImageError("Caught BadImageError in worker 0")) == "Caught BadImageError in worker 0"


def test_check_image(tmp_path, monkeypatch):
    for name, reason in _bad_files(tmp_path).items():
        problem = check_image(tmp_path / name)
        assert problem is not None and reason in problem
    assert check_image(tmp_path / "good.jpg") is None
    assert check_image(tmp_path / "good.png") is None
    Image.fromarray(GRAY[:4, :6]).save(tmp_path / "tiny.png")
    assert "too small" in check_image(tmp_path / "tiny.png")
    assert check_image(tmp_path / "tiny.png", ImageLimits(min_side=4)) is None
    assert "over the limit of 100 pixels" in check_image(tmp_path / "good.png", ImageLimits(max_pixels=100))  # 140 px
    assert check_image(tmp_path / "good.png", ImageLimits(max_pixels=None)) is None


def test_one_size_policy_for_training_checks_and_predict_reads(tmp_path, monkeypatch):
    """load_image with limits refuses exactly what check_image (training's scan) refuses, and an image
    over PIL's own decompression-bomb guard decodes when the limit is raised (the setting, not PIL, decides)."""
    Image.fromarray(GRAY[:1, :1]).save(tmp_path / "dot.png")
    Image.fromarray(GRAY).save(tmp_path / "good.png")
    Image.fromarray(GRAY).save(tmp_path / "good.jpg")
    with pytest.raises(BadImageError, match="too small: 1x1"):
        load_image(tmp_path / "dot.png", limits=ImageLimits())
    assert load_image(tmp_path / "dot.png", limits=ImageLimits(min_side=1)).shape == (1, 1, 1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)  # PIL would raise above 40 pixels; good.png has 140
    for name in ("good.png", "good.jpg"):
        assert load_image(tmp_path / name, limits=ImageLimits(max_pixels=1000)).shape[1:] == GRAY.shape
        with pytest.raises(BadImageError, match="over the limit of 100"):
            load_image(tmp_path / name, limits=ImageLimits(max_pixels=100))
    assert Image.MAX_IMAGE_PIXELS == 20  # PIL's global is restored after each read


def test_image_channels_agrees_with_load_image(tmp_path):
    alpha = RNG.integers(0, 256, (10, 14), dtype=np.uint8)
    Image.fromarray(GRAY).save(tmp_path / "g.png")
    Image.fromarray(GRAY).save(tmp_path / "g.jpg")
    Image.fromarray(RGB).save(tmp_path / "c.jpg")
    Image.fromarray(RGB).convert("P").save(tmp_path / "p.gif")
    Image.fromarray(np.dstack([RGB, alpha])).save(tmp_path / "a.png")
    Image.merge("LA", [Image.fromarray(GRAY), Image.fromarray(alpha)]).save(tmp_path / "la.png")
    Image.fromarray(RGB).convert("CMYK").save(tmp_path / "k.jpg")
    Image.fromarray(GRAY.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.fromarray(GRAY > 100).save(tmp_path / "b.bmp")
    expected = {"g.png": 1, "g.jpg": 1, "c.jpg": 3, "p.gif": 3, "a.png": 3, "la.png": 1, "k.jpg": 3, "g16.png": 1, "b.bmp": 1}
    for name, channels in expected.items():
        assert image_channels(tmp_path / name) == channels, name
        assert load_image(tmp_path / name).shape[0] == channels, name
    with pytest.raises(BadImageError):
        image_channels(tmp_path / "missing.png")


def test_image_extensions():
    assert set(IMAGE_EXTENSIONS) == {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def test_common_jpeg_png_take_the_torchvision_path(tmp_path, monkeypatch):
    import imgcls.data.decode as decode

    alpha = RNG.integers(0, 256, (10, 14), dtype=np.uint8)
    Image.fromarray(RGB).save(tmp_path / "c.jpg")
    Image.fromarray(GRAY).save(tmp_path / "g.png")
    Image.fromarray(np.dstack([RGB, alpha])).save(tmp_path / "a.png")
    write_png16(tmp_path / "c16.png", RNG.integers(0, 65536, (4, 5, 3), dtype=np.uint16))

    def no_pil(path, data):
        raise AssertionError(f"{path} went through PIL")

    monkeypatch.setattr(decode, "_decode_pil", no_pil)
    for name in ("c.jpg", "g.png", "a.png", "c16.png"):
        load_image(tmp_path / name)
