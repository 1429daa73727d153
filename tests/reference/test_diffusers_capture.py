"""Sanity tests of the diffusers reference harness (tests/reference/diffusers_capture.py).

They check that the harness runs, that what it captured has the documented shapes, and that the
captured values are consistent with each other exactly as diffusers combines them; a few tests
pin diffusers 0.42.1 behaviour documented in NOTES.md (bugs included), so a diffusers change that
invalidates the notes shows up here.
"""

import pytest

pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
pytest.importorskip("transformers")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers_capture import (  # noqa: E402
    _sd_mod,
    abar_from_sigma,
    build_tiny_sd_pipeline,
    build_tiny_sdxl_pipeline,
    build_tokenizer,
    capture_ledits_run,
    comfyui_tokenizer_dir,
    diffusers_ddim_step,
    diffusers_dpm_sde_step,
    diffusers_gaussian_kernel,
    diffusers_gaussian_smoothing,
    diffusers_schedule,
    k_to_vp,
    sigma_from_abar,
    vp_to_k,
)

PROMPTS = ["a red hat", "glasses"]
SCALES = [5.0, 7.0]
THRESH = [0.9, 0.7]
REVERSE = [False, True]


def _latent(b=1, seed=1):
    return torch.randn(b, 4, 32, 32, generator=torch.Generator().manual_seed(seed))


def _binary(x):
    return bool(((x == 0) | (x == 1)).all())


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The tiny models gain nothing from intra-op threads, and on a shared 2-core machine torch's
    # thread pool collapses (10-20x slower) when another process is busy: run these single-threaded.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def dpm_pipe():
    return build_tiny_sd_pipeline(seed=0, scheduler="dpmsolver")


@pytest.fixture(scope="module")
def ddim_pipe():
    return build_tiny_sd_pipeline(seed=0, scheduler="ddim")


@pytest.fixture(scope="module")
def dpm_cap(dpm_pipe):
    # 5 steps, skip 0.15 -> int(5.75)=5: timesteps 831..167, the first one > 800 (M1 alone).
    return capture_ledits_run(
        dpm_pipe,
        _latent(),
        PROMPTS,
        edit_guidance_scale=SCALES,
        edit_threshold=THRESH,
        reverse_editing_direction=REVERSE,
        num_inversion_steps=5,
        skip=0.15,
        seed=0,
        use_intersect_mask=True,
    )


@pytest.fixture(scope="module")
def ddim_cap(ddim_pipe):
    return capture_ledits_run(
        ddim_pipe, _latent(), ["a red hat"], edit_threshold=0.8, num_inversion_steps=4, skip=0.5, seed=3
    )


# ---------------------------------------------------------------------------------------------
# construction
# ---------------------------------------------------------------------------------------------


def test_real_tokenizer_loads_with_77_tokens():
    if comfyui_tokenizer_dir() is None:
        pytest.skip("no host checkout with comfy/sd1_tokenizer (COMFYUI_PATH, ~/ComfyUI or ../shared/ComfyUI)")
    tok = build_tokenizer(prefer_real=True)
    assert tok.model_max_length == 77
    ids = tok(["a red hat"]).input_ids[0]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 5
    assert tok.pad_token_id == tok.eos_token_id


def test_fallback_tokenizer_is_clip_like():
    tok = build_tokenizer(prefer_real=False)
    enc = tok(["a red hat", ""], padding="max_length", max_length=77, return_tensors="pt")
    assert enc.input_ids.shape == (2, 77)
    assert enc.attention_mask.sum(-1).tolist() == [5, 2]
    assert enc.input_ids[0, 0] == tok.bos_token_id and enc.input_ids[0, 4] == tok.eos_token_id


