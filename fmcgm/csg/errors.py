"""Errors raised by CSG with messages meant for the person wiring the graph."""
from __future__ import annotations


class CSGError(RuntimeError):
    """Something about the run cannot work (unsupported model, inconsistent objects)."""


class CSGInputError(ValueError):
    """A node input is invalid; the message names the input."""

    def __init__(self, input_name: str, message: str):
        self.input_name = input_name
        super().__init__(f"{input_name}: {message}")
