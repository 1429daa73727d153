"""A synthetic world where we know the answer: flat shapes on a light background, with captions.

Each scene is 128x128 px: one or two objects, each a shape (circle, square) in a colour (red, green,
blue), with random sizes and positions and no overlap, on a plain light background; its caption
names every object ("a red circle and a blue square", order random). The generator also returns
each object's region (a boolean pixel mask), so tests know where an edit should land.

Seeds live in two separate streams: ``scene(i, split="train")`` and ``scene(i, split="test")`` draw
from different ``numpy`` seed sequences, so a held-out (test) scene is never a training scene.

Pure numpy + PIL: no torch, no host.
"""

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SIZE = 128
SHAPES = ("circle", "square")
COLOURS = {"red": (210, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 210)}
# The palettes a world can be drawn in (use_palette()): "rgb" is the committed models' world (in both toy latents its
# green lies between its red and blue: scripts/phrase_probe.py --palette-only); "equal" puts the three colours at
# equal RGB distances from each other (226) and from the background (276-280). A flow transformer trained on "equal"
# recoloured no better (assets/toy/README.md).
PALETTES = {"rgb": dict(COLOURS), "equal": {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}}
BACKGROUND = (238, 236, 230)
HALF_SIZE = (17, 27)  # half the object's side / its radius, in px (objects 34..54 px wide)
MARGIN = 4  # px between objects and from the border

# The first word of each split's seed sequence. "val": a third stream for choosing settings, never the test scenes;
# "demo": the headless demo's and the toy workflow's scene (demo_scene()), drawn, not picked for how it looks.
_SPLITS = {"train": 0x7A1, "test": 0x7E5, "val": 0x7A7, "demo": 0x7D3}


@dataclass
class ToyObject:
    colour: str
    shape: str
    center: tuple[int, int]  # (x, y) px
    half: int
    mask: np.ndarray = field(repr=False)  # bool (H, W)

    @property
    def words(self) -> str:
        """How a user names it: "red circle"."""
        return f"{self.colour} {self.shape}"


@dataclass
class ToyScene:
    image: np.ndarray = field(repr=False)  # uint8 (H, W, 3)
    caption: str
    objects: list[ToyObject]

    def pil(self) -> Image.Image:
        return Image.fromarray(self.image)


def use_palette(name: str) -> None:
    """Draw (and measure) every scene from now on in palette ``name`` (PALETTES): the same scenes, objects, names
    and captions, other RGB values. The committed toy models were trained on "rgb", the default."""
    if name not in PALETTES:
        raise ValueError(f"palette must be one of {tuple(PALETTES)}, not {name!r}")
    COLOURS.clear()
    COLOURS.update(PALETTES[name])


def rng_for(index: int, split: str = "train") -> np.random.Generator:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {tuple(_SPLITS)}, not {split!r}")
    return np.random.default_rng([_SPLITS[split], int(index)])


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, half: int, fill) -> None:
    box = (cx - half, cy - half, cx + half - 1, cy + half - 1)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _place(rng, halves):
    """Centres for objects of the given half sizes, not overlapping (bounding boxes + MARGIN)."""
    for _ in range(200):
        centres = []
        for h in halves:
            lo, hi = h + MARGIN, SIZE - h - MARGIN
            centres.append((int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))))
        ok = True
        for i in range(len(halves)):
            for j in range(i):
                dx = abs(centres[i][0] - centres[j][0])
                dy = abs(centres[i][1] - centres[j][1])
                if max(dx, dy) < halves[i] + halves[j] + MARGIN:
                    ok = False
        if ok:
            return centres
    raise RuntimeError("could not place the objects")  # does not happen at these sizes


def render(specs) -> ToyScene:
    """A scene from explicit objects: ``specs`` = [(colour, shape, (cx, cy), half), ...]; caption in that order."""
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    objects = []
    for colour, shape, (cx, cy), half in specs:
        _draw(draw, shape, cx, cy, half, COLOURS[colour])
        region = Image.new("L", (SIZE, SIZE), 0)
        _draw(ImageDraw.Draw(region), shape, cx, cy, half, 255)
        objects.append(ToyObject(colour, shape, (cx, cy), half, np.asarray(region) > 127))
    caption = " and ".join(f"a {o.words}" for o in objects)
    return ToyScene(np.asarray(image).copy(), caption, objects)


def recolour(sc: ToyScene, index: int, colour: str) -> ToyScene:
    """The scene with object ``index`` in ``colour``: every place, size and other object as it was."""
    return render([(colour if k == index else o.colour, o.shape, o.center, o.half) for k, o in enumerate(sc.objects)])


