"""No foreign code, anywhere: every file or folder a user points at is loaded without executing
code from it. Each loader gets crafted malicious input - a pickle whose unpickling creates a
marker file, a model folder carrying Python code (``modeling_evil.py`` + ``auto_map``, under a
path containing ``jinaai``), pickle-only weights, an ``.npz`` with an object array - and must
refuse it with a message saying what to provide instead, the marker never created. Positive
tests load legit tiny files (a random safetensors CLIP folder built offline, a numeric ``.npz``)."""
from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from solverzoo.models import safe_load
from solverzoo.models.safe_load import UnsafeFileError


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker file appearing means code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "a payload ran: the marker file was created"


def evil_pth(path: Path, marker: Path) -> Path:
    torch.save({"weight": torch.zeros(2), "payload": Payload(marker)}, str(path))
    return path


def evil_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(Payload(marker)))
    return path


def code_folder(root: Path, marker: Path, config: dict | None = None) -> Path:
    """A model folder under a ``jinaai`` path with custom code: ``modeling_evil.py`` (creating the
    marker on import) and a ``config.json`` whose ``auto_map`` points at it."""
    d = root / "jinaai" / "jina-clip-v2"
    d.mkdir(parents=True)
    (d / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n"
                                        "from transformers import CLIPModel as EvilModel\n")
    cfg = dict(config or {"model_type": "clip"})
    cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel", "AutoConfig": "modeling_evil.EvilConfig"}
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def tiny_clip_folder(path: Path) -> Path:
    """A random tiny standard CLIP (config + model.safetensors + tokenizer + image processor),
    built offline: a character vocabulary, no merges."""
    transformers = pytest.importorskip("transformers")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    try:
        tok = transformers.CLIPTokenizer(vocab=vocab, merges=[])
    except TypeError:  # transformers < 5: files
        (path / "_tok").mkdir(parents=True)
        (path / "_tok" / "vocab.json").write_text(json.dumps(vocab))
        (path / "_tok" / "merges.txt").write_text("#version: 0.2\n")
        tok = transformers.CLIPTokenizer(str(path / "_tok" / "vocab.json"), str(path / "_tok" / "merges.txt"))
        shutil.rmtree(path / "_tok")
    ip = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, eos_token_id=1, bos_token_id=0, pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8)
    torch.manual_seed(0)
    transformers.CLIPModel(cfg).save_pretrained(str(path))
    transformers.CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(str(path))
    assert (path / "model.safetensors").is_file()
    return path


@pytest.fixture(scope="module")
def good_clip(tmp_path_factory):
    return tiny_clip_folder(tmp_path_factory.mktemp("clip") / "tiny-clip")


def pickle_only_folder(path: Path, marker: Path, weights_name: str, config: dict) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    evil_pth(path / weights_name, marker)
    return path


PROVIDE_CODE = "provide a standard-architecture model folder (config.json + *.safetensors) without custom code"


# --- the shared checks -------------------------------------------------------------------------

def test_load_state_dict_safely_refuses_an_evil_pth_and_reads_plain_ones(tmp_path, marker):
    evil = evil_pth(tmp_path / "evil.pth", marker)
    with pytest.raises(UnsafeFileError, match=r"holds more than tensors .*provide a safetensors export"):
        safe_load.load_state_dict_safely(evil)
    with pytest.raises(UnsafeFileError, match=r"unknown format.*provide a \.safetensors file"):
        safe_load.load_state_dict_safely(evil_pickle(tmp_path / "evil.pkl", marker))
    fake = tmp_path / "evil.safetensors"  # a pickle renamed: parsed as safetensors, never unpickled
    fake.write_bytes(evil.read_bytes())
    with pytest.raises(UnsafeFileError, match="not a valid safetensors file"):
        safe_load.load_state_dict_safely(fake)
    # legit: a plain state dict through torch.load(weights_only=True), and safetensors
    sd = {"a.weight": torch.randn(3, 2), "a.bias": torch.zeros(3)}
    torch.save(sd, str(tmp_path / "ok.pth"))
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "ok.safetensors"))
    for name in ("ok.pth", "ok.safetensors"):
        got = safe_load.load_state_dict_safely(tmp_path / name)
        assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)


