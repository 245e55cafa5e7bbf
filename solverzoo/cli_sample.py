"""``solverzoo sample``: validate everything a user can get wrong before the backbone loads, then
sample in fixed batches of :data:`SAMPLE_CHUNK` (sample i is bit-identical whatever ``--n``) and
save an image grid, or, for a video backbone, an animated GIF (``--out clip.gif``: one tile per
sample, frames in time) with a frame strip beside it (``clip_frames.png``: one row per sample, its
frames across), or the strip alone (``--out strip.png``)."""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from solverzoo.cli_common import UsageError, parse_options, warn
from solverzoo.registry import registry

MAX_STEPS = 10_000  # `sample --steps` above this is refused (a typo far more often than a wish)


MAX_GRID_PIXELS = 100_000_000  # `sample`: the PNG grid's pixel limit (n x upscaled image size)


MAX_SCALE = 100.0  # `sample --scale` bound: far beyond any useful guidance strength


SAMPLE_CHUNK = 8  # `sample`: sample i is always computed in the batch of samples 8*(i//8) .. 8*(i//8)+7


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


GIF_FRAME_MS = 250  # an animated GIF's time per frame (4 frames per second)


# what `sample` knows of the built-in backbones before loading them (a plugin's is checked after loading)
_BUILTIN_IMAGE = {"shapes-flow": (3, 32, 32), "shapes-eps": (3, 32, 32), "digits": (1, 16, 16)}
_BUILTIN_VIDEO = {"shapes-video": (8, 3, 32, 32), "shapes-video-frames": (8, 3, 32, 32), "shapes-video-ar": (8, 3, 32, 32)}


