"""Headless LEDITS++ edit through ComfyUI: invert a photo, apply concept edits, save the result and masks.

    python scripts/ledits_edit.py --out out/                         # demo: the toy model, a drawn held-out scene
    python scripts/ledits_edit.py --ckpt model.safetensors --image photo.png --edit "+sunglasses" \
        --edit "-beard:4:0.85" --out out/
    python scripts/ledits_edit.py --random-model sd15 --out out/     # mechanics only: random weights
    python scripts/ledits_edit.py --server http://127.0.0.1:8188 --out out/   # on your running ComfyUI

The demo runs the small model trained in this repository on a toy world (coloured circles and squares,
128 px; scripts/train_toy.py) on a scene it never saw: one inversion, then one removal and one
alteration of the same object, each in its own LEDITS Sampler (--each). It writes input, reconstructed,
edited_N, masks_N, latent_change_N and a before | after 1 | after 2 | masks 1 | masks 2 sheet, and prints
the scene's semantic figures measured on the images and latents the server returned (scripts/toy_eval.py's
measures). It is a toy world, not a photo model.

An --edit is [+|-]text[:scale[:threshold]]; '-' removes the concept. The job is a ComfyUI client: it
starts the host's own server (python main.py --cpu --listen 127.0.0.1, a scratch base directory whose
custom_nodes/ links to this pack, stopped when done), or uses yours (--server URL, this pack installed),
uploads the image, queues one API-format prompt with SaveImage / SaveLatent outputs, follows it on the
websocket (progress bar) and fetches the files (scripts/comfy_client.py). The host is looked for at
$COMFYUI_PATH, else ~/ComfyUI, else ../shared/ next to this repository (scripts/hostenv.py).
"""

from __future__ import annotations

import argparse
import atexit
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# What this job itself needs (the server's Python needs the host's requirements too).
JOB_MODULES = ("numpy", "PIL", "torch", "websocket", "safetensors")


def run_in_host_venv(argv) -> None:
    """On a machine where this Python lacks what the job needs (a fresh one), re-run the job with the host's
    venv of this repository (``.venv/comfyui-<version>/``), making it first with scripts/setup_hosts.sh.
    A Python that has the modules (the user's own ComfyUI environment) runs the job itself."""
    import importlib.util

    missing = [name for name in JOB_MODULES if importlib.util.find_spec(name) is None]
    if not missing:
        return
    import comfy_client
    import hostenv

    host = hostenv.find_host()
    if host is None:
        return  # main() says where the host was looked for and how to get one
    venv_python = comfy_client.host_venv_python(hostenv.host_version(host))
    if Path(sys.executable).absolute() == venv_python.absolute():
        raise SystemExit(f"{venv_python} lacks {', '.join(missing)}: re-run bash scripts/setup_hosts.sh")
    if not venv_python.is_file():
        print(f"[ledits_edit] this Python lacks {', '.join(missing)}: making the venv for ComfyUI at {host} "
              "(scripts/setup_hosts.sh; once, a few minutes)", file=sys.stderr, flush=True)
        made = subprocess.run(["bash", str(HERE / "setup_hosts.sh")], env=dict(os.environ, HOSTS=str(host)),
                              stdout=subprocess.DEVNULL)
        if made.returncode != 0 or not venv_python.is_file():
            raise SystemExit(f"could not make the venv for ComfyUI at {host}: run bash scripts/setup_hosts.sh "
                             "and look at its messages")
    os.execv(str(venv_python), [str(venv_python), str(Path(__file__).resolve()), *argv])


if __name__ == "__main__":
    run_in_host_venv(sys.argv[1:])

import comfy_client  # noqa: E402
import hostenv  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

SAMPLE = HERE.parent / "assets" / "ledits_sample.png"
RANDOM_EDITS = ["+sunglasses:8:0.8", "-smile:6:0.9"]
log = logging.getLogger("ledits_edit")


def parse_edit(spec: str) -> dict:
    """'+text[:scale[:threshold]]' -> concept settings; '-' means remove (reverse)."""
    reverse = spec.startswith("-")
    parts = spec.lstrip("+-").split(":")
    if not parts[0].strip():
        raise SystemExit(f"--edit {spec!r}: no text; write e.g. --edit '+sunglasses' or --edit '-beard:4:0.85'")
    try:
        scale = float(parts[1]) if len(parts) > 1 and parts[1] else 5.0
        threshold = float(parts[2]) if len(parts) > 2 and parts[2] else 0.9
    except ValueError:
        raise SystemExit(f"--edit {spec!r}: scale and threshold must be numbers, e.g. '-beard:4:0.85'") from None
    return {"text": parts[0].strip(), "scale": scale, "threshold": threshold, "reverse": reverse}


