"""TensorRT engines from a bundle's ONNX graphs, built on the device that will run them.

    python -m compile.engine --bundle build/bundle --out build/engines [--max-batch 1 --max-prompt 2048 --max-context 4096]

Each graph becomes a strongly typed network (precision lives in the graph: fp32, fp16 casts, Q/DQ nodes;
TensorRT 11 has no FP16/INT8 builder flags) parsed from the bundle's ONNX. The optimization profiles are
derived from runtime.json and the limits:
- vision: pixel_values [n, 3, S, S], n in 1..max_images, S the bundle's image size;
- embed: input_ids [b, s], b in 1..max_batch, s in 1..max_prompt;
- decoder, profile 0 "prefill": s in 1..max_prompt new positions, an empty past [b, kv_heads, 0, head_dim];
- decoder, profile 1 "decode": one new position, a past of 1..max_context-1 positions.
One timing cache is shared by the three builds and saved beside the engines (pass it to the next build on
the same device with --timing-cache). The output directory (kind "sgm-engines") holds vision.engine,
embed.engine, decoder.engine, timing.cache and a manifest naming the bundle's fingerprint, the TensorRT
version, the GPU, the profiles and the KV-cache memory; the runtime's TensorRT backend
(runtime.backends.trt) refuses engines built from another bundle, TensorRT version or GPU architecture.

Nothing here imports torch: the Jetson bundle carries this module to build engines on the device.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from runtime import cli
from runtime.artifacts import MANIFEST, atomic_dir, check_output, sha256_file, write_manifest
from runtime.backends.trt import (ENGINE_SUFFIX, ENGINES_FORMAT_VERSION, ENGINES_KIND, GRAPH_ORDER,
                                  import_tensorrt, trt_logger, trt_version)
from runtime.bundle import Bundle, BundleSpec, load_bundle
from runtime.errors import UserError

TIMING_CACHE = "timing.cache"
DTYPE_BYTES = {"float32": 4, "float16": 2}
Dims = tuple[int, ...]


@dataclass(frozen=True)
class EngineLimits:
    """The largest (and the typical) inputs the engines must take; they fix the optimization profiles."""

    max_batch: int = 1
    opt_batch: int = 1
    max_prompt: int = 2048  # positions of one prefill, image tokens included (jailbreak prompts pass 1000)
    opt_prompt: int = 128
    max_context: int = 4096  # prompt + generated positions
    opt_context: int = 512
    max_images: int = 1  # images per vision call (the runtime encodes one prompt's images at a time)

    def check(self, spec: BundleSpec) -> None:
        """Refuse limits that cannot hold together or cannot take one image prompt of this bundle."""
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"engine limit {name} must be a positive integer, got {value!r}")
        pairs = (("opt_batch", "max_batch"), ("opt_prompt", "max_prompt"), ("opt_context", "max_context"))
        for lo, hi in pairs:
            if getattr(self, lo) > getattr(self, hi):
                raise UserError(f"{lo} ({getattr(self, lo)}) is larger than {hi} ({getattr(self, hi)})")
        if self.max_prompt > self.max_context:
            raise UserError(f"max_prompt ({self.max_prompt}) exceeds max_context ({self.max_context}): a prompt "
                            "must leave room in the context")
        if self.max_context < 2:
            raise UserError("max_context must be >= 2 (a prompt and one generated token)")
        if self.max_prompt <= spec.num_image_tokens:
            raise UserError(f"max_prompt ({self.max_prompt}) cannot hold one image of {spec.model} "
                            f"({spec.num_image_tokens} image tokens) plus a question")


@dataclass(frozen=True)
class Profile:
    """One optimization profile: (min, opt, max) shape of every input of a graph."""

    name: str
    shapes: dict[str, tuple[Dims, Dims, Dims]]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shapes": {k: [list(d) for d in v] for k, v in self.shapes.items()}}


def graph_profiles(spec: BundleSpec, limits: EngineLimits) -> dict[str, list[Profile]]:
    """The optimization profiles of the vision, embed and decoder engines of a bundle."""
    limits.check(spec)
    b = (1, limits.opt_batch, limits.max_batch)
    size = spec.image.size
    vision = Profile("images", {spec.vision.input: ((1, 3, size, size), (1, 3, size, size),
                                                    (limits.max_images, 3, size, size))})
    embed = Profile("tokens", {spec.embed.input: ((1, 1), (1, limits.opt_prompt),
                                                  (limits.max_batch, limits.max_prompt))})
    d = spec.decoder
    past_names = d.past_names(spec.num_layers)
    h, hd, hidden = spec.num_kv_heads, spec.head_dim, spec.hidden_size

    def decoder(name: str, s: Dims, past: Dims) -> Profile:
        shapes = {d.inputs_embeds: tuple((b[i], s[i], hidden) for i in range(3)),
                  d.attention_mask: tuple((b[i], past[i] + s[i]) for i in range(3)),
                  d.position_ids: tuple((b[i], s[i]) for i in range(3))}
        shapes.update({n: tuple((b[i], h, past[i], hd) for i in range(3)) for n in past_names})
        return Profile(name, shapes)

    prefill = decoder("prefill", (1, limits.opt_prompt, limits.max_prompt), (0, 0, 0))
    opt_past = min(max(limits.opt_context - 1, 1), limits.max_context - 1)
    step = decoder("decode", (1, 1, 1), (1, opt_past, limits.max_context - 1))
    return {"vision": [vision], "embed": [embed], "decoder": [prefill, step]}


def kv_bytes_per_token(spec: BundleSpec, itemsize: int) -> int:
    """Bytes of keys and values one position of one sequence holds, over all layers."""
    return 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * itemsize


@dataclass(frozen=True)
class BuildOptions:
    """Builder settings besides the profile limits."""

    limits: EngineLimits = field(default_factory=EngineLimits)
    workspace_mib: int | None = None  # cap on TensorRT's scratch memory (None: TensorRT's default, the device)
    optimization_level: int = 3  # builder optimization level 0..5 (higher: longer builds, maybe faster engines)
    timing_cache: str | os.PathLike | None = None  # start from this cache (an earlier build on this device)
    log_level: str = "warning"
    device: int = 0

    def check(self) -> None:
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise UserError(f"--workspace-mib must be >= 1, got {self.workspace_mib}")
        if not 0 <= self.optimization_level <= 5:
            raise UserError(f"--optimization-level must be in 0..5, got {self.optimization_level}")
        if self.timing_cache is not None and not Path(self.timing_cache).is_file():
            raise UserError(f"timing cache {self.timing_cache} does not exist")


def network_flags(trt: Any) -> int:
    """Creation flags of a strongly typed network (required on TensorRT 10, the only mode on 11)."""
    flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    if flag is None:
        raise UserError(f"TensorRT {trt_version(trt)} has no strongly typed networks; TensorRT 10 or newer is "
                        "needed (JetPack 6.x ships 10.3)")
    return 1 << int(flag)


def parse_onnx(trt: Any, builder: Any, logger: Any, path: Path, graph: str) -> tuple[Any, Any]:
    """A strongly typed network parsed from one ONNX file, and its parser (which owns the weights: keep it alive)."""
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise UserError(f"TensorRT's ONNX parser rejected the {graph} graph {path}: " + "; ".join(errors[:5])
                        + (f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""))
    return network, parser


def _check_inputs(network: Any, profiles: list[Profile], graph: str) -> None:
    have = {network.get_input(i).name for i in range(network.num_inputs)}
    want = set(profiles[0].shapes)
    if have != want:
        raise UserError(f"the {graph} graph's inputs {sorted(have)} differ from runtime.json's {sorted(want)}; "
                        "rebuild the bundle")


def build_engine(trt: Any, builder: Any, logger: Any, path: Path, graph: str, profiles: list[Profile],
                 options: BuildOptions, cache: Any) -> tuple[bytes, Any]:
    """Serialized engine of one graph, and the timing cache (created on the first call, shared after)."""
    network, _parser = parse_onnx(trt, builder, logger, path, graph)
    _check_inputs(network, profiles, graph)
    config = builder.create_builder_config()
    if options.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    config.builder_optimization_level = options.optimization_level
    if cache is None:
        seed = Path(options.timing_cache).read_bytes() if options.timing_cache is not None else b""
        cache = config.create_timing_cache(seed)
    if not config.set_timing_cache(cache, False):
        raise UserError(f"TensorRT refused the timing cache {options.timing_cache} (made by another TensorRT or "
                        "GPU); build without --timing-cache")
    for index, profile in enumerate(profiles):
        p = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile.shapes.items():
            p.set_shape(name, lo, opt, hi)
        if config.add_optimization_profile(p) != index:
            raise UserError(f"TensorRT rejected the {profile.name} optimization profile of the {graph} graph: "
                            f"{profile.to_dict()['shapes']}")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"TensorRT failed to build the {graph} engine (its log above says why); a smaller "
                        "--max-context/--max-prompt or a larger --workspace-mib may help")
    return bytes(memoryview(serialized)), cache


def device_info(cuda: Any, device: int) -> dict[str, Any]:
    """Name and compute capability of the GPU, as the runtime checks them."""
    try:
        name = cuda.device_name(device)
        major, minor = cuda.compute_capability(device)
    except (AttributeError, RuntimeError, OSError) as e:
        return {"index": device, "name": None, "compute_capability": None, "error": str(e)}
    return {"index": device, "name": name, "compute_capability": f"{major}.{minor}"}


def build_engines(bundle_dir: str | os.PathLike, out_dir: str | os.PathLike, options: BuildOptions = BuildOptions(),
                  overwrite: bool = False, trt: Any = None, cuda: Any = None) -> dict[str, Any]:
    """Build the three engines of a bundle into `out_dir` (atomically); returns the engines manifest."""
    check_output(out_dir, [bundle_dir], kind=ENGINES_KIND)
    bundle = load_bundle(bundle_dir)
    options.check()
    profiles = graph_profiles(bundle.spec, options.limits)
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite or choose another directory")
    trt = trt if trt is not None else import_tensorrt()
    if cuda is None:
        from runtime.backends.cudart import CudaRuntime

        cuda = CudaRuntime()
    cuda.set_device(options.device)
    logger = trt_logger(trt, options.log_level)
    builder = trt.Builder(logger)
    started = time.perf_counter()
    engines: dict[str, Any] = {}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        cache = None
        for graph in GRAPH_ORDER:
            t0 = time.perf_counter()
            data, cache = build_engine(trt, builder, logger, bundle.graph_path(graph), graph, profiles[graph],
                                       options, cache)
            name = graph + ENGINE_SUFFIX
            (tmp / name).write_bytes(data)
            engines[graph] = {"file": name, "onnx": bundle.spec.graphs[graph], "bytes": len(data),
                              "build_s": round(time.perf_counter() - t0, 3),
                              "profiles": [p.to_dict() for p in profiles[graph]]}
        (tmp / TIMING_CACHE).write_bytes(bytes(memoryview(cache.serialize())))
        itemsize = DTYPE_BYTES.get(bundle.spec.dtype, 4)
        per_token = kv_bytes_per_token(bundle.spec, itemsize)
        limits = options.limits
        manifest = write_manifest(
            tmp, ENGINES_KIND, format_version=ENGINES_FORMAT_VERSION,
            bundle={"path": str(bundle.root.resolve()), "fingerprint": bundle.fingerprint,
                    "manifest_sha256": sha256_file(bundle.root / MANIFEST), "model": bundle.spec.model,
                    "dtype": bundle.spec.dtype, "precision": bundle.precision},
            tensorrt={"version": trt_version(trt), "strongly_typed": True},
            device=device_info(cuda, options.device), engines=engines, limits=asdict(limits),
            options={"workspace_mib": options.workspace_mib, "optimization_level": options.optimization_level,
                     "timing_cache_in": (sha256_file(options.timing_cache) if options.timing_cache else None)},
            kv_cache={"bytes_per_token": per_token, "slots": 2,
                      "max_bytes": 2 * per_token * limits.max_batch * limits.max_context},
            build_s=round(time.perf_counter() - started, 3))
    return manifest


def parser() -> argparse.ArgumentParser:
    d = EngineLimits()
    p = argparse.ArgumentParser(prog="python -m compile.engine", description=__doc__.split("\n")[0])
    p.add_argument("--bundle", required=True, type=Path, help="bundle directory (python -m compile.export / quantize)")
    p.add_argument("--out", type=Path, help="new directory for the engines (required unless --print-profiles)")
    g = p.add_argument_group("profile limits")
    g.add_argument("--max-batch", type=int, default=d.max_batch, help="largest batch (default %(default)s)")
    g.add_argument("--opt-batch", type=int, default=d.opt_batch)
    g.add_argument("--max-prompt", type=int, default=d.max_prompt,
                   help="longest prefill, image tokens included (default %(default)s)")
    g.add_argument("--opt-prompt", type=int, default=d.opt_prompt)
    g.add_argument("--max-context", type=int, default=d.max_context,
                   help="longest prompt + generation (default %(default)s)")
    g.add_argument("--opt-context", type=int, default=d.opt_context)
    g.add_argument("--max-images", type=int, default=d.max_images, help="images per vision call")
    g = p.add_argument_group("builder")
    g.add_argument("--workspace-mib", type=int, help="cap on TensorRT's scratch memory")
    g.add_argument("--optimization-level", type=int, default=3, help="0..5 (default %(default)s)")
    g.add_argument("--timing-cache", type=Path, help="timing cache of an earlier build on this device")
    g.add_argument("--device", type=int, default=0, help="CUDA device index")
    g.add_argument("--log-level", default="warning", help="TensorRT log level (verbose, info, warning, error)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--print-profiles", action="store_true",
                   help="print the optimization profiles as JSON and exit (needs no TensorRT)")
    return p


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    limits = EngineLimits(max_batch=args.max_batch, opt_batch=min(args.opt_batch, args.max_batch),
                          max_prompt=args.max_prompt, opt_prompt=min(args.opt_prompt, args.max_prompt),
                          max_context=args.max_context, opt_context=min(args.opt_context, args.max_context),
                          max_images=args.max_images)
    return BuildOptions(limits=limits, workspace_mib=args.workspace_mib, optimization_level=args.optimization_level,
                        timing_cache=args.timing_cache, log_level=args.log_level, device=args.device)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    options = options_from_args(args)
    if args.print_profiles:
        bundle = load_bundle(args.bundle)
        profiles = graph_profiles(bundle.spec, options.limits)
        print(json.dumps({g: [p.to_dict() for p in ps] for g, ps in profiles.items()}, indent=2))
        return 0
    if args.out is None:
        raise UserError("--out is required (the directory that receives the engines)")
    manifest = build_engines(args.bundle, args.out, options, overwrite=args.overwrite)
    print(f"engines written to {args.out} (TensorRT {manifest['tensorrt']['version']}, "
          f"{manifest['device'].get('name')}, {manifest['build_s']:.0f} s)")
    for graph, e in manifest["engines"].items():
        print(f"  {graph:<8} {e['file']:<16} {e['bytes'] / 2**20:8.1f} MiB  profiles: "
              + ", ".join(p["name"] for p in e["profiles"]))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
