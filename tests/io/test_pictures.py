"""The heatmap overlay of the captures and the saved overlays."""

import numpy as np
from matplotlib import colormaps

from ccad.io.pictures import overlay


def test_the_overlay_blends_jet_colours_by_heat_and_draws_the_outline():
    gray = np.full((40, 60), 0.4, np.float32)
    heat = np.zeros((40, 60), np.float32)
    heat[:, 30:] = 1.0
    outline = np.zeros((40, 60), bool)
    outline[10:30, 5:25] = True
    heat[0, 1] = np.nan
    picture = overlay(gray, heat, opacity=0.3, outline=outline)
    assert picture.dtype == np.uint8 and picture.shape == (40, 60, 3)
    assert (picture[0, 0] == 102).all() and (picture[0, 1] == 102).all()  # no heat, or NaN: the X-ray's gray
    top = np.array(colormaps["jet"](1.0)[:3])  # jet's hottest colour, dark red
    np.testing.assert_array_equal(picture[0, 59], np.rint((0.4 * 0.7 + top * 0.3) * 255))
    assert (picture[10, 5] == 255).all() and (picture[20, 15] == 102).all()  # the border white, inside not


def test_the_overlay_is_within_one_level_of_matplotlibs_float64_blend():
    rng = np.random.default_rng(0)
    gray, heat = rng.random((64, 64)).astype(np.float32), rng.random((64, 64)).astype(np.float32)
    heat[0, :6] = [0, 1, 0.5, 1 / 256, 255 / 256, 0.999999]
    alpha = 0.45 * heat[..., None]
    expected = np.clip(gray[..., None] * (1 - alpha) + colormaps["jet"](heat)[..., :3] * alpha, 0, 1)
    difference = np.abs(overlay(gray, heat).astype(int) - np.rint(expected * 255))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.001
