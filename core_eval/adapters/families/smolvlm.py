"""SmolVLM: the Idefics3 layout (image splitting + pixel shuffle) under its own model type."""

from core_eval.adapters.base import Family
from core_eval.adapters.families.idefics3 import IDEFICS3_REGION, IDEFICS3_REQUIRES

FAMILY = Family(
    name="smolvlm", model_types=("smolvlm",), layers="model.text_model.layers", vision="model.vision_model",
    notes="Idefics3 layout (image splitting + pixel shuffle)", region=IDEFICS3_REGION, requires=IDEFICS3_REQUIRES,
)
