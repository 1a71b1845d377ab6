"""The quantization methods, registered by name: each is a class whose instances are called the same way,
`method(src, out) -> manifest fields`, on a source bundle and the directory the new bundle's graphs go to
(compile.quantize.derive.derive_bundle's transform). Quantizers are built from a `QuantSpec`; compile.quantize
picks one for a spec with `quantizer`."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar

from compile.quantize.spec import QuantSpec
from runtime.bundle import Bundle
from runtime.errors import UserError

METHODS: dict[str, type["QuantMethod"]] = {}


class QuantMethod(ABC):
    """One way to turn a bundle's graphs into new ones; `precisions` are those it writes (empty: any, in place)."""

    name: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]] = ()
    chosen_by_default: ClassVar[bool] = True  # False: only when asked for (or a recipe / setting picks it)

    def __init__(self, spec: QuantSpec):
        self.spec = spec

    @abstractmethod
    def __call__(self, src: Bundle, out: Path) -> dict[str, Any]:
        """Write every graph of the new bundle into `out`; return the manifest fields that describe the change."""


def register(name: str, precisions: tuple[str, ...] = (), default: bool = True,
             **attributes: Any) -> Callable[[type[QuantMethod]], type[QuantMethod]]:
    """Class decorator: register a method under `name`, writing `precisions`, whether it is the precisions' default
    (`chosen_by_default`) and any other class `attributes`."""

    def add(cls: type[QuantMethod]) -> type[QuantMethod]:
        if name in METHODS:
            raise RuntimeError(f"internal: quantization method {name!r} registered twice")
        for key, value in {"name": name, "precisions": precisions, "chosen_by_default": default,
                           **attributes}.items():
            setattr(cls, key, value)
        METHODS[name] = cls
        return cls

    return add


def method(name: str) -> type[QuantMethod]:
    """The method registered as `name`."""
    if name not in METHODS:
        raise UserError(f"no quantization method {name!r}; registered: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def method_name(src: Bundle, spec: QuantSpec) -> str:
    """The registered method that writes `spec` for `src`: the GGUF's own blocks when asked for or when the
    model's recipe quantizes that way (compile.recipes), dynamic int8 when asked for, else the precision's default."""
    from compile.recipes import RECIPES

    recipe = RECIPES.get(src.manifest.get("model_type"))
    if spec.method == "gguf" or (spec.method == "auto" and spec.precision in METHODS["gguf-exact"].precisions
                                 and recipe is not None and recipe.quantizes_from_gguf(src.manifest, spec.precision)):
        return "gguf-exact"
    if spec.method == "gptq":
        return "gptq"
    if spec.precision == "int8" and spec.int8_mode == "dynamic":
        return "dynamic"
    return next(n for n, m in METHODS.items() if m.chosen_by_default and spec.precision in m.precisions)


def resolve_spec(src: Bundle, spec: QuantSpec) -> QuantSpec:
    """`spec` as it applies to `src`: method auto at int4 takes the model recipe's GPTQ settings where it has them
    (compile.recipes `int4_gptq`, for the GGUF's own model only), so the manifest records what was run."""
    from dataclasses import replace

    from compile.recipes import RECIPES

    recipe = RECIPES.get(src.manifest.get("model_type"))
    if (spec.method == "auto" and spec.precision == "int4" and recipe is not None and recipe.int4_gptq
            and recipe.quantizes_from_gguf(src.manifest, "int4")):
        resolved = replace(spec, method="gptq", **recipe.int4_gptq)
        resolved.check()
        return resolved
    return spec


def quantizer(src: Bundle, spec: QuantSpec) -> QuantMethod:
    """The method instance that quantizes `src` as `spec` says (resolve_spec: the recipe's int4 default)."""
    spec = resolve_spec(src, spec)
    return method(method_name(src, spec))(spec)
