"""What to quantize: the precisions, their targets and `QuantSpec`, the settings every method reads."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from runtime.errors import UserError

TARGETS = {"int4": "onnxruntime-cpu", "int8": "onnxruntime-cpu", "fp16": "tensorrt", "int4-qdq": "tensorrt",
           "int8-qdq": "tensorrt"}
PRECISIONS = tuple(TARGETS)
FLOAT16 = ("fp16", "int4-qdq")  # precisions whose graphs compute in float16
INT8_MODES = ("weight-only", "dynamic")
ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # MatMulNBits: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 compute
METHOD_CHOICES = ("auto", "rtn", "gguf", "gptq")
GGUF_PRECISIONS = ("int4", "int4-qdq")
# calibration prompts by default: static int8 ranges settle with few; GPTQ's Hessians need more tokens than the
# widest input (1536 / 2048 features) to generalise to the perplexity corpus (docs/quantization.md)
CALIBRATION_ITEMS = {"static-qdq": 16, "gptq": 128}
LM_HEAD_BLOCK_SIZES = (16, 32, 64, 128)  # method gptq: the lm_head's block sizes MatMulNBits takes


@dataclass(frozen=True)
class QuantSpec:
    """What to quantize and how; defaults are the measured choices (benchmarks/quant_table.py)."""

    precision: str
    block_size: int = 32
    accuracy_level: int = 4
    symmetric: bool = False
    lm_head: bool = True
    embeddings: bool = True
    int8_mode: str = "weight-only"
    calibration_items: int | None = None  # prompts for calibrated methods; None: the method's (CALIBRATION_ITEMS)
    skip_modules: tuple[str, ...] = ()  # int8-qdq: MatMuls whose node name contains one of these stay float
    keep_fp32: tuple[str, ...] = ()
    method: str = "auto"  # int4: "gguf" (exact GGUF blocks), "rtn" (ORT's quantizer); auto: the model's recipe
    gguf: str | None = None  # the GGUF for method gguf (default: the bundle's model type's, compile.recipes)
    # method gguf: compile.quantize.gguf.Approximation (exact / q8 keep the GGUF's weights)
    gguf_zero_points: str = "exact"
    gguf_lm_head: str = "q8"
    act_order: bool = False  # method gptq: columns in decreasing Hessian-diagonal order (compile.quantize.gptq)
    # method gptq: Linears (node name contains one of these) kept at the GGUF's exact blocks (mixed precision)
    exact_modules: tuple[str, ...] = ()
    lm_head_block_size: int = 32  # method gptq: weights per lm_head block (64 / 128: fewer scales to read)

    def check(self) -> None:
        """Refuse bad settings before anything loads."""
        if self.precision not in TARGETS:
            raise UserError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise UserError(f"block size must be a power of two >= 16, got {self.block_size}")
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise UserError(f"accuracy level must be one of {ACCURACY_LEVELS}, got {self.accuracy_level}")
        if self.int8_mode not in INT8_MODES:
            raise UserError(f"int8 mode must be one of {', '.join(INT8_MODES)}, got {self.int8_mode!r}")
        if self.calibration_items is not None and self.calibration_items < 1:
            raise UserError("calibration needs at least one item")
        if self.method not in METHOD_CHOICES:
            raise UserError(f"method must be one of {', '.join(METHOD_CHOICES)}, got {self.method!r}")
        if self.method == "gguf" and self.precision not in GGUF_PRECISIONS:
            raise UserError("GGUF blocks convert exactly only to int4 or int4-qdq")
        if self.method == "gptq" and self.precision != "int4":
            raise UserError("GPTQ writes int4 MatMulNBits blocks only (--precision int4)")
        if self.act_order and self.method != "gptq":
            raise UserError("--act-order is GPTQ's (--method gptq)")
        if (self.exact_modules or self.lm_head_block_size != 32) and self.method != "gptq":
            raise UserError("--exact-modules / --lm-head-block-size are GPTQ's (--method gptq)")
        if self.lm_head_block_size not in LM_HEAD_BLOCK_SIZES:
            raise UserError(f"--lm-head-block-size must be one of {LM_HEAD_BLOCK_SIZES}, got {self.lm_head_block_size}")
        if (self.gguf_zero_points, self.gguf_lm_head) != ("exact", "q8"):
            from compile.quantize.gguf import Approximation

            Approximation(self.gguf_zero_points, self.gguf_lm_head)  # refuses unknown names
            if self.method in ("rtn", "gptq") or self.precision != "int4":
                raise UserError("--gguf-zero-points / --gguf-lm-head apply to the gguf method's int4 only")

    def items_for(self, method: str) -> int:
        """The calibration prompts `method` uses: the spec's, else the method's default."""
        return self.calibration_items or CALIBRATION_ITEMS[method]

    def to_dict(self) -> dict[str, Any]:
        d = {**asdict(self), "keep_fp32": list(self.keep_fp32), "skip_modules": list(self.skip_modules)}
        if (self.gguf_zero_points, self.gguf_lm_head) == ("exact", "q8"):  # records as before the options existed
            del d["gguf_zero_points"], d["gguf_lm_head"]
        if not self.act_order:
            del d["act_order"]
        if not self.exact_modules:
            del d["exact_modules"]
        else:
            d["exact_modules"] = list(self.exact_modules)
        if self.lm_head_block_size == 32:
            del d["lm_head_block_size"]
        return d
