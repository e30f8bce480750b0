"""What a negative click takes (clicks.clicked_lobe, docs/clicks.md): the lobe it lands in when it lands in its
middle, the ball only on an edge. Synthetic shapes, since this is geometry; the real cases (IRCAD's false
right kidney, the TS example CT's leaking left kidney) are in test_prompts_ircad.py and test_prompts.py."""

from __future__ import annotations

import numpy as np

from contrastseg.clicks import clicked_lobe, negative_removal

SPACING = (1.0, 1.0, 1.0)


def sphere(shape, centre, radius) -> np.ndarray:
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius ** 2


def body_and_leak(neck: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An organ (a ball of radius 14) with a leak (a ball of radius 8) joined by a bar `neck` voxels wide."""
    shape = (40, 40, 80)
    body, leak = sphere(shape, (20, 20, 20), 14), sphere(shape, (20, 20, 52), 8)
    bar = np.zeros(shape, dtype=bool)
    h = neck // 2
    bar[20 - h: 20 + h + 1, 20 - h: 20 + h + 1, 30:46] = True
    return body | leak | bar, body, leak


def test_a_click_in_the_middle_of_a_lone_piece_takes_all_of_it():
    organ = sphere((40, 40, 40), (20, 20, 20), 12)  # the organ's only (so largest) piece
    lobe = clicked_lobe(organ, (20, 20, 20), SPACING)
    assert lobe is not None and np.array_equal(lobe, organ)
    assert np.array_equal(clicked_lobe(organ, (20, 21, 22), SPACING), organ)  # off centre, still in its middle
    assert clicked_lobe(organ, (20, 22, 25), SPACING) is None  # halfway to the edge: the ball


def test_a_click_on_the_edge_of_a_piece_takes_its_ball_only():
    organ = sphere((40, 40, 40), (20, 20, 20), 12)
    assert clicked_lobe(organ, (20, 20, 31), SPACING) is None  # 1 mm deep of 12
    removed, balls = negative_removal(organ, [(20, 20, 31)], SPACING, 15.0)
    assert 0 < removed.sum() < 0.05 * organ.sum() and not (removed & ~organ).any()


def test_a_leak_behind_a_narrow_neck_goes_without_the_organ():
    organ, body, leak = body_and_leak(neck=3)
    lobe = clicked_lobe(organ, (20, 20, 52), SPACING)
    assert lobe is not None
    assert lobe[leak].mean() > 0.99 and not lobe[body].any()
    # a click in the middle of the organ's body (the deepest of the whole piece) takes the whole piece
    assert np.array_equal(clicked_lobe(organ, (20, 20, 20), SPACING), organ)


def test_a_broadly_joined_leak_is_trimmed_not_taken_with_the_organ():
    organ, body, leak = body_and_leak(neck=13)  # the join is as thick as the leak
    assert clicked_lobe(organ, (20, 20, 52), SPACING) is None  # the click reaches the thicker body
    removed, _ = negative_removal(organ, [(20, 20, 52)], SPACING, 15.0)
    assert not removed[body].any() or removed[body].mean() < 0.05


def test_a_positive_hint_protects_the_lobe_it_is_in():
    organ = sphere((40, 40, 40), (20, 20, 20), 12)
    anchor = np.zeros_like(organ)
    anchor[20, 20, 14] = True
    removed, _ = negative_removal(organ, [(20, 20, 20)], SPACING, 8.0, protected=anchor)
    assert 0 < removed.sum() < 0.5 * organ.sum()  # the ball, not the piece the user said is the organ


def test_a_corrections_record_says_which_organ_took_voxels_from_which():
    """The dataset entry's provenance (corrections.changes): besides each organ's added and removed voxels,
    which organ's voxels went to which, so a kidney taken back from the spleen is not read as a miss and a leak."""
    from contrastseg.corrections import changes

    initial = np.zeros((3, 4, 4), dtype=np.uint8)
    initial[0], initial[1, :2] = 1, 2  # spleen, right kidney
    final = initial.copy()
    final[0, :2] = 2  # the kidney takes 8 spleen voxels
    final[1, :1] = 0  # loses 4 to background
    final[2, 0] = 6  # the liver grows into background
    record = changes(initial, final)
    assert record["relabelled"] == {"right_kidney": {"spleen": 8}}
    assert record["edited"]["right_kidney"] == {"id": 2, "added": 8, "removed": 4}
    assert record["changed_voxels"] == 16
