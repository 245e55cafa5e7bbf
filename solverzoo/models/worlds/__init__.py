"""Data worlds for the embedded backbones: a procedural captioned shapes world and sklearn's digits."""
from solverzoo.models.worlds.digits import DigitsWorld
from solverzoo.models.worlds.shapes import COLOURS, POSITIONS, SHAPES, SIZES, ShapesWorld, parse_caption

__all__ = ["COLOURS", "DigitsWorld", "POSITIONS", "SHAPES", "SIZES", "ShapesWorld", "parse_caption"]