def _check_prompt(backbone: str, prompt: str, what: str) -> None:
    """Refuse prompts a built-in backbone cannot take; warn about words outside a world's vocabulary."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{what} is not valid UTF-8 text ({prompt.encode('utf-8', 'surrogateescape')[:40]!r}); "
                         "pass the prompt as UTF-8") from None
    if backbone == "gmm":
        raise UsageError(f"backbone gmm is conditioned on class labels (0, 1 or 2), not text like {prompt!r}, and samples "
                         "4-D points, not images: `solverzoo sample` writes an image grid, so use an image backbone "
                         "(shapes-flow, shapes-eps, digits) or benchmark gmm with `solverzoo bench backbone=gmm`")
    if backbone == "digits":
        from solverzoo.models.worlds.digits import digit_label

        try:
            digit_label(prompt)
        except ValueError as exc:
            raise UsageError(f"{what}: {exc}") from None
    if backbone in _BUILTIN_VIDEO:
        _check_video_prompt(backbone, prompt, what)
    if backbone in ("shapes-flow", "shapes-eps"):
        import re

        from solverzoo.models.worlds import shapes as w

        vocab = {t for tpl in w.SINGLE_TEMPLATES + w.PAIR_TEMPLATES for t in re.findall(r"[a-z]+", re.sub(r"\{\w+\}", "", tpl))}
        for words in (w.SHAPES, w.COLOUR_NAMES, w.SIZES, w.POSITIONS, *w.SYNONYMS.values()):
            vocab |= {t for x in words for t in x.split()}
        unknown = [t for t in re.findall(r"[a-z]+", prompt.lower()) if t not in vocab]
        parsed = w.parse_caption(prompt)
        if unknown or parsed["count"] == 0:
            why = (f"words outside its vocabulary: {', '.join(repr(u) for u in dict.fromkeys(unknown))}" if unknown
                   else "no shape named")
            warn(f"{what} {prompt!r} is outside the shapes world's grammar ({why}); the model was trained on captions "
                  "like 'a large red circle at the top left' or 'a small blue square beside a green triangle' "
                  "(1-2 objects; shapes circle/square/triangle; colours " + "/".join(w.COLOUR_NAMES) +
                  "): expect an image that ignores what it does not know")


def _check_video_prompt(backbone: str, prompt: str, what: str) -> None:
    """The frame-by-frame baseline needs a clip caption it can split into frame captions; the
    space-time model takes anything, with a warning when no shape or motion is named."""
    from solverzoo.models.worlds.video import MOTIONS, frame_captions, parse_video_caption

    example = "'a small red circle moving from the top left to the top right'"
    if backbone == "shapes-video-frames" and prompt.strip():
        try:
            frame_captions(prompt)
        except ValueError as exc:
            raise UsageError(f"{what}: {exc}; shapes-video-frames turns a clip caption such as {example} into one "
                             "caption per frame") from None
    parsed = parse_video_caption(prompt)
    if parsed["count"] == 0 or parsed["motion"] is None:
        warn(f"{what} {prompt!r} names no {'shape' if parsed['count'] == 0 else 'motion'} of the shapes-video world; "
             f"the model was trained on captions like {example} (motions: {', '.join(MOTIONS)}): expect a clip that "
             "ignores what it does not know")


def _check_out(out: str) -> None:

    from solverzoo.bench.validate import ConfigError, check_output_dir

    p = Path(out).expanduser()
    if p.is_dir():
        raise UsageError(f"--out {out} is a directory; give a file name such as {os.path.join(out, 'grid.png')}")
    if p.suffix.lower() not in IMAGE_EXTENSIONS + (".gif",):
        raise UsageError(f"--out {out}: the file name needs an image extension ({', '.join(IMAGE_EXTENSIONS)}), e.g. grid.png, "
                         "or .gif for an animated GIF of a video backbone")
    if p.exists() and not os.access(p, os.W_OK):
        raise UsageError(f"--out {out} exists and is not writable")
    try:
        check_output_dir(str(p.parent), f"--out {out}: folder")
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def validate_sample(args) -> None:
    """Every check of ``solverzoo sample`` that needs no backbone: runs before the (slow) load."""

    from solverzoo.bench.validate import ConfigError, check_device

    if args.backbone not in registry.names("backbone"):
        registry.get("backbone", args.backbone)  # UnknownComponentError with close matches
    if args.n < 1:
        raise UsageError(f"--n {args.n}: the number of samples must be at least 1")
    if not 0 <= args.seed <= 2**63 - 1 - args.n - SAMPLE_CHUNK:
        raise UsageError(f"--seed {args.seed} is out of range: seeds are integers in [0, 2**63 - 1 - n - {SAMPLE_CHUNK}] "
                         "(sample i uses seed + i)")
    if not 1 <= args.steps <= MAX_STEPS:
        raise UsageError(f"--steps {args.steps} must lie in [1, {MAX_STEPS}]")
    if not (math.isfinite(args.scale) and 0.0 <= args.scale <= MAX_SCALE):
        raise UsageError(f"--scale {args.scale:g} must be a finite number in [0, {MAX_SCALE:g}]")
    if args.negative_prompt is not None and args.guidance == "none":
        raise UsageError("--negative-prompt needs guidance (e.g. --guidance cfg, or negative_prompt); with "
                         "--guidance none it would be ignored")
    registry.get("solver", args.solver)
    if args.grid is not None:
        registry.get("grid", args.grid)
    if args.guidance != "none":
        registry.get("guidance", args.guidance)(scale=args.scale)  # names and checks the scale
    if args.cache is not None:
        registry.get("cache", args.cache)
    try:
        check_device(args.device)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    _check_prompt(args.backbone, args.prompt, "--prompt")
    if args.negative_prompt is not None:
        _check_prompt(args.backbone, args.negative_prompt, "--negative-prompt")
    if args.backbone in _BUILTIN_IMAGE:
        _check_grid_pixels(args.n, _BUILTIN_IMAGE[args.backbone])
        _check_not_gif(args.backbone, args.out)
    if args.backbone in _BUILTIN_VIDEO:
        _check_strip_pixels(args.n, _BUILTIN_VIDEO[args.backbone])
    _check_out(args.out)


def _check_not_gif(backbone: str, out: str) -> None:
    """Refuse ``--out x.gif`` for a backbone that samples still images."""
    if Path(out).suffix.lower() == ".gif":
        raise UsageError(f"--out {out}: animated GIFs need a video backbone (e.g. --backbone shapes-video); backbone "
                         f"{backbone} samples still images: give a .png file name for an image grid")


def _check_strip_pixels(n: int, shape) -> None:
    """Refuse a frame strip (n rows of T frames, upscaled 4x, 2-pixel padding) over MAX_GRID_PIXELS."""
    t, _, h, w = shape
    px = (n * (h + 2) + 2) * (t * (w + 2) + 2) * 16
    if px > MAX_GRID_PIXELS:
        most = int(MAX_GRID_PIXELS / 16 / (t * (w + 2) + 2) / (h + 2))
        raise UsageError(f"--n {n}: the frame strip would have {px / 1e6:.0f} megapixels, over the limit of "
                         f"{MAX_GRID_PIXELS / 1e6:.0f}; use --n {most} or fewer (and several seeds) instead")


def _check_grid_pixels(n: int, shape) -> None:
    """Refuse an image grid (upscaled 4x, 2-pixel padding: as save_grid writes it) over MAX_GRID_PIXELS."""

    _, h, w = shape
    ncol = math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    px = (nrow * (h + 2) + 2) * (ncol * (w + 2) + 2) * 16
    if px > MAX_GRID_PIXELS:
        most = int((math.sqrt(MAX_GRID_PIXELS / 16) / (max(h, w) + 2)) ** 2)
        raise UsageError(f"--n {n}: the image grid would have {px / 1e6:.0f} megapixels, over the limit of "
                         f"{MAX_GRID_PIXELS / 1e6:.0f}; use --n {most} or fewer (and several seeds) instead")


def cmd_sample(args) -> int:
    import time

    validate_sample(args)  # before the backbone load: bad input costs nothing
    from solverzoo.backbone import load_backbone
    from solverzoo.models.images import save_grid

    t0 = time.perf_counter()
    bb = load_backbone(args.backbone, args.device)
    load_s = time.perf_counter() - t0
    video = _check_loaded(bb, args)
    guidance = None if args.guidance == "none" else args.guidance
    if args.negative_prompt is not None and guidance == "cfg":
        guidance = "negative_prompt"
    kw = dict(solver=args.solver, steps=args.steps, grid=args.grid, guidance=guidance, scale=args.scale, device=args.device,
              solver_options=parse_options(args.option), grid_options=parse_options(args.grid_option),
              cache=args.cache, cache_options=parse_options(args.cache_option), batch_size=SAMPLE_CHUNK)
    if bb.generator is not None:  # a next-token model: its generator, not a solver
        images, nfe, evals, sampling_s = _generate_chunks(bb, args, guidance)
        how = f"autoregressive ({', '.join(f'{k}={v}' for k, v in parse_options(args.option).items()) or 'defaults'})"
    else:
        images, nfe, evals, sampling_s = _sample_chunks(bb, args, kw)
        how = f"solver {args.solver}, {args.steps} steps"
    path = save_video(images, args.out) if video else save_grid(images, args.out)
    print(f"wrote {path}: {args.n} {'clips' if video else 'samples'} of {args.prompt!r} from {bb.name}, {how}, "
          f"guidance {guidance or 'none'}" + (f" scale {args.scale}" if guidance else ""))
    print(f"NFE per sample: {nfe}; backbone evaluations {evals:.1f}; wall time {time.perf_counter() - t0:.2f} s "
          f"(sampling {sampling_s:.2f} s; backbone load {load_s:.2f} s)")
    return 0


def _check_loaded(bb, args) -> bool:
    """What only the loaded backbone tells: images (False) or clips (True), and their output's size."""
    import torch

    if len(bb.latent_shape) not in (3, 4):
        raise UsageError(f"backbone {bb.name} samples {tuple(bb.latent_shape)}-shaped points, not images; "
                         "`solverzoo sample` writes an image grid")
    if bb.model is None and bb.generator is None:
        raise UsageError(f"backbone {bb.name} has neither a diffusion model nor a generator to sample with")
    if args.backbone in _BUILTIN_IMAGE or args.backbone in _BUILTIN_VIDEO:
        return args.backbone in _BUILTIN_VIDEO
    with torch.no_grad():
        shape = tuple(bb.decode(torch.zeros((1,) + tuple(bb.latent_shape), device=args.device)).shape[1:])
    if len(shape) == 4:
        _check_strip_pixels(args.n, shape)
        return True
    if len(shape) != 3:
        raise UsageError(f"backbone {bb.name} decodes to {shape}-shaped samples, neither images (C, H, W) nor clips "
                         "(T, C, H, W); `solverzoo sample` writes images")
    _check_not_gif(bb.name, args.out)
    _check_grid_pixels(args.n, shape)
    return False


