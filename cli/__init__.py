"""The ``fsiad`` command-line interface (click)."""
