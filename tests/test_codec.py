"""Decoding every accepted kind of input, channel conversion, and the three output encodings."""

import io
import re
import warnings

import cv2
import numpy as np
import pytest
from PIL import Image

from etl.codec import BadImage, Codec, chw_bgr_bytes, first_scan, has_scan_data, held_whole
from etl.synth import awkward_files, bad_files, photo_like, ycck_jpeg

from .conftest import gradient, jpeg

pytestmark = pytest.mark.quick  # unit tests: each well under a second, no conversion run

FULL = lambda w, h: 1  # noqa: E731 - no DCT scaling


@pytest.fixture(scope="module")
def rgb_codec():
    return Codec(channels=3, max_pixels=10_000_000)


def test_jpeg_decodes_with_dct_scaling(rgb_codec):
    data = jpeg(gradient(800, 600), quality=95)
    full = rgb_codec.decode(data, FULL)
    half = rgb_codec.decode(data, lambda w, h: 2)
    assert full.pixels.shape == (600, 800, 3) and (full.src_w, full.src_h) == (800, 600)
    assert half.pixels.shape == (300, 400, 3) and (half.src_w, half.src_h) == (800, 600)
    assert full.warning is None


@pytest.mark.parametrize("name", sorted(awkward_files(np.random.default_rng(0))))
def test_awkward_but_valid_files_decode(rgb_codec, name):
    data = awkward_files(np.random.default_rng(0))[name]
    out = rgb_codec.decode(data, FULL)
    assert out.pixels.ndim == 3 and out.pixels.shape[2] == 3 and out.pixels.dtype == np.uint8


def test_cmyk_jpeg_colours_survive(rgb_codec):
    base = np.zeros((64, 64, 3), np.uint8)
    base[:, :, 0] = 220  # red
    cmyk = io.BytesIO()
    Image.fromarray(base).convert("CMYK").save(cmyk, "JPEG", quality=95)
    out = rgb_codec.decode(cmyk.getvalue(), FULL).pixels
    assert out[32, 32, 0] > 180 and out[32, 32, 1] < 40 and out[32, 32, 2] < 40


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def pil_bytes(im: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


@pytest.mark.parametrize(("kind", "transform"), [("CMYK", 0), ("YCCK", 2)])
def test_cmyk_and_ycck_jpegs_decode_as_pillow_and_opencv_see_them(rgb_codec, kind, transform):
    """ILSVRC2012 holds 23 CMYK JPEGs: Adobe-style inverted CMYK as Pillow and Photoshop write it, and YCCK as
    libjpeg writes it from CMYK. Pillow is etl's decoder for both; OpenCV's own CMYK conversion checks it."""
    base = photo_like(np.random.default_rng(5), 96, 64)
    data = pil_bytes(Image.fromarray(base).convert("CMYK"), "JPEG", quality=95) if kind == "CMYK" else \
        ycck_jpeg(base, quality=95)
    im = Image.open(io.BytesIO(data))
    assert (im.mode, im.info["adobe"] > 0, im.info["adobe_transform"]) == ("CMYK", True, transform)  # as named
    decoded = rgb_codec.decode(data, FULL)
    np.testing.assert_array_equal(decoded.pixels, np.asarray(im.convert("RGB")))
    opencv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    assert psnr(decoded.pixels, opencv) >= 45  # libjpeg's CMYK, inverted by the Adobe marker, times K: as OpenCV
    # the colours the file was made from (YCCK 4:2:2 gives ~35 dB, CMYK ~42): inverted ones would give ~5 dB
    assert psnr(decoded.pixels, base) >= 30
    assert decoded.colour == f"{kind} JPEG"


def transparent_png(mode: str) -> tuple[bytes, np.ndarray]:
    """A PNG named .JPEG in ILSVRC2012's way, with an alpha channel (RGBA) or a transparent palette entry (P),
    and its composite onto white worked out in numpy: no Pillow compositing involved."""
    rng = np.random.default_rng(6)
    rgb = photo_like(rng, 48, 32)
    if mode == "RGBA":
        alpha = np.tile(np.linspace(0, 255, 48).astype(np.uint8), (32, 1))
        im = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
        data, colours = pil_bytes(im, "PNG"), np.asarray(im)
    else:
        im = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        data = pil_bytes(im, "PNG", transparency=3)
        palette = np.array(im.getpalette()[:48], np.uint8).reshape(16, 3)
        index = np.asarray(im)
        colours = np.dstack([palette[index], np.where(index == 3, 0, 255).astype(np.uint8)])
    a = colours[:, :, 3:].astype(np.float64) / 255
    return data, np.round(colours[:, :, :3] * a + 255 * (1 - a)).astype(np.uint8)


@pytest.mark.parametrize("mode", ["RGBA", "P"])
def test_png_with_transparency_named_jpeg_is_composited_on_white(rgb_codec, mode):
    """ILSVRC2012's n02105855_2933.JPEG is a PNG: one with transparency is composited onto white, as Pillow's
    alpha_composite does it."""
    data, on_white = transparent_png(mode)
    decoded = rgb_codec.decode(data, FULL)
    rgba = Image.open(io.BytesIO(data)).convert("RGBA")
    pillow = np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB"))
    np.testing.assert_array_equal(decoded.pixels, pillow)
    assert np.abs(decoded.pixels.astype(int) - on_white).max() <= 1  # Pillow's integer rounding
    assert decoded.colour == "transparent PNG"


def test_gray_jpeg_decodes_as_pillow_sees_it_and_needs_no_colour_conversion(rgb_codec):
    data = jpeg(photo_like(np.random.default_rng(7), 64, 48)[:, :, 0], quality=90)
    decoded = rgb_codec.decode(data, FULL)
    np.testing.assert_array_equal(decoded.pixels, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    assert decoded.colour is None  # grey to RGB repeats a channel: not counted as a conversion


def test_transparency_is_composited_on_white(rgb_codec):
    rgba = np.zeros((10, 10, 4), np.uint8)  # fully transparent black
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    assert (rgb_codec.decode(buf.getvalue(), FULL).pixels == 255).all()


def test_gray_output_from_colour_input():
    codec = Codec(channels=1, max_pixels=10_000_000)
    px = np.full((20, 30, 3), (200, 100, 50), np.uint8)
    out = codec.decode(jpeg(px, quality=95), FULL).pixels
    assert out.shape == (20, 30, 1)
    assert abs(int(out[10, 10, 0]) - 124) <= 3  # ITU-R 601 luma of (200,100,50)


def test_png_named_jpeg_and_16_bit_png(rgb_codec):
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(buf, "PNG")
    assert (rgb_codec.decode(buf.getvalue(), FULL).pixels == 255).all()


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty file"),
    (b"<!DOCTYPE html><html><body>404</body></html>", "not an image (HTML"),
    (b"hello world, this is text", "not an image (plain text)"),
])
def test_non_images_are_refused_with_a_reason(rgb_codec, data, reason):
    with pytest.raises(BadImage, match=re.escape(reason)):
        rgb_codec.decode(data, FULL)


