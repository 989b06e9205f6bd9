"""The statistics as a PNG chart (Pillow): bars for the counts, a gauge for the headline.

Rendering only: the numbers come from `bot.domain.stats.compute`.
"""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont

from bot.domain.stats import HEADLINE_DAYS, USEFULNESS_LABELS, Stats, fmt_share

WIDTH, HEIGHT = 900, 520
BLUE = (0, 0, 145)  # Marianne blue
RED = (225, 0, 15)
GREY = (220, 220, 220)
INK = (22, 22, 22)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # an old Pillow without FreeType
        return ImageFont.load_default()


def render_png(stats: Stats, title: str) -> bytes:
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    big, normal, small = _font(26), _font(18), _font(15)
    draw.text((30, 20), "Administration+ · statistiques", fill=BLUE, font=big)
    draw.text((30, 58), title[:110], fill=INK, font=small)

    # The headline: share resolved in under 7 days, as a horizontal gauge.
    share = stats.share_resolved_7
    draw.text(
        (30, 95),
        f"Résolues en moins de {HEADLINE_DAYS} jours : {fmt_share(share)}"
        f" ({stats.resolved_within_7}/{stats.resolved_known})",
        fill=INK,
        font=normal,
    )
    draw.rectangle((30, 125, WIDTH - 30, 150), fill=GREY)
    if share is not None:
        draw.rectangle((30, 125, 30 + int((WIDTH - 60) * share), 150), fill=BLUE)

    bars = [
        ("Ouvertes", stats.opened, BLUE),
        ("Clôturées", stats.closed, BLUE),
        ("En retard", stats.late, RED),
        *((f"Utile : {USEFULNESS_LABELS[u]}", n, BLUE) for u, n in stats.usefulness.items()),
    ]
    top, left, label_width = 180, 30, 230
    scale_width = WIDTH - left - label_width - 90
    biggest = max([n for _, n, _ in bars] + [1])
    for i, (label, n, colour) in enumerate(bars):
        y = top + i * 50
        draw.text((left, y + 6), label, fill=INK, font=normal)
        length = int(scale_width * n / biggest)
        x0 = left + label_width
        draw.rectangle((x0, y, x0 + scale_width, y + 30), outline=GREY)
        if length:
            draw.rectangle((x0, y, x0 + length, y + 30), fill=colour)
        draw.text((x0 + scale_width + 12, y + 6), str(n), fill=INK, font=normal)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()