def test_check_model_folder_refuses_code_auto_map_and_pickle_only_weights(tmp_path, marker):
    with pytest.raises(UnsafeFileError, match=r"carries Python code \(modeling_evil\.py\).*" + re.escape(PROVIDE_CODE)):
        safe_load.check_model_folder(code_folder(tmp_path, marker))
    only_map = tmp_path / "auto-map-only"
    only_map.mkdir()
    (only_map / "config.json").write_text(json.dumps({"model_type": "clip", "auto_map": {"AutoModel": "x.Y"}}))
    (only_map / "model.safetensors").write_bytes(b"")
    with pytest.raises(UnsafeFileError, match=r"config\.json asks for custom code \('auto_map'\).*without custom code"):
        safe_load.check_model_folder(only_map)
    tok_remote = tmp_path / "tok-remote"
    (tok_remote / "tokenizer").mkdir(parents=True)
    (tok_remote / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({"trust_remote_code": True}))
    with pytest.raises(UnsafeFileError, match=r"asks for custom code \('trust_remote_code'\)"):
        safe_load.check_model_folder(tok_remote)
    pk = pickle_only_folder(tmp_path / "pk", marker, "pytorch_model.bin", {"model_type": "clip"})
    with pytest.raises(UnsafeFileError, match=r"only pickle-based weights \(pytorch_model\.bin\).*provide a safetensors export"):
        safe_load.check_model_folder(pk)
    (pk / "model.safetensors").write_bytes(b"")  # a safetensors export beside it: accepted (loaders pass use_safetensors=True)
    assert safe_load.check_model_folder(pk) == pk
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        safe_load.check_model_folder(tmp_path / "missing")


# --- each loader ---------------------------------------------------------------------------------

def test_shipped_weights_loader_refuses_pickles(tmp_path, marker):
    from solverzoo.models import weights
    from solverzoo.models.nets.classifier import AttributeClassifier

    for name in ("evil.pth", "evil.pt", "evil.bin", "evil.ckpt", "evil.pkl", "EVIL.PTH"):
        evil = evil_pth(tmp_path / name, marker)
        with pytest.raises(weights.WeightsError, match=r"refusing to load a pickle.*convert it to safetensors"):
            weights.load_into(AttributeClassifier(), evil)
    fake = tmp_path / "evil.safetensors"
    fake.write_bytes(evil.read_bytes())
    with pytest.raises(weights.WeightsError, match="not a valid safetensors file"):
        weights.load_into(AttributeClassifier(), fake)
    ok = weights.save(AttributeClassifier(), "ok", {"config": {}}, directory=tmp_path)
    assert isinstance(weights.load_into(AttributeClassifier(), ok), AttributeClassifier)


def _fidelity():
    try:
        import torch_fidelity.feature_extractor_inceptionv3 as fe  # noqa: F401
    except Exception:  # noqa: BLE001
        return None
    return fe


def test_inception_weights_evil_pth_is_refused_before_torch_fidelity_sees_it(tmp_path, marker):
    from solverzoo.bench.metrics import make_extractor

    evil = evil_pth(tmp_path / "pt_inception-2015-12-05-6726825d.pth", marker)
    with pytest.raises(UnsafeFileError, match=r"Inception weights .*holds more than tensors.*provide a safetensors export"):
        make_extractor("inception", None, {"inception_weights": str(evil)})


@pytest.mark.skipif(_fidelity() is None, reason="torch-fidelity is not installed (optional: pip install torch-fidelity); "
                    "the evil .pth refusal is tested above without it")