def target_size(image: Path, longest: int, multiple: int = 8) -> tuple[int, int]:
    """(width, height) with the longer side = longest and both multiples of the VAE's downscale, keeping the aspect."""
    w, h = Image.open(image).size
    k = longest / max(w, h)
    m = multiple
    return max(m, int(round(w * k / m)) * m), max(m, int(round(h * k / m)) * m)


def build_prompt(args, image_name: str, size: tuple[int, int], edits: list[dict]) -> dict:
    """The API-format graph: load, scale, encode, invert, chained concepts, sample, decode, mask preview."""
    if args.ckpt:
        loader = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": Path(args.ckpt).name}}
    elif args.random_model:
        loader = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": random_checkpoint_name(args)}}
    else:
        loader = {"class_type": "LeditsToyModel", "inputs": {}}
    prompt = {
        "ckpt": loader,
        "load": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "scale": {"class_type": "ImageScale", "inputs": {"image": ["load", 0], "upscale_method": "bicubic",
                                                         "width": size[0], "height": size[1], "crop": "disabled"}},
        "encode": {"class_type": "VAEEncode", "inputs": {"pixels": ["scale", 0], "vae": ["ckpt", 2]}},
        "invert": {"class_type": "LeditsInversion", "inputs": {
            "model": ["ckpt", 0], "clip": ["ckpt", 1], "latent": ["encode", 0], "steps": args.steps,
            "skip": args.skip, "sampler": args.sampler, "scheduler": args.scheduler, "seed": args.seed,
            "source_scale": 3.5}},
    }
    if args.source:
        prompt["source"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": args.source}}
        prompt["invert"]["inputs"]["source"] = ["source", 0]
    for k, group in enumerate(edit_groups(edits, args.each)):
        previous = None
        for i, edit in enumerate(group):
            inputs = {"clip": ["ckpt", 1], "text": edit["text"], "scale": edit["scale"],
                      "threshold": edit["threshold"], "reverse": edit["reverse"], "warmup": 0.0, "cooldown": 1.0}
            if previous:
                inputs["previous"] = [previous, 0]
            previous = f"concept{k}_{i}"
            prompt[previous] = {"class_type": "LeditsConceptEdit", "inputs": inputs}
        sampler = {"model": ["ckpt", 0], "inversion": ["invert", 0], "mask_mode": args.mask_mode}
        if getattr(args, "keep_photo", False):
            sampler["keep_photo_outside_masks"] = True
        if previous:
            sampler["concepts"] = [previous, 0]
        sample, decode, preview = node_names(k)
        prompt[sample] = {"class_type": "LeditsSampler", "inputs": sampler}
        prompt[decode] = {"class_type": "VAEDecode", "inputs": {"samples": [sample, 0], "vae": ["ckpt", 2]}}
        prompt[preview] = {"class_type": "LeditsMaskPreview", "inputs": {
            "masks": [sample, 1], "image": ["scale", 0], "which": "final", "start_step": 0, "end_step": -1}}
    prompt["reconstruct"] = {"class_type": "LeditsSampler", "inputs": {"model": ["ckpt", 0], "inversion": ["invert", 0],
                                                                        "mask_mode": args.mask_mode}}
    prompt["decode_rec"] = {"class_type": "VAEDecode", "inputs": {"samples": ["reconstruct", 0], "vae": ["ckpt", 2]}}
    return prompt


def edit_groups(edits: list[dict], each: bool) -> list[list[dict]]:
    """The edits of each LEDITS Sampler: all in one, or (--each) one sampler per edit on the same inversion."""
    return [[edit] for edit in edits] if each and edits else [edits]


def node_names(k: int) -> tuple[str, str, str]:
    """The sampler, decode and mask preview nodes of edit group k (one group unless --each)."""
    return ("sample", "decode", "preview") if k == 0 else (f"sample{k}", f"decode{k}", f"preview{k}")


def file_suffix(k: int, groups: int) -> str:
    return f"_{k + 1}" if groups > 1 else ""


def save(image_tensor, path: Path) -> None:
    """Save the first image of a host IMAGE batch (B, H, W, 3) in [0, 1] as PNG."""
    Image.fromarray((image_tensor[0].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)).save(path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="checkpoint file (SD1.x, SD2.x or SDXL); default: the toy model (demo)")
    p.add_argument("--random-model", choices=["sd15", "sd2v", "sdxl"],
                   help="instead: a tiny model of this family with random weights (mechanics only)")
    p.add_argument("--image", type=Path, default=None,
                   help="photo to edit (default: a held-out toy scene; with --ckpt/--random-model the bundled sample)")
    p.add_argument("--edit", action="append", help="[+|-]text[:scale[:threshold]]; repeat for several")
    p.add_argument("--source", default=None, help="optional prompt describing the photo (the demo: the scene's caption)")
    p.add_argument("--size", type=int, default=None, help="longer image side in pixels (default 512; demos 128/256)")
    p.add_argument("--steps", type=int, default=None, help="steps (default 50; demos 20/12)")
    p.add_argument("--skip", type=float, default=0.15)
    p.add_argument("--sampler", default="dpmpp_2m_sde", choices=["dpmpp_2m_sde", "ddpm"])
    p.add_argument("--scheduler", default="karras")
    p.add_argument("--seed", type=int, default=None, help="inversion seed (default 0; toy demo 7)")
    p.add_argument("--mask-mode", default="intersect", choices=["intersect", "attention", "noise", "none"])
    p.add_argument("--keep-photo", action="store_true",
                   help="LEDITS Sampler's keep_photo_outside_masks: the photo itself wherever no edit's mask acted")
    p.add_argument("--each", action="store_true",
                   help="each --edit in its own LEDITS Sampler on the one inversion (default: all in one sampler; "
                        "the toy demo: each)")
    p.add_argument("--out", type=Path, default=Path("out"))
    p.add_argument("--server", metavar="URL",
                   help="a ComfyUI you run, with this pack installed (e.g. http://127.0.0.1:8188); default: start "
                        "the host's own server on 127.0.0.1 for this job and stop it after")
    p.add_argument("--python", metavar="PATH",
                   help="the Python that runs the local server (default: .venv/comfyui-<host version>/bin/python "
                        "of scripts/setup_hosts.sh if it exists, else this Python)")
    args = p.parse_args(argv)
    if args.ckpt and args.random_model:
        p.error("--ckpt and --random-model exclude each other")
    return args


def toy_defaults(args):
    """The toy demo: its scene and object (toy_world.demo_scene(): drawn, held out from training, not one of the
    tests' scenes), its caption as the source, one removal and one alteration of that object, each in its own
    sampler on the one inversion (on this model two concepts in one run interfere: the
    added object tends to take the removed one's place)."""
    import toy_eval
    import toy_world

    scene, target_index = toy_world.demo_scene()
    target = scene.objects[target_index]
    args.steps = args.steps or toy_eval.STEPS
    args.seed = toy_eval.SEED if args.seed is None else args.seed
    if args.image is None:
        folder = tempfile.mkdtemp(prefix="ledits_toy_")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        args.image = Path(folder) / "toy_scene.png"
        scene.pil().save(args.image)
        args.source = args.source if args.source is not None else scene.caption
        new = toy_eval.new_colour_for(scene)
        if not args.edit:  # the tested edits, as the semantic tests run them
            args.each = True
            args.keep_photo = args.keep_photo or toy_eval.KEEP_PHOTO
        edits = args.edit or [f"-{target.words}:{toy_eval.REMOVE['scale']:g}:{toy_eval.REMOVE['threshold']:g}",
                              f"+{new} {target.shape}:{toy_eval.ALTER['scale']:g}:{toy_eval.ALTER['threshold']:g}"]
        return (scene, target_index), edits
    return None, args.edit or [f"-{target.words}"]


def random_checkpoint_name(args) -> str:
    """The file name of the random-weight checkpoint of --random-model in the scratch models/checkpoints."""
    return f"ledits_random_{args.random_model}_slim.safetensors"


def add_scene_figure_nodes(prompt: dict) -> None:
    """What the toy scene's figures need besides the demo's outputs: the input through the VAE and back
    (toy_eval's 'before' image), and the removal (edit group 0) again with mask mode none."""
    prompt["decode_src"] = {"class_type": "VAEDecode", "inputs": {"samples": ["encode", 0], "vae": ["ckpt", 2]}}
    prompt["sample_none"] = {"class_type": "LeditsSampler", "inputs": {
        "model": ["ckpt", 0], "inversion": ["invert", 0], "mask_mode": "none", "concepts": ["concept0_0", 0]}}


def wanted_outputs(names, figures: bool) -> list[tuple[str, int, str]]:
    """(node, output slot, kind) of every value the report needs back: kind 'image', 'mask' or 'latent'."""
    wanted = [("scale", 0, "image"), ("decode_rec", 0, "image"), ("encode", 0, "latent"),
              ("reconstruct", 0, "latent")]
    for sample, decode, preview in names:
        wanted += [(decode, 0, "image"), (preview, 0, "image"), (preview, 1, "mask"), (sample, 0, "latent")]
    if figures:
        wanted += [("decode_src", 0, "image"), ("sample_none", 0, "latent")]
    return wanted


def add_output_nodes(prompt: dict, wanted, prefix: str) -> dict[str, tuple[str, int, str]]:
    """Add a SaveImage (images), MaskToImage + SaveImage (masks) or SaveLatent (latents) for each wanted
    value; returns {output node id: (node, slot, kind)}. ``prefix``: the server's output subfolder."""
    saved = {}
    for node, slot, kind in wanted:
        out_id, source = f"out_{node}_{slot}", [node, slot]
        if kind == "mask":
            prompt[f"image_{node}_{slot}"] = {"class_type": "MaskToImage", "inputs": {"mask": source}}
            source = [f"image_{node}_{slot}", 0]
        class_type = "SaveLatent" if kind == "latent" else "SaveImage"
        key = "samples" if kind == "latent" else "images"
        prompt[out_id] = {"class_type": class_type, "inputs": {key: source, "filename_prefix": f"{prefix}/{out_id}"}}
        saved[out_id] = (node, slot, kind)
    return saved


def read_png(data: bytes):
    """A PNG from the server as a host IMAGE (1, H, W, 3) float in [0, 1]."""
    import torch

    array = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array)[None]