def without(sc: ToyScene, index: int) -> ToyScene:
    """The scene with object ``index`` drawn away: background where it was, every other object as it was."""
    return render([(o.colour, o.shape, o.center, o.half) for k, o in enumerate(sc.objects) if k != index])


def scene(index: int, split: str = "train", n_objects: int | None = None) -> ToyScene:
    """Scene ``index`` of a split. Two-object scenes have two different colours (so a colour word names
    one object); shapes are different in 3 of 4 scenes. ``n_objects`` None: 1 (25 %) or 2 (75 %)."""
    rng = rng_for(index, split)
    n = n_objects if n_objects is not None else (1 if rng.random() < 0.25 else 2)
    if n not in (1, 2):
        raise ValueError("a toy scene has 1 or 2 objects")
    colours = list(rng.choice(list(COLOURS), size=n, replace=False))
    if n == 2 and rng.random() < 0.75:
        shapes = list(rng.permutation(SHAPES))
    else:
        shapes = [SHAPES[int(rng.integers(len(SHAPES)))] for _ in range(n)]
    halves = [int(rng.integers(HALF_SIZE[0], HALF_SIZE[1] + 1)) for _ in range(n)]
    centres = _place(rng, halves)
    return render(list(zip(colours, shapes, centres, halves, strict=True)))


def test_scene(index: int, split: str = "test") -> ToyScene:
    """Held-out two-object scene ``index`` with different colours and different shapes (the semantic tests;
    ``split="val"``: the same kind of scene from the validation stream, for choosing settings)."""
    rng = rng_for(index, split)
    colours = list(rng.choice(list(COLOURS), size=2, replace=False))
    shapes = list(rng.permutation(SHAPES))
    halves = [int(rng.integers(HALF_SIZE[0] + 3, HALF_SIZE[1] + 1)) for _ in range(2)]
    centres = _place(rng, halves)
    return render(list(zip(colours, shapes, centres, halves, strict=True)))


def test_target(index: int, split: str = "test") -> int:
    """Which object of ``test_scene(index, split)`` the tests edit (0 or 1): drawn from its own seed sequence, not
    picked, and not always the first one named."""
    rng_for(index, split)  # checks the split
    return int(np.random.default_rng([_SPLITS[split], int(index), 1]).integers(2))


def demo_scene() -> tuple[ToyScene, int]:
    """The scene the headless demo (scripts/ledits_edit.py) and the example workflow ledits_toy_shapes edit, and the
    object they edit: scene 0 of the "demo" stream and its drawn target (never a training, test or validation
    scene)."""
    return test_scene(0, "demo"), test_target(0, "demo")


def colour_pixels(image: np.ndarray, colour: str, tol: float = 60.0) -> np.ndarray:
    """Pixels of a named colour: nearest to it among the palette and the background, and within ``tol``
    (Euclidean, 0..255 RGB). ``image``: uint8 or float (H, W, 3) in 0..255."""
    img = np.asarray(image, dtype=np.float32)
    names = list(COLOURS)
    palette = np.array([COLOURS[c] for c in names] + [BACKGROUND], dtype=np.float32)
    dist = np.linalg.norm(img[..., None, :] - palette, axis=-1)
    nearest = dist.argmin(-1)
    k = names.index(colour)
    return (nearest == k) & (dist[..., k] <= tol)


def background_pixels(image: np.ndarray) -> np.ndarray:
    """Pixels nearer to the background than to any colour of the palette."""
    img = np.asarray(image, dtype=np.float32)
    palette = np.array(list(COLOURS.values()) + [BACKGROUND], dtype=np.float32)
    return np.linalg.norm(img[..., None, :] - palette, axis=-1).argmin(-1) == len(COLOURS)


def dilate(mask: np.ndarray, cells: int = 1) -> np.ndarray:
    """Binary dilation by ``cells`` in the 8-neighbourhood (no scipy)."""
    out = mask.astype(bool).copy()
    for _ in range(cells):
        grown = out.copy()
        grown[1:, :] |= out[:-1, :]
        grown[:-1, :] |= out[1:, :]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        grown[1:, 1:] |= out[:-1, :-1]
        grown[:-1, :-1] |= out[1:, 1:]
        grown[1:, :-1] |= out[:-1, 1:]
        grown[:-1, 1:] |= out[1:, :-1]
        out = grown
    return out


def downsample_mask(mask: np.ndarray, cells: int) -> np.ndarray:
    """Fraction of each of ``cells`` x ``cells`` blocks that the pixel mask covers."""
    h, w = mask.shape
    return mask.reshape(cells, h // cells, cells, w // cells).mean(axis=(1, 3))
