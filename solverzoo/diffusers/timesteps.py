"""The time grid a :class:`~solverzoo.diffusers.SolverzooScheduler` samples on.

Two sources. With ``grid=None`` the grid follows the original (base) diffusers scheduler: it is
instantiated from its config and asked for the same ``set_timesteps`` call (step count, custom
``sigmas`` / ``timesteps``, FLUX's ``mu``), so spacing, shift, dynamic shift and every other
option of that scheduler carry over exactly. With a zoo grid name the zoo builds it; on a flow
model it is laid on the base config's shifted flow schedule (``shift``, or ``exp(mu)`` under
dynamic shifting: both give ``sigma = s u / (1 + (s - 1) u)``), so ``flow_shift`` with
``shift=1`` reproduces FlowMatchEuler's spacing and every zoo grid keeps the model's
resolution-dependent shift.
"""
from __future__ import annotations

import inspect
import math

import numpy as np
import torch

import solverzoo as sz

_VP_DEFAULT, _FLOW_DEFAULT = "DDIMScheduler", "FlowMatchEulerDiscreteScheduler"
_COMMON = ("DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
           "DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler", "DEISMultistepScheduler",
           "HeunDiscreteScheduler", "LMSDiscreteScheduler", "DPMSolverSinglestepScheduler", "KDPM2DiscreteScheduler",
           "LCMScheduler", "DPMSolverSDEScheduler", "FlowMatchHeunDiscreteScheduler")


def _init_keys(cls) -> frozenset:
    return frozenset(p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs"))


def base_class_name(config: dict) -> str | None:
    """The diffusers scheduler class a config belongs to: its ``_class_name`` when saved, else the
    class with the most constructor arguments that are all keys of the config (an in-memory
    scheduler's ``config`` holds every constructor argument, no class name, and the keys of the
    schedulers it was made ``from_config`` of); ties go to the common classes. Pass the scheduler
    itself (``from_config(pipe.scheduler)``) to name its class exactly."""
    if config.get("_class_name"):
        return config["_class_name"]
    import diffusers

    keys = frozenset(k for k in config if not k.startswith("_"))
    if not keys:
        return None
    rest = sorted(n for n in dir(diffusers) if n.endswith("Scheduler") and not n.startswith("Flax") and n not in _COMMON)
    best, size = None, 0
    for name in _COMMON + tuple(rest):
        if best is not None and name not in _COMMON:
            break  # a common class fits: no need to import the rare ones
        try:
            cls = getattr(diffusers, name)
        except Exception:  # noqa: BLE001 - a scheduler whose optional dependency is missing cannot be the one
            continue
        if isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin):
            init = _init_keys(cls)
            if init == keys:
                return name
            if init <= keys and len(init) > size:
                best, size = name, len(init)
    return best


def base_scheduler(base_config: dict, flow: bool):
    """The diffusers scheduler ``base_config`` describes (its ``_class_name``; DDIM or
    FlowMatchEuler when it names none), built from the config keys that class takes."""
    import diffusers

    name = base_config.get("_class_name") or (_FLOW_DEFAULT if flow else _VP_DEFAULT)
    cls = getattr(diffusers, name, None)
    if cls is None or not issubclass(cls, diffusers.SchedulerMixin) or name == "SolverzooScheduler":
        raise ValueError(f"grid=None follows the base scheduler's timesteps, but {name!r} is not a diffusers scheduler; "
                         "pass a zoo grid instead, e.g. SolverzooScheduler.from_config(config, grid='trailing')")
    keys = _init_keys(cls)
    return cls(**{k: v for k, v in base_config.items() if k in keys})


def grid_from_base(base, flow: bool, num_inference_steps, device, sigmas, timesteps, mu) -> torch.Tensor:
    """Schedule times (float64, CPU) of the base scheduler's own ``set_timesteps``."""
    params = inspect.signature(base.set_timesteps).parameters
    kw = {"num_inference_steps": num_inference_steps}
    for name, value in (("sigmas", sigmas), ("timesteps", timesteps), ("mu", mu)):
        if value is not None:
            if name not in params:
                raise ValueError(f"{type(base).__name__}.set_timesteps takes no {name}; pass a zoo grid instead")
            kw[name] = value
    if kw["num_inference_steps"] is None and "num_inference_steps" in params and (sigmas is not None or timesteps is not None):
        kw.pop("num_inference_steps")
    base.set_timesteps(**kw)
    if flow:
        times = base.sigmas.detach().to("cpu", torch.float64)
    else:  # training indices (deduplicated: PNDM repeats one), then the final step to clean data (t = -1)
        ts = base.timesteps.detach().to("cpu", torch.float64).numpy()
        ts = np.unique(ts)[::-1]
        times = torch.tensor(list(ts) + [-1.0], dtype=torch.float64)
    return times


def flow_shift_of(base_config: dict, mu) -> float:
    """The shift a flow config applies to its sigmas: ``exp(mu)`` under dynamic shifting, else ``shift``."""
    if base_config.get("use_dynamic_shifting"):
        if mu is None:
            raise ValueError("this flow config uses dynamic shifting (use_dynamic_shifting=True): set_timesteps needs mu "
                             "(the pipeline computes it from the image size)")
        if base_config.get("time_shift_type", "exponential") != "exponential":
            raise ValueError("only exponential dynamic shifting maps onto a zoo grid; use grid=None for "
                             f"time_shift_type={base_config.get('time_shift_type')!r}")
        return math.exp(mu)
    return float(base_config.get("shift", 1.0) or 1.0)


def zoo_grid(name: str, options: dict, schedule, steps: int, flow_shift: float | None) -> torch.Tensor:
    """A zoo grid of ``steps`` steps on ``schedule`` (on the shifted flow schedule for flow models,
    mapped back to the model's time, which is sigma)."""
    grid_fn = sz.get_grid(name)
    if flow_shift is None or flow_shift == 1.0:
        return grid_fn(schedule, steps, **options)
    shifted = sz.get_schedule("flow", shift=flow_shift)
    u = grid_fn(shifted, steps, **options)
    _, sigma = shifted._alpha_sigma_points(u.tolist())
    return sz.validate_grid(torch.tensor(sigma, dtype=torch.float64), schedule, name=name)