def test_tiny_pipeline_layout(dpm_pipe):
    unet = dpm_pipe.unet
    assert unet.config.down_block_types == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert unet.config.up_block_types == ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    assert unet.config.layers_per_block == 2
    assert dpm_pipe.vae_scale_factor == 8
    sch = dpm_pipe.scheduler.config
    assert (sch.algorithm_type, sch.solver_order, sch.beta_schedule) == (
        "sde-dpmsolver++",
        2,
        "scaled_linear",
    )
    # deterministic weights
    other = build_tiny_sd_pipeline(seed=0, scheduler="dpmsolver")
    for a, b in zip(unet.parameters(), other.unet.parameters(), strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# shapes and structure
# ---------------------------------------------------------------------------------------------


def test_shapes(dpm_cap):
    cap, N, B = dpm_cap, 2, 1
    inv = cap.inversion
    assert inv.timesteps.tolist() == [831, 665, 499, 333, 167]
    assert inv.zs.shape == (5, B, 4, 32, 32) and inv.xts_noised.shape == (6, B, 4, 32, 32)
    assert cap.att_res == (8, 8) and cap.store_max_size == 64.0
    assert len(cap.steps) == 5
    for s in cap.steps:
        assert s.latent_model_input.shape == (B * (1 + N), 4, 32, 32)
        assert s.encoder_hidden_states.shape == (B * (1 + N), 77, 32)
        assert s.noise_pred_concepts.shape == (N, B, 4, 32, 32)
        assert s.activation_mask.shape == (N, B, 4, 32, 32)
        for c in range(N):
            assert s.attn_aggregated[c].shape == (B, 8, 8, 77)
            assert s.attn_token_sum[c].shape == (B, 8, 8)
            assert s.smoothed[c].shape == (B, 1, 8, 8)
            assert s.m1[c].shape == (B, 8, 8)
            assert s.m1_upsampled[c].shape == (B, 4, 32, 32)
            assert s.mask_used[c].shape == (B, 4, 32, 32)
        for x in (
            s.guided_noise_pred,
            s.variance_noise,
            s.sample_in,
            s.prev_sample,
            s.x0_pred,
            s.sem_guidance,
        ):
            assert x.shape == (B, 4, 32, 32)
        # the batched UNet call: every chunk sees the same latent
        for chunk in s.latent_model_input.chunk(1 + N):
            assert torch.equal(chunk, s.sample_in)


def test_attention_layers_used(dpm_cap):
    """Only cross-attention at latent/4 (8x8 here) is stored: down_blocks.2 and up_blocks.1."""
    s = dpm_cap.steps[0]
    expect_down = [f"down_blocks.2.attentions.{k}.transformer_blocks.0.attn2" for k in range(2)]
    expect_up = [f"up_blocks.1.attentions.{k}.transformer_blocks.0.attn2" for k in range(3)]
    assert s.attn_store_layers["down_cross"] == expect_down
    assert s.attn_store_layers["up_cross"] == expect_up
    assert not any(s.attn_store[k] for k in ("mid_cross", "down_self", "mid_self", "up_self"))
    heads = dpm_cap.heads[expect_down[0]]
    for x in s.attn_store["down_cross"] + s.attn_store["up_cross"]:
        assert x.shape == (1, 2 * heads, 64, 77)  # uncond dropped, N=2 concepts x heads
    # probabilities: rows sum to one
    for p in s.attn_probs.values():
        torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)))
    assert not any(k.startswith("mid_block") for k in s.attn_probs)


def test_masks_binary_and_branches(dpm_cap):
    for s in dpm_cap.steps:
        for c in range(2):
            assert _binary(s.m1[c]) and _binary(s.m1_upsampled[c]) and _binary(s.mask_used[c])
            assert torch.equal(s.activation_mask[c], s.mask_used[c])
            if s.t > 800:  # diffusers SD: M1 alone while t > 800
                assert s.m2[c] is None
                assert torch.equal(s.mask_used[c], s.m1_upsampled[c])
            else:
                assert _binary(s.m2[c])
                assert torch.equal(s.mask_used[c], s.m2[c] * s.m1_upsampled[c])
    assert dpm_cap.steps[0].t > 800 and all(s.t <= 800 for s in dpm_cap.steps[1:])


# ---------------------------------------------------------------------------------------------
# self-consistency: the captured values combine exactly as diffusers combines them
# ---------------------------------------------------------------------------------------------


