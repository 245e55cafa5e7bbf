"""``SolverzooScheduler``: any zoo solver on any zoo grid, inside unmodified diffusers pipelines.

    pipe.scheduler = SolverzooScheduler.from_config(pipe.scheduler.config, solver="dpmpp_3m", grid="karras")

The prediction type and the noise schedule come from the original scheduler's config (kept as
``base_config``; its keys stay readable through ``scheduler.config`` for pipelines that ask for
them, e.g. FLUX's ``base_image_seq_len``). The solver's own loop runs through
:mod:`solverzoo.diffusers.tape`: recorded once per state shape, replayed one model evaluation
per ``step``. ``timesteps`` lists every evaluation in order (multi-stage solvers such as heun or
rk4 appear once per stage), in the units the pipeline's network takes (the training index for
DDPM-type models, ``1000 * sigma`` for flow models). The state the pipeline holds is the
solver's own state ``x = alpha x0 + sigma eps`` (``scale_model_input`` is the identity).
"""
from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

import solverzoo as sz
from solverzoo.diffusers.tape import Replay, TapeError, record
from solverzoo.diffusers.timesteps import base_class_name, base_scheduler, flow_shift_of, grid_from_base, zoo_grid
from solverzoo.models.adapters import schedule_from_config

_OWN = ("solver", "grid", "solver_options", "grid_options", "base_config")
_NOOP_STEP_KWARGS = {"eta": 0.0, "use_clipped_model_output": None, "s_churn": 0.0, "s_tmin": 0.0, "s_noise": 1.0}


def _no_op(key, value) -> bool:
    return key in _NOOP_STEP_KWARGS and (value == _NOOP_STEP_KWARGS[key] or (key == "use_clipped_model_output" and not value)
                                         or key == "s_tmin")


class SolverzooScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that runs a registered zoo solver on a registered zoo grid.

    Args:
        solver: a registered solver name (``solverzoo list solvers``).
        grid: a registered grid name, or None to follow the base scheduler's own timesteps.
        solver_options: the solver's options (the keyword arguments of its ``plan``).
        grid_options: the grid's options.
        base_config: the original scheduler's config (prediction type, betas or flow shift).
    """

    order = 1
    _compatibles = []

    @register_to_config
    def __init__(self, solver: str = "dpmpp_2m", grid: str | None = None, solver_options: dict | None = None,
                 grid_options: dict | None = None, base_config: dict | None = None):
        base = dict(base_config or {})
        self._solver = sz.get_solver(solver)
        self._solver.check_options(dict(solver_options or {}))
        if self._solver.adaptive:
            raise ValueError(f"solver {solver!r} is adaptive: it picks its evaluation times from the model's outputs, but a "
                             "diffusers pipeline needs them all before sampling; use sz.sample for it")
        if grid is not None:
            sz.get_grid(grid)  # an unknown name fails here, with close matches
        self.schedule, prediction, time_input = schedule_from_config(base)
        self._flow = self.schedule.name == "flow"
        self._model = sz.Model(None, prediction, self.schedule, time_input=time_input)
        self._base = base_scheduler(base, self._flow) if grid is None else None
        self.order = self._solver.evals_per_step
        exposed = {k: v for k, v in base.items() if not k.startswith("_") and k not in _OWN}
        if exposed:
            self.register_to_config(**exposed)  # pipelines read e.g. config.use_dynamic_shifting or base_shift
        self.timesteps = None
        self.sigmas = None
        self.num_inference_steps = None
        self.init_noise_sigma = 1.0
        self._grid = self._plan = self._run = None
        self._tapes: dict = {}
        self._eval_t: list[float] = []
        self._step_index = self._begin_index = None

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """From another scheduler's config (kept as ``base_config``; ``solver``, ``grid``, ... as
        keyword arguments) or from a saved SolverzooScheduler config."""
        cls_name = None
        if config is not None and not isinstance(config, dict) and hasattr(config, "config"):
            cls_name, config = type(config).__name__, config.config  # a scheduler instance
        cfg = dict(config or {})
        cfg.pop("_use_default_values", None)
        if cfg.get("_class_name") == cls.__name__:
            base = cfg.get("base_config") or {}
            cfg = {k: v for k, v in cfg.items() if k in _OWN or k.startswith("_") or k not in base}
        elif "base_config" not in kwargs:
            name = cls_name or base_class_name(cfg)
            kwargs["base_config"] = {**cfg, "_class_name": name} if name else cfg
            cfg = {"_class_name": cls.__name__}
        return super().from_config(cfg, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def __len__(self) -> int:
        return int(self.config.base_config.get("num_train_timesteps", 1000)) if self.config.base_config else 1000

    @property
    def step_index(self):
        """Index of the next evaluation into ``timesteps`` (None before the first step)."""
        return self._step_index

    @property
    def begin_index(self):
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at evaluation ``begin_index`` (img2img); it must be the first evaluation of a grid step."""
        self._begin_index = int(begin_index)

    # -- timesteps ------------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas=None, timesteps=None,
                      mu: float | None = None, **kwargs):
        """Build the grid, the solver's plan and the list of evaluations (``timesteps``).

        ``sigmas`` / ``timesteps`` / ``mu`` go to the base scheduler when ``grid`` is None; with a zoo
        grid they only fix the step count (and ``mu`` the flow shift).
        """
        unknown = sorted(k for k, v in kwargs.items() if v is not None)
        if unknown:
            raise TypeError(f"SolverzooScheduler.set_timesteps got unexpected argument(s) {unknown}")
        cfg = self.config
        if cfg.grid is None:
            grid = grid_from_base(self._base, self._flow, num_inference_steps, device, sigmas, timesteps, mu)
            grid = sz.validate_grid(grid, self.schedule, name=f"{type(self._base).__name__} timesteps")
        else:
            steps = num_inference_steps or len(sigmas if sigmas is not None else timesteps if timesteps is not None else [])
            if not steps:
                raise ValueError("set_timesteps needs num_inference_steps (or custom sigmas / timesteps to count them)")
            shift = flow_shift_of(dict(cfg.base_config or {}), mu) if self._flow else None
            grid = zoo_grid(cfg.grid, dict(cfg.grid_options or {}), self.schedule, int(steps), shift)
        self._set_grid(grid, torch.device(device) if device is not None else torch.device("cpu"))

    def _set_grid(self, grid: torch.Tensor, device) -> None:
        key = tuple(grid.tolist())
        if key != getattr(self, "_grid_key", None):
            self._grid_key, self._grid, self._tapes = key, grid, {}
            self._plan = self._solver.plan(self.schedule, grid, **dict(self.config.solver_options or {}))
            tape = self._tape(grid, self._plan, (1,), torch.float32, None)
            self._eval_t = [c.t for c in tape.calls]
        model = self._model
        consts = [model._host_constants(t) for t in self._eval_t]
        values = [c[0] for c in consts]
        integral = all(float(v).is_integer() for v in values)
        self.timesteps = torch.tensor(values, dtype=torch.int64 if integral else torch.float64)
        self.timesteps = self.timesteps.to(device=device, dtype=torch.int64 if integral else torch.float32)
        a_end, s_end = self.schedule._alpha_sigma_points([float(grid[-1])])
        levels = [(s / a if a > 0 else math.inf) if not self._flow else s for _, _, (a, s) in consts]
        levels.append(s_end[0] if self._flow else (s_end[0] / a_end[0] if a_end[0] > 0 else math.inf))
        self.sigmas = torch.tensor(levels, dtype=torch.float32, device=device)
        a0, s0 = consts[0][2] if consts else (1.0, 0.0)
        self.init_noise_sigma = math.sqrt(a0 * a0 + s0 * s0)
        self.num_inference_steps = len(grid) - 1
        self._run, self._step_index, self._begin_index = None, None, None

    def _tape(self, grid, plan, shape, dtype, generator):
        key = (len(grid), float(grid[0]), tuple(shape), dtype,
               None if generator is None else 1 if isinstance(generator, torch.Generator) else len(generator))
        tape = self._tapes.get(key)
        if tape is None:
            tape = record(self._solver, plan, grid, self.schedule, lambda t: self._model._host_constants(t)[1], shape,
                          dtype, generator)
            if not tape.calls:
                raise TapeError(f"solver {self._solver.name!r} made no model evaluation on this grid")
            if tape.calls[0].x != 0:
                raise TapeError(f"solver {self._solver.name!r} (options {self.config.solver_options}) changes the starting "
                                "noise before its first model evaluation (e.g. EDM churn on the first step), but a pipeline "
                                "evaluates the model on the latents it prepared; turn that off (s_tmax below the first noise "
                                "level) or use sz.sample")
            if len(self._tapes) > 16:
                self._tapes.clear()
            self._tapes[key] = tape
        return tape

    # -- the step -----------------------------------------------------------------------------------
    def _start(self, sample, generator):
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps before step")
        begin = self._begin_index or 0
        grid, plan = self._grid, self._plan
        if begin:
            starts = [i for i, t in enumerate(grid.tolist()[:-1]) if t == self._eval_t[begin]]
            if not starts:
                raise ValueError(f"set_begin_index({begin}): evaluation {begin} is not the first of a grid step, so the "
                                 f"solver cannot start there; use a begin index that is a multiple of order={self.order}")
            grid = grid[starts[0]:]
            plan = self._solver.plan(self.schedule, grid, **dict(self.config.solver_options or {}))
        tape = self._tape(grid, plan, sample.shape, sample.dtype, generator)
        if [c.t for c in tape.calls] != self._eval_t[begin:]:
            raise TapeError(f"solver {self._solver.name!r} asks for other evaluation times when started at evaluation {begin}")
        self._run = Replay(tape, sample)
        self._run.start(generator)
        self._step_index = begin

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None, return_dict: bool = True,
             **kwargs):
        """Feed the model output at the current evaluation; returns the state of the next one (or
        the final sample after the last). ``generator`` is the pipeline's (stochastic solvers)."""
        bad = {k: v for k, v in kwargs.items() if not _no_op(k, v)}
        if bad:
            raise TypeError(f"SolverzooScheduler.step got {bad}: solver options are set once, e.g. SolverzooScheduler."
                            f"from_config(config, solver={self.config.solver!r}, solver_options={bad})")
        if self._run is None:
            self._start(sample, generator)
        with torch.no_grad():
            prev = self._run.advance(model_output, sample, generator)
        self._step_index += 1
        if self._run.done:
            self._run = None
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The identity: the state is already what the network takes."""
        return sample

    # -- noising (img2img, training) ------------------------------------------------------------------
    def _alpha_sigma(self, timesteps, like: torch.Tensor):
        t = torch.as_tensor(timesteps, device=like.device)
        t = t.to(torch.float64 if like.device.type != "mps" else torch.float32).reshape(-1)
        if self._flow:
            t = t / 1000.0
        a, s = self.schedule.alpha_sigma(t)
        shape = (-1,) + (1,) * (like.ndim - 1)
        return a.to(like.dtype).reshape(shape), s.to(like.dtype).reshape(shape)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """``alpha(t) x0 + sigma(t) noise`` at pipeline timesteps ``timesteps``."""
        a, s = self._alpha_sigma(timesteps, original_samples)
        return a * original_samples + s * noise

    def scale_noise(self, sample: torch.Tensor, timestep, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Flow img2img's noising (FlowMatchEuler's ``scale_noise``): ``alpha(t) x0 + sigma(t) noise``."""
        if noise is None:
            raise ValueError("scale_noise needs the noise to add")
        return self.add_noise(sample, noise, timestep)
