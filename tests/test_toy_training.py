"""The toy trainers' batched pieces (scripts/train_toy.py): the same results as written out sample by sample, so
that a GPU run trains what a CPU run trains; the step budget that fits a run to its minutes; the recolouring
phrases of the phrase loss; and the semantic tests' helper process (scripts/toy_eval.py's Helper) saying why it
failed."""

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import train_toy  # noqa: E402  (imports the host only in main())


def augment_one_by_one(x, rng, *others):
    """The flips and quarter turns as first written: per sample, flip with p = 1/2, then k turns."""
    out, rest = [], [[] for _ in others]
    for i in range(x.shape[0]):
        flip, k = rng.random() < 0.5, int(rng.integers(4))
        for src, dst in ((x, out), *zip(others, rest, strict=True)):
            yi = src[i].flip(-1) if flip else src[i]
            dst.append(torch.rot90(yi, k, dims=(-2, -1)))
    return (torch.stack(out), *(torch.stack(r) for r in rest)) if others else torch.stack(out)


def test_augment_batched_is_per_sample():
    x = torch.randn(33, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cover = torch.rand(33, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    got_x, got_c = train_toy.augment(x, np.random.default_rng(5), cover)
    want_x, want_c = augment_one_by_one(x, np.random.default_rng(5), cover)
    assert torch.equal(got_x, want_x) and torch.equal(got_c, want_c)
    assert torch.equal(train_toy.augment(x, np.random.default_rng(6)), augment_one_by_one(x, np.random.default_rng(6)))
    assert not torch.equal(got_x, x)  # something was turned


def attention_loss_one_by_one(maps, named, cover):
    terms = []
    for b, objs in enumerate(named):
        for obj, positions in objs:
            inside = (cover[b, obj].flatten() > 0.25).float()
            p = maps[b][:, positions]
            share = (p * inside[:, None]).sum(0) / p.sum(0).clamp_min(1e-8)
            terms.append(-torch.log(share + 1e-4))
    return torch.cat(terms).mean()


def test_attention_loss_batched_is_per_word():
    g = torch.Generator().manual_seed(3)
    maps = torch.rand(4, 64, 77, generator=g).softmax(-1).requires_grad_(True)
    cover = torch.rand(4, 2, 8, 8, generator=g)
    named = [[(0, [2, 3]), (1, [6, 7])], [], [(1, [1, 2])], [(0, [2, 3])]]
    got = train_toy.attention_loss(maps, named, cover)
    want = attention_loss_one_by_one(maps, named, cover)
    assert torch.allclose(got, want, rtol=1e-6, atol=0)
    (grad_got,) = torch.autograd.grad(got, maps)
    (grad_want,) = torch.autograd.grad(attention_loss_one_by_one(maps, named, cover), maps)
    assert torch.allclose(grad_got, grad_want, rtol=1e-5, atol=1e-9)
    empty = train_toy.attention_loss(maps, [[] for _ in range(4)], cover)
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_seeded_noise_repeats_and_is_the_old_cpu_noise():
    x = torch.zeros(2, 4, 8, 8)
    a, b = train_toy.seeded_noise(x, 11), train_toy.seeded_noise(x, 11)
    assert torch.equal(a, b) and not torch.equal(a, train_toy.seeded_noise(x, 12))
    assert torch.equal(a, torch.randn(x.shape, generator=torch.Generator().manual_seed(11)))


def test_budget_fits_the_steps_to_the_minutes(monkeypatch, tmp_path):
    clock = {"now": 1000.0}
    monkeypatch.setattr(train_toy.time, "time", lambda: clock["now"])
    monkeypatch.setattr(train_toy, "log", lambda work, record: None)
    args = types.SimpleNamespace(budget_min=1.0, steps=100000)
    start = clock["now"]
    for step in range(0, 151):
        clock["now"] = start + 0.1 * step + (5.0 if step > 0 else 0.0)  # 5 s of warm-up in the first step
        train_toy.fit_budget(args, "steps", step, start, 0, tmp_path)
    # measured over steps 50-150: 0.1 s a step; 60 s in all, 20 s spent by step 150: 400 more steps
    assert abs(args.steps - 550) <= 1
    assert args._fitted
    again = args.steps
    train_toy.fit_budget(args, "steps", 200, start, 0, tmp_path)
    assert args.steps == again  # fitted once


def test_no_budget_leaves_the_steps(tmp_path):
    args = types.SimpleNamespace(budget_min=0.0, steps=1234)
    for step in range(0, 300):
        train_toy.fit_budget(args, "steps", step, 0.0, 0, tmp_path)
    assert args.steps == 1234


def test_the_eval_helper_reports_its_failure():
    import toy_eval

    helper = toy_eval.Helper("sd15", 0, 1, 0, targets="no-such-targets")
    with helper, pytest.raises(RuntimeError, match=r"(?s)exit code 2.*invalid choice"):
        helper.result()
    assert not Path(helper.dir.name).exists()  # its folder is gone


def test_recolour_phrase_names_an_absent_colour_and_the_objects_own_shape():
    rng = np.random.default_rng(0)
    seen = set()
    for objects in ([("red", "circle"), ("blue", "square")], [("green", "square")],
                    [("red", "circle"), ("blue", "circle"), ("blue", "square")]):
        for _ in range(40):
            phrase, index, positions = train_toy.recolour_phrase(rng, objects)
            words = phrase.split()
            colour, shape = (words[p - 1] for p in positions)  # position 0 is the start token
            assert colour not in {c for c, _ in objects} and colour in ("red", "green", "blue")
            assert shape == objects[index][1] and [s for _, s in objects].count(shape) == 1
            seen.add((len(objects), index, phrase.startswith("a ")))
    assert {(2, 0, True), (2, 1, False), (1, 0, True), (3, 2, False)} <= seen  # both objects, both forms
    assert train_toy.recolour_phrase(rng, [("red", "circle"), ("blue", "circle")]) is None  # no shape of its own
    assert train_toy.recolour_phrase(rng, [("red", "circle"), ("blue", "square"), ("green", "circle")]) is None


def test_phrase_rows_take_the_first_samples_that_have_a_phrase():
    same = [("red", "circle"), ("blue", "circle")]  # no object of its own shape: no phrase
    objects = [same, [("red", "circle"), ("blue", "square")], same, [("green", "square")], [("blue", "circle")]]
    rows, texts, named = train_toy.phrase_rows(np.random.default_rng(1), objects, 2)
    assert rows == [1, 3] and len(texts) == len(named) == 2
    (obj, positions), = named[1]
    assert obj == 0 and len(positions) == 1 and texts[1].split()[positions[0] - 1] == "square"  # the shape word only
    assert train_toy.phrase_rows(np.random.default_rng(1), [same], 4) == ([], [], [])
    _, _, both = train_toy.phrase_rows(np.random.default_rng(1), objects, 2, words="both")
    assert [len(p) for (_, p), in both] == [2, 2]  # --phrase-words both: the colour word too


def test_a_fine_tune_needs_its_own_vae():
    args = types.SimpleNamespace(init_from=Path("assets/toy/toy_sd3.safetensors"), vae_from=None)
    with pytest.raises(SystemExit, match="needs --vae-from"):
        train_toy.check_fine_tune(args)
    args.vae_from = args.init_from
    train_toy.check_fine_tune(args)
    train_toy.check_fine_tune(types.SimpleNamespace(init_from=None, vae_from=None))


def caption_as_first_written(rng, objects):
    """caption_with_positions before --shape-only: the committed recipe's captions and positions."""
    u = rng.random()
    if u < 0.10:
        return "", []
    words = [f"{c} {s}" for c, s in objects]
    if u < 0.30:
        i = int(rng.integers(len(words)))
        if rng.random() < 0.5:
            return words[i], [(i, [1, 2])]
        return f"a {words[i]}", [(i, [2, 3])]
    order = rng.permutation(len(words))
    return " and ".join(f"a {words[i]}" for i in order), [(int(i), [2 + 4 * k, 3 + 4 * k]) for k, i in enumerate(order)]


def test_captions_without_shape_only_are_the_committed_recipe():
    scenes = [[("red", "circle"), ("blue", "square")], [("green", "square")],
              [("red", "circle"), ("blue", "circle"), ("green", "triangle")]]
    a, b, words = np.random.default_rng(3), np.random.default_rng(3), np.random.default_rng(4)
    for k in range(300):
        objects = scenes[k % 3]
        assert train_toy.caption_with_positions(a, objects, 0.0, words) == caption_as_first_written(b, objects)


def test_shape_only_names_an_object_of_its_own_shape_by_the_shape_word():
    objects = [("red", "circle"), ("blue", "circle"), ("green", "square")]  # only the square has its own shape
    rng, words = np.random.default_rng(0), np.random.default_rng(1)
    alone = 0
    for _ in range(400):
        caption, named = train_toy.caption_with_positions(rng, objects, 0.5, words)
        tokens = [""] + caption.split()  # position 0 is the start token
        for i, positions in named:
            said = [tokens[p] for p in positions]
            assert said[-1] == objects[i][1]  # the shape word comes last, at its own position
            if len(said) == 1:
                alone += 1
                assert objects[i][1] == "square" and tokens[positions[0] - 1] in ("a", "")
            else:
                assert said == list(objects[i])
        assert caption.count("circle") == sum(1 for i, _ in named if objects[i][1] == "circle")
    assert 60 < alone < 200  # about half of the square's mentions (it is named in ~77 % of captions)


class LinearAutoencoder(torch.nn.Module):
    """An encoder whose posterior mean is the pixel itself (RGB in [-1, 1]), logvar 0: latent distances are RGB
    distances / 127.5."""

    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Identity()
        self.quant_conv = torch.nn.Conv2d(3, 6, 1)
        with torch.no_grad():
            self.quant_conv.weight.zero_()
            self.quant_conv.bias.zero_()
            self.quant_conv.weight[:3, :, 0, 0] = torch.eye(3)


def test_colour_spread_measures_how_unequal_the_palette_distances_are(monkeypatch):
    import toy_world

    ae = LinearAutoencoder()
    monkeypatch.setattr(toy_world, "COLOURS", dict(toy_world.PALETTES["equal"]))  # 226 apart in RGB, each pair
    loss, d = train_toy.colour_spread(ae)
    assert torch.allclose(d, torch.full((3,), 226.27 / 127.5), atol=1e-3)
    assert loss.item() < 1e-10
    monkeypatch.setattr(toy_world, "COLOURS", dict(toy_world.PALETTES["rgb"]))
    loss, d = train_toy.colour_spread(ae)
    rgb = np.array(list(toy_world.PALETTES["rgb"].values()), float)
    pairs = np.array([np.linalg.norm(rgb[i] - rgb[j]) for i, j in ((0, 1), (0, 2), (1, 2))]) / 127.5
    assert np.allclose(d.detach().numpy(), pairs, atol=1e-4)
    assert loss.item() == pytest.approx(((pairs / pairs.mean() - 1) ** 2).mean(), rel=1e-4)
    # and it is a loss the VAE can follow: a few steps on the encoder's map alone make the distances more equal
    opt = torch.optim.SGD(ae.parameters(), lr=0.5)
    first = loss.item()
    for _ in range(20):
        loss, _ = train_toy.colour_spread(ae)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert train_toy.colour_spread(ae)[0].item() < first / 2


def test_edit_variant_recolours_one_object_of_its_own_shape_and_nothing_else():
    import toy_world

    seen_none, targets = 0, set()
    for i in range(60):
        sc = toy_world.scene(i, "train")
        v = train_toy.edit_variant(i, 0)
        shapes = [o.shape for o in sc.objects]
        if v is None:
            seen_none += 1
            assert all(shapes.count(s) > 1 for s in shapes)  # no object has a shape of its own
            continue
        variant, j, old, new = v
        assert shapes.count(shapes[j]) == 1 and old == sc.objects[j].colour
        assert new not in {o.colour for o in sc.objects}
        assert [o.words for k, o in enumerate(variant.objects) if k != j] == [o.words for k, o in
                                                                           enumerate(sc.objects) if k != j]
        assert variant.objects[j].words == f"{new} {shapes[j]}"
        changed = (variant.image != sc.image).any(-1)
        assert changed.any() and not changed[~sc.objects[j].mask].any()  # only the object's own pixels
        assert toy_world.colour_pixels(variant.image, new)[sc.objects[j].mask].mean() > 0.95
        assert train_toy.edit_variant(i, 0)[1:] == v[1:]  # drawn from its own seed: the same every time
        targets.add((len(sc.objects), j))
    assert seen_none > 0 and {(1, 0), (2, 0), (2, 1)} <= targets


def test_edit_rows_name_the_new_colour_forward_and_the_old_one_back():
    variants = [None, (1, "red", "blue", "square"), (0, "green", "red", "circle")]
    idx = np.array([0, 1, 2, 1, 2, 1, 2, 1] * 8)
    off = types.SimpleNamespace(edit_pairs=0.0, seed=0)
    assert train_toy.edit_rows(off, 3, idx, variants) == {}
    every = types.SimpleNamespace(edit_pairs=1.0, seed=0)
    rows = train_toy.edit_rows(every, 3, idx, variants)
    assert set(rows) == {b for b, i in enumerate(idx) if i != 0}  # every row that has a variant
    assert rows == train_toy.edit_rows(every, 3, idx, variants) != train_toy.edit_rows(every, 4, idx, variants)
    forms = set()
    for b, (kind, phrase, positions, obj) in rows.items():
        j, old, new, shape = variants[idx[b]]
        words = phrase.split()
        assert [words[p - 1] for p in positions] == [new if kind == "to" else old, shape]  # position 0: start token
        assert obj == j
        forms.add((kind, phrase.startswith("a ")))
    assert forms == {("to", True), ("to", False), ("back", True), ("back", False)}
    half = train_toy.edit_rows(types.SimpleNamespace(edit_pairs=0.5, seed=0), 3, idx, variants)
    assert 0.3 < len(half) / len(rows) < 0.7
    pairs = train_toy.with_edit_captions([("a caption", [(0, [2, 3])])] * len(idx), rows)
    assert pairs[0] == ("a caption", [(0, [2, 3])])  # no variant: its caption stays
    assert pairs[1] == (rows[1][1], [(1, rows[1][2])])  # the phrase, on the edited object


def test_caption_edits_give_the_whole_caption_of_the_scene_a_row_goes_to():
    variants = [None, (1, "red", "blue", "square"), (0, "green", "red", "circle")]
    objects = [[("red", "circle")], [("green", "circle"), ("red", "square")], [("green", "circle"), ("blue", "square")]]
    idx = np.array([0, 1, 2, 1, 2, 1, 2, 1] * 8)
    phrases = train_toy.edit_rows(types.SimpleNamespace(edit_pairs=1.0, seed=0), 3, idx, variants, objects)
    every = types.SimpleNamespace(edit_pairs=1.0, caption_edits=1.0, seed=0)
    rows = train_toy.edit_rows(every, 3, idx, variants, objects)
    assert set(rows) == set(phrases)  # the same rows and kinds: only their prompts change
    orders = set()
    for b, (kind, caption, positions, obj) in rows.items():
        j, old, new, shape = variants[idx[b]]
        assert kind == phrases[b][0] and obj == j
        goes_to = [list(o) for o in objects[idx[b]]]
        if kind == "to":
            goes_to[j] = [new, shape]
        parts = caption.split(" and ")
        assert sorted(p.split()[1:] for p in parts) == sorted(goes_to)  # the target scene's caption, every object
        words = caption.split()
        assert [words[p - 1] for p in positions] == goes_to[j]
        orders.add(parts[0].endswith(shape))
    assert orders == {True, False}  # the edited object first and last
    half = train_toy.edit_rows(types.SimpleNamespace(edit_pairs=1.0, caption_edits=0.5, seed=0), 3, idx, variants,
                               objects)
    whole = sum(" and " in c for _, c, _, _ in half.values())
    assert 0.3 < whole / len(half) < 0.7
    assert train_toy.edit_rows(every, 3, idx, variants) == phrases  # no objects given: the phrases
    with pytest.raises(SystemExit, match="--edit-pairs"):
        train_toy.check_fine_tune(types.SimpleNamespace(caption_edits=0.5, edit_pairs=0.0, init_from=None))


def test_removal_variant_takes_one_object_away_and_leaves_the_rest():
    import toy_world

    background = np.asarray(toy_world.BACKGROUND)
    taken = set()
    for i in range(40):
        sc = toy_world.scene(i, "train")
        variant, j, colour, shape = train_toy.removal_variant(i, 0)
        assert (colour, shape) == (sc.objects[j].colour, sc.objects[j].shape)
        assert [o.words for o in variant.objects] == [o.words for k, o in enumerate(sc.objects) if k != j]
        assert (variant.image[sc.objects[j].mask] == background).all()  # background where the object was
        changed = (variant.image != sc.image).any(-1)
        assert not changed[~sc.objects[j].mask].any()  # and nothing else changed
        assert train_toy.removal_variant(i, 0)[1:] == (j, colour, shape)
        taken.add((len(sc.objects), j))
    assert {(1, 0), (2, 0), (2, 1)} <= taken


def test_removal_rows_name_the_removed_object_on_rows_the_edit_rows_left():
    removals = [(0, "red", "circle"), (1, "blue", "square"), (0, "green", "square")]
    idx = np.array([0, 1, 2, 1, 2, 1, 2, 0] * 8)
    assert train_toy.removal_rows(types.SimpleNamespace(removal_pairs=0.0, seed=0), 3, idx, removals, {}) == {}
    every = types.SimpleNamespace(removal_pairs=1.0, seed=0)
    taken = {0: None, 5: None}
    rows = train_toy.removal_rows(every, 3, idx, removals, taken)
    assert set(rows) == set(range(len(idx))) - set(taken)
    forms = set()
    for b, (kind, phrase, positions, obj) in rows.items():
        j, colour, shape = removals[idx[b]]
        words = phrase.split()
        assert kind == "remove" and obj == j and [words[p - 1] for p in positions] == [colour, shape]
        forms.add(phrase.startswith("a "))
    assert forms == {True, False}
    half = train_toy.removal_rows(types.SimpleNamespace(removal_pairs=0.5, seed=0), 3, idx, removals, {})
    assert 0.3 < len(half) / len(idx) < 0.7


def test_pair_target_moves_the_clean_prediction_from_the_input_towards_the_target():
    g = torch.Generator().manual_seed(4)
    a, b, noise = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(3))
    acp = torch.tensor([0.9, 0.5, 0.05]).view(-1, 1, 1, 1)  # VP (the UNet): x_t = sqrt(acp) a + sqrt(1 - acp) noise
    xt = acp.sqrt() * a + (1 - acp).sqrt() * noise
    eps = train_toy.pair_target(noise, a, b, acp.sqrt())
    x0 = (xt - (1 - acp).sqrt() * eps) / acp.sqrt()
    assert torch.allclose(x0, a + (1 - acp).sqrt() * (b - a), atol=1e-5)
    assert torch.equal(train_toy.pair_target(noise, a, a, acp.sqrt()), noise)  # not an edit row: the usual target
    sigma = torch.tensor([0.9, 0.5, 0.1]).view(-1, 1, 1, 1)  # flow: x_t = (1 - s) a + s noise, velocity noise - b
    xt = (1 - sigma) * a + sigma * noise
    v = noise - b
    assert torch.allclose(xt - sigma * v, (1 - sigma) * a + sigma * b, atol=1e-5)  # its clean prediction
    assert torch.allclose(xt + (1 - sigma) * v, train_toy.pair_target(noise, a, b, 1 - sigma), atol=1e-5)  # its eps


def test_batch_latents_turn_input_target_and_cells_alike():
    g = torch.Generator().manual_seed(5)
    latents, latents_b = torch.randn(5, 4, 8, 8, generator=g), torch.randn(5, 4, 8, 8, generator=g)
    cells = torch.rand(5, 2, 8, 8, generator=g)
    idx = np.array([0, 1, 2, 3, 4, 1])
    latents_r = torch.randn(5, 4, 8, 8, generator=g)
    edits = {1: ("to", "blue square", [1, 2], 1), 2: ("back", "a red circle", [2, 3], 0),
             4: ("remove", "green square", [1, 2], 0)}
    x0, x_tgt, cover = train_toy.batch_latents(latents, (latents_b, latents_r), idx, edits,
                                               np.random.default_rng(9), cells)
    src, tgt = latents[idx].clone(), latents[idx].clone()
    tgt[1], src[2] = latents_b[1], latents_b[2]  # forward: the scene to its variant; reverse: the variant back
    tgt[4] = 2 * latents[4] - latents_r[4]  # removal: away from the scene without the object, as far again
    want = augment_one_by_one(src, np.random.default_rng(9), tgt, cells[idx])
    assert all(torch.equal(g_, w_) for g_, w_ in zip((x0, x_tgt, cover), want, strict=True))
    plain = train_toy.batch_latents(latents, (None, None), idx, {}, np.random.default_rng(9), None)
    assert torch.equal(plain[0], augment_one_by_one(latents[idx], np.random.default_rng(9)))
    assert plain[1] is plain[0] and plain[2] is None  # no edit rows: the target is the input