def test_guidance_self_consistent(dpm_cap):
    for s in dpm_cap.steps:
        g = torch.zeros_like(s.noise_pred_uncond)
        for c in range(2):
            psi = (s.noise_pred_concepts[c] - s.noise_pred_uncond) * (-1 if REVERSE[c] else 1) * SCALES[c]
            g = g + psi * s.mask_used[c]
            if s.m2_score[c] is not None:
                torch.testing.assert_close(s.m2_score[c], psi.abs().sum(1, keepdim=True).repeat(1, 4, 1, 1))
        torch.testing.assert_close(g, s.sem_guidance, rtol=0, atol=1e-6)
        torch.testing.assert_close(s.noise_pred_uncond + s.sem_guidance, s.guided_noise_pred, rtol=0, atol=0)
        assert torch.equal(s.variance_noise, dpm_cap.inversion.zs[s.zs_index])


def test_m1_chain_self_consistent(dpm_cap):
    n_tok = dpm_cap.num_edit_tokens_used
    for s in dpm_cap.steps:
        for c in range(2):
            # aggregate_attention = mean over heads and stored layers of this concept's probabilities
            maps = torch.cat([s.attn_probs[name][1 + c, 0] for name in s.attn_stored_layers])
            torch.testing.assert_close(s.attn_aggregated[c][0], maps.mean(0).reshape(8, 8, 77))
            assert s.attn_select[c] == c
            tok = s.attn_aggregated[c][..., 1 : 1 + int(n_tok[c])].sum(-1)
            torch.testing.assert_close(s.attn_token_sum[c], tok, rtol=0, atol=0)
            torch.testing.assert_close(
                s.attn_padded[c], F.pad(tok.unsqueeze(1), (1, 1, 1, 1), mode="reflect")
            )
            torch.testing.assert_close(
                s.smoothed[c].squeeze(1), diffusers_gaussian_smoothing(tok), rtol=0, atol=0
            )
            q = torch.quantile(s.smoothed[c].squeeze(1).flatten(1), THRESH[c], dim=1)
            torch.testing.assert_close(s.m1_threshold[c], q)
            assert torch.equal(s.m1[c], (s.smoothed[c].squeeze(1) >= q[:, None, None]).float())
            up = F.interpolate(s.m1[c].unsqueeze(1), size=(32, 32), mode="nearest").repeat(1, 4, 1, 1)
            assert torch.equal(s.m1_upsampled[c], up)
            if s.m2[c] is not None:
                q2 = torch.quantile(s.m2_score[c].flatten(2), THRESH[c], dim=2)
                torch.testing.assert_close(s.m2_threshold[c], q2)
                assert torch.equal(s.m2[c], (s.m2_score[c] >= q2[:, :, None, None]).float())


def test_num_edit_tokens(dpm_cap, dpm_pipe):
    assert dpm_cap.num_edit_tokens_real.tolist() == [3, 1]  # real and fallback tokenizer alike
    assert torch.equal(dpm_cap.num_edit_tokens_used, dpm_cap.num_edit_tokens)
    # diffusers' count is `length - 2` of a max_length-padded call: with transformers 5's
    # tokenizers backend `length` is the padded length (77), i.e. 75 tokens summed for every prompt.
    length = dpm_pipe.tokenizer(PROMPTS, padding="max_length", max_length=77, return_length=True)["length"]
    assert dpm_cap.num_edit_tokens.tolist() == [int(n) - 2 for n in length]


def test_edit_tokens_real_and_averaged_store(dpm_pipe):
    cap = capture_ledits_run(
        dpm_pipe,
        _latent(),
        PROMPTS,
        num_inversion_steps=2,
        skip=0.0,
        edit_tokens="real",
        attn_store_steps=[0, 1],
    )
    assert torch.equal(cap.num_edit_tokens_used, cap.num_edit_tokens_real)
    for s in cap.steps:
        for c in range(2):
            n = int(cap.num_edit_tokens_real[c])
            torch.testing.assert_close(s.attn_token_sum[c], s.attn_aggregated[c][..., 1 : 1 + n].sum(-1))
    # the "averaged" store only sums the step stores of attn_store_steps (get_attention divides by
    # cur_step); M1 never reads it
    assert cap.averaged_store_steps == 2
    for key in ("down_cross", "up_cross"):
        for k, x in enumerate(cap.averaged_store[key]):
            torch.testing.assert_close(x, cap.steps[0].attn_store[key][k] + cap.steps[1].attn_store[key][k])


