"""Defaults of the decision rule, torch-free so the CLI can show them without importing a model
(``thresholds`` re-exports them; its docstring says what they mean)."""

DEFAULT_RULE = "tail"
DEFAULT_TARGET_FPR = 0.05
