"""scripts/phrase_probe.py on the committed toy flow transformer: the probe reads the words' maps it is meant to (its
own words look at their object in every run; the recolouring phrase looks at the green object, as the docs report;
the shape word alone is another column), and files each run under its prompt, its object's colour, the other
object's colour and the pair."""

import numpy as np


def test_phrase_probe_reads_the_words_maps():
    import hostenv

    hostenv.import_host()
    import phrase_probe
    import toy_eval
    import toy_world

    hostenv.load_pack()
    model, clip, vae = toy_eval.load("sd3")
    scenes = 3
    figs = phrase_probe.measure(model, clip, vae, scenes, 700, [2, 3])
    for kind in ("own", "phrase"):
        for prefix in ("target ", "other "):
            assert sum(len(v) for (k, role), v in figs.items() if k == kind and role.startswith(prefix)) == 2 * scenes
    colours = [(o.colour, p.colour) for i in range(scenes) for o, p in
               [(toy_world.test_scene(i, "val").objects[j], toy_world.test_scene(i, "val").objects[1 - j]) for j in (0, 1)]]
    assert {role for k, role in figs if k == "own" and " by " in role} == {f"{a} by {b}" for a, b in colours}
    own = np.array([f for (k, role), v in figs.items() if k == "own" and role.startswith("target ") for f in v])
    assert (own[:, 1] > 2).all() and (own[:, 0] >= 0.75).all()  # the object's own words look at it
    # What assets/toy/README.md reports of the committed model (34 of 34 runs with a green object, validation scenes
    # 0-19): the recolouring phrase looks at the green object, whichever object it names. Scenes 0-2 each have one.
    assert all(ratio < 1 for _, ratio in figs[("phrase", "other green")])
    assert all(ratio > 1 for _, ratio in figs[("phrase", "target green")])
    assert len(figs[("phrase", "other green")]) + len(figs[("phrase", "target green")]) == 2 * scenes
    shape = phrase_probe.measure(model, clip, vae, 1, 700, [2, 3], words="shape")
    words = phrase_probe.measure(model, clip, vae, 1, 700, [2, 3], words="words")
    assert shape.keys() == words.keys() and shape[("own", "target blue")] != words[("own", "target blue")]


def test_palette_distances_are_a_distance_table():
    import hostenv

    hostenv.import_host()
    import phrase_probe
    import toy_eval

    model, _, vae = toy_eval.load("sd3")
    names, dist = phrase_probe.palette_distances(model, vae)
    assert names == ["red", "green", "blue", "background"] and dist.shape == (4, 4)
    d = dist.numpy()
    assert np.allclose(d, d.T, atol=1e-5) and np.allclose(d.diagonal(), 0, atol=1e-3)
    assert (d + np.eye(4) > 0.5).all()  # distinct colours, distinct latents