def test_scheduler_steps_reproduced_by_helper(dpm_cap):
    sch = diffusers_schedule("dpmsolver", 5, 0.15)
    assert torch.equal(sch["timesteps"], dpm_cap.inversion.timesteps)
    prev_x0, orders = None, []
    for s in dpm_cap.steps:
        r = diffusers_dpm_sde_step(
            s.guided_noise_pred,
            s.sample_in,
            s.t,
            s.variance_noise,
            num_inference_steps=sch["num_inference_steps"],
            prev_x0=prev_x0,
        )
        assert torch.equal(r["prev_sample"], s.prev_sample)
        assert torch.equal(r["x0_pred"], s.x0_pred)
        assert r["order"] == s.sched["order_used"]
        orders.append(r["order"])
        if s.sched["x0_history_in"] is not None:
            assert torch.equal(s.sched["x0_history_in"], prev_x0)
        prev_x0 = r["x0_pred"]
    # first step first order, last step (to sigma 0) first order (final_sigmas_type="zero")
    assert orders == [1, 2, 2, 2, 1]
    last = dpm_cap.steps[-1]
    assert last.sched["sigma_next"] == 0.0
    torch.testing.assert_close(last.prev_sample, last.x0_pred)  # step to sigma 0 returns the x0 prediction
    # the k-diffusion sigmas of the schedule
    ks = torch.tensor([s.sched["sigma"] for s in dpm_cap.steps] + [0.0], dtype=torch.float64)
    torch.testing.assert_close(ks, sch["k_sigmas"].double(), rtol=1e-5, atol=1e-6)


def test_dpm_step_in_k_space(dpm_cap):
    """diffusers' sde-dpmsolver++ 2M step, written in k-diffusion space, is dpmpp_2m_sde (eta=1,
    midpoint) with the very same z."""
    prev_d, prev_h = None, None
    for s in dpm_cap.steps:
        st = s.sched
        sig, sig_next = st["sigma"], st["sigma_next"]
        x_k = vp_to_k(s.sample_in.double(), abar_from_sigma(sig))
        d = s.x0_pred.double()
        if sig_next == 0:
            expect = d
        else:
            r2 = (sig_next / sig) ** 2
            h = torch.log(torch.tensor(sig / sig_next, dtype=torch.float64))
            expect = r2 * x_k + (1 - r2) * d + sig_next * (1 - r2) ** 0.5 * s.variance_noise.double()
            if st["order_used"] == 2:
                expect = expect + 0.5 * (1 - r2) * (d - prev_d) * (h / prev_h)
            prev_h = h
        prev_d = d
        got = vp_to_k(s.prev_sample.double(), abar_from_sigma(sig_next))
        torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-4)


def test_inversion_capture(dpm_cap):
    inv = dpm_cap.inversion
    n = 5
    assert torch.equal(inv.init_latents, inv.xts_noised[-1])
    assert torch.equal(inv.xts_noised[0], inv.x0)
    assert torch.equal(inv.zs[-1], torch.zeros_like(inv.zs[-1]))
    assert [s.t for s in inv.steps] == inv.timesteps.tolist()
    for s in inv.steps:
        k = n - 1 - s.idx  # zs was flipped: zs[k] belongs to timesteps[k]
        assert int(inv.timesteps[k]) == s.t
        assert torch.equal(inv.zs[k], s.z.expand_as(inv.zs[k]))
        assert torch.equal(s.xt, inv.xts_corrected[s.idx + 1])
        assert torch.equal(s.noise_pred, s.unet_calls[0]["noise_pred"])  # source prompt "": no CFG term
    # draw order: randn for reversed(timesteps), i.e. the lowest t first
    abar = inv.alphas_cumprod[int(inv.timesteps[-1])]
    torch.testing.assert_close(
        inv.xts_noised[1], abar.sqrt() * inv.x0 + (1 - abar).sqrt() * inv.noise_draws[0]
    )
    # DPM: the last inversion step uses the 2nd-order formula towards sigma 0 -> inf, discarded (z = 0)
    assert inv.steps[-1].sched["order_used"] == 2 and torch.isinf(inv.xts_corrected[0]).any()
    # sampling with the same eps would reproduce each corrected x_{t-1}: the first edit step's
    # unconditional chunk sees exactly the inversion's x_T
    assert torch.equal(dpm_cap.steps[0].sample_in, inv.init_latents)


