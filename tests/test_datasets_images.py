"""Image loading: conversions give the right pixel values, bad files give DataError naming them."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from benchmark.datasets.images import MAX_PIXELS, load_image
from benchmark.errors import DataError


def _save(tmp_path: Path, name: str, im: Image.Image, **kwargs: object) -> Path:
    path = tmp_path / name
    im.save(path, **kwargs)
    return path


def test_rgb_png_is_exact_float_in_unit_range(tmp_path: Path) -> None:
    arr = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3) * 4
    x = load_image(_save(tmp_path, "a.png", Image.fromarray(arr)))
    assert x.shape == (3, 4, 5) and x.dtype.is_floating_point
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), arr / 255.0, atol=1e-7)


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    arr = np.array([[0, 128], [200, 255]], dtype=np.uint8)
    x = load_image(_save(tmp_path, "g.png", Image.fromarray(arr, mode="L")))
    assert x.shape == (3, 2, 2)
    for c in range(3):
        np.testing.assert_allclose(x[c].numpy(), arr / 255.0, atol=1e-7)


def test_16bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 65535], [32768, 257]], dtype=np.uint16)
    path = _save(tmp_path, "g16.png", Image.fromarray(arr))
    assert Image.open(path).mode.startswith("I")
    x = load_image(path)
    assert x[0, 0, 0] == 0.0
    assert x[0, 0, 1] == 1.0
    assert abs(float(x[0, 1, 0]) - 0.5) < 1 / 255
    assert abs(float(x[0, 1, 1]) - 1 / 255) < 1e-6  # 257 / 65535 == 1 / 255: not clipped to 1


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    arr = np.zeros((1, 3, 4), dtype=np.uint8)
    arr[0, 0] = (255, 0, 0, 0)  # fully transparent red -> white
    arr[0, 1] = (255, 0, 0, 255)  # opaque red
    arr[0, 2] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    x = load_image(_save(tmp_path, "a.png", Image.fromarray(arr, mode="RGBA")))
    np.testing.assert_allclose(x[:, 0, 0].numpy(), [1, 1, 1])
    np.testing.assert_allclose(x[:, 0, 1].numpy(), [1, 0, 0])
    assert np.all(np.abs(x[:, 0, 2].numpy() - 127 / 255) <= 1.5 / 255)


def test_palette_with_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 255] + [0, 255, 0] + [0] * 762)
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    path = _save(tmp_path, "p.png", im, transparency=0)
    x = load_image(path)
    np.testing.assert_allclose(x[:, 0, 0].numpy(), [1, 1, 1])  # transparent index -> white
    np.testing.assert_allclose(x[:, 0, 1].numpy(), [0, 1, 0])


def test_cmyk_is_converted(tmp_path: Path) -> None:
    im = Image.new("CMYK", (2, 1))
    im.putpixel((0, 0), (0, 0, 0, 0))
    im.putpixel((1, 0), (0, 255, 255, 0))
    x = load_image(_save(tmp_path, "c.tif", im))
    np.testing.assert_allclose(x[:, 0, 0].numpy(), [1, 1, 1])
    np.testing.assert_allclose(x[:, 0, 1].numpy(), [1, 0, 0])


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    arr = np.zeros((32, 64, 3), dtype=np.uint8)  # stored 64 wide, 32 high
    arr[:, :32] = (255, 0, 0)
    arr[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    path = _save(tmp_path, "r.jpg", Image.fromarray(arr), exif=exif, quality=95)
    x = load_image(path)
    assert x.shape == (3, 64, 32)  # H and W swapped
    assert x[0, 8, 16] > 0.9 and x[2, 8, 16] < 0.1  # stored left (red) is now on top
    assert x[2, 56, 16] > 0.9 and x[0, 56, 16] < 0.1


def test_one_pixel_image(tmp_path: Path) -> None:
    path = _save(tmp_path, "one.png", Image.new("RGB", (1, 1), (10, 20, 30)))
    assert load_image(path, "none").shape == (3, 1, 1)
    assert load_image(path, "resize", (4, 6)).shape == (3, 4, 6)
    assert load_image(path, "center-crop", (4, 6)).shape == (3, 4, 6)
    with pytest.raises(DataError, match="one.png.*smaller"):
        load_image(path, "crop", (4, 6))


def test_policies_geometry(tmp_path: Path) -> None:
    arr = np.zeros((100, 200, 3), dtype=np.uint8)
    arr[:, 90:110] = 255  # a white vertical bar in the centre
    path = _save(tmp_path, "w.png", Image.fromarray(arr))
    assert load_image(path, "resize", (30, 40)).shape == (3, 30, 40)
    cc = load_image(path, "center-crop", (50, 50))  # 100x200 -> 50x100 -> centre 50x50
    assert cc.shape == (3, 50, 50) and cc[:, 25, 25].min() > 0.9 and cc[:, 25, 2].max() < 0.1
    crop = load_image(path, "crop", (100, 20))
    assert crop.shape == (3, 100, 20) and crop.min() == 1.0  # exactly the bar, unscaled


@pytest.mark.parametrize("fmt,suffix", [("PNG", "png"), ("JPEG", "jpg")])
def test_truncated_file_raises_naming_it(tmp_path: Path, fmt: str, suffix: str) -> None:
    rng = np.random.default_rng(0)
    path = _save(
        tmp_path,
        f"cut.{suffix}",
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)),
        format=fmt,
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"cut.{suffix}"):
        load_image(path)


def test_zero_byte_and_garbage_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.png.*empty"):
        load_image(empty)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(DataError, match="junk.jpg"):
        load_image(junk)
    with pytest.raises(DataError, match="missing.png.*not found"):
        load_image(tmp_path / "missing.png")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a size, with a tiny IDAT: a decompression-bomb lookalike."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_oversized_header_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(15000, 10000))  # 150 MP > the 100 MP cap
    with pytest.raises(DataError, match="bomb.png.*15000x10000.*100 MP"):
        load_image(path, "resize", (64, 64))
    path.write_bytes(_png_header_only(50000, 50000))  # beyond PIL's own bomb limit too
    with pytest.raises(DataError, match="bomb.png.*100 MP"):
        load_image(path)


def test_huge_jpeg_is_decoded_at_reduced_scale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "huge.jpg"
    Image.new("L", (10000, 10000), 77).save(path, quality=90)  # 100 MP, flat: small on disk
    assert MAX_PIXELS >= 10000 * 10000
    decoded_sizes: list[tuple[int, int]] = []
    original = JpegImagePlugin.JpegImageFile.load

    def spy(self: JpegImagePlugin.JpegImageFile) -> object:
        decoded_sizes.append(self.size)
        return original(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", spy)
    x = load_image(path, "resize", (384, 512))
    assert x.shape == (3, 384, 512)
    assert abs(float(x.mean()) - 77 / 255) < 2 / 255
    assert decoded_sizes and max(w * h for w, h in decoded_sizes) <= 1250 * 1250  # 1/8 scale


def test_bad_policy_is_rejected(tmp_path: Path) -> None:
    path = _save(tmp_path, "a.png", Image.new("RGB", (4, 4)))
    with pytest.raises(DataError, match="policy"):
        load_image(path, "stretch", (2, 2))
    with pytest.raises(DataError, match="size"):
        load_image(path, "resize", None)
