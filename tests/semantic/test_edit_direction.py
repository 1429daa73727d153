"""scripts/edit_direction.py on both committed toy models: the recoloured scene it compares against differs from the
scene only in the edited object, and the figures are what they say (a cosine, a size, an energy ratio per noise
level and run). On the committed flow transformer the recolouring phrase barely moves the prediction (median 0.07
of the recolouring at the middle noise level, assets/toy/README.md); the committed UNet, fine-tuned on edit-shaped
targets, follows it (the first UNet weights: 0.01)."""

import numpy as np
import pytest


@pytest.mark.parametrize("kind", ["sd15", "sd3"])
def test_edit_direction_measures_the_phrase_against_the_recolouring(kind):
    import hostenv

    hostenv.import_host()
    import edit_direction
    import toy_eval
    import toy_world

    hostenv.load_pack()
    scene = toy_world.test_scene(0, "val")
    variant, new = edit_direction.recoloured(scene, 1)
    changed = (variant.image != scene.image).any(-1)
    assert new not in {o.colour for o in scene.objects} and variant.objects[1].colour == new
    assert changed.any() and not changed[~scene.objects[1].mask].any()
    gone = toy_world.without(scene, 0)
    changed = (gone.image != scene.image).any(-1)
    assert [o.words for o in gone.objects] == [scene.objects[1].words]
    assert changed.any() and not changed[~scene.objects[0].mask].any()
    model, clip, vae = toy_eval.load(kind)
    figs = edit_direction.measure(model, clip, vae, 1)
    for edit in (figs, edit_direction.measure(model, clip, vae, 1, "removal")):
        assert set(edit) == set(edit_direction.SIGMA_SHARES)
        for rows in edit.values():
            v = np.array(rows)
            assert v.shape == (2, 3) and np.isfinite(v).all()
            assert (np.abs(v[:, 0]) <= 1 + 1e-5).all() and (v[:, 1:] > 0).all()
    with pytest.raises(ValueError, match="kind must be"):
        edit_direction.measure(model, clip, vae, 1, "swap")
    mid = np.array(figs[0.6])  # the middle noise level: (runs, (cos, size, energy object / other))
    print(f"\n[edit direction] {kind}: cos {mid[:, 0]}, size {mid[:, 1]}, object / other {mid[:, 2]}")
    if kind == "sd3":  # the committed flow transformer: the phrase hardly moves the prediction
        assert (mid[:, 1] < 0.3).all()
    else:  # the committed UNet: the phrase points at the recoloured scene, on the object
        assert (mid[:, 0] > 0.5).all() and (mid[:, 1] > 0.3).all() and (mid[:, 2] > 3).all()
