"""Plots draw class names of every script: the font list falls back to an installed CJK font (DejaVu Sans, the
default, has no Han glyphs and matplotlib draws empty boxes)."""

import warnings

import pytest

from pipeline.data.tools.plots import CJK_FONTS, _pyplot

pytestmark = pytest.mark.fast


def _installed_cjk() -> list[str]:
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    return [f for f in CJK_FONTS if f in names]


def test_han_class_names_draw_with_a_real_glyph():
    if not _installed_cjk():
        pytest.skip("no CJK font installed (.ci/run installs fonts-wqy-microhei: apt-get install fonts-wqy-microhei)")
    plt = _pyplot()
    fig, ax = plt.subplots()
    ax.set_title("山 river Überfluss")
    ax.set_xticks([0, 1], ["河流", "森林"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "Glyph 23665 (\\N{CJK UNIFIED IDEOGRAPH-5C71}) missing from font(s)"
            fig.canvas.draw()
    finally:
        plt.close(fig)
