"""Data worlds for the embedded backbones: a procedural captioned shapes world and sklearn's digits,
each with its :class:`~solverzoo.backbone.World` for the benchmark harness (``*_eval`` modules,
imported on use: they load no weights but need the classifiers passed to them)."""
from solverzoo.models.worlds.digits import DigitsWorld, digit_label
from solverzoo.models.worlds.shapes import COLOURS, POSITIONS, SHAPES, SIZES, ShapesWorld, parse_caption

__all__ = ["COLOURS", "DigitsWorld", "POSITIONS", "SHAPES", "SIZES", "ShapesWorld", "digit_label", "parse_caption"]
