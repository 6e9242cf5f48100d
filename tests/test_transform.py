"""Resize modes: DIGITS' geometry, output shapes, content placement, deterministic noise."""

import numpy as np
import pytest

from etl.transform import Geometry, apply_geometry, dct_scale, noise_rng, plan_geometry, resize

from .conftest import gradient, jpeg

pytestmark = pytest.mark.quick  # unit tests: each well under a second, no conversion run


@pytest.mark.parametrize(("mode", "src", "expected"), [
    ("squash", (500, 375), Geometry(224, 224, 0, 0, 0, 0)),
    ("crop", (500, 375), Geometry(299, 224, 38, 0, 0, 0)),
    ("crop", (375, 500), Geometry(224, 299, 0, 38, 0, 0)),
    ("fill", (500, 375), Geometry(224, 168, 0, 0, 0, 28)),
    ("fill", (375, 500), Geometry(168, 224, 0, 0, 28, 0)),
    ("half_crop", (500, 375), Geometry(256, 192, 16, 0, 0, 16)),
    ("half_crop", (100, 50), Geometry(299, 150, 38, 0, 0, 37)),  # odd padding bumped to even, as DIGITS does
])
def test_geometry_matches_digits_arithmetic(mode, src, expected):
    assert plan_geometry(*src, 224, 224, mode) == expected


@pytest.mark.parametrize("mode", ["squash", "crop", "fill", "half_crop"])
@pytest.mark.parametrize("src", [(500, 375), (375, 500), (100, 40), (224, 224), (2000, 90)])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("resize_filter", ["antialias", "caffe"])
def test_every_mode_reaches_the_target_shape(mode, src, channels, resize_filter):
    pixels = gradient(*src)[:, :, :channels].copy()
    geo = plan_geometry(*src, 224, 160, mode)
    out = apply_geometry(pixels, geo, 224, 160, noise_rng(0, 0, 0), resize_filter)
    assert out.shape == (160, 224, channels)
    assert out.dtype == np.uint8


def test_crop_keeps_the_centre():
    pixels = gradient(600, 300)  # red rises left to right
    out = apply_geometry(pixels, plan_geometry(600, 300, 100, 100, "crop"), 100, 100, None)
    # the resized image is 200 wide; the kept window is its middle half: red from ~1/4 to ~3/4 of 255
    assert 50 < out[50, 0, 0] < 80 and 175 < out[50, -1, 0] < 205


def test_fill_pads_with_seeded_noise_around_the_image():
    pixels = np.full((100, 400, 3), 200, np.uint8)
    geo = plan_geometry(400, 100, 200, 200, "fill")
    a = apply_geometry(pixels, geo, 200, 200, noise_rng(5, 0, 11))
    b = apply_geometry(pixels, geo, 200, 200, noise_rng(5, 0, 11))
    c = apply_geometry(pixels, geo, 200, 200, noise_rng(5, 0, 12))
    assert geo.pad_y == 75
    assert (a[75:125] == 200).all()  # the image itself, untouched by noise
    assert a[:75].std() > 30 and a[125:].std() > 30  # noise, not a flat border
    np.testing.assert_array_equal(a, b)  # same seed and index: same noise, whichever worker runs it
    assert not np.array_equal(a, c)


def test_resize_is_antialiased():
    # a 1-pixel checkerboard must average to grey, not alias into stripes
    board = (np.indices((448 * 3, 448 * 3)).sum(axis=0) % 2 * 255).astype(np.uint8)[:, :, None]
    out = resize(board, 224, 224)
    assert out.shape == (224, 224, 1)
    assert abs(float(out.mean()) - 127.5) < 2 and out.std() < 10


def test_dct_scale_still_covers_the_target():
    assert dct_scale(4000, 3000, Geometry(224, 224, 0, 0, 0, 0)) == 8  # 500x375 >= 224
    assert dct_scale(500, 375, Geometry(224, 224, 0, 0, 0, 0)) == 1  # 250x187 would not
    assert dct_scale(1000, 1000, Geometry(224, 224, 0, 0, 0, 0)) == 4
    assert dct_scale(1000, 1000, Geometry(299, 224, 0, 0, 0, 0)) == 2  # crop mode's wider resize


def test_crop_of_an_extreme_strip_stays_small():
    strip = gradient(1, 30000)  # crop mode would resize it to 224 x 6,720,000 before cropping
    out = apply_geometry(strip, plan_geometry(1, 30000, 224, 224, "crop"), 224, 224, None)
    assert out.shape == (224, 224, 3)


@pytest.mark.parametrize("channels, flag", [(3, 1), (1, 0)])  # cv2.IMREAD_COLOR, cv2.IMREAD_GRAYSCALE
def test_convert_with_the_caffe_filter_stores_opencvs_pixels(channels, flag):
    """etl convert --resize-filter caffe, squash, raw: cv2.imread then cv2.resize(INTER_LINEAR), CHW BGR, byte for
    byte, also where the antialias filter would decode at a DCT scale (2000x1500 to 64x48: 1/8) or go planar."""
    from collections import defaultdict

    import cv2

    from etl.codec import Codec
    from etl.converter import ImageConverter
    from etl.datum import decode_datum
    from etl.messages import Item
    from etl.synth import photo_like

    from .test_memory import spec

    for w, h in [(2000, 1500), (301, 203), (40, 30)]:
        data = jpeg(photo_like(np.random.default_rng(w), w, h), quality=90)
        for encoding in ("none", "jpg"):
            work = spec(64, 48, channels=channels, encoding=encoding, resize_filter="caffe")
            value, _ = ImageConverter(work).convert_bytes(data, Item(0, "x", 0), defaultdict(float))
            payload = decode_datum(value).data
            want = cv2.resize(cv2.imdecode(np.frombuffer(data, np.uint8), flag), (64, 48),
                              interpolation=cv2.INTER_LINEAR)
            if encoding == "none":
                assert payload == np.ascontiguousarray(want.reshape(48, 64, channels).transpose(2, 0, 1)).tobytes()
            else:  # etl convert's JPEG (quality 90) of those very pixels: no planar shortcut
                rgb = np.ascontiguousarray(want.reshape(48, 64, channels)[:, :, ::-1])
                assert payload == Codec(channels, 1 << 30).encode(rgb, "jpg", 90), (w, h)


def test_the_caffe_filter_is_one_bilinear_step_and_the_antialias_filter_is_not():
    """caffe: cv2.resize INTER_LINEAR straight to the target (it skips pixels when shrinking over 2x);
    antialias: a box average follows, so a one-pixel checkerboard shrunk 3x comes out far nearer grey."""
    import cv2

    board = (np.indices((400, 400)).sum(axis=0) % 2 * 255).astype(np.uint8)
    caffe = resize(board, 133, 133, "caffe")
    assert np.array_equal(caffe, cv2.resize(board, (133, 133), interpolation=cv2.INTER_LINEAR))
    assert np.ptp(caffe) > 200 and np.ptp(resize(board, 133, 133)) < 100  # aliased, and not