def read_latent(data: bytes) -> dict:
    """A SaveLatent file: the raw latent samples (the host stores them unscaled, beside a
    'latent_format_version_0' marker), as a host LATENT."""
    from safetensors.torch import load

    return {"samples": load(data)["latent_tensor"].float()}


def fetch_results(client, entry: dict, saved: dict) -> dict:
    """{node: tuple of output values} like an in-process run, from the files the output nodes reported."""
    import torch

    results = {}
    for out_id, (node, slot, kind) in saved.items():
        files = entry["outputs"].get(out_id, {}).get("latents" if kind == "latent" else "images", [])
        if not files:
            raise comfy_client.ServerError(f"the server reported no file for output node {out_id} ({node})")
        if kind == "latent":
            value = read_latent(client.view(files[0]))
        else:
            value = torch.cat([read_png(client.view(f)) for f in files])
            value = value[..., 0] if kind == "mask" else value
        slots = results.setdefault(node, [None, None])
        slots[slot] = value
    return results


class Progress:
    """A terminal progress bar from the server's ``progress`` messages (tqdm when importable, else a text
    bar on stderr), one bar per node; ``executing`` names the node."""

    def __init__(self, prompt: dict):
        self.prompt, self.node, self.bar, self.messages = prompt, None, None, []
        try:
            import tqdm
        except ImportError:
            tqdm = None
        self.tqdm = tqdm

    def __call__(self, kind: str, data: dict) -> None:
        self.messages.append((kind, data))
        if kind == "executing" and data.get("node") != self.node:
            self.close()
            self.node = data.get("node")
        elif kind == "progress":
            self.update(int(data["value"]), int(data["max"]), data.get("node") or self.node)

    def label(self, node) -> str:
        return f"{self.prompt.get(node, {}).get('class_type', '?')} ({node})"

    def update(self, value: int, total: int, node) -> None:
        if self.tqdm is not None:
            if self.bar is None or self.bar.total != total:
                self.close()
                self.bar = self.tqdm.tqdm(total=total, desc=self.label(node), unit="step", leave=False)
            self.bar.n = value
            self.bar.refresh()
            return
        filled = round(30 * value / max(total, 1))
        sys.stderr.write(f"\r{self.label(node)} [{'#' * filled}{'.' * (30 - filled)}] {value}/{total}")
        sys.stderr.flush()
        self.bar = True

    def close(self) -> None:
        if self.bar is not None and self.bar is not True:
            self.bar.close()
        elif self.bar is True:
            sys.stderr.write("\n")
        self.bar = None

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.messages if k == kind)


