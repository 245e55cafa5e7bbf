"""The self-contained FID Inception (solverzoo.models.inception) against the peers that define the
standard: torch-fidelity's ``FeatureExtractorInceptionV3`` (TF1-style resize) and torchmetrics'
``NoTrainInceptionV3`` (its default antialiased resize), on the same random weights and images.

torch-fidelity cannot be imported as a package here: its ``__init__`` imports its CLIP / VGG /
DINOv2 extractors, which need torchvision. The test therefore runs its *own* source files
(``feature_extractor_inceptionv3.py`` and the three modules it imports) from the PyPI wheel,
under a bare ``torch_fidelity`` package object that skips the ``__init__``: torch-fidelity's real
code, unmodified. The wheel is found installed, at ``$SOLVERZOO_TORCH_FIDELITY`` (a folder or a
``.whl``), or fetched once by ``pip download torch-fidelity==0.4.0 --no-deps``; offline without
it, the peer comparisons skip with that reason and the checks that need no peer still run.

Tolerance: 1e-5 absolute on the 2048 pool3 features (largest |feature| about 31 with these weights);
measured: 0.0, bit-identical to both peers (the same operations in the same order)."""
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from solverzoo.models.inception import FIDInceptionV3, load_fid_inception, resize_like_tf1

FIDELITY_VERSION = "0.4.0"
TOL = 1e-5


def _randomise(net: FIDInceptionV3, seed: int = 0) -> FIDInceptionV3:
    """He-scaled random convolutions and random batch-norm statistics, so activations stay O(1)
    through the 94 layers (default init with unit running variance drifts)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
        elif isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.copy_(0.1 * torch.randn(n, generator=g))
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
        elif isinstance(m, torch.nn.Linear):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.02)
            m.bias.zero_()
    return net


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    with torch.no_grad():
        torch.save(_randomise(FIDInceptionV3()).state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (2, 3, 40, 56), generator=g, dtype=torch.uint8)  # not square, not 299


def _fidelity_root(tmp_path_factory) -> Path | None:
    """A folder holding torch-fidelity's ``torch_fidelity/`` sources and its dist-info."""
    spec = importlib.util.find_spec("torch_fidelity")  # finds without importing (its __init__ would fail)
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]).parent
    given = os.environ.get("SOLVERZOO_TORCH_FIDELITY")
    wheel = Path(given) if given else None
    if wheel is not None and wheel.is_dir():
        return wheel
    if wheel is None:
        dl = tmp_path_factory.mktemp("wheel")
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dl),
                            f"torch-fidelity=={FIDELITY_VERSION}"], capture_output=True, text=True, timeout=120)
        found = sorted(dl.glob("torch_fidelity-*.whl"))
        if r.returncode != 0 or not found:
            return None
        wheel = found[0]
    root = tmp_path_factory.mktemp("torch_fidelity")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(root)
    return root


@pytest.fixture(scope="module")
def fidelity_root(tmp_path_factory):
    root = _fidelity_root(tmp_path_factory)
    if root is None:
        pytest.skip("torch-fidelity's sources are not available offline (pip download torch-fidelity failed and "
                    "SOLVERZOO_TORCH_FIDELITY is unset): the peer comparison needs them")
    return root


PEER_SCRIPT = r"""
import json, sys, types
import torch
root, weights, images = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, root)  # its dist-info there makes torchmetrics see torch-fidelity as installed
pkg = types.ModuleType("torch_fidelity")  # the package without its __init__ (which needs torchvision)
pkg.__path__ = [root + "/torch_fidelity"]
sys.modules["torch_fidelity"] = pkg
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torchmetrics.image.fid import NoTrainInceptionV3
from solverzoo.models.inception import load_fid_inception
x = torch.load(images)
out = {}
with torch.no_grad():
    tf = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights)
    out["tf1_vs_torch_fidelity"] = (load_fid_inception(weights, resize="tf1")(x) - tf(x)[0]).abs().max().item()
    tm = NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights)  # antialias=True
    ours = load_fid_inception(weights, resize="antialias")(x)
    out["antialias_vs_torchmetrics"] = (ours - tm(x).reshape(len(x), -1)).abs().max().item()
    out["scale"] = ours.abs().max().item()
    out["tm_keys_equal"] = sorted(tm.state_dict()) == sorted(load_fid_inception(weights).state_dict())
print(json.dumps(out))
"""


def test_features_equal_torch_fidelity_and_torchmetrics_on_the_same_random_weights(fidelity_root, weights, images,
                                                                                 tmp_path):
    torch.save(images, str(tmp_path / "images.pt"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", PEER_SCRIPT, str(fidelity_root), str(weights), str(tmp_path / "images.pt")],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert 0.05 < out["scale"] < 100, out  # features of a working network, not zeros or overflow
    assert out["tf1_vs_torch_fidelity"] <= TOL, out
    assert out["antialias_vs_torchmetrics"] <= TOL, out
    assert out["tm_keys_equal"]


def test_tf1_resize_matches_torch_fidelity_interpolation(fidelity_root):
    """The TF1-style resize alone, on odd sizes up and down, against torch-fidelity's function."""
    source = fidelity_root / "torch_fidelity" / "interpolate_compat_tensorflow.py"
    spec = importlib.util.spec_from_file_location("_tf_interp", source)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    g = torch.Generator().manual_seed(2)
    for h, w in ((7, 13), (512, 300), (299, 299)):
        x = torch.rand(1, 3, h, w, generator=g) * 255
        ref = mod.interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
        assert torch.equal(resize_like_tf1(x), ref)


def test_weights_load_strictly_from_pth_and_safetensors(weights, images, tmp_path):
    from safetensors.torch import save_file

    a = load_fid_inception(weights)
    st = tmp_path / "inception.safetensors"
    save_file(dict(a.state_dict()), str(st))
    with torch.no_grad():
        fa, fb = a(images), load_fid_inception(st)(images)
    assert fa.shape == (2, 2048) and fa.dtype == torch.float32 and torch.equal(fa, fb)
    # a 299 x 299 input is not resampled by the TF1 resize: identical features either way
    x = torch.randint(0, 256, (1, 3, 299, 299), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(resize_like_tf1(x.float()), x.float())


def test_missing_or_wrong_weights_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"download https://github.com/toshas/torch-fidelity/releases/download/"
                                                r"v0.2.0/weights-inception-2015-12-05-6726825d.pth.*backbone.inception_w"):
        load_fid_inception(tmp_path / "nope.pth", setting="backbone.inception_weights")
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, str(wrong))
    with pytest.raises(ValueError, match=r"not the FID Inception-v3 state dict.*download"):
        load_fid_inception(wrong)


def test_the_bench_inception_extractor_uses_this_network(weights, images):
    """``metrics.feature=inception`` runs here without torch-fidelity or torchvision: the harness's
    extractor gives this network's features of the images quantised to uint8."""
    from solverzoo.bench.metrics import make_extractor

    ex = make_extractor("inception", None, {"inception_weights": str(weights), "antialias": False})
    from solverzoo.models.inception import to_uint8

    x = images.float() / 127.5 - 1
    with torch.no_grad():
        want = load_fid_inception(weights, resize="tf1")(to_uint8(x)).double()
    got = ex(x)
    assert got.shape == (2, 2048) and (got - want).abs().max().item() <= TOL
    assert ex.identity()["num_features"] == 2048 and "tf1" in ex.identity()["name"]
