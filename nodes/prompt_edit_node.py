"""LEDITS Prompt Edit: Prompt-to-Prompt on the inverted photo (rewrite its caption; the layout stays)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..ledits_core import p2p
from .host_model import FLOW_FAMILIES
from .objects import LeditsInversion, LeditsPromptEdit
from .types import CATEGORY, LeditsPromptEditType


def prompt_tokens(clip, text: str) -> list:
    """The prompt's tokens over its whole cross-attention context (chunks concatenated, start/end/padding
    included), as comparable keys. SDXL: the CLIP-L tokens (CLIP-G has the same words at the same places)."""
    tokens = clip.tokenize(text, return_word_ids=True)
    chunks = tokens["l"] if "l" in tokens else next(iter(tokens.values()))
    return [_key(item[0]) for chunk in chunks for item in chunk]


def word_tokens(clip, word: str) -> list:
    """The tokens of one word (or phrase) alone, without start/end/padding."""
    tokens = clip.tokenize(word, return_word_ids=True)
    chunks = tokens["l"] if "l" in tokens else next(iter(tokens.values()))
    return [_key(item[0]) for chunk in chunks for item in chunk if item[2] != 0]


def _key(token):
    """Token ids are ints; embeddings (textual inversion) are tensors: compare those by value."""
    if isinstance(token, torch.Tensor):
        return ("embedding", tuple(token.flatten()[:8].tolist()), tuple(token.shape))
    return token


def encode(clip, text: str, what: str) -> tuple[list, list]:
    """(CONDITIONING, tokens) of a prompt; checks that the encoder kept one column per token."""
    tokens = prompt_tokens(clip, text)
    conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(text))
    if int(conditioning[0][0].shape[1]) != len(tokens):
        raise RuntimeError(f"LEDITS Prompt Edit: the text encoder gave {conditioning[0][0].shape[1]} tokens for the "
                           f"{what}, the tokenizer {len(tokens)}; this CLIP is not supported")
    return conditioning, tokens


def word_positions(clip, words: list[str], tokens: list) -> dict[str, list[int]]:
    """{word: its token positions in the prompt} (empty list where the word does not occur)."""
    return {w: p2p.occurrences(tokens, word_tokens(clip, w)) for w in words}


def make_prompt_edit(clip, source: str, target: str, scale: float = 7.5, cross_replace: float = 0.8,
                     self_replace: float = 0.4, reweight: str = "", blend_words: str = "",
                     blend_threshold: float = p2p.BLEND_THRESHOLD) -> LeditsPromptEdit:
    """Check the settings, encode both prompts, align their tokens and find the controlled words."""
    if not source or not source.strip():
        raise ValueError("LEDITS Prompt Edit: the source prompt is empty; type the photo's caption, the same text "
                         "as the source prompt given to LEDITS Inversion")
    if not target or not target.strip():
        raise ValueError("LEDITS Prompt Edit: the target prompt is empty; type the caption as it should become, "
                         "e.g. 'a dog sitting on a sofa'")
    for name, value in (("cross_replace", cross_replace), ("self_replace", self_replace),
                        ("blend_threshold", blend_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"LEDITS Prompt Edit: {name} must be in [0, 1], got {value}")
    factors = p2p.parse_reweight(reweight)
    words = p2p.parse_words(blend_words)
    source_cond, source_tokens = encode(clip, source, "source")
    target_cond, target_tokens = encode(clip, target, "target")
    swap = len(source_tokens) == len(target_tokens) and _count_words(clip, source) == _count_words(clip, target)
    mapping = torch.tensor(list(range(len(target_tokens))) if swap else p2p.align_tokens(source_tokens, target_tokens))
    weights = None
    if factors:
        weights = torch.ones(len(target_tokens))
        found = word_positions(clip, [w for w, _ in factors], target_tokens)
        for word, factor in factors:
            if not found[word]:
                raise ValueError(f"LEDITS Prompt Edit: the re-weighted word {word!r} is not in the target prompt "
                                 f"{target.strip()!r}")
            weights[found[word]] = factor
    blend_src, blend_tgt = [], []
    if words:
        in_source, in_target = word_positions(clip, words, source_tokens), word_positions(clip, words, target_tokens)
        for w in words:
            if not in_source[w] and not in_target[w]:
                raise ValueError(f"LEDITS Prompt Edit: the local-blend word {w!r} is in neither the source nor the "
                                 "target prompt")
            blend_src += in_source[w]
            blend_tgt += in_target[w]
    return LeditsPromptEdit(source.strip(), target.strip(), source_cond, target_cond,
                            p2p.CrossAttentionEdit(mapping, swap, weights), len(source_tokens), float(scale),
                            float(cross_replace), float(self_replace), tuple(factors), tuple(words),
                            tuple(sorted(set(blend_src))), tuple(sorted(set(blend_tgt))), float(blend_threshold))


def _count_words(clip, text: str) -> int:
    """Number of real tokens (not start/end/padding) of a prompt."""
    return len(word_tokens(clip, text))


def check_prompt_edit(inversion: LeditsInversion, edit: LeditsPromptEdit) -> None:
    """Raise before any work if the prompt edit cannot run on this inversion."""
    if not isinstance(edit, LeditsPromptEdit):
        raise ValueError("expected a LEDITS_PROMPT_EDIT from the LEDITS Prompt Edit node")
    if inversion.kind.family in FLOW_FAMILIES:
        raise ValueError(f"LEDITS Prompt Edit does not support {inversion.kind.family} models yet (its attention "
                         "control is written for UNet cross-attention): use LEDITS Concept Edit on this model")
    if inversion.source is None:
        raise ValueError("a prompt edit needs the photo's caption: connect the encoded source prompt to LEDITS "
                         "Inversion's 'source' input (the same text as the Prompt Edit's source) and re-run it")
    if inversion.photo is None or inversion.record.states is None:
        raise ValueError("this inversion was made by an older version of the pack: re-run LEDITS Inversion")
    ours, theirs = edit.source_conditioning[0][0], inversion.source[0][0]
    if tuple(ours.shape) != tuple(theirs.shape) or not torch.allclose(ours.float().cpu(), theirs.float().cpu(),
                                                                     rtol=1e-4, atol=1e-5):
        raise ValueError(f"the Prompt Edit's source prompt {edit.source_text!r} is not the prompt the inversion "
                         "was made with: type the same text in both (the source must describe the photo), and "
                         "use the same CLIP")


class LeditsPromptEditNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeditsPromptEdit",
            display_name="LEDITS Prompt Edit",
            category=CATEGORY,
            description="Edit the photo by rewriting its caption (Prompt-to-Prompt): 'a cat sitting on a sofa' -> "
                        "'a dog sitting on a sofa'. The new prompt is steered by the old one's attention, so the "
                        "layout stays and only what the words changed changes. Plug it into LEDITS Sampler or "
                        "Guider; the inversion needs the same caption as its source prompt.",
            inputs=[
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP, to encode both prompts."),
                io.String.Input("source", multiline=True, default="",
                                tooltip="The photo's caption: exactly the text encoded for LEDITS Inversion's "
                                        "source prompt (it is checked)."),
                io.String.Input("target", multiline=True, default="",
                                tooltip="The caption as the photo should become. Swap a word ('cat' -> 'dog') or "
                                        "add some ('a watercolour of ...'); same token count = word swap, else "
                                        "refinement (shared words keep the photo's attention, new ones their own)."),
                io.Float.Input("scale", default=7.5, min=0.0, max=30.0, step=0.1,
                               tooltip="Guidance towards the target prompt. At the inversion's source_scale an "
                                       "unchanged caption gives back the photo; higher = stronger edit."),
                io.Float.Input("cross_replace", default=0.8, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the steps (from the start) during which the target's "
                                       "cross-attention is replaced by the photo's. Lower: freer shapes."),
                io.Float.Input("self_replace", default=0.4, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the steps during which the target's self-attention at the "
                                       "coarse levels (1/4 of the latent size and coarser) is the photo's. Higher: "
                                       "more of the photo's structure kept."),
                io.String.Input("reweight", default="",
                                tooltip="Optional: strengthen or weaken words of the target, 'word:factor' with "
                                        "factors in [-2, 2], e.g. 'fluffy:2, red:-1'. 1 = unchanged, 0 = ignore "
                                        "the word."),
                io.String.Input("blend_words", default="",
                                tooltip="Optional local blend: words whose attention marks where the edit may act, "
                                        "e.g. 'cat dog' (from the source and/or the target). Everything outside "
                                        "stays exactly as in the photo."),
                io.Float.Input("blend_threshold", default=p2p.BLEND_THRESHOLD, min=0.0, max=1.0, step=0.01,
                               tooltip="Local blend: fraction of the words' peak attention above which a place "
                                       "belongs to the edit (the paper's k = 0.3). Lower: larger area."),
            ],
            outputs=[LeditsPromptEditType.Output(display_name="prompt_edit",
                                                 tooltip="Connect it to LEDITS Sampler or LEDITS Guider.")],
        )

    @classmethod
    def execute(cls, clip, source, target, scale, cross_replace, self_replace, reweight="", blend_words="",
                blend_threshold=p2p.BLEND_THRESHOLD) -> io.NodeOutput:
        return io.NodeOutput(make_prompt_edit(clip, source, target, scale, cross_replace, self_replace, reweight,
                                              blend_words, blend_threshold))
