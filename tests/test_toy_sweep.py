"""scripts/toy_sweep.py's bookkeeping: a resumed sweep skips only the runs of its own kind and model, and the
summary's split by colour counts each run once per role; toy_world's palettes."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import toy_sweep  # noqa: E402  (imports the host only in main())
import toy_world  # noqa: E402

SETTING = {"scale": 20.0, "skip": 0.0, "source": "caption", "threshold": 0.9}


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_removal_row_does_not_count_as_the_same_alteration_done(tmp_path):
    out = tmp_path / "sweep.jsonl"
    write(out, [{"kind": "removal", "model": "sd3", "setting": SETTING, "scene": 0, "target": 1, "success": True},
                {"kind": "alteration", "model": "sd15", "setting": SETTING, "scene": 0, "target": 0, "success": True}])
    key = toy_sweep.key_of(SETTING)
    assert toy_sweep.done_runs(out, "removal", "sd3") == {(key, 0, 1)}
    assert toy_sweep.done_runs(out, "alteration", "sd3") == set()  # was {(key, 0, 1)}: the removal's row
    assert toy_sweep.done_runs(out, "alteration", "sd15") == {(key, 0, 0)}


def test_by_colour_counts_each_run_as_target_and_as_other(tmp_path):
    # validation scenes 0-2: "a blue circle and a green square", "a red square and a green circle",
    # "a green circle and a red square"
    assert [toy_world.test_scene(i, "val").caption for i in range(3)] == [
        "a blue circle and a green square", "a red square and a green circle", "a green circle and a red square"]
    out = tmp_path / "sweep.jsonl"
    rows = [{"kind": "alteration", "model": "sd3", "setting": SETTING, "scene": i, "target": t, "success": (i + t) % 2 == 0}
            for i in range(3) for t in (0, 1)]  # lands: blue circle, green circle (scene 1), green circle (scene 2)
    rows.append({"kind": "alteration", "model": "sd3", "setting": {**SETTING, "scale": 10.0}, "scene": 0, "target": 0,
                 "success": True})  # another setting: not counted
    rows.append({"kind": "alteration", "model": "sd3", "setting": SETTING, "scene": 0, "target": 1, "success": True,
                 "weights": "out/x.safetensors"})  # other weights: not counted
    write(out, rows)
    split = toy_sweep.by_colour(out, "alteration", "sd3", toy_sweep.key_of(SETTING))
    assert split == {"target blue": (1, 1), "target green": (2, 3), "target red": (0, 2),
                     "other blue": (0, 1), "other green": (1, 3), "other red": (2, 2)}
    other = toy_sweep.by_colour(out, "alteration", "sd3", toy_sweep.key_of(SETTING), weights="out/x.safetensors")
    assert other == {"target green": (1, 1), "other blue": (1, 1)}


def test_rows_of_other_weights_or_palettes_are_other_runs(tmp_path):
    out = tmp_path / "sweep.jsonl"
    base = {"kind": "removal", "model": "sd3", "setting": SETTING, "scene": 0, "target": 0, "success": True}
    write(out, [base, {**base, "target": 1, "weights": "w.safetensors"}, {**base, "scene": 1, "palette": "equal"}])
    key = toy_sweep.key_of(SETTING)
    assert toy_sweep.done_runs(out, "removal", "sd3") == {(key, 0, 0)}
    assert toy_sweep.done_runs(out, "removal", "sd3", weights="w.safetensors") == {(key, 0, 1)}
    assert toy_sweep.done_runs(out, "removal", "sd3", palette="equal") == {(key, 1, 0)}
    assert toy_sweep.summarise(out, "removal", "sd3") == [(1, 1, key)]


def test_a_palette_draws_the_same_scenes_in_other_colours():
    before = toy_world.scene(3, "train")
    try:
        toy_world.use_palette("equal")
        other = toy_world.scene(3, "train")
        assert other.caption == before.caption
        assert all((a.mask == b.mask).all() for a, b in zip(before.objects, other.objects, strict=True))
        obj = other.objects[0]
        assert tuple(other.image[obj.mask][0]) == toy_world.PALETTES["equal"][obj.colour]
        assert toy_world.colour_pixels(other.image, obj.colour)[obj.mask].mean() > 0.99  # measured in that palette
    finally:
        toy_world.use_palette("rgb")
    assert (toy_world.scene(3, "train").image == before.image).all()
    with pytest.raises(ValueError, match="palette must be one of"):
        toy_world.use_palette("pastel")
