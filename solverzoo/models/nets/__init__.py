"""Networks of the embedded backbones, usable on their own."""
from solverzoo.models.nets.classifier import AttributeClassifier, DigitClassifier
from solverzoo.models.nets.dit import DiT
from solverzoo.models.nets.vae import VAE

__all__ = ["AttributeClassifier", "DiT", "DigitClassifier", "VAE"]
