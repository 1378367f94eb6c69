"""Hardware catalog, layout search with a roofline, and engine launch commands (`sizewise plan`)."""
from sizewise.plan.hardware import Accelerator, get_hardware
from sizewise.plan.launch import deepspeed_config, sglang_command, vllm_command
from sizewise.plan.parallel import Layout, plan_serving, plan_training

__all__ = ["Accelerator", "Layout", "deepspeed_config", "get_hardware", "plan_serving", "plan_training",
           "sglang_command", "vllm_command"]