def save_video(clips, out: str) -> str:
    """Write clips (B, T, C, H, W) in [-1, 1]: for ``x.gif`` an animated GIF (one tile per clip,
    frames in time, a bar under the tiles showing the time) and the frame strip ``x_frames.png``
    beside it; for any other image file name the strip alone (one row per clip, T frames across).
    Returns what was written, for the message."""
    from solverzoo.models.images import save_grid

    p = Path(out).expanduser()
    B, T = clips.shape[:2]
    if p.suffix.lower() != ".gif":
        return str(save_grid(clips.reshape(B * T, *clips.shape[2:]), p, ncol=T))
    strip = save_grid(clips.reshape(B * T, *clips.shape[2:]), p.with_name(p.stem + "_frames.png"), ncol=T)
    _save_gif(clips, p)
    return f"{p} ({T} frames) and {strip}"


def _save_gif(clips, path: Path, scale: int = 4, pad: int = 2) -> None:
    """The animated GIF of clips (B, T, C, H, W): frame t tiles every clip's frame t (square-ish
    grid, ``pad`` white pixels between tiles), with a time bar under the tiles filled to (t+1)/T."""
    import numpy as np
    from PIL import Image

    from solverzoo.models.images import to_uint8

    B, T = clips.shape[:2]
    frames = to_uint8(clips.reshape(B * T, *clips.shape[2:])).reshape(B, T, *to_uint8(clips[:1, 0]).shape[1:])
    h, w = frames.shape[2:4]
    ncol = int(np.ceil(np.sqrt(B)))
    nrow = int(np.ceil(B / ncol))
    width = ncol * (w + pad) + pad
    images = []
    for t in range(T):
        canvas = np.full((nrow * (h + pad) + pad + 2, width, 3), 255, dtype=np.uint8)  # + a 2-pixel time bar
        for i in range(B):
            r, c = divmod(i, ncol)
            canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = frames[i, t]
        canvas[-2:, : round(width * (t + 1) / T)] = 96
        img = Image.fromarray(canvas)
        images.append(img.resize((img.width * scale, img.height * scale), Image.NEAREST))
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=GIF_FRAME_MS, loop=0, optimize=False)


