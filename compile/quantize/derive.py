"""A bundle derived from another (quantized, converted, or detoxified in place): same tokenizer and
runtime.json (dtype updated), some graphs rewritten, a manifest that names its source and what was done."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from runtime.artifacts import MANIFEST, atomic_dir, check_output, read_manifest, sha256_file, write_manifest
from runtime.bundle import BUNDLE_KIND, FORMAT_VERSION, GRAPHS, RUNTIME_FILE, TOKENIZER_FILE, Bundle, load_bundle
from runtime.errors import UserError

CARRIED = ("model_type", "model", "export", "versions", "precision", "detoxified_in_graph")  # kept unless replaced


def source_record(bundle: Bundle) -> dict[str, Any]:
    return {"path": str(bundle.root.resolve()), "fingerprint": bundle.fingerprint,
            "manifest_sha256": sha256_file(bundle.root / MANIFEST), "model": bundle.spec.model,
            "precision": bundle.precision}


def copy_graph(src: Bundle, graph: str, out: Path) -> None:
    """Copy a graph file (and its external data) unchanged."""
    rel = src.spec.graphs[graph]
    shutil.copy2(src.root / rel, out / rel)
    data = src.root / (rel + ".data")
    if data.is_file():
        shutil.copy2(data, out / (rel + ".data"))


def _prepare(out: Path, overwrite: bool) -> bool:
    if not out.exists():
        return False
    if not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite or choose another directory")
    if out.is_dir() and any(out.iterdir()):
        kind = read_manifest(out, verify=False).get("kind") if (out / MANIFEST).is_file() else None
        if kind != BUNDLE_KIND:
            raise UserError(f"{out} holds other files (not a bundle); choose another output directory")
    return True


def derive_bundle(src_dir: str | os.PathLike, out_dir: str | os.PathLike,
                  transform: Callable[[Bundle, Path], dict[str, Any]], dtype: str | None = None,
                  overwrite: bool = False, after: Callable[[Path], dict[str, Any]] | None = None,
                  inputs: Sequence[str | os.PathLike | None] = ()) -> dict[str, Any]:
    """Write a bundle at `out_dir` whose graphs `transform(src, tmp)` writes (it copies the ones it keeps).

    `transform` returns the manifest fields that describe the change (e.g. `precision`); `after(tmp)` may
    measure the finished bundle (its result goes into the manifest as `check`). Atomic: nothing is left
    at `out_dir` when either raises. `inputs`: the other paths the transform reads (never written over).
    """
    out = check_output(out_dir, [src_dir, *inputs], kind=BUNDLE_KIND)
    src = load_bundle(src_dir)
    replace = _prepare(out, overwrite)
    with atomic_dir(out, overwrite=replace) as tmp:
        fields = transform(src, tmp)
        for graph in GRAPHS:
            if not (tmp / src.spec.graphs[graph]).is_file():
                raise RuntimeError(f"internal: the transform did not write the {graph} graph")
        shutil.copy2(src.root / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        config = json.loads((src.root / RUNTIME_FILE).read_text())
        if dtype is not None:
            config["dtype"] = dtype
        config.pop("fused_decoder", None)  # built for the source's weights; compile.fused adds one to a result
        (tmp / RUNTIME_FILE).write_text(json.dumps(config, indent=2) + "\n")
        carried = {k: src.manifest[k] for k in CARRIED if k in src.manifest}
        fields = {**carried, **fields, "source": source_record(src)}
        if after is not None:
            write_manifest(tmp, BUNDLE_KIND, format_version=FORMAT_VERSION, **fields)
            fields["check"] = after(tmp)
        manifest = write_manifest(tmp, BUNDLE_KIND, format_version=FORMAT_VERSION, **fields)
    return manifest
