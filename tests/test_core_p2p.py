"""Prompt-to-Prompt core (ledits_core/p2p.py): alignment, attention edits, local blend, source states."""

import pytest
import torch

from ledits_core import p2p
from ledits_core.inversion import InversionRecord, invert, sample, step_noises
from ledits_core.schedules import karras_sigmas

BOS, EOS = 49406, 49407


def tokens(*words, length=12):
    """A CLIP-like context: BOS, word tokens, EOS, EOS padding to `length`."""
    seq = [BOS, *words, EOS]
    return seq + [EOS] * (length - len(seq))


def test_alignment_of_identical_prompts_is_the_identity():
    seq = tokens(1, 2, 3)
    assert p2p.align_tokens(seq, seq) == list(range(len(seq)))


def test_refinement_alignment_maps_shared_tokens_and_leaves_new_ones():
    source = tokens(10, 20)            # "a castle"
    target = tokens(30, 40, 10, 20)    # "children drawing of a castle"
    mapping = p2p.align_tokens(source, target)
    assert mapping[0] == 0                       # BOS
    assert mapping[1] == -1 and mapping[2] == -1  # the new words keep their own maps
    assert mapping[3] == 1 and mapping[4] == 2    # "a", "castle" take the source's
    assert mapping[5] == 3                        # EOS
    for j, i in enumerate(mapping):
        if i >= 0:
            assert source[i] == target[j]
    used = [i for i in mapping if i >= 0]
    assert used == sorted(used) and len(set(used)) == len(used)  # monotone, one-to-one


def test_swapped_word_is_not_taken_as_shared():
    source = tokens(10, 20, 50)
    target = tokens(10, 21, 22, 50)  # one word replaced by a two-token word
    mapping = p2p.align_tokens(source, target)
    assert mapping[1] == 1 and mapping[2] == -1 and mapping[3] == -1 and mapping[4] == 3


def test_occurrences():
    assert p2p.occurrences([1, 2, 3, 2, 3], [2, 3]) == [1, 2, 3, 4]
    assert p2p.occurrences([1, 2, 3], [4]) == []
    assert p2p.occurrences([1, 2, 3], []) == []


def test_parse_reweight():
    assert p2p.parse_reweight("fluffy:2, red:-1") == [("fluffy", 2.0), ("red", -1.0)]
    assert p2p.parse_reweight("  ") == []
    assert p2p.parse_reweight("very red:0.5") == [("very red", 0.5)]
    with pytest.raises(ValueError, match="outside"):
        p2p.parse_reweight("fluffy:2.5")
    with pytest.raises(ValueError, match="outside"):
        p2p.parse_reweight("fluffy:-3")
    with pytest.raises(ValueError, match="word:factor"):
        p2p.parse_reweight("fluffy")
    with pytest.raises(ValueError, match="word:factor"):
        p2p.parse_reweight("fluffy:lots")


def test_parse_words():
    assert p2p.parse_words("cat dog") == ["cat", "dog"]
    assert p2p.parse_words("cat, dog") == ["cat", "dog"]
    assert p2p.parse_words("") == []


def probs(*shape, seed=0):
    return torch.softmax(torch.randn(shape, generator=torch.Generator().manual_seed(seed)), -1)


def test_swap_injects_the_source_maps_then_the_target_keeps_its_own():
    src, tgt = probs(2, 3, 16, 12, seed=1), probs(2, 3, 16, 12, seed=2)
    edit = p2p.CrossAttentionEdit(torch.arange(12), swap=True)
    assert torch.equal(p2p.edited_cross_attention(src, tgt, edit, inject=True), src)
    assert p2p.edited_cross_attention(src, tgt, edit, inject=False) is tgt


def test_refinement_takes_aligned_columns_from_the_source():
    src, tgt = probs(1, 2, 9, 12, seed=1), probs(1, 2, 9, 14, seed=2)
    mapping = torch.tensor(p2p.align_tokens(tokens(10, 20), tokens(30, 40, 10, 20, length=14)))
    out = p2p.edited_cross_attention(src, tgt, p2p.CrossAttentionEdit(mapping, swap=False), inject=True)
    for j, i in enumerate(mapping.tolist()):
        assert torch.equal(out[..., j], src[..., i] if i >= 0 else tgt[..., j])


def test_reweighting_factor_one_is_bitwise_and_zero_zeroes_the_column():
    tgt = probs(2, 3, 16, 12, seed=2)
    ones = p2p.CrossAttentionEdit(torch.arange(12), swap=True, factors=torch.ones(12))
    assert torch.equal(p2p.edited_cross_attention(None, tgt, ones, inject=False), tgt)
    factors = torch.ones(12)
    factors[3] = 0.0
    factors[5] = -1.5
    out = p2p.edited_cross_attention(None, tgt, p2p.CrossAttentionEdit(torch.arange(12), True, factors), False)
    assert torch.count_nonzero(out[..., 3]) == 0
    assert torch.equal(out[..., 5], -1.5 * tgt[..., 5])
    keep = [j for j in range(12) if j not in (3, 5)]
    assert torch.equal(out[..., keep], tgt[..., keep])