def test_pixel_limit_refuses_before_decoding():
    codec = Codec(channels=3, max_pixels=1000)
    with pytest.raises(BadImage, match="over the limit"):
        codec.decode(jpeg(gradient(100, 100)), FULL)


def test_encodings(rgb_codec):
    px = photo_like(np.random.default_rng(1), 64, 48)
    jpg = rgb_codec.encode(px, "jpg", 90)
    png = rgb_codec.encode(px, "png", 90)
    raw = rgb_codec.encode(px, "none", 90)
    ours_err = np.abs(np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")).astype(int) - px).mean()
    pil_err = np.abs(np.asarray(Image.open(io.BytesIO(jpeg(px, quality=90))).convert("RGB")).astype(int) - px).mean()
    assert ours_err <= pil_err * 1.05  # as faithful as Pillow's own quality-90 save
    assert Image.open(io.BytesIO(jpg)).info.get("progressive") is None
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), px)  # lossless, RGB
    chw = np.frombuffer(raw, np.uint8).reshape(3, 48, 64)
    np.testing.assert_array_equal(chw[0], px[:, :, 2])  # blue plane first
    np.testing.assert_array_equal(chw[2], px[:, :, 0])
    assert raw == chw_bgr_bytes(px)


def test_jpeg_is_420_and_matches_pillow_q90(rgb_codec):
    px = photo_like(np.random.default_rng(2), 224, 224)
    ours = rgb_codec.encode(px, "jpg", 90)
    pil = jpeg(px, quality=90)
    a = cv2.imdecode(np.frombuffer(ours, np.uint8), cv2.IMREAD_COLOR).astype(int)
    b = cv2.imdecode(np.frombuffer(pil, np.uint8), cv2.IMREAD_COLOR).astype(int)
    assert np.abs(a - b).max() <= 2  # same quantisation and 4:2:0 sampling as DIGITS' PIL save


@pytest.mark.parametrize("name", sorted(bad_files(np.random.default_rng(0))))
def test_broken_inputs_are_refused_or_flagged(rgb_codec, name):
    data, outcome = bad_files(np.random.default_rng(0))[name]
    if outcome is None:
        with pytest.raises(BadImage):
            rgb_codec.decode(data, FULL)
    else:
        decoded = rgb_codec.decode(data, FULL)
        assert decoded.warning and decoded.pixels.shape == (300, 400, 3)


def test_ycck_jpeg_colours_survive(rgb_codec):
    rng = np.random.default_rng(0)
    base = photo_like(rng, 320, 240)
    files = awkward_files(np.random.default_rng(0))
    out = rgb_codec.decode(files["ycck.JPEG"], FULL).pixels
    assert np.abs(out.astype(int) - base).mean() < 8  # not black, not inverted


