"""Deterministic drawing primitives: named palette, solid shapes, bitmap text.

Everything is drawn without anti-aliasing (PIL polygon/ellipse fills and the built-in bitmap
font), so pixels take exactly the palette colours and bytes do not depend on FreeType.
"""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "PALETTE", "SHAPES", "SHAPE_PLURALS", "BACKGROUND", "GRID_LINE", "TEXT_COLOUR",
    "draw_shape", "bitmap_font", "render_text",
]

#: Named colours, far apart in RGB. Text and grid lines use colours outside this set
#: (except black text vs the ``black`` shape colour, which never share an image).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 20),
    "green": (20, 160, 40),
    "blue": (20, 60, 220),
    "yellow": (240, 200, 0),
    "purple": (130, 40, 180),
    "orange": (255, 128, 0),
    "black": (0, 0, 0),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "star")
SHAPE_PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles",
                 "diamond": "diamonds", "cross": "crosses", "star": "stars"}
BACKGROUND = (255, 255, 255)
GRID_LINE = (170, 170, 170)
TEXT_COLOUR = (0, 0, 0)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, rgb, box) -> None:
    """Fill ``shape`` inside the half-open box ``(x0, y0, x1, y1)``; no pixel outside it."""
    x0, y0, x1, y1 = (int(v) for v in box)
    r, b = x1 - 1, y1 - 1  # PIL's rectangle/ellipse/polygon coordinates are inclusive
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + r) / 2, (y0 + b) / 2
    if shape == "circle":
        draw.ellipse([x0, y0, r, b], fill=rgb)
    elif shape == "square":
        draw.rectangle([x0, y0, r, b], fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (r, b), (x0, b)], fill=rgb)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (r, cy), (cx, b), (x0, cy)], fill=rgb)
    elif shape == "cross":
        tx, ty = max(1, round(w / 3)), max(1, round(h / 3))
        draw.rectangle([x0 + tx, y0, r - tx, b], fill=rgb)
        draw.rectangle([x0, y0 + ty, r, b - ty], fill=rgb)
    elif shape == "star":
        rx, ry = (r - x0) / 2, (b - y0) / 2
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            f = 1.0 if k % 2 == 0 else 0.45
            pts.append((cx + f * rx * math.cos(a), cy + f * ry * math.sin(a)))
        draw.polygon(pts, fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def bitmap_font():
    """Pillow's built-in bitmap font (6 px per glyph, 11 px line): no FreeType, no anti-aliasing."""
    loader = getattr(ImageFont, "load_default_imagefont", None)
    return loader() if loader is not None else ImageFont.load_default()


def render_text(text: str, scale: int = 2) -> Image.Image:
    """``text`` in the bitmap font, upscaled ``scale``x with nearest-neighbour, black on white."""
    font = bitmap_font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1), BACKGROUND))
    l, t, r, b = probe.textbbox((0, 0), text, font=font)
    im = Image.new("RGB", (max(1, r), max(1, b)), BACKGROUND)
    ImageDraw.Draw(im).text((0, 0), text, font=font, fill=TEXT_COLOUR)
    return im.resize((im.width * scale, im.height * scale), Image.NEAREST)