def test_capture_restores_diffusers_module(dpm_cap):
    assert _sd_mod.torch is torch and _sd_mod.F is F
    assert _sd_mod.LeditsAttentionStore.__name__ == "LeditsAttentionStore"
    assert _sd_mod.LeditsGaussianSmoothing.__name__ == "LeditsGaussianSmoothing"
    assert _sd_mod.compute_noise.__module__ == _sd_mod.__name__


def test_capture_does_not_perturb_the_run(dpm_pipe):
    img = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    kw = dict(editing_prompt=["glasses"], edit_threshold=0.8, output_type="latent")
    dpm_pipe.invert(image=img, num_inversion_steps=3, skip=0.0, generator=torch.Generator().manual_seed(5))
    plain = dpm_pipe(**kw).images
    cap = capture_ledits_run(
        dpm_pipe, img, ["glasses"], edit_threshold=0.8, num_inversion_steps=3, skip=0.0, seed=5
    )
    assert not cap.config["latent_input"]
    assert torch.equal(cap.final_latents, plain)
    assert torch.equal(cap.steps[-1].prev_sample, plain)


# ---------------------------------------------------------------------------------------------
# DDIM, other mask modes
# ---------------------------------------------------------------------------------------------


def test_ddim_capture_and_helper(ddim_cap):
    sch = diffusers_schedule("ddim", 4, 0.5)
    assert ddim_cap.inversion.timesteps.tolist() == sch["timesteps"].tolist() == [499, 333, 167, 1]
    for s in ddim_cap.steps:
        assert s.sched["eta"] == 1.0
        r = diffusers_ddim_step(
            s.guided_noise_pred,
            s.sample_in,
            s.t,
            s.variance_noise,
            num_inference_steps=sch["num_inference_steps"],
        )
        assert torch.equal(r["prev_sample"], s.prev_sample)
        assert torch.equal(r["x0_pred"], s.x0_pred)
        assert r["abar_next"] == s.sched["abar_next"]
    # last step: prev_timestep < 0 -> final_alpha_cumprod = alphas_cumprod[0] (SD1.5 set_alpha_to_one=False)
    last = ddim_cap.steps[-1]
    assert last.sched["prev_timestep"] < 0
    assert last.sched["abar_next"] == pytest.approx(float(ddim_cap.inversion.alphas_cumprod[0]))
    assert last.sched["variance"] > 0


def test_no_edit_reconstruction(ddim_pipe, dpm_pipe):
    lat = _latent(seed=7)
    ddim = capture_ledits_run(ddim_pipe, lat, None, num_inversion_steps=3, skip=0.0)
    # DDIM with set_alpha_to_one=False: the last step still has noise, z absorbs the error: exact
    torch.testing.assert_close(ddim.final_latents, lat, rtol=0, atol=1e-5)
    dpm = capture_ledits_run(dpm_pipe, lat, None, num_inversion_steps=3, skip=0.0)
    # DPM: the last step goes to sigma 0 (z = 0): the result is the last x0 prediction, not x0
    assert torch.equal(dpm.final_latents, dpm.steps[-1].x0_pred)
    assert (dpm.final_latents - lat).abs().max() > 1e-3
    assert dpm.activation_mask is None and dpm.steps[0].noise_pred_uncond.shape == (1, 4, 32, 32)