def test_inception_extractor_loads_a_plain_state_dict_without_torch_loading_the_path(tmp_path, monkeypatch):
    fe = _fidelity()
    from solverzoo.bench.metrics import make_extractor

    # a random network's state dict, built without weights (torch-fidelity always loads some)
    with monkeypatch.context() as m:
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        state = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    path = tmp_path / "inception.pth"
    torch.save(state, str(path))

    real_load = torch.load

    def weights_only_load(*a, **k):  # torch-fidelity's own torch.load(path, weights_only=False) must not run
        assert k.get("weights_only") is True, "the Inception weights were torch.load-ed without weights_only=True"
        return real_load(*a, **k)

    monkeypatch.setattr(torch, "load", weights_only_load)
    ex = make_extractor("inception", None, {"inception_weights": str(path)})
    feats = ex(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()


def test_clip_score_refuses_code_folders_and_pickle_only_weights(tmp_path, marker):
    from solverzoo.bench.metrics import clip_score

    imgs = torch.rand(2, 3, 16, 16) * 2 - 1
    with pytest.raises(UnsafeFileError, match=r"CLIP model folder .*jinaai.*carries Python code.*without custom code"):
        clip_score(imgs, ["a", "b"], str(code_folder(tmp_path, marker)))
    pk = pickle_only_folder(tmp_path / "jinaai-bin", marker, "pytorch_model.bin", {"model_type": "clip"})
    with pytest.raises(UnsafeFileError, match=r"only pickle-based weights.*provide a safetensors export"):
        clip_score(imgs, ["a", "b"], str(pk))
    odd = tmp_path / "not-clip"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "jina_clip"}))
    (odd / "model.safetensors").write_bytes(b"")
    with pytest.raises(UnsafeFileError, match=r"model_type 'jina_clip', not a standard CLIP.*provide a Hugging Face CLIPModel"):
        clip_score(imgs, ["a", "b"], str(odd))


def test_clip_score_works_with_a_local_clip_folder_and_torchmetrics_never_gets_the_path(good_clip, tmp_path, monkeypatch):
    import torchmetrics.multimodal.clip_score as tm

    from solverzoo.bench.metrics import clip_score, make_extractor

    seen = []
    real = tm._get_clip_model_and_processor
    monkeypatch.setattr(tm, "_get_clip_model_and_processor", lambda arg: (seen.append(arg), real(arg))[1])
    # the documented metrics.clip_model=<local CLIP folder>, under a path torchmetrics would treat as jina's
    folder = tmp_path / "jinaai" / "clip"
    shutil.copytree(good_clip, folder)
    imgs = torch.rand(3, 3, 16, 16) * 2 - 1
    out = clip_score(imgs, ["a red circle", "a blue square", "green"], str(folder))
    assert 0.0 <= out["clip_score"] <= 100.0 and str(folder) in out["clip_model"]
    assert seen and all(callable(a) for a in seen), "a path string reached torchmetrics' own CLIP loader"
    ex = make_extractor("clip", None, {"clip_model": str(folder)})
    feats = ex(imgs)
    assert feats.shape == (3, 8) and torch.isfinite(feats).all()


def test_clip_feature_extractor_refuses_a_code_folder(tmp_path, marker):
    from solverzoo.bench.metrics import make_extractor

    with pytest.raises(UnsafeFileError, match="carries Python code"):
        make_extractor("clip", None, {"clip_model": str(code_folder(tmp_path, marker))})


def test_text_conditioner_refuses_code_and_pickle_only_folders(tmp_path, marker, good_clip):
    from solverzoo.models.conditioners import TextConditioner

    with pytest.raises(UnsafeFileError, match=r"text encoder folder .*carries Python code.*without custom code"):
        TextConditioner(str(code_folder(tmp_path, marker)))
    pk = pickle_only_folder(tmp_path / "t5-bin", marker, "pytorch_model.bin", {"model_type": "t5"})
    with pytest.raises(UnsafeFileError, match=r"only pickle-based weights.*provide a safetensors export"):
        TextConditioner(str(pk))
    c = TextConditioner(str(good_clip), max_length=16)  # legit: the CLIP text tower from safetensors
    assert c.encode(["a red circle"])["tokens"].shape == (1, 16, 16)