def test_other_warnings_during_a_decode_do_not_mark_the_image(rgb_codec, monkeypatch):
    """Only libjpeg's own warnings count: a ResourceWarning raised inside turbojpeg's code (a garbage
    collection can run there) once sent good images down the warning path."""
    import turbojpeg

    real = turbojpeg.TurboJPEG.decode_header

    def noisy(self, data):
        warnings.warn("unclosed file", ResourceWarning, stacklevel=1)  # attributed to this test module...
        exec("import warnings; warnings.warn('unclosed file', ResourceWarning)",  # ...and to turbojpeg
             {"__name__": "turbojpeg"})
        return real(self, data)

    monkeypatch.setattr(turbojpeg.TurboJPEG, "decode_header", noisy)
    data = jpeg(gradient(300, 200), quality=90)
    assert rgb_codec.decode_planes(data, FULL) is not None
    assert rgb_codec.decode(data, FULL).warning is None


def with_segment(data: bytes, marker: int, payload: bytes) -> bytes:
    """A JPEG with one more marker segment right after its SOI (an APPn, as an ICC profile or EXIF block)."""
    return data[:2] + bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload + data[2:]


def sos_in_payload(length: bytes = b"\xff\xf0") -> bytes:
    """An APP2 ICC-profile-like payload holding FF DA and then `length`: a large one made the old search
    call a valid file "cut after its header", a small one made it pass a file that is."""
    return b"ICC_PROFILE\x00\x01\x01" + bytes(range(40)) + b"\xff\xda" + length + bytes(200)


@pytest.mark.parametrize("length", [b"\xff\xf0", b"\x00\x0c"])
@pytest.mark.parametrize("marker", [0xE2, 0xE1, 0xEF, 0xFE])  # APP2 (ICC), APP1 (EXIF), APP15, COM
def test_sos_bytes_inside_a_segment_are_not_the_scan(rgb_codec, marker, length):
    """The bytes FF DA inside an APPn segment come before the real start of scan: the walk over the segments
    finds the real one, so a valid JPEG keeps its image data, and a file cut after its header still has none."""
    px = photo_like(np.random.default_rng(3), 64, 48)
    data = with_segment(jpeg(px, quality=90), marker, sos_in_payload(length))
    assert data.find(b"\xff\xda") < first_scan(data)  # the old data.find took the one in the segment
    assert data[first_scan(data):first_scan(data) + 2] == b"\xff\xda"
    assert has_scan_data(data)
    assert rgb_codec.decode(data, FULL).pixels.shape == (48, 64, 3)
    header_end = first_scan(data) + 2 + int.from_bytes(data[first_scan(data) + 2:first_scan(data) + 4], "big")
    for cut in (header_end, header_end + 4, first_scan(data) + 3, first_scan(data)):
        assert not has_scan_data(data[:cut]), cut
    assert not has_scan_data(data[:first_scan(data) - 2])  # cut inside the header: no scan at all


def test_the_walk_skips_fill_bytes_and_stray_bytes_as_libjpeg_does():
    plain = jpeg(photo_like(np.random.default_rng(4), 32, 32), quality=90)
    sos = first_scan(plain)
    filled = plain[:sos] + b"\xff\xff" + plain[sos:]  # fill bytes before a marker
    stray = plain[:2] + b"\x00\x17" + plain[2:]  # "extraneous bytes before marker"
    assert first_scan(filled) == sos + 2 and first_scan(stray) == sos + 2
    assert first_scan(b"\xff\xd8\xff\xe0\x00") == -1 and first_scan(b"") == -1


def test_held_whole_reads_past_a_segment_holding_sos_bytes():
    px = photo_like(np.random.default_rng(5), 64, 48)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, "JPEG", quality=90, progressive=True)
    assert held_whole(with_segment(buf.getvalue(), 0xE2, sos_in_payload()))
    assert not held_whole(with_segment(jpeg(px, quality=90), 0xE2, sos_in_payload()))


@pytest.mark.parametrize("subsampling", [0, 1, 2])  # Pillow's 4:4:4, 4:2:2, 4:2:0
def test_libjpeg_turbo_decodes_as_opencvs_imread(subsampling):
    """etl imageset's Caffe pixels rest on this: the codec's full-size decode (PyTurboJPEG) gives the very
    pixels of opencv-python's imread, in colour (IMREAD_COLOR) and gray (IMREAD_GRAYSCALE: libjpeg's own)."""
    rng = np.random.default_rng(subsampling)
    colour, gray = Codec(3, 1 << 30), Codec(1, 1 << 30)
    for w, h in [(500, 375), (333, 500), (17, 9), (1031, 64)]:
        px = photo_like(rng, w, h)
        for data in (jpeg(px, quality=90, subsampling=subsampling),
                     jpeg(px, quality=75, subsampling=subsampling, progressive=True), jpeg(px[:, :, 0])):
            buf = np.frombuffer(data, np.uint8)
            rgb = colour.decode(data, FULL).pixels
            assert np.array_equal(rgb[:, :, ::-1], cv2.imdecode(buf, cv2.IMREAD_COLOR)), (w, h)
            assert np.array_equal(gray.decode(data, FULL).pixels[:, :, 0], cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE))