def _generate_chunks(bb, args, guidance):
    """A generator backbone's samples 0..n-1 (sample i from seed ``seed + i``, whatever --n), with
    ``--option temperature=... top_k=...`` and the guidance scale on the logits ('cfg' only)."""
    import time

    import torch

    from solverzoo.noise import generators

    if guidance not in (None, "cfg"):
        raise UsageError(f"backbone {bb.name} samples token by token: guidance {guidance!r} does not apply (use cfg or none)")
    opts = parse_options(args.option)
    unknown = sorted(set(opts) - {"temperature", "top_k"})
    if unknown:
        raise UsageError(f"backbone {bb.name} takes --option temperature=T and top_k=K, not {', '.join(unknown)}")
    t0, out, stats = time.perf_counter(), [], {}
    with torch.no_grad():
        for j in range(0, args.n, SAMPLE_CHUNK):
            k = min(SAMPLE_CHUNK, args.n - j)
            x, stats = bb.generator.generate([args.prompt] * k, generators(range(args.seed + j, args.seed + j + k)),
                                             cfg_scale=args.scale if guidance else 1.0, **opts)
            out.append(bb.decode(x))
    passes = int(stats["forward_passes"])
    return torch.cat(out), passes, float(passes), time.perf_counter() - t0


def _sample_chunks(bb, args, kw):
    """Samples 0..n-1 in fixed batches of SAMPLE_CHUNK (sample i always in the batch of seeds
    seed + 8*(i//8) ..., the last batch filled up with the samples that follow and dropped), so
    sample i is bit-identical whatever --n; a progress bar over model calls, with an estimate."""
    import time

    import torch
    from tqdm import tqdm

    from solverzoo.bench.generate import generate

    n, k = args.n, SAMPLE_CHUNK
    chunks = (n + k - 1) // k
    calls = [0]
    net = bb.model.net
    guess = args.steps * registry.get("solver", args.solver).evals_per_step * chunks
    bar = tqdm(total=guess, desc=f"sampling {n} x {args.steps} steps", unit="call", file=sys.stderr,
               disable=None if chunks * args.steps < 200 else False, leave=False)

    def counted(*a, **kk):
        calls[0] += 1
        bar.update(1)
        return net(*a, **kk)
    counted.__wrapped__ = net
    images, nfe, evals, samp = [], 0, 0.0, 0.0
    bb.model.net = counted
    try:
        t0 = time.perf_counter()
        for j in range(chunks):
            seeds = range(args.seed + j * k, args.seed + (j + 1) * k)
            neg = [args.negative_prompt] * k if args.negative_prompt is not None else None
            out = generate(bb, [args.prompt] * k, negative_prompts=neg, seeds=seeds, **kw)
            take = min(k, n - j * k)
            images.append(out.images[:take])
            nfe, evals, samp = out.nfe, evals + out.backbone_evals * take / n, samp + out.sampling_s
            if j == 0:
                bar.total = calls[0] * chunks
                bar.refresh()
                if chunks > 1:
                    est = (time.perf_counter() - t0) * (chunks - 1)
                    print(f"solverzoo: {n} samples in {chunks} batches of {k}; about {est:.0f} s to go "
                          f"(first batch {time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
    finally:
        bb.model.net = net
        bar.close()
    return torch.cat(images), nfe, evals, samp
