"""The pack's custom link types, declared once."""

from comfy_api.latest import io

LeditsInversionType = io.Custom("LEDITS_INVERSION")
LeditsConceptsType = io.Custom("LEDITS_CONCEPTS")
LeditsMasksType = io.Custom("LEDITS_MASKS")
LeditsPromptEditType = io.Custom("LEDITS_PROMPT_EDIT")

CATEGORY = "LEDITS++"
