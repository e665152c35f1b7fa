"""Scheduler configurations shared by the schedule and guidance tests (diffusers' mixin style).

Every supported scheduler class appears, with each prediction type it supports and its
noise-spacing options (Karras, exponential, flow sigmas, shift). DDPM and DDIM run with
``clip_sample=False``: clipping x̂0 to [-1, 1] changes the distribution being sampled.
"""

import diffusers

SCHEDULER_CONFIGS = {
    "ddpm-eps": (diffusers.DDPMScheduler, {"clip_sample": False}),
    "ddpm-v": (diffusers.DDPMScheduler, {"clip_sample": False, "prediction_type": "v_prediction"}),
    "ddpm-x0": (diffusers.DDPMScheduler, {"clip_sample": False, "prediction_type": "sample"}),
    "ddim-eps": (diffusers.DDIMScheduler, {"clip_sample": False}),
    "ddim-v": (diffusers.DDIMScheduler, {"clip_sample": False, "prediction_type": "v_prediction"}),
    "ddim-x0": (diffusers.DDIMScheduler, {"clip_sample": False, "prediction_type": "sample"}),
    "dpm++-eps": (diffusers.DPMSolverMultistepScheduler, {}),
    "dpm++-v": (diffusers.DPMSolverMultistepScheduler, {"prediction_type": "v_prediction"}),
    "dpm++-x0": (diffusers.DPMSolverMultistepScheduler, {"prediction_type": "sample"}),
    "dpm++-karras": (diffusers.DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "dpm++-exponential": (diffusers.DPMSolverMultistepScheduler, {"use_exponential_sigmas": True}),
    "dpm++-flow": (
        diffusers.DPMSolverMultistepScheduler,
        {"use_flow_sigmas": True, "prediction_type": "flow_prediction"},
    ),
    "dpm-singlestep-eps": (diffusers.DPMSolverSinglestepScheduler, {}),
    "deis-eps": (diffusers.DEISMultistepScheduler, {}),
    "unipc-eps": (diffusers.UniPCMultistepScheduler, {}),
    "unipc-v": (diffusers.UniPCMultistepScheduler, {"prediction_type": "v_prediction"}),
    "unipc-x0": (diffusers.UniPCMultistepScheduler, {"prediction_type": "sample"}),
    "euler-eps": (diffusers.EulerDiscreteScheduler, {}),
    "euler-x0": (diffusers.EulerDiscreteScheduler, {"prediction_type": "sample"}),
    "euler-karras-v": (
        diffusers.EulerDiscreteScheduler,
        {"use_karras_sigmas": True, "prediction_type": "v_prediction"},
    ),
    "euler-ancestral-eps": (diffusers.EulerAncestralDiscreteScheduler, {}),
    "euler-ancestral-v": (diffusers.EulerAncestralDiscreteScheduler, {"prediction_type": "v_prediction"}),
    "flow-euler": (diffusers.FlowMatchEulerDiscreteScheduler, {}),
    "flow-euler-shift3": (diffusers.FlowMatchEulerDiscreteScheduler, {"shift": 3.0}),
}

# Schedules whose first timestep is pure noise (α = 0 exactly); see test_guidance.py.
STARTS_AT_PURE_NOISE = {"flow-euler", "flow-euler-shift3"}


def make_scheduler(name: str):
    """A fresh scheduler for a configuration name of :data:`SCHEDULER_CONFIGS`."""
    cls, kwargs = SCHEDULER_CONFIGS[name]
    return cls(**kwargs)
