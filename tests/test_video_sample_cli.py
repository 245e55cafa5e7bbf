"""`solverzoo sample` on a video backbone: an animated GIF (T frames, one tile per clip) and the
frame strip beside it, the strip alone for a .png, and clear refusals (a GIF of an image
backbone). Sizes are checked against save_grid's layout (4x upscaling, 2-pixel padding)."""
import numpy as np
import pytest
import torch
from PIL import Image

from solverzoo.cli import main
from solverzoo.cli_sample import save_video
from solverzoo.models.worlds.video import FRAMES

PROMPT = "a small red circle moving from the top left to the top right"


def _strip_size(n_clips, frames=FRAMES, h=32, w=32, pad=2, scale=4):
    return ((frames * (w + pad) + pad) * scale, (n_clips * (h + pad) + pad) * scale)


def test_sample_gif_writes_t_frames_and_the_strip(tmp_path, capsys):
    out = tmp_path / "clip.gif"
    assert main(["sample", "--backbone", "shapes-video", "--prompt", PROMPT, "--steps", "2", "--n", "2",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "NFE per sample: 4" in printed and "wall time" in printed and "clip_frames.png" in printed
    with Image.open(out) as gif:
        assert gif.n_frames == FRAMES and gif.is_animated
        assert gif.size == ((2 * 34 + 2) * 4, (34 + 2 + 2) * 4)  # two tiles side by side + the time bar
    with Image.open(tmp_path / "clip_frames.png") as strip:
        assert strip.size == _strip_size(2)


def test_save_video_frames_are_the_clips_frames(tmp_path):
    """Every GIF frame shows each clip's frame t at its tile; the strip shows clip i's frames in row i."""
    g = torch.Generator().manual_seed(0)
    clips = (torch.rand(3, 4, 3, 32, 32, generator=g) * 2 - 1).round()  # black / white pixels survive the GIF palette
    save_video(clips, str(tmp_path / "c.gif"))
    want = ((clips + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
    with Image.open(tmp_path / "c.gif") as gif:
        assert gif.n_frames == 4
        for t in range(4):
            gif.seek(t)
            px = np.asarray(gif.convert("RGB"))
            tile = px[8:8 + 128:4, 8:8 + 128:4]  # clip 0 (top left tile, 2-pixel pad, 4x upscaled)
            assert (tile == want[0, t]).all(), t
            tile2 = px[8:8 + 128:4, (2 + 34 * 1) * 4:(2 + 34 * 1) * 4 + 128:4]  # clip 1, next column
            assert (tile2 == want[1, t]).all(), t
    with Image.open(tmp_path / "c_frames.png") as strip:
        px = np.asarray(strip.convert("RGB"))
        r, t = 2, 3
        tile = px[(2 + 34 * r) * 4:(2 + 34 * r) * 4 + 128:4, (2 + 34 * t) * 4:(2 + 34 * t) * 4 + 128:4]
        assert (tile == want[r, t]).all()
        assert strip.size == _strip_size(3, frames=4)


def test_png_on_a_video_backbone_writes_the_strip(tmp_path, capsys):
    out = tmp_path / "strip.png"
    assert main(["sample", "--backbone", "shapes-video-frames", "--prompt", PROMPT, "--steps", "1", "--n", "3",
                 "--out", str(out)]) == 0
    with Image.open(out) as strip:
        assert strip.size == _strip_size(3)
    assert not (tmp_path / "strip_frames.png").exists()


@pytest.mark.parametrize("argv,fragment", [
    (["--backbone", "shapes-flow", "--prompt", "a red circle"], "animated GIFs need a video backbone"),
    (["--backbone", "shapes-video-frames", "--prompt", "hello there"], "one caption per frame"),
])
def test_sample_gif_user_errors(tmp_path, capsys, argv, fragment):
    assert main(["sample", *argv, "--out", str(tmp_path / "x.gif")]) == 2
    assert fragment in capsys.readouterr().err
    assert not (tmp_path / "x.gif").exists()


def test_sample_the_next_token_backbone(tmp_path, capsys):
    """`sample --backbone shapes-video-ar` runs its generator (no solver): the strip is the
    generator's clips for seeds 0..n-1, NFE = forward passes (128 tokens, x2 with cfg)."""
    from solverzoo.backbone import load_backbone
    from solverzoo.noise import generators

    out = tmp_path / "ar.png"
    assert main(["sample", "--backbone", "shapes-video-ar", "--prompt", PROMPT, "--n", "2", "--scale", "2",
                 "--option", "temperature=0.7", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "autoregressive (temperature=0.7)" in printed and "NFE per sample: 256" in printed
    bb = load_backbone("shapes-video-ar")
    with torch.no_grad():
        x, _ = bb.generator.generate([PROMPT] * 2, generators(range(2)), cfg_scale=2.0, temperature=0.7)
    want = ((bb.decode(x) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
    with Image.open(out) as strip:
        assert strip.size == _strip_size(2)
        px = np.asarray(strip.convert("RGB"))[::4, ::4]  # undo the 4x (nearest) upscaling
    for i in range(2):
        for t in range(FRAMES):
            np.testing.assert_array_equal(px[2 + i * 34: 2 + i * 34 + 32, 2 + t * 34: 2 + t * 34 + 32], want[i, t])


def test_next_token_backbone_refuses_other_guidance(tmp_path, capsys):
    assert main(["sample", "--backbone", "shapes-video-ar", "--prompt", PROMPT, "--guidance", "apg",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "samples token by token" in capsys.readouterr().err
