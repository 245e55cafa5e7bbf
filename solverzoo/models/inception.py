"""The FID Inception-v3 feature network (pool3, 2048-d), self-contained: no torchvision, no
torch-fidelity at run time.

It is the TensorFlow 2015-12-05 Inception graph that FID was defined with (Heusel et al. 2017),
as ported to PyTorch by pytorch-fid and torch-fidelity: torchvision's Inception-v3 layout with the
TensorFlow patches (average pools that ignore the zero padding, a max pool in the last block's
pooling branch, batch-norm eps 1e-3, a 1008-way classifier). Module names equal torch-fidelity's
``FeatureExtractorInceptionV3`` (and so torchmetrics' ``NoTrainInceptionV3``), so the same
weights file loads with ``strict=True``: ``weights-inception-2015-12-05-6726825d.pth``
(:data:`WEIGHTS_URL`, what torch-fidelity and torchmetrics download) or pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth``, read with ``torch.load(weights_only=True)`` or from a
safetensors export.

Input: ``uint8`` images ``(B, 3, H, W)`` (or floats in [0, 255]); they are resized to 299 x 299,
either like TensorFlow 1.x's ``resize_bilinear`` (``resize="tf1"``: torch-fidelity, the original
FID code) or by torch's antialiased bilinear interpolation (``resize="antialias"``: torchmetrics'
default), then mapped to [-1, 1] by ``(x - 128) / 128``. Tests check the features against
torch-fidelity's and torchmetrics' extractors on the same random weights.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INPUT_SIZE = 299
RESIZE_MODES = ("tf1", "antialias")


def how_to_get_weights(setting: str) -> str:
    """The sentence saying how to provide the weights file (``setting``: the config key)."""
    return (f"the FID Inception-v3 weights are a local file you provide: download {WEIGHTS_URL} once (the file "
            f"torch-fidelity and torchmetrics use; pytorch-fid's pt_inception-2015-12-05-6726825d.pth holds the same "
            f"network) and set {setting}=/path/to/{WEIGHTS_FILE}")


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, as in the TensorFlow graph), ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: Tensor) -> Tensor:
    """3x3 stride-1 average pool that averages only real pixels (TensorFlow's SAME padding)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (``c7`` inner channels)."""

    def __init__(self, cin: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        row, col = dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1), padding=(3, 0))
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, **col)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for k in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{k}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 branches; ``max_pool``: the graph's last block pools by max."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(s), self.branch3x3_2b(s)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


def resize_like_tf1(x: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """Bilinear resize of ``(B, C, H, W)`` floats as TensorFlow 1.x's ``resize_bilinear`` with
    ``align_corners=False`` does it: output pixel ``i`` samples the input at ``i * in / out``
    (no half-pixel offset), between ``floor`` and ``min(floor + 1, in - 1)``."""

    def axis(n_in: int):
        pos = torch.arange(size, dtype=x.dtype, device=x.device) * torch.tensor(n_in / size, dtype=torch.float32)
        lo = pos.long()
        return lo, (lo + 1).clamp_max(n_in - 1), pos - lo.to(x.dtype)

    (y0, y1, wy), (x0, x1, wx) = axis(x.shape[2]), axis(x.shape[3])

    def along_x(rows: Tensor) -> Tensor:  # interpolate within each sampled row first, then between rows
        left, right = rows[..., x0], rows[..., x1]
        return left + (right - left) * wx.view(1, 1, 1, -1)

    top, bottom = along_x(x[:, :, y0]), along_x(x[:, :, y1])
    return top + (bottom - top) * wy.view(1, 1, -1, 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 as FID uses it: ``forward(uint8 images) -> (B, 2048)`` pool3 features (float32).

    Args:
        resize: ``"tf1"`` (torch-fidelity / the original FID code) or ``"antialias"``
            (torchmetrics' default ``antialias=True``): how images reach 299 x 299.
    """

    num_features = 2048

    def __init__(self, resize: str = "tf1"):
        super().__init__()
        if resize not in RESIZE_MODES:
            raise ValueError(f"Inception resize={resize!r}: expected one of {RESIZE_MODES}")
        self.resize = resize
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.MaxPool_1 = nn.MaxPool2d(3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.MaxPool_2 = nn.MaxPool2d(3, stride=2)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = InceptionA(192, 32), InceptionA(256, 64), InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = InceptionC(768, 128), InceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = InceptionC(768, 160), InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b, self.Mixed_7c = InceptionE(1280, max_pool=False), InceptionE(2048, max_pool=True)
        self.AvgPool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2048, 1008)  # unused by the features; kept so the weights file loads strictly
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FIDInceptionV3:
        return super().train(False)  # batch norm stays in inference mode

    def _preprocess(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"Inception expects images (B, 3, H, W), got shape {tuple(x.shape)}")
        x = x.to(self.fc.weight.dtype)
        if self.resize == "tf1":
            x = resize_like_tf1(x)
        else:
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
        return (x - 128) / 128

    def forward(self, images: Tensor) -> Tensor:
        x = self._preprocess(images)
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                     "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool"):
            x = getattr(self, name)(x)
        return torch.flatten(x, 1).float()


def to_uint8(images: Tensor) -> Tensor:
    """Images in [-1, 1] -> uint8 in [0, 255] (truncating, as torchmetrics' ``normalize=True``), grey -> RGB."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def file_sha(path, chunk: int = 1 << 23) -> str:
    """The first 16 hex digits of a file's SHA-256 (read in chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def load_fid_inception(path, *, resize: str = "tf1", setting: str = "metrics.inception_weights",
                       device: str | torch.device = "cpu") -> FIDInceptionV3:
    """The FID Inception with the weights file ``path`` (``.pth`` read with
    ``torch.load(weights_only=True)``, or ``.safetensors``), loaded strictly.

    Raises:
        FileNotFoundError: no file at ``path`` (the message says where to get it and which
            ``setting`` to point at it).
        ValueError: the file is not this network's state dict (names the missing / unexpected keys).
    """
    from solverzoo.models.safe_load import load_state_dict_safely

    if not path or not Path(str(path)).expanduser().is_file():
        raise FileNotFoundError(f"no Inception weights file at {path!r}: {how_to_get_weights(setting)}")
    state = load_state_dict_safely(Path(str(path)).expanduser(), what="Inception weights")
    net = FIDInceptionV3(resize)
    missing, unexpected = net.state_dict().keys() - state.keys(), state.keys() - net.state_dict().keys()
    if missing or unexpected:
        raise ValueError(f"{path} is not the FID Inception-v3 state dict (missing {sorted(missing)[:3]}, unexpected "
                         f"{sorted(unexpected)[:3]}); {how_to_get_weights(setting)}")
    net.load_state_dict(state, strict=True)
    return net.to(device).eval()
