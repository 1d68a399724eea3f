"""Module-tree helpers shared by the family adapters: stage lists, probes, eval mode."""

from __future__ import annotations

import torch
from torch import nn


def has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def named_part(net: nn.Module, name: str) -> nn.Module | nn.Parameter:
    """A submodule, or a parameter held directly by a module (ViT's class token)."""
    try:
        return net.get_submodule(name)
    except AttributeError:
        return net.get_parameter(name)


def clean_stages(net: nn.Module, groups) -> tuple[tuple[str, ...], ...]:
    """Keep only names that own parameters; drop the groups left empty."""
    stages = []
    for group in groups:
        names = tuple(
            n for n in group if isinstance(named_part(net, n), nn.Parameter) or has_params(named_part(net, n))
        )
        if names:
            stages.append(names)
    return tuple(stages)


def spatial_mean(fmap: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    if fmap.ndim == 2:
        return fmap
    return fmap.mean(dim=(1, 2) if channels_last else (2, 3))


class ParameterGroup(nn.Module):
    """Presents parameters held directly by a module (ViT's class token, position embedding) as a
    module, so a stage can be frozen by ``module.parameters()``. Never attached to the backbone, so
    it adds no state-dict keys; the parameters are the backbone's own objects."""

    def __init__(self, name: str, parameter: nn.Parameter):
        super().__init__()
        self.register_parameter(name.replace(".", "_"), parameter)


def output_resolutions(features: nn.Sequential, size: int) -> dict[str, tuple]:
    """Spatial size of each child's output for a ``size`` px probe image."""
    sizes, handles = {}, []
    for name, child in features.named_children():

        def record(module, inputs, output, name=name):
            sizes[name] = tuple(output.shape[-2:])

        handles.append(child.register_forward_hook(record))
    try:
        with eval_mode(features), torch.no_grad():
            features(torch.zeros(1, 3, size, size))
    finally:
        for handle in handles:
            handle.remove()
    return sizes


class eval_mode:
    """Context manager: a module in eval mode, every submodule's own flag restored afterwards."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __enter__(self):
        self.flags = [(m, m.training) for m in self.module.modules()]
        self.module.eval()

    def __exit__(self, *exc):
        for module, flag in self.flags:
            module.training = flag


_CONTAINERS = ("features", "blocks", "stages", "layers", "trunk_output")


def generic_stages(net: nn.Module) -> tuple[tuple[str, ...], ...]:
    """Top-level children in definition order, expanding ``features``-like containers."""
    stages, aux = [], []
    for name, child in net.named_children():
        if not has_params(child):
            continue
        if name.lower().startswith("aux"):
            aux.append(name)
        elif name in _CONTAINERS and isinstance(child, (nn.Sequential, nn.ModuleList)):
            stages.extend([f"{name}.{sub}"] for sub, _ in child.named_children())
        else:
            stages.append([name])
    if aux and stages:
        stages[-1].extend(aux)
    return clean_stages(net, stages)


def stages_covering(net: nn.Module, stage_of: dict[str, int], count: int) -> tuple[tuple[str, ...], ...]:
    """The fewest module (or parameter) names whose parameters are exactly each stage's."""
    stages: list[list[str]] = [[] for _ in range(count)]

    def visit(prefix: str, module: nn.Module) -> None:
        ids = {stage_of.get(prefix + name) for name, _ in module.named_parameters()}
        if len(ids) == 1 and None not in ids and prefix:
            stages[ids.pop()].append(prefix[:-1])
            return
        for name, _ in module.named_parameters(recurse=False):
            if prefix + name in stage_of:
                stages[stage_of[prefix + name]].append(prefix + name)
        for name, child in module.named_children():
            visit(f"{prefix}{name}.", child)

    visit("", net)
    return clean_stages(net, stages)
