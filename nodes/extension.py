"""Registration: the pack's node list for the host's V3 extension API."""

from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from .concept_node import LeditsConceptEdit
from .inversion_node import LeditsInversionNode
from .preview_node import LeditsMaskPreview
from .prompt_edit_node import LeditsPromptEditNode
from .sampler_nodes import LeditsGuiderNode, LeditsSampler
from .toy_node import LeditsToyModel

NODES = [LeditsInversionNode, LeditsConceptEdit, LeditsPromptEditNode, LeditsSampler, LeditsGuiderNode,
         LeditsMaskPreview, LeditsToyModel]


class LeditsExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
