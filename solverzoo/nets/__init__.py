"""Networks of the embedded backbones, usable on their own."""
from .classifier import AttributeClassifier, DigitClassifier
from .dit import DiT
from .vae import VAE

__all__ = ["AttributeClassifier", "DiT", "DigitClassifier", "VAE"]
