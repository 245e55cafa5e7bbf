"""Which peer library ships each built-in component under the same (or an equivalent) algorithm, for
the README's zoo table. Read from the peers' own source: k-diffusion 0.1.1 (``k_diffusion/sampling.py``),
diffusers 0.42 (schedulers, ``guiders``, sigma options) and ComfyUI (``KSAMPLER_NAMES``,
``SCHEDULER_NAMES`` and its guidance / scheduler nodes). Where a name is listed, a parity test in
``tests/`` checks equality for the importable peers (k-diffusion, diffusers); ComfyUI-only entries are
checked against a re-derivation of its update (``tests/test_solvers_comfy.py``, ``test_grids_more.py``).
"""
from __future__ import annotations

K, D, C = "k-diffusion", "diffusers", "ComfyUI"

PEERS: dict[tuple[str, str], tuple[str, ...]] = {
    # solvers
    ("solver", "ddim"): (D, C), ("solver", "ddpm"): (D, C), ("solver", "euler"): (K, D, C),
    ("solver", "euler_ancestral"): (K, D, C), ("solver", "heun"): (K, D, C), ("solver", "heunpp2"): (C,),
    ("solver", "dpm_2"): (K, D, C), ("solver", "dpm_2_ancestral"): (K, D, C), ("solver", "lms"): (K, D, C),
    ("solver", "dpm_fast"): (K, C), ("solver", "dpm_adaptive"): (K, C), ("solver", "dpmpp_2s_ancestral"): (K, C),
    ("solver", "dpmpp_sde"): (K, D, C), ("solver", "dpmpp_2m"): (K, D, C), ("solver", "dpmpp_2m_sde"): (K, D, C),
    ("solver", "dpmpp_2m_sde_heun"): (K, D, C), ("solver", "dpmpp_3m"): (D,), ("solver", "dpmpp_3m_sde"): (K, C),
    ("solver", "dpmpp_singlestep"): (D,), ("solver", "unipc"): (D, C), ("solver", "deis"): (D, C),
    ("solver", "ipndm"): (D, C), ("solver", "ipndm_v"): (C,), ("solver", "sa_solver"): (D, C),
    ("solver", "sa_solver_pece"): (C,), ("solver", "er_sde"): (C,), ("solver", "seeds_2"): (C,), ("solver", "seeds_3"): (C,),
    ("solver", "res_multistep"): (C,), ("solver", "res_multistep_ancestral"): (C,), ("solver", "gradient_estimation"): (C,),
    ("solver", "exp_heun_2_x0"): (C,), ("solver", "exp_heun_2_x0_sde"): (C,),
    # grids
    ("grid", "leading"): (D,), ("grid", "linspace"): (D,), ("grid", "trailing"): (D,), ("grid", "karras"): (K, D, C),
    ("grid", "exponential"): (K, D, C), ("grid", "polyexponential"): (K,), ("grid", "vp"): (K,), ("grid", "beta"): (D, C),
    ("grid", "simple"): (C,), ("grid", "sgm_uniform"): (C,), ("grid", "ddim_uniform"): (C,), ("grid", "kl_optimal"): (C,),
    ("grid", "linear_quadratic"): (C,), ("grid", "laplace"): (C,), ("grid", "ays"): (D, C), ("grid", "gits"): (C,),
    ("grid", "oss"): (C,), ("grid", "flow_shift"): (D, C),
    # guidance
    ("guidance", "cfg"): (D, C), ("guidance", "negative_prompt"): (D, C), ("guidance", "cfg_rescale"): (D, C),
    ("guidance", "apg"): (D, C), ("guidance", "cfg_zero_star"): (D, C), ("guidance", "cfg_pp"): (C,), ("guidance", "tcfg"): (D,),
    ("guidance", "fdg"): (D,), ("guidance", "mambo_g"): (D,), ("guidance", "pag"): (D, C), ("guidance", "seg"): (D,),
    ("guidance", "sag"): (C,), ("guidance", "slg"): (D, C), ("guidance", "autoguidance"): (D,), ("guidance", "perp_neg"): (C,),
}


def peers(kind: str, name: str) -> str:
    """The peers that ship ``name`` (comma-separated), or "solverzoo only"."""
    return ", ".join(PEERS.get((kind, name), ())) or "solverzoo only"
