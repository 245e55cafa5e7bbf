"""KL-regularised convolutional autoencoder (Kingma & Welling 2014; the latent-diffusion VAE of
Rombach et al. 2022, in small): 32x32x3 images to 8x8x4 latents, with a scaling factor that
gives the latents unit standard deviation."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
                                  nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class VAE(nn.Module):
    def __init__(self, in_channels: int = 3, latent_channels: int = 4, base: int = 16):
        super().__init__()
        self.config = dict(in_channels=in_channels, latent_channels=latent_channels, base=base)
        b = base
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, b, 3, padding=1), ResBlock(b),
            nn.Conv2d(b, 2 * b, 3, stride=2, padding=1), ResBlock(2 * b),
            nn.Conv2d(2 * b, 2 * b, 3, stride=2, padding=1), ResBlock(2 * b),
            nn.GroupNorm(8, 2 * b), nn.SiLU(), nn.Conv2d(2 * b, 2 * latent_channels, 3, padding=1))
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, 2 * b, 3, padding=1), ResBlock(2 * b),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(2 * b, 2 * b, 3, padding=1), ResBlock(2 * b),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(2 * b, b, 3, padding=1), ResBlock(b),
            nn.GroupNorm(8, b), nn.SiLU(), nn.Conv2d(b, in_channels, 3, padding=1))
        self.register_buffer("scaling_factor", torch.ones(()))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance of the (unscaled) latents."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30, 20)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def loss(self, x: Tensor, kl_weight: float, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        mean, logvar = self.encode(x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator)
        rec = self.decode(z)
        rec_loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
        kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).mean()
        return rec_loss + kl_weight * kl, {"rec": float(rec_loss.detach()), "kl": float(kl.detach())}

    # the scaled latent space the DiT lives in
    def to_latent(self, x: Tensor) -> Tensor:
        return self.encode(x)[0] * self.scaling_factor

    def from_latent(self, z: Tensor) -> Tensor:
        return self.decode(z / self.scaling_factor)
