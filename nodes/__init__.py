"""ComfyUI-facing part of the pack: node classes and the host glue. Everything here may import comfy."""
