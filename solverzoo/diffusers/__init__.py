"""The diffusers integration: zoo solvers inside diffusers pipelines, diffusers models inside the zoo.

* :class:`SolverzooScheduler`: a diffusers scheduler that runs any registered solver on any
  registered grid inside an unmodified pipeline::

      from solverzoo.diffusers import SolverzooScheduler
      pipe.scheduler = SolverzooScheduler.from_config(pipe.scheduler.config, solver="dpmpp_3m", grid="karras")

* :func:`diffusers_model`, :class:`DiffusersVAE`, :func:`schedule_from_config`,
  :func:`load_pretrained`: diffusers networks as solverzoo Models (for ``sz.sample`` and the bench).

This module imports diffusers; ``import solverzoo`` does not import it.
"""
from solverzoo.diffusers.scheduler import SolverzooScheduler
from solverzoo.diffusers.tape import TapeError
from solverzoo.models.adapters import DiffusersVAE, diffusers_model, load_pretrained, schedule_from_config

__all__ = ["DiffusersVAE", "SolverzooScheduler", "TapeError", "diffusers_model", "load_pretrained", "schedule_from_config"]