def write_random_checkpoint(family: str, folder: Path, python: str, host: Path) -> Path:
    """A random-weight checkpoint of ``family`` the host's loader detects (scripts/random_models.py, 'slim':
    full text encoder and VAE, a narrow UNet; SD1.5 about 0.64 GB), written by ``python`` with the host."""
    if family == "sd2v":
        raise SystemExit("--random-model sd2v cannot be a checkpoint file: the host recognises SD2 v-prediction "
                         "from trained weights; use sd15 or sdxl, or --ckpt with a real SD2 checkpoint")
    path = folder / f"ledits_random_{family}_slim.safetensors"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import hostenv; "
            "hostenv.import_random_models().save_random_checkpoint(sys.argv[2], family=sys.argv[3], size='slim')")
    log.info("writing a random-weight %s checkpoint the host's loader detects (%s)", family, path.name)
    env = {**os.environ, "COMFYUI_PATH": str(host), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([python, "-c", code, str(HERE), str(path), family], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"could not write the random checkpoint with {python}:\n{done.stderr[-3000:]}")
    return path


def start_local_server(args, scratch: Path):
    """The host's own server on 127.0.0.1 with this pack, the --ckpt / --random-model file in its
    models/checkpoints (a LocalServer, to enter)."""
    reason = hostenv.host_missing_reason("run this edit")
    if reason:
        raise SystemExit(f"{reason}.\nThis job runs the edit on a ComfyUI server. Get ComfyUI with:\n"
                         "  git clone https://github.com/comfyanonymous/ComfyUI ~/ComfyUI\n"
                         "  pip install -r ~/ComfyUI/requirements.txt\nthen run this command again, or pass "
                         "--server URL of a ComfyUI you run (with this pack installed).")
    host = hostenv.host_path()
    python = comfy_client.default_python(host, hostenv.host_version(host), args.python)
    checkpoints = [Path(args.ckpt)] if args.ckpt else []
    if args.random_model:
        checkpoints.append(write_random_checkpoint(args.random_model, scratch, python, host))
    return comfy_client.LocalServer(host, python, checkpoints=checkpoints)


def check_server(client, prompt: dict, args) -> None:
    """The server answers and has every node type of the prompt (this pack's above all) and the checkpoint."""
    client.ping()
    missing = client.missing_nodes(node["class_type"] for node in prompt.values())
    if missing:
        ours = [name for name in missing if name.startswith("Ledits")]
        hint = (" (this pack's: install it into the server's custom_nodes/ and restart it: "
                "cd ComfyUI/custom_nodes && git clone <this repo> ledits_pp)") if ours else ""
        raise comfy_client.ServerError(f"ComfyUI at {client.url} has no node type {', '.join(missing)}{hint}")
    if args.ckpt:
        spec = client.get_json("/object_info/CheckpointLoaderSimple")["CheckpointLoaderSimple"]["input"][
            "required"]["ckpt_name"]
        names = spec[0] if isinstance(spec[0], list) else spec[1].get("options", [])  # V1 list or V3 COMBO
        if Path(args.ckpt).name not in names:
            raise comfy_client.ServerError(f"ComfyUI at {client.url} has no checkpoint {Path(args.ckpt).name}: "
                                           "put the file into its models/checkpoints and try again")


def run_job(client, prompt: dict, image: Path, saved: dict) -> tuple[dict, Progress]:
    """Upload the image, queue the prompt, follow it with a progress bar, fetch the outputs."""
    prompt["load"]["inputs"]["image"] = client.upload_image(image, f"ledits_input_{uuid.uuid4().hex[:8]}"
                                                                   f"{image.suffix}")
    progress = Progress(prompt)
    try:
        entry = client.run(prompt, progress)
    finally:
        progress.close()
    log.info("the server ran the job (%d progress messages)", progress.count("progress"))
    return fetch_results(client, entry, saved), progress


def settings(args):
    """((toy scene, edited object) or None, edit specs, longer side, latent multiple) for this run, filling args'
    defaults."""
    if not (args.ckpt or args.random_model):
        demo, specs = toy_defaults(args)
        return demo, specs, args.size or 128, 4
    args.image = args.image or SAMPLE
    args.steps = args.steps or (50 if args.ckpt else 12)
    args.seed = args.seed or 0
    return None, args.edit or RANDOM_EDITS, args.size or (512 if args.ckpt else 256), 8


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    toy = not (args.ckpt or args.random_model)
    if args.ckpt and not Path(args.ckpt).is_file():
        raise SystemExit(f"--ckpt {args.ckpt}: no such file")
    if args.server and args.random_model:
        raise SystemExit("--random-model writes its checkpoint into the job's own server: leave out --server")
    demo, specs, size, multiple = settings(args)
    edits = [parse_edit(e) for e in specs]
    if not args.image.is_file():
        raise SystemExit(f"--image {args.image}: no such file")
    figures = demo is not None and not args.edit and size == toy_world_size()
    prompt = build_prompt(args, "", target_size(args.image, size, multiple), edits)
    if figures:
        add_scene_figure_nodes(prompt)
    groups = edit_groups(edits, args.each)
    names = [node_names(k) for k in range(len(groups))]
    saved = add_output_nodes(prompt, wanted_outputs(names, figures), f"ledits_pp_job/{uuid.uuid4().hex[:8]}")
    try:
        results = on_server(args, prompt, saved)
    except comfy_client.ServerError as e:
        raise SystemExit(f"ledits_edit: {e}") from None
    write_files(results, names, args.out)
    log.info("edits: %s", "; ".join(", ".join(("-" if e["reverse"] else "+") + e["text"] for e in group)
                                    for group in groups))
    log.info("wrote input, edited, reconstructed, masks and latent_change .png (%s) and sheet.png in %s",
             "one of each per sampler" if len(groups) > 1 else "one sampler", args.out)
    rec, source = results["reconstruct"][0]["samples"], results["encode"][0]["samples"]
    log.info("reconstruction without edits: max abs latent error %.2e", (rec - source).abs().max().item())
    for k, (sample, _, preview) in enumerate(names):
        report(results, sample, preview, f"edit {k + 1}: " if len(groups) > 1 else "")
    note(args, toy)
    if figures:
        scene_figures(*demo, results, names)
    elif demo is not None and not args.edit:
        log.info("the scene's semantic figures need the demo's %d px (--size): not measured", toy_world_size())
    return 0


def toy_world_size() -> int:
    import toy_world

    return toy_world.SIZE


def on_server(args, prompt: dict, saved: dict) -> dict:
    """Run the prompt on --server, or on a local server started (and stopped) for this job."""
    if args.server:
        client = comfy_client.ComfyClient(args.server)
        check_server(client, prompt, args)
        return run_job(client, prompt, args.image, saved)[0]
    with tempfile.TemporaryDirectory(prefix="ledits_job_") as scratch:
        with start_local_server(args, Path(scratch)) as server:
            client = comfy_client.ComfyClient(server.url)
            check_server(client, prompt, args)
            return run_job(client, prompt, args.image, saved)[0]


def write_files(results: dict, names, out: Path) -> None:
    """input, reconstructed, edited[_N], masks[_N], latent_change[_N] and sheet .png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    save(results["scale"][0], out / "input.png")
    save(results["decode_rec"][0], out / "reconstructed.png")
    for k, (sample, decode, preview) in enumerate(names):
        suffix = file_suffix(k, len(names))
        save(results[decode][0], out / f"edited{suffix}.png")
        save(results[preview][0], out / f"masks{suffix}.png")
        save(change_map(results, sample), out / f"latent_change{suffix}.png")
    sheet(results, names, out / "sheet.png")


def sheet(results, names, path: Path) -> None:
    """before | after (each edit run) | masks (each edit run), side by side (masks scaled to the image height)."""
    import torch

    before = results["scale"][0][:1]
    h = before.shape[1]
    gap = torch.ones((1, h, max(2, h // 32), 3))
    panels = [before] + [results[decode][0][:1] for _, decode, _ in names]
    for _, _, preview in names:
        masks = results[preview][0][:1]
        if masks.shape[1] != h:
            w = round(masks.shape[2] * h / masks.shape[1])
            masks = torch.nn.functional.interpolate(masks.movedim(-1, 1), size=(h, w), mode="bilinear").movedim(1, -1)
        panels.append(masks)
    save(torch.cat([p for panel in panels for p in (panel, gap)][:-1], dim=2), path)


class _Decoded:
    """Stands in for toy_eval's VAE: its 'decode' is the image the server decoded (toy_eval's measures take
    a VAE and a latent; here the server already decoded that latent)."""

    def __init__(self, image):
        self.image = image

    def decode(self, latent):
        return self.image


def scene_figures(scene, target_index: int, results: dict, names) -> None:
    """The demo scene's semantic figures, measured with scripts/toy_eval.py's functions on the images and
    latents the server returned (8-bit PNGs, raw latents): removal (edit 1), alteration (edit 2), masks
    matter (the removal again with mask mode none), reconstruction."""
    import toy_eval

    target, other = scene.objects[target_index], scene.objects[1 - target_index]
    latent = results["encode"][0]["samples"]
    before = results["decode_src"][0][0].numpy() * 255.0
    (sample_rm, decode_rm, _), (sample_alt, decode_alt, _) = names[:2]
    out_rm = results[sample_rm][0]["samples"]
    fig = {"target": target.words, "alter_text": f"{toy_eval.new_colour_for(scene)} {target.shape}",
           "reconstruction": float((results["reconstruct"][0]["samples"] - latent).abs().max())}
    rm = toy_eval.removal(_Decoded(results[decode_rm][0]), latent, out_rm, before, target, other)
    alt = toy_eval.alteration(_Decoded(results[decode_alt][0]), results[sample_alt][0]["samples"], before, target,
                              toy_eval.new_colour_for(scene), other)
    fig.update({k: v for k, v in rm.items() if k != "image"})
    fig.update({k: v for k, v in alt.items() if k not in ("image", "other_kept")})
    fig["alter_other_kept"] = alt["other_kept"]
    _, out_i, _ = toy_eval.latent_change_ratio(latent, out_rm, target, latent.shape[-1])
    _, out_n, _ = toy_eval.latent_change_ratio(latent, results["sample_none"][0]["samples"], target, latent.shape[-1])
    fig["outside_intersect_over_none"] = out_i / max(out_n, 1e-12)
    log.info("semantic figures of this scene (%s), measured on this run's images and latents:", scene.caption)
    for line in toy_eval.describe(fig):
        log.info("  %s", line)
    log.info("  (the attention and M1 localisation and the prompt-edit figures need the pack's internals: "
             "python scripts/toy_eval.py, in-process, or the semantic tests)")


def change_map(results, sample: str):
    """|edited - reconstructed| in latent space, averaged over channels, scaled to [0, 1], image size: (1, H, W, 3)."""
    import torch

    edited, rec = results[sample][0]["samples"][:1], results["reconstruct"][0]["samples"][:1]
    diff = (edited - rec).abs().mean(1, keepdim=True)
    diff = diff / diff.max().clamp(min=1e-12)
    size = results["scale"][0].shape[1:3]
    diff = torch.nn.functional.interpolate(diff, size=tuple(size), mode="nearest")
    return diff[:, 0, :, :, None].expand(-1, -1, -1, 3)


def report(results, sample: str, preview: str, label: str) -> None:
    """How local one edit run was: its mean latent change inside and outside its masks."""
    import torch.nn.functional as F

    source = results["encode"][0]["samples"]
    rec, edited = results["reconstruct"][0]["samples"], results[sample][0]["samples"]
    masks = results[preview][1]
    if masks.numel():
        union = F.interpolate((masks > 0.05).float()[:, None], size=source.shape[-2:], mode="area").amax(0)[0] > 0
        change = (edited - rec).abs().mean(1)[0]
        if union.any() and (~union).any():
            log.info("%smean latent change: %.4f inside the masks, %.4f outside", label,
                     change[union].mean().item(), change[~union].mean().item())


def note(args, toy) -> None:
    if toy:
        log.info("note: this ran the toy model trained in this repository on coloured circles and squares "
                 "(128 px): the edit is real, the world is a toy; pass --ckpt for photos.")
    elif args.random_model:
        log.info("note: this ran a small model with RANDOM weights (its VAE cannot reproduce a photo either): the "
                 "files show the mechanics (exact inversion, masks, where the latent changed), not editing "
                 "quality. Pass --ckpt for a real edit.")


if __name__ == "__main__":
    sys.exit(main())