def test_noise_mask_only_and_warmup(dpm_pipe):
    cap = capture_ledits_run(
        dpm_pipe,
        _latent(),
        PROMPTS,
        edit_guidance_scale=SCALES,
        edit_threshold=THRESH,
        reverse_editing_direction=REVERSE,
        num_inversion_steps=3,
        skip=0.0,
        use_intersect_mask=False,
        use_cross_attn_mask=False,
        edit_warmup_steps=[0, 1],
    )
    assert cap.att_res is None and not cap.steps[0].attn_probs
    assert cap.active.tolist() == [[True, False], [True, True], [True, True]]
    for s in cap.steps:
        g = torch.zeros_like(s.noise_pred_uncond)
        for c in range(2):
            assert s.m1[c] is None
            if not cap.active[s.i, c]:
                assert s.m2[c] is None and not s.activation_mask[c].any()
                continue
            assert _binary(s.m2[c]) and torch.equal(s.activation_mask[c], s.m2[c])
            psi = (s.noise_pred_concepts[c] - s.noise_pred_uncond) * (-1 if REVERSE[c] else 1) * SCALES[c]
            g = g + torch.where(s.m2[c] > 0, psi, torch.zeros_like(psi))
        torch.testing.assert_close(g, s.sem_guidance, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# diffusers 0.42.1 behaviour pinned by NOTES.md
# ---------------------------------------------------------------------------------------------


def test_invert_source_prompt_is_swapped(dpm_pipe):
    """invert() unpacks encode_prompt's (edit, negative) as (uncond, text): CFG runs away from
    the source prompt: eps = eps(src) + s * (eps("") - eps(src))."""
    cap = capture_ledits_run(
        dpm_pipe,
        _latent(),
        ["glasses"],
        num_inversion_steps=2,
        skip=0.0,
        source_prompt="a cat",
        source_guidance_scale=3.5,
    )
    ids = dpm_pipe.tokenizer(
        ["a cat", ""], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        emb = dpm_pipe.text_encoder(ids)[0]
    st = cap.inversion.steps[0]
    first, second = st.unet_calls
    torch.testing.assert_close(first["encoder_hidden_states"], emb[:1])  # "uncond" call got the source prompt
    torch.testing.assert_close(second["encoder_hidden_states"], emb[1:])
    expect = first["noise_pred"] + 3.5 * (second["noise_pred"] - first["noise_pred"])
    torch.testing.assert_close(st.noise_pred, expect)


def test_invert_crashes_without_source_guidance(dpm_pipe):
    with pytest.raises(AttributeError):
        dpm_pipe.invert(
            image=torch.rand(1, 3, 256, 256), num_inversion_steps=2, skip=0.0, source_guidance_scale=1.0
        )


def test_guidance_rescale_crashes(dpm_pipe):
    dpm_pipe.invert(image=torch.rand(1, 3, 256, 256), num_inversion_steps=2, skip=0.0)
    with pytest.raises(AttributeError, match="tuple"):
        dpm_pipe(editing_prompt=["glasses"], guidance_rescale=0.5, output_type="latent")


def test_plain_ddim_invert_crashes(ddim_pipe):
    """DDIMScheduler.add_noise cannot index with invert()'s float torch.Tensor([t]); the harness
    casts it to long (integral values, no numeric change)."""
    with pytest.raises(IndexError):
        ddim_pipe.invert(image=torch.rand(1, 3, 256, 256), num_inversion_steps=2, skip=0.0)


def test_attention_store_mixes_images_for_batch_of_two(dpm_pipe):
    """With B=2 the store's slot b is not image b: slot b averages the rows r = b (mod 2) of the
    (chunk, image, head)-flattened batch, i.e. (for 2 heads) head b of *both* images."""
    cap = capture_ledits_run(dpm_pipe, _latent(b=2, seed=4), ["glasses"], num_inversion_steps=2, skip=0.0)
    s = cap.steps[0]
    heads = next(iter(cap.heads.values()))
    assert heads == 2
    for b in range(2):
        rows = []
        for name in s.attn_stored_layers:
            flat = s.attn_probs[name].reshape(-1, 64, 77)  # ((1+N)*B*heads, Nq, K), N=1
            slot = flat[b::2]
            rows.append(slot[heads:])  # the store drops `heads` rows per slot as "unconditional"
        mixed = torch.cat(rows).mean(0).reshape(8, 8, 77)
        torch.testing.assert_close(s.attn_aggregated[0][b], mixed)
        own = torch.cat([s.attn_probs[name][1, b] for name in s.attn_stored_layers]).mean(0).reshape(8, 8, 77)
        assert (own - s.attn_aggregated[0][b]).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def test_gaussian_kernel():
    k = diffusers_gaussian_kernel()
    assert k.shape == (1, 1, 3, 3)
    torch.testing.assert_close(k.sum(), torch.tensor(1.0))
    g = torch.exp(-(((torch.arange(3.0) - 1) / (2 * 0.5)) ** 2))
    torch.testing.assert_close(k[0, 0], torch.outer(g, g) / torch.outer(g, g).sum())
    x = torch.rand(2, 5, 6)
    assert diffusers_gaussian_smoothing(x).shape == (2, 5, 6)
    assert diffusers_gaussian_smoothing(x.unsqueeze(1), pad=False).shape == (2, 1, 3, 4)


def test_space_conversions():
    abar = torch.tensor([0.1, 0.5, 0.99], dtype=torch.float64)
    sigma = sigma_from_abar(abar)
    torch.testing.assert_close(abar_from_sigma(sigma), abar)
    x0, eps = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    x_t = abar.sqrt()[:, None] * x0 + (1 - abar).sqrt()[:, None] * eps
    torch.testing.assert_close(vp_to_k(x_t, abar[:, None]), x0 + sigma[:, None] * eps)
    torch.testing.assert_close(k_to_vp(vp_to_k(x_t, abar[:, None]), abar[:, None]), x_t)


# ---------------------------------------------------------------------------------------------
# SDXL pipeline
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xl_cap():
    pipe = build_tiny_sdxl_pipeline(seed=0, scheduler="dpmsolver")
    lat = torch.randn(1, 4, 32, 48, generator=torch.Generator().manual_seed(1))  # image 256 x 384
    return capture_ledits_run(
        pipe,
        lat,
        PROMPTS,
        edit_guidance_scale=SCALES,
        edit_threshold=THRESH,
        reverse_editing_direction=REVERSE,
        num_inversion_steps=5,
        skip=0.15,
        use_intersect_mask=True,
    )


def test_sdxl_capture(xl_cap):
    cap = xl_cap
    assert cap.pipeline == "sdxl" and cap.att_res == (8, 12)
    # force_zeros_for_empty_prompt: the unconditional embeddings are zeros
    assert not cap.uncond_embeddings.any() and not cap.uncond_pooled.any()
    # width/height swapped in invert(): an H=256, W=384 image is conditioned as (384, 256)
    for s in cap.steps:
        assert s.added_cond_kwargs["time_ids"].tolist() == [[384.0, 256.0, 0.0, 0.0, 384.0, 256.0]] * 3
    # num_zero_noise_steps=3: the last three zs are zeroed
    assert cap.inversion.zs.flatten(1).abs().amax(1).gt(0).tolist() == [True, True, False, False, False]
    stored = cap.steps[0].attn_stored_layers
    assert all(n.startswith(("down_blocks.2.", "up_blocks.0.")) for n in stored) and len(stored) == 10
    sch = diffusers_schedule("dpmsolver", 5, 0.15)
    prev_x0 = None
    for s in cap.steps:
        for c in range(2):
            # XL intersects at every step (no t > 800 branch)
            assert s.m2[c] is not None and _binary(s.m2[c])
            assert torch.equal(s.mask_used[c], s.m2[c] * s.m1_upsampled[c])
            assert torch.equal(s.activation_mask[c], s.mask_used[c])
            maps = torch.cat([s.attn_probs[name][1 + c, 0] for name in stored])
            torch.testing.assert_close(s.attn_aggregated[c][0], maps.mean(0).reshape(8, 12, 77))
            assert s.m1_upsampled[c].shape == (1, 4, 32, 48)
        g = sum(
            (s.noise_pred_concepts[c] - s.noise_pred_uncond)
            * (-1 if REVERSE[c] else 1)
            * SCALES[c]
            * s.mask_used[c]
            for c in range(2)
        )
        torch.testing.assert_close(g, s.sem_guidance, rtol=0, atol=1e-6)
        torch.testing.assert_close(s.noise_pred_uncond + s.sem_guidance, s.guided_noise_pred, rtol=0, atol=0)
        r = diffusers_dpm_sde_step(
            s.guided_noise_pred,
            s.sample_in,
            s.t,
            s.variance_noise,
            num_inference_steps=sch["num_inference_steps"],
            prev_x0=prev_x0,
        )
        assert torch.equal(r["prev_sample"], s.prev_sample)
        prev_x0 = r["x0_pred"]
