"""Prompt ensembles for CLIP-based methods (data files ``*.yaml`` + ``loader``)."""

from fsiad.prompts.loader import (
    ClassPrompts,
    PromptError,
    PromptSet,
    check,
    default_prompts_path,
    load_prompts,
    validate,
)

__all__ = ["ClassPrompts", "PromptError", "PromptSet", "check", "default_prompts_path", "load_prompts", "validate"]
