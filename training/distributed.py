"""Accelerate set-up: the processes of a run, mixed precision, gradient accumulation, and FSDP also on CPUs.

What Accelerate does is left to it; what is ours is said where it happens: DeepSpeed refused without GPUs (Accelerate
would quietly run it as plain data parallel), FSDP turned on for CPU process groups (Accelerate would silently not),
and what FSDP2's wrapping needs to know about this model.
"""

import os
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DataLoaderConfiguration, DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils import GradientAccumulationPlugin

from vaswani.configuration.errors import InputError


def build_accelerator(
    mixed_precision: str, gradient_accumulation_steps: int, token_batches: bool, project_dir: str | Path,
    log_with: str | None = "tensorboard",
) -> Accelerator:
    """The Accelerator of a run: processes, mixed precision ("auto": bf16 where the GPU supports it), accumulation,
    and how batches are dealt out (`token_batches`: whole batches in turn, else each process its share)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" and not torch.accelerator.is_available():
        # Accelerate (1.15) would quietly run the DeepSpeed config as plain data parallel, or fail importing DeepSpeed.
        raise InputError(
            "DeepSpeed through Accelerate needs GPUs: without them Accelerate does not run DeepSpeed. On CPUs, use "
            "training/accelerate_configs/fsdp_cpu.yaml (FSDP2) or torchrun (data parallel)."
        )
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(
        # Without an accelerator, say so: Accelerate then runs `torchrun` processes as a gloo (MULTI_CPU) group.
        cpu=not torch.accelerator.is_available(),
        mixed_precision=mixed_precision,
        # We always feed whole accumulation windows, also across epoch ends: sync on the window, not the loader.
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=gradient_accumulation_steps, sync_with_dataloader=False
        ),
        # Each process takes its share of one global batch, so that N processes step as one process would; token-count
        # batches vary in size, so each process takes whole batches in turn instead (training/batching.py).
        dataloader_config=DataLoaderConfiguration(split_batches=not token_batches),
        log_with=log_with,
        project_dir=str(project_dir),
    )
    return with_requested_fsdp(accelerator)


def with_requested_fsdp(accelerator: Accelerator) -> Accelerator:
    """FSDP when the Accelerate config asks for it, also on processes without a GPU.

    Accelerate (1.15) turns FSDP on only for GPU-like process groups; with `use_cpu` it silently runs the processes
    as plain data parallel instead. FSDP2 itself runs on CPU (gloo), so the state is set to what the config asked
    for: the FSDP path, sharded checkpoints included, then runs (and is tested) on CPU as it does on GPUs.
    """
    requested = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if requested and accelerator.distributed_type == DistributedType.MULTI_CPU:
        # Both: Accelerate re-reads the process state into the accelerator state when it builds another.
        PartialState().distributed_type = accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* variables
        if accelerator.mixed_precision != "no":
            accelerator.state.fsdp_plugin.set_mixed_precision(accelerator.mixed_precision)
    return accelerator



def prepare_for_fsdp2(model, accelerator: Accelerator) -> None:
    """What Accelerate's FSDP2 wrapping needs to know about this model, set before it wraps it."""
    # One config serves every objective, but the masked LM has no decoder layers and the causal LM no encoder layers,
    # and Accelerate refuses a layer class to wrap that the model lacks: wrap the layer classes this view has.
    plugin = accelerator.state.fsdp_plugin
    present = {type(module).__name__ for module in model.modules()}
    names = plugin.transformer_cls_names_to_wrap or model._no_split_modules
    plugin.transformer_cls_names_to_wrap = [name for name in names if name in present]
    # With `fsdp_cpu_ram_efficient_loading`, transformers leaves the weights a checkpoint lacks (a warm start's
    # cross-attention) on the meta device in all processes but the first, whose weights Accelerate then broadcasts.
    # Accelerate matches the optimiser's parameters by storage address, which meta tensors lack: give them storage.
    for module in model.modules():
        for name, parameter in list(module.named_parameters(recurse=False)):
            if parameter.is_meta:
                materialized = torch.zeros_like(parameter, device=accelerator.device)
                module.register_parameter(name, torch.nn.Parameter(materialized, parameter.requires_grad))
    # FSDP2 refuses a tensor held by two of its units. Accelerate gives the embedding matrix and a tied lm_head one
    # unit, but each stack's `embed_tokens` is a module of its own holding that same matrix (tied by parameter):
    # made the same module as `model.shared`, every use of the matrix is in that one unit.
    model.set_input_embeddings(model.get_input_embeddings())