def test_head_probs_and_output_match_the_reference_attention():
    q, k, v = (torch.randn(2, n, 4 * 8, generator=torch.Generator().manual_seed(s)) for s, n in ((0, 10), (1, 7), (2, 7)))
    pr = p2p.head_probs(q, k, 4)
    assert pr.shape == (2, 4, 10, 7)
    ref = torch.nn.functional.scaled_dot_product_attention(
        *(t.view(2, -1, 4, 8).transpose(1, 2) for t in (q, k, v))).transpose(1, 2).reshape(2, 10, 32)
    assert torch.allclose(p2p.attention_output(pr, v), ref, atol=1e-5)


def test_fold_repeats():
    pr = probs(1, 1, 4, 6)
    folded = p2p.fold_repeats(torch.cat([pr, pr], -1) / 2, 6)
    assert torch.allclose(folded, pr)
    with pytest.raises(ValueError):
        p2p.fold_repeats(probs(1, 1, 4, 7), 6)


def test_local_blend_mask_thresholds_the_normalised_pooled_map():
    m = torch.zeros(1, 8, 8)
    m[0, 2, 2] = 1.0
    m[0, 6, 6] = 0.2  # below k = 0.3 of the peak
    mask = p2p.local_blend_mask([m], (16, 16))
    assert mask.shape == (1, 1, 16, 16)
    assert mask[0, 0, 2:8, 2:8].all()  # the 3x3 max-pool around (2, 2), upsampled x2
    assert mask.sum() == 36
    other = torch.zeros(1, 8, 8)
    other[0, 6, 6] = 1.0
    union = p2p.local_blend_mask([m, other], (16, 16))
    assert union.sum() == 72


def test_blend_is_exact_outside_and_inside():
    x, src = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    mask = (torch.rand(2, 1, 6, 6) > 0.5).float()
    out = p2p.blend(x, src, mask)
    inside = mask.expand_as(x) > 0
    assert torch.equal(out[inside], x[inside]) and torch.equal(out[~inside], src[~inside])


def test_local_blend_accumulates_over_layers_and_steps():
    blend = p2p.LocalBlend([1], [2], threshold=0.3)
    assert blend.mask((8, 8)) is None
    for step in range(2):
        for layer in range(3):
            blend.add("source", probs(1, 16, 5, seed=10 * step + layer), (4, 4))
            blend.add("target", probs(1, 16, 5, seed=100 + 10 * step + layer), (4, 4))
            blend.add("target", probs(1, 4, 5), (2, 2))  # another resolution: ignored
        assert blend.end_step()
    assert blend.steps_seen == 2 and set(blend.sums) == {"source", "target"}
    mask = blend.mask((8, 8))
    assert mask.shape == (1, 1, 8, 8) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert not p2p.LocalBlend([1], []).end_step()
    with pytest.raises(ValueError):
        p2p.LocalBlend([], [])


def test_source_trajectory_is_the_inversions_path(denoiser, latent):
    """The inversion records the states it walked through (= x0 + sigma_i n_i): the source row needs no stepping."""
    sigmas = karras_sigmas(6)
    seen = []
    record = invert(latent, sigmas, lambda x, s, i: (seen.append(x.clone()), denoiser(x, s))[1], seed=5)
    traj = p2p.SourceTrajectory(record.states, latent)
    noises = step_noises(latent.shape, 6, 5)
    for i, x in enumerate(seen):
        assert torch.equal(traj.state(i), x)
        assert torch.allclose(traj.state(i), latent + float(sigmas[i]) * noises[i], atol=1e-5)
    assert traj.state(6) is latent
    replayed = []
    sample(record, lambda x, s, i: (replayed.append(x.clone()), denoiser(x, s))[1])
    assert all(torch.equal(a, b) for a, b in zip(replayed, seen, strict=True))
    with pytest.raises(ValueError, match="re-run"):
        p2p.SourceTrajectory(None, latent)


def test_steps_before():
    assert p2p.steps_before(0.8, 50) == 40 and p2p.steps_before(0.0, 50) == 0 and p2p.steps_before(1.0, 7) == 7
    with pytest.raises(ValueError):
        p2p.steps_before(1.5, 10)


def test_record_states_survive_to_state_and_to(denoiser, latent):
    record = invert(latent, karras_sigmas(3), lambda x, s, i: denoiser(x, s), seed=1)
    back = InversionRecord.from_state(*record.to_state())
    assert torch.equal(back.states, record.states) and torch.equal(record.to(dtype=torch.float64).states,
                                                                    record.states.double())
