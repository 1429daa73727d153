"""LEDITS Concept Edit: one concept to add or remove, chained into a list."""

from __future__ import annotations

from comfy_api.latest import io

from .objects import LeditsConcept
from .types import CATEGORY, LeditsConceptsType


def _stream_positions(chunks) -> tuple[list[int], int]:
    """Positions of a prompt's own tokens in one text stream (its chunks concatenated) and the stream's length.
    The tokenizer's word ids mark start/end/padding with 0."""
    positions, offset = [], 0
    for chunk in chunks:
        positions += [offset + t for t, item in enumerate(chunk) if item[2] != 0]
        offset += len(chunk)
    return positions, offset


def concept_token_positions(clip, text: str, context_len: int | None = None) -> tuple[list[int], int]:
    """Positions of the prompt's own tokens in its attention context, and the context length.

    UNets (SD1.x/2.x/SDXL): the CLIP rows (SDXL's CLIP-L and CLIP-G share them). SD3: the CLIP rows, then the
    T5 rows (the host concatenates them along the tokens). Flux: the T5 rows alone. The layout is the one
    whose length is the encoder's (context_len, when given). Works for weighted prompts, embeddings and prompts
    longer than one chunk.
    """
    tokens = clip.tokenize(text, return_word_ids=True)
    clip_key = "l" if "l" in tokens else next(iter(tokens))
    layouts = [[clip_key]]
    if "t5xxl" in tokens:
        layouts = [[clip_key, "t5xxl"], ["t5xxl"]] + ([] if clip_key == "t5xxl" else layouts)
    for layout in layouts:
        positions, offset = [], 0
        for key in layout:
            found, length = _stream_positions(tokens[key])
            positions += [offset + p for p in found]
            offset += length
        if context_len is None or offset == context_len:
            return positions, offset
    return positions, offset


def make_concept(clip, text: str, scale: float, threshold: float, reverse: bool, warmup: float,
                 cooldown: float, mask=None) -> LeditsConcept:
    """Encode a concept prompt and find its token positions; checks the settings first."""
    if not text or not text.strip():
        raise ValueError("LEDITS Concept Edit: the concept prompt is empty; type what to add or remove, "
                         "e.g. 'sunglasses'")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"LEDITS Concept Edit: threshold must be in [0, 1], got {threshold}")
    if not 0.0 <= warmup <= cooldown <= 1.0:
        raise ValueError(f"LEDITS Concept Edit: need 0 <= warmup <= cooldown <= 1, got warmup {warmup}, "
                         f"cooldown {cooldown}")
    conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(text))
    context_len = int(conditioning[0][0].shape[1])
    positions, length = concept_token_positions(clip, text, context_len)
    if not positions:
        raise ValueError(f"LEDITS Concept Edit: the prompt {text!r} has no tokens after tokenizing; use words")
    if context_len != length:
        raise RuntimeError(f"LEDITS Concept Edit: the text encoder gave {context_len} tokens, the tokenizer "
                           f"{length}; this CLIP is not supported")
    return LeditsConcept(text.strip(), conditioning, tuple(positions), context_len, float(scale), float(threshold),
                         bool(reverse), float(warmup), float(cooldown), None if mask is None else mask.cpu())


class LeditsConceptEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LeditsConceptEdit",
            display_name="LEDITS Concept Edit",
            category=CATEGORY,
            description="One thing to add to or remove from the photo (e.g. '+sunglasses', '-beard'). Chain "
                        "several of these to apply many edits at once, each with its own strength.",
            inputs=[
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP, to encode the concept prompt."),
                io.String.Input("text", multiline=True, default="",
                                tooltip="What to add (or remove, with 'reverse'), in a few words: 'sunglasses'."),
                io.Float.Input("scale", default=5.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Edit strength. 3-15 is typical for SD checkpoints (the toy demo model: 5-7); a "
                                       "model whose text moves the image less needs more, up to 100. 0 turns the "
                                       "concept off."),
                io.Float.Input("threshold", default=0.9, min=0.0, max=1.0, step=0.01,
                               tooltip="How much of the image the edit may touch: 0.9 = the 10% most relevant "
                                       "area. Lower it for large or global edits (style, background)."),
                io.Boolean.Input("reverse", default=False,
                                 tooltip="Off: add the concept. On: remove it from the photo."),
                io.Float.Input("warmup", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the steps to wait before this edit starts (0.1 with 50 steps "
                                       "= starts at step 5). Later start = smaller, more local change."),
                io.Float.Input("cooldown", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the steps after which this edit stops (1.0 = acts until the "
                                       "end)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional: the edit acts only inside this mask (any size, resized)."),
                LeditsConceptsType.Input("previous", optional=True,
                                         tooltip="Optional: concepts from earlier Concept Edit nodes; this one is "
                                                 "appended after them."),
            ],
            outputs=[LeditsConceptsType.Output(display_name="concepts", tooltip="This concept after the previous ones: "
                                               "connect it to a LEDITS Sampler, or to the next Concept Edit.")],
        )

    @classmethod
    def execute(cls, clip, text, scale, threshold, reverse, warmup, cooldown, mask=None,
                previous=None) -> io.NodeOutput:
        concept = make_concept(clip, text, scale, threshold, reverse, warmup, cooldown, mask)
        return io.NodeOutput(tuple(previous or ()) + (concept,))
