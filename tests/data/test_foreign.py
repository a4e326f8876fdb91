"""Foreign inputs made from films: turned, inverted, a corner cropped, and screens of text."""

import numpy as np
import pytest

from ccad.data.foreign import TRANSFORMS, foreign_images, screenshot, transform


@pytest.fixture
def film():
    return np.random.default_rng(0).random((60, 40)).astype(np.float32)


def test_turns_and_inversion_are_exact(film):
    rng = np.random.default_rng(0)
    turned = [transform(film, "rotated 90", rng) for _ in range(20)]
    assert all(t.shape == (40, 60) for t in turned)
    ways = {
        0 if np.array_equal(t, np.rot90(film, 1)) else 1 if np.array_equal(t, np.rot90(film, 3)) else 2 for t in turned
    }
    assert ways == {0, 1}  # both ways, and nothing else
    assert np.array_equal(transform(film, "rotated 180", rng), film[::-1, ::-1])
    inverted = transform(film, "inverted", rng)
    assert inverted.dtype == np.float32 and np.allclose(inverted, 1 - film)


def test_a_corner_crop_is_a_corner_of_a_quarter_to_two_fifths_of_each_side(film):
    rng = np.random.default_rng(1)
    corners = set()
    for _ in range(40):
        crop = transform(film, "corner crop", rng)
        h, w = crop.shape
        assert int(60 * 0.25) <= h <= int(60 * 0.4) and int(40 * 0.25) <= w <= int(40 * 0.4)
        for top, left in ((0, 0), (0, 40 - w), (60 - h, 0), (60 - h, 40 - w)):
            if np.array_equal(crop, film[top : top + h, left : left + w]):
                corners.add((top == 0, left == 0))
    assert len(corners) == 4  # every corner, each crop one of them


def test_an_unknown_transform_is_named(film):
    with pytest.raises(ValueError, match="unknown transform 'mirrored' \\(choose from rotated 90, rotated 180"):
        transform(film, "mirrored", np.random.default_rng(0))


def test_a_screenshot_is_mostly_background_with_lines_of_ink_and_repeats_with_its_seed():
    shot = screenshot(np.random.default_rng(3))
    assert shot.dtype == np.float32 and 0 <= shot.min() and shot.max() <= 1
    assert 700 <= shot.shape[1] < 1400 and 500 <= shot.shape[0] < 1000
    background = np.median(shot)
    ink = np.abs(shot - background) > 0.3
    assert 0.005 < ink.mean() < 0.3  # text, not a blank or a picture
    assert ink.any(axis=1).mean() > 0.3  # on many lines
    assert np.array_equal(shot, screenshot(np.random.default_rng(3)))
    other = screenshot(np.random.default_rng(4))
    assert other.shape != shot.shape or not np.array_equal(other, shot)


def test_a_screenshot_can_carry_a_films_thumbnail_in_its_top_right_corner():
    shot = screenshot(np.random.default_rng(5), np.full((50, 50), 0.5, np.float32))
    h, w = shot.shape
    smallest = int(min(h, w) * 0.25)  # the thumbnail's side is 25-45% of the screen's shorter side
    corner = shot[20 : 20 + smallest, w - 20 - smallest : w - 20]
    assert np.all(corner == np.float32(127 / 255)), "the thumbnail, 20 px from the top and right edges"
    assert np.mean(shot == np.float32(127 / 255)) < 0.5


def test_foreign_images_are_every_transform_of_every_film_then_the_screens(film):
    images = list(foreign_images([film, film[:30]], screens=5, seed=0))
    assert [kind for kind, _ in images] == [*TRANSFORMS, *TRANSFORMS, *["text screenshot"] * 5]
    assert np.array_equal(images[1][1], film[::-1, ::-1]) and np.allclose(images[6][1], 1 - film[:30])
    again = list(foreign_images([film, film[:30]], screens=5, seed=0))
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(images, again))
    assert list(foreign_images([], screens=2, seed=0))[0][0] == "text screenshot"
