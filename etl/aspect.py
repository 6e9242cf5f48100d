"""Aspect-preserving sizes: --resize-mode shorter (the shorter side becomes --size) and longer (capped at it)."""

from __future__ import annotations

VARIABLE_MODES = ("shorter", "longer")  # each record keeps its image's aspect ratio, so records vary in size
# shorter: an image whose longer side is over this many times its shorter one is refused: it bounds a record's (and
# so a worker's and the writer's) memory at MAX_ASPECT x --size^2 pixels, as --width x --height bounds the other modes
MAX_ASPECT = 16


def target_size(src_w: int, src_h: int, mode: str, size: int) -> tuple[int, int]:
    """The (width, height) an upright src_w x src_h image is resized to; BadImage past MAX_ASPECT (shorter)."""
    if mode == "shorter":
        short, long_ = min(src_w, src_h), max(src_w, src_h)
        if long_ > MAX_ASPECT * short:
            from etl.codec import BadImage  # here: etl.settings reads this module, and must not load OpenCV

            made = (size, round(long_ * size / short))[::1 if src_w == short else -1]
            raise BadImage(f"one side more than {MAX_ASPECT} times the other: --resize-mode shorter would make this "
                           f"{src_w}x{src_h} image a {made[0]}x{made[1]} record")
        scale = size / short
    elif mode == "longer":
        scale = size / max(src_w, src_h)
        if scale >= 1:
            return src_w, src_h  # smaller images are kept as they are
    else:
        raise ValueError(f"not an aspect-preserving mode: {mode!r}")
    # the side that sets the scale lands on size exactly; the other rounds, at least one pixel
    return max(1, round(src_w * scale)), max(1, round(src_h * scale))


def largest_output(mode: str, width: int, height: int, size: int | None) -> tuple[int, int]:
    """The largest record (width, height) a mode makes: --width x --height, or what --size allows."""
    if mode not in VARIABLE_MODES or size is None:
        return width, height
    return (MAX_ASPECT * size, size) if mode == "shorter" else (size, size)
