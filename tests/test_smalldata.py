"""The small-data benchmark's table (gantrain/quality/smalldata.py): one table per (images, steps)."""

from gantrain.quality.smalldata import render


def test_one_table_per_set_and_length_compared_with_its_own_none():
    rows = [{"bench": "augment", "variant": v, "seed": 0, "steps": steps, "images": images, "classifier_fd": fd,
             "rt": 0.5, "p": None} for images, steps, v, fd in
            [(500, 1000, "none", 40.0), (500, 1000, "diffaug", 80.0), (200, 3000, "none", 50.0), (200, 3000, "diffaug", 25.0)]]
    rows.append({**rows[0], "classifier_fd": 41.0})  # the same run recorded twice: the last one counts
    table = render(rows, "cmd")
    assert "digits-500 (500 images), 1000 steps" in table and "digits-200 (200 images), 3000 steps" in table
    assert "+95 %" in table and "-50 %" in table
