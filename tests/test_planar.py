"""The YCbCr-plane path (JPEG in, JPEG out) against the RGB pixel path, and the mean image it feeds."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image
from turbojpeg import TJPF_RGB

from etl.checkpoint import Checkpoint
from etl.codec import Codec, Planes
from etl.colour import ycc_to_rgb
from etl.meanimage import mean_image
from etl.meansum import SumLayout
from etl.synth import photo_like
from etl.transform import apply_geometry, dct_scale, fit_planes, plan_geometry

from .conftest import jpeg

pytestmark = pytest.mark.quick  # unit tests: each well under a second, no conversion run

W, H = 224, 224


@pytest.fixture(scope="module")
def codec():
    return Codec(channels=3, max_pixels=10_000_000)


def pillow_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.float64)


def both_paths(codec: Codec, data: bytes, mode: str, width: int = W, height: int = H) -> tuple[bytes, bytes]:
    def scale(w: int, h: int) -> int:
        return dct_scale(w, h, plan_geometry(w, h, width, height, mode))

    decoded = codec.decode(data, scale)
    geo = plan_geometry(decoded.src_w, decoded.src_h, width, height, mode)
    by_pixels = codec.encode(apply_geometry(decoded.pixels, geo, width, height, None), "jpg", 90)
    planes = codec.decode_planes(data, scale)
    assert planes is not None
    by_planes = codec.encode_planes(*fit_planes(planes, geo, width, height), 90)
    return by_pixels, by_planes


@pytest.mark.parametrize("size", [(500, 375), (135, 97), (333, 500), (1001, 799), (2000, 1500), (224, 224)])
@pytest.mark.parametrize("subsampling", [0, 1, 2])  # Pillow: 4:4:4, 4:2:2, 4:2:0
@pytest.mark.parametrize("mode", ["squash", "crop"])
def test_planes_give_the_same_picture_as_pixels(codec, size, subsampling, mode):
    """Odd sizes (padded planes), DCT-scaled decodes and every common subsampling, decoded by Pillow.

    Luma goes through the same filter on both paths; chroma does not (the plane path never upsamples
    it), so on this synthetic content, sharper in colour than photographs, the two differ a little.
    Plane mix-ups, lost padding or a stretched plane score below 25 dB here.
    """
    img = photo_like(np.random.default_rng(size[0] * 7 + subsampling), *size)
    by_pixels, by_planes = both_paths(codec, jpeg(img, quality=92, subsampling=subsampling), mode)
    a, b = pillow_rgb(by_pixels), pillow_rgb(by_planes)
    assert a.shape == b.shape == (H, W, 3)
    assert psnr(a, b) > 33
    luma = [cv2.cvtColor(x.astype(np.uint8), cv2.COLOR_RGB2YCrCb)[:, :, 0] for x in (a, b)]
    assert psnr(*luma) > 42


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / max(mse, 1e-9))


def ramp_planes(width: int, height: int, sub_x: int, sub_y: int) -> Planes:
    """Planes whose values rise linearly with x (Y, Cb) and y (Cr): every filter keeps a ramp, so the
    output shows exactly where each output sample was taken from. Y is padded like libjpeg-turbo's."""
    pw, ph = -(-width // sub_x) * sub_x, -(-height // sub_y) * sub_y
    y = np.tile(np.arange(pw, dtype=np.float32) * 200 / pw, (ph, 1))  # floats: no rounding to blur the answer
    cw, ch = pw // sub_x, ph // sub_y
    cb = np.tile(np.arange(cw, dtype=np.float32) * 200 / cw, (ch, 1))
    cr = np.tile((np.arange(ch, dtype=np.float32) * 200 / ch)[:, None], (1, cw))
    return Planes(y, cb, cr, width, height, width, height)


@pytest.mark.parametrize("src", [(500, 375), (501, 333), (135, 97)])
@pytest.mark.parametrize("sub", [(1, 1), (2, 2), (2, 1)])
@pytest.mark.parametrize("target", [(224, 224), (227, 195)])
@pytest.mark.parametrize("mode", ["squash", "crop"])
def test_chroma_samples_sit_where_the_encoder_puts_them(src, sub, target, mode):
    """Output chroma sample i stands for output pixels 2i and 2i+1 (an odd size's last one for a
    padding pixel past the edge): its value must be the source chroma at that place. Before the
    padding was handled, the odd targets failed here, by a stretch of one sample over the width."""
    planes = ramp_planes(*src, *sub)
    geo = plan_geometry(*src, *target, mode)
    _, cb, cr = fit_planes(planes, geo, *target)
    assert cb.shape == cr.shape == (-(-target[1] // 2), -(-target[0] // 2))
    along_x = (cb.mean(axis=0), geo.crop_x, geo.resize_w, src[0], planes.cb.shape[1], planes.y.shape[1])
    along_y = (cr.mean(axis=1), geo.crop_y, geo.resize_h, src[1], planes.cr.shape[0], planes.y.shape[0])
    for got, crop, resized, covered, n, luma_n in (along_x, along_y):
        i = np.arange(len(got))
        centre = (crop + 2 * i + 1) * covered / resized * n / luma_n  # in source chroma samples
        expected = np.clip((centre - 0.5) * 200 / n, 0, 200 * (n - 1) / n)
        inner = slice(2, -2)  # edge samples see the filter's edge handling
        slope = 200 / n * 2 * covered / resized * n / luma_n  # value change per output chroma sample
        # A fractional window is cut to within half a pixel of the first resize step.
        assert np.abs(got[inner] - expected[inner]).max() / slope < 0.55


@pytest.mark.parametrize("target", [(227, 227), (256, 193), (31, 17)])
def test_odd_targets_make_valid_420_jpegs(codec, target):
    img = photo_like(np.random.default_rng(5), 640, 480)
    by_pixels, by_planes = both_paths(codec, jpeg(img, quality=92), "squash", *target)
    out = Image.open(io.BytesIO(by_planes))
    assert out.size == target and out.mode == "RGB"
    assert psnr(pillow_rgb(by_planes), pillow_rgb(by_pixels)) > (33 if min(target) > 100 else 25)


def test_gray_jpeg_becomes_neutral_colour(codec):
    gray = photo_like(np.random.default_rng(2), 300, 200)[:, :, 0]
    _, by_planes = both_paths(codec, jpeg(gray, quality=95), "squash")
    rgb = pillow_rgb(by_planes)
    assert np.abs(rgb[:, :, 0] - rgb[:, :, 1]).max() <= 2 and np.abs(rgb[:, :, 0] - rgb[:, :, 2]).max() <= 2


def test_files_the_plane_path_cannot_take_go_elsewhere(codec):
    cmyk = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).convert("CMYK").save(cmyk, "JPEG")
    png = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(png, "PNG")
    truncated = jpeg(photo_like(np.random.default_rng(3), 300, 300), quality=90)[:4000]
    for data in (cmyk.getvalue(), png.getvalue(), truncated):
        assert codec.decode_planes(data, lambda w, h: 1) is None


def test_ycc_to_rgb_agrees_with_pillow():
    rgb = photo_like(np.random.default_rng(0), 60, 40)
    ycc = np.asarray(Image.fromarray(rgb).convert("YCbCr"))
    ours = ycc_to_rgb(*(ycc[:, :, i].astype(np.float64) for i in range(3)))
    theirs = np.asarray(Image.fromarray(ycc, "YCbCr").convert("RGB")).astype(np.float64)
    assert np.abs(np.clip(ours, 0, 255) - theirs).max() <= 1.0
    assert np.abs(ours - rgb).mean() < 1.0


def test_mean_of_plane_sums_is_the_mean_of_the_images():
    """Summing planes and converting once equals converting each image and averaging (the linearity the
    mean relies on), with images summed as pixels mixed in."""
    layout = SumLayout(7, 5, 3)
    rng = np.random.default_rng(1)
    vec, expected = layout.zeros(np.int64), np.zeros((5, 7, 3))
    for _ in range(6):
        y = rng.integers(30, 220, size=(5, 7), dtype=np.uint8)
        cb, cr = (rng.integers(90, 170, size=layout.chroma, dtype=np.uint8) for _ in range(2))
        layout.add_planes(vec, y, cb, cr)
        # a decoder's upsampling: each sample to 2x2, cut to the odd size (test_..._what_a_decoder_shows)
        up = [cv2.resize(c.astype(np.float64), (8, 6), interpolation=cv2.INTER_LINEAR)[:5, :7] for c in (cb, cr)]
        expected += ycc_to_rgb(y.astype(np.float64), *up)
    for _ in range(3):
        px = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
        layout.add_pixels(vec, px)
        expected += px
    np.testing.assert_allclose(mean_image(layout, vec, 9), expected / 9, atol=1e-9)


def test_chunk_sums_travel_trimmed_and_small_without_changing_the_mean():
    layout = SumLayout(6, 4, 3)
    rng = np.random.default_rng(3)
    planes_only = layout.zeros(layout.chunk_dtype(257))
    assert planes_only.dtype == np.uint16 and layout.chunk_dtype(258) == np.uint32
    neutral = np.full(layout.chroma, 128, np.uint8)
    white = (np.full((4, 6), 255, np.uint8), neutral, neutral)
    for _ in range(257):  # 257 white images: the largest sum uint16 holds
        layout.add_planes(planes_only, *white)
    tail, offset = layout.trim(planes_only)
    assert offset == 6 * 4 * 3 and len(tail) == len(planes_only) - offset
    mixed = layout.zeros()
    layout.add_pixels(mixed, rng.integers(0, 256, size=(4, 6, 3), dtype=np.uint8))
    assert layout.trim(mixed)[1] == 0  # a chunk with a pixel-path image keeps its whole vector
    total = layout.zeros(np.int64)
    total[offset:] += tail
    np.testing.assert_allclose(mean_image(layout, total, 257), mean_image(layout, planes_only.astype(np.int64), 257))
    assert np.abs(mean_image(layout, total, 257) - 255).max() < 1e-9  # no uint16 overflow on the way


@pytest.mark.parametrize("size", [(31, 17), (32, 16), (9, 9), (224, 224)])
def test_mean_of_planes_matches_what_a_decoder_shows(codec, size):
    """The mean image from plane sums against libjpeg-turbo's own RGB decode of the same JPEG: chroma
    upsampled and placed as a decoder does, odd sizes included (once 5 levels off at the far edge)."""
    w, h = size
    layout = SumLayout(w, h, 3)
    ch, cw = layout.chroma
    y = np.full((h, w), 128, np.uint8)
    cb = np.tile(np.linspace(60, 196, cw), (ch, 1)).astype(np.uint8)  # ramps: any misplacement shows
    cr = np.tile(np.linspace(80, 176, ch)[:, None], (1, cw)).astype(np.uint8)
    jpg = codec.encode_planes(y, cb, cr, 100)
    planes = codec.decode_planes(jpg, lambda sw, sh: 1)
    vec = layout.zeros(np.int64)
    layout.add_planes(vec, planes.y[:h, :w], planes.cb[:ch, :cw], planes.cr[:ch, :cw])
    shown = codec.tj.decode(jpg, pixel_format=TJPF_RGB).astype(np.float64)
    assert np.abs(mean_image(layout, vec, 1) - shown).max() <= 1.5


def test_a_sum_checkpointed_by_etl_0_1_resumes():
    layout = SumLayout(6, 4, 3)
    old = np.random.default_rng(4).integers(0, 255 * 50, size=(4, 6, 3))  # 0.1 kept an (H, W, C) sum
    np.testing.assert_allclose(mean_image(layout, layout.from_pixel_sum(old), 50), old / 50)


def test_sum_checkpoints_are_small_and_come_back_whole(tmp_path):
    """A planar run's sum is saved without its all-zero pixel part and as uint32; checkpoints of
    earlier versions (the whole int64 vector, or 0.1's (H, W, C) array) load as they were."""
    layout, cp = SumLayout(224, 224, 3), Checkpoint(tmp_path)
    cp.dir.mkdir()
    vec = layout.zeros(np.int64)
    y, cb, cr = layout.planes(vec)
    y[...], cb[...], cr[...] = 255 * 1000, 7, 9
    vec[-1] = 1000
    cp.save_sum("train", 3, layout.trim(vec)[0])
    saved = cp.path("train.sum.3.npy")
    assert saved.stat().st_size < vec.nbytes / 5
    back = cp.load_sum("train", 3, layout.size)
    assert back.dtype == np.int64 and np.array_equal(back, vec)
    vec[0] = 2**40  # past uint32: kept as int64
    cp.save_sum("train", 4, layout.trim(vec)[0])
    assert np.array_equal(cp.load_sum("train", 4, layout.size), vec)
    np.save(cp.path("train.sum.5.npy"), vec)  # etl 0.2-0.3: the whole vector
    assert np.array_equal(cp.load_sum("train", 5, layout.size), vec)
    np.save(cp.path("train.sum.6.npy"), np.ones((4, 6, 3), np.int64))  # etl 0.1
    assert cp.load_sum("train", 6, layout.size).shape == (4, 6, 3)
    assert cp.load_sum("train", 7, layout.size) is None
