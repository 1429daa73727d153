"""LEDITS++ for ComfyUI: invert a photo once, then add and remove concepts with their own masks.

The host loads this package and calls comfy_entrypoint(); there is deliberately no NODE_CLASS_MAPPINGS
(with it the host would never call the V3 entrypoint).
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes.extension import LeditsExtension

    return LeditsExtension()
