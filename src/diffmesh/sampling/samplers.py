"""k-diffusion samplers (Crowson's k-diffusion, MIT), in ComfyUI's variants and numbers.

Every sampler is `sample_x(model, x, sigmas, extra_args, callback, noise_sampler, **options)`:
`model(x, sigma (B,))` is the guided denoiser D returning x0, `noise_sampler(sigma, sigma_next)`
gives per-step noise (built by the pipeline: CPU-seeded or Brownian tree, full batch then sliced),
`callback(info)` is called once per step with the step's x0 estimate. A new sampler is one
function and one `SAMPLERS` entry. Samplers read the model type from `model.model_sampling`
(prediction_type "flow" = ComfyUI's CONST) wherever ComfyUI switches formulas for flow models. Operation order follows ComfyUI's code so float results match.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .dpm_solver import sample_dpm_adaptive, sample_dpm_fast
from .samplers_adams import sample_deis, sample_ipndm_v, sample_sa_solver, sample_sa_solver_pece
from .samplers_exp import (sample_dpmpp_2s_ancestral_cfg_pp, sample_er_sde, sample_exp_heun_2_x0,
                           sample_exp_heun_2_x0_sde, sample_res_multistep, sample_res_multistep_ancestral,
                           sample_res_multistep_ancestral_cfg_pp, sample_res_multistep_cfg_pp, sample_seeds_2,
                           sample_seeds_3)
from .samplers_extra import EXTRA_SAMPLERS
from .samplers_k import (sample_ddpm, sample_dpm_2, sample_dpm_2_ancestral, sample_dpmpp_2m, sample_dpmpp_2m_sde,
                         sample_dpmpp_2s_ancestral, sample_dpmpp_3m_sde, sample_dpmpp_sde, sample_euler,
                         sample_euler_ancestral, sample_heun, sample_lcm, sample_lms)
from .uni_pc import sample_uni_pc


@dataclass(frozen=True)
class SamplerSpec:
    fn: Callable
    noise: str = "none"                  # "none" | "cpu" (seed + 1 generator) | "brownian" (torchsde tree)
    options: dict = field(default_factory=dict)
    inpaint_random_noise: bool = False   # ddim: masked areas re-noised with a separate seed + 1 draw
    # dpm_adaptive picks its steps from an error norm over the whole batch, so a batch split over
    # workers takes other steps than one device: such samplers must not be batch-split
    batch_coupled: bool = False


SAMPLER_NAMES = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "exp_heun_2_x0", "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive",
    "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m",
    "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep",
    "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp",
    "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver",
    "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
]

SAMPLERS: dict[str, SamplerSpec] = {
    "euler": SamplerSpec(sample_euler),
    "euler_ancestral": SamplerSpec(sample_euler_ancestral, "cpu"),
    "heun": SamplerSpec(sample_heun),
    "dpm_2": SamplerSpec(sample_dpm_2),
    "dpm_2_ancestral": SamplerSpec(sample_dpm_2_ancestral, "cpu"),
    "lms": SamplerSpec(sample_lms),
    "dpmpp_2s_ancestral": SamplerSpec(sample_dpmpp_2s_ancestral, "cpu"),
    "dpmpp_sde": SamplerSpec(sample_dpmpp_sde, "brownian"),
    # "_gpu" variants build their Brownian tree on the device in ComfyUI; we always build it on the
    # CPU (device-independent images), which makes them the same as the plain names.
    "dpmpp_sde_gpu": SamplerSpec(sample_dpmpp_sde, "brownian"),
    "dpmpp_2m": SamplerSpec(sample_dpmpp_2m),
    "dpmpp_2m_sde": SamplerSpec(sample_dpmpp_2m_sde, "brownian"),
    "dpmpp_2m_sde_gpu": SamplerSpec(sample_dpmpp_2m_sde, "brownian"),
    "dpmpp_2m_sde_heun": SamplerSpec(sample_dpmpp_2m_sde, "brownian", {"solver_type": "heun"}),
    "dpmpp_2m_sde_heun_gpu": SamplerSpec(sample_dpmpp_2m_sde, "brownian", {"solver_type": "heun"}),
    "dpmpp_3m_sde": SamplerSpec(sample_dpmpp_3m_sde, "brownian"),
    "dpmpp_3m_sde_gpu": SamplerSpec(sample_dpmpp_3m_sde, "brownian"),
    "ddpm": SamplerSpec(sample_ddpm, "cpu"),
    "lcm": SamplerSpec(sample_lcm, "cpu"),
    "ddim": SamplerSpec(sample_euler, inpaint_random_noise=True),
    "exp_heun_2_x0": SamplerSpec(sample_exp_heun_2_x0),
    "exp_heun_2_x0_sde": SamplerSpec(sample_exp_heun_2_x0_sde, "cpu"),
    "dpm_fast": SamplerSpec(sample_dpm_fast),
    "dpm_adaptive": SamplerSpec(sample_dpm_adaptive, batch_coupled=True),
    "dpmpp_2s_ancestral_cfg_pp": SamplerSpec(sample_dpmpp_2s_ancestral_cfg_pp, "cpu"),
    "ipndm_v": SamplerSpec(sample_ipndm_v),
    "deis": SamplerSpec(sample_deis),
    "res_multistep": SamplerSpec(sample_res_multistep),
    "res_multistep_cfg_pp": SamplerSpec(sample_res_multistep_cfg_pp),
    "res_multistep_ancestral": SamplerSpec(sample_res_multistep_ancestral, "cpu"),
    "res_multistep_ancestral_cfg_pp": SamplerSpec(sample_res_multistep_ancestral_cfg_pp, "cpu"),
    "er_sde": SamplerSpec(sample_er_sde, "cpu"),
    "seeds_2": SamplerSpec(sample_seeds_2, "cpu"),
    "seeds_3": SamplerSpec(sample_seeds_3, "cpu"),
    "sa_solver": SamplerSpec(sample_sa_solver, "cpu"),
    "sa_solver_pece": SamplerSpec(sample_sa_solver_pece, "cpu"),
    "uni_pc": SamplerSpec(sample_uni_pc, options={"variant": "bh1"}),
    "uni_pc_bh2": SamplerSpec(sample_uni_pc, options={"variant": "bh2"}),
    **{name: SamplerSpec(fn, noise) for name, (fn, noise) in EXTRA_SAMPLERS.items()},
}

IMPLEMENTED_SAMPLERS = [n for n in SAMPLER_NAMES if n in SAMPLERS]


class UnknownSamplerError(ValueError):
    pass


def get_sampler(name: str) -> SamplerSpec:
    """The sampler of that name, or an error naming it and listing the implemented ones."""
    spec = SAMPLERS.get(name)
    if spec is None:
        known = "known to ComfyUI but not implemented in diffmesh yet" if name in SAMPLER_NAMES else "unknown"
        raise UnknownSamplerError(f"sampler {name!r} is {known}; implemented samplers: "
                                  f"{', '.join(IMPLEMENTED_SAMPLERS)}")
    return spec


__all__ = ["SAMPLER_NAMES", "SAMPLERS", "IMPLEMENTED_SAMPLERS", "SamplerSpec", "get_sampler",
           "UnknownSamplerError"]
