import io

import numpy as np
import pytest
from PIL import Image

from fibervl.data.errors import DataError
from fibervl.data.image_io import decode_image, load_image


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


@pytest.fixture
def rgb():
    arr = np.zeros((30, 40, 3), dtype=np.uint8)
    arr[:, :20] = (200, 30, 30)
    return Image.fromarray(arr)


def test_zero_byte_file(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"a\.jpg.*empty image file"):
        load_image(tmp_path / "a.jpg", record=7)


def test_missing_file_names_record(tmp_path):
    with pytest.raises(DataError, match=r"b\.jpg \[record 5\]: image file not found"):
        load_image(tmp_path / "b.jpg", record=5)


def test_text_named_jpg(tmp_path):
    (tmp_path / "c.jpg").write_text("this is not an image\n")
    with pytest.raises(DataError, match="not an image file \\(looks like text\\)"):
        load_image(tmp_path / "c.jpg")


def test_truncated_jpeg(tmp_path, rgb):
    buf = io.BytesIO()
    rgb.resize((200, 200)).save(buf, "JPEG")
    (tmp_path / "t.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_image(tmp_path / "t.jpg")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "1"])
def test_modes_become_rgb(tmp_path, rgb, mode):
    img = rgb.convert(mode)
    ext = "jpg" if mode == "CMYK" else "png"
    out = load_image(_save(img, tmp_path / f"m.{ext}"))
    assert out.mode == "RGB" and out.size == (40, 30)


def test_rgba_transparent_pixels_become_white(tmp_path):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[..., 0] = 255  # red, fully transparent
    out = load_image(_save(Image.fromarray(arr, "RGBA"), tmp_path / "a.png"))
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    img.putpixel((1, 1), 1)
    img.info["transparency"] = 0
    out = load_image(_save(img, tmp_path / "p.png", transparency=0))
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (200, 100, 50)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    arr = np.full((5, 5), 32768, dtype=np.uint16)
    out = load_image(_save(Image.fromarray(arr), tmp_path / "g16.png"))
    assert out.mode == "RGB" and abs(out.getpixel((0, 0))[0] - 128) <= 1


def test_exif_rotation_is_applied(tmp_path, rgb):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise for display
    path = tmp_path / "r.jpg"
    rgb.save(path, "JPEG", exif=exif.tobytes())
    out = load_image(path)
    assert out.size == (30, 40)
    # The red left half is at the top after a 90-degree clockwise turn.
    assert out.getpixel((15, 5))[0] > 150 and out.getpixel((15, 35))[0] < 60


def test_huge_image_refused_or_downscaled(tmp_path):
    path = _save(Image.new("RGB", (3000, 2000), (1, 2, 3)), tmp_path / "h.jpg", quality=50)
    with pytest.raises(DataError, match="image too large"):
        load_image(path, max_pixels=1_000_000)
    small = load_image(path, max_side=500)
    assert max(small.size) == 500 and small.size == (500, 333)


def test_decode_bytes_names_source():
    with pytest.raises(DataError, match="shard.tar:k.jpg"):
        decode_image(b"\x00\x01garbage", "shard.tar:k.jpg")