def test_diffusers_loader_refuses_code_pickle_only_and_unsafe_options(tmp_path, marker):
    diffusers = pytest.importorskip("diffusers", reason="diffusers is an optional test dependency")
    from solverzoo.models.adapters import load_pretrained

    with pytest.raises(UnsafeFileError, match=r"diffusers UNet2DModel folder .*carries Python code.*without custom code"):
        load_pretrained("UNet2DModel", str(code_folder(tmp_path, marker, {"_class_name": "UNet2DModel"})))
    unet_cfg = {"_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 3, "out_channels": 3}
    pk = pickle_only_folder(tmp_path / "unet-bin" / "unet", marker, "diffusion_pytorch_model.bin", unet_cfg)
    with pytest.raises(UnsafeFileError, match=r"only pickle-based weights.*provide a safetensors export"):
        load_pretrained("UNet2DModel", str(pk.parent), subfolder="unet")
    for bad in ({"custom_pipeline": "evil"}, {"trust_remote_code": True}, {"use_safetensors": False}):
        with pytest.raises(UnsafeFileError, match=r"load_pretrained refuses .*use a standard diffusers model"):
            load_pretrained("UNet2DModel", str(pk.parent), **bad)
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(str(tmp_path / "ok"))
    got = load_pretrained("UNet2DModel", str(tmp_path / "ok"))
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), unet.state_dict().values()))


def test_npz_statistics_refuse_object_arrays_and_pickles(tmp_path, marker):
    obj = tmp_path / "evil.npz"
    np.savez(obj, mu=np.zeros(2), sigma=np.array([Payload(marker), 1], dtype=object))
    with pytest.raises(UnsafeFileError, match=r"holds pickled Python objects.*np\.savez\(path, mu=mu, sigma=sigma\)"):
        safe_load.load_npz_safely(obj)
    npy = tmp_path / "evil.npy"
    np.save(npy, np.array([Payload(marker)], dtype=object))
    for p in (npy, evil_pickle(tmp_path / "raw.npz", marker)):
        with pytest.raises(UnsafeFileError, match=r"holds pickled Python objects.*save plain numeric arrays"):
            safe_load.load_npz_safely(p)
    plain = tmp_path / "plain.npy"
    np.save(plain, np.zeros(3))
    with pytest.raises(UnsafeFileError, match=r"not an \.npz archive.*np\.savez"):
        safe_load.load_npz_safely(plain)
    ok = tmp_path / "ok.npz"
    np.savez(ok, mu=np.arange(2.0), sigma=np.eye(2))
    z = safe_load.load_npz_safely(ok, keys=("mu", "sigma"))
    assert np.array_equal(z["mu"], np.arange(2.0)) and np.array_equal(z["sigma"], np.eye(2))
    with pytest.raises(ValueError, match="lacks n"):
        safe_load.load_npz_safely(ok, keys=("n",))


def test_reference_npz_goes_through_the_safe_loader(tmp_path, marker):
    from solverzoo.bench.metrics import Extractor
    from solverzoo.bench.reference_set import load_reference

    world = SimpleNamespace(name="w", prompts=lambda seed, n: ["p"] * n)
    bb = SimpleNamespace(require_world=lambda: world)
    ex = Extractor("x", "h", 2, lambda x: x)
    evil = tmp_path / "evil.npz"
    np.savez(evil, mu=np.zeros(2), sigma=np.array([Payload(marker), 1], dtype=object))
    mcfg = {"reference": {"kind": "npz", "seed": 0, "n": 4, "path": str(evil)}}
    with pytest.raises(UnsafeFileError, match="holds pickled Python objects"):
        load_reference(bb, mcfg, ex, tmp_path / "cache")
    ok = tmp_path / "ok.npz"
    np.savez(ok, mu=np.arange(2.0), sigma=np.eye(2), n=7)
    ref = load_reference(bb, {"reference": {**mcfg["reference"], "path": str(ok)}}, ex, tmp_path / "cache")
    assert ref.n == 7 and np.array_equal(ref.mu, np.arange(2.0))
