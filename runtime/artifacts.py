"""Artifact directories: atomic writes and manifest.json with the sha256 of every file.

Every stage writes into a temporary sibling directory and renames it into place at the end, so an
interrupted or failed stage never leaves a half-written artifact behind.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from runtime.errors import UserError

MANIFEST = "manifest.json"
_SNIFF_BYTES = 64 << 20  # JSON files up to this size are read to see whether they name their format


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of a JSON-serialisable object in canonical form (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The permissions a plain `open` gives a new file: 0666 less the umask (0644 under umask 022)."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The permissions a plain `mkdir` gives a new directory: 0777 less the umask (0755 under umask 022)."""
    return 0o777 & ~current_umask()


def apply_umask(root: Path) -> None:
    """Give a freshly written tree the permissions plain `open`/`mkdir` would: writers that make private files
    (mkstemp, safetensors: 0600) would otherwise keep the artifact from every other user. Executables stay so."""
    files, dirs = file_mode(), dir_mode()
    for top, subdirs, names in os.walk(root):
        os.chmod(top, dirs)
        for name in names:
            path = os.path.join(top, name)
            if not os.path.islink(path):
                os.chmod(path, dirs if os.stat(path).st_mode & stat.S_IXUSR else files)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(directory: Path, prefix: str) -> None:
    """Remove the temporaries `<prefix><pid>-*` in `directory` left by processes of this machine that are gone
    (a SIGKILL skips every cleanup), so they neither fill the disk nor confuse a later run."""
    if not directory.is_dir():
        return
    for entry in directory.glob(f"{glob.escape(prefix)}*-*"):
        pid = entry.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `final` only if the block succeeds. Its tree then gets the
    umask's permissions (`apply_umask`; mkdtemp alone gives 0700), so others read the artifact as the umask
    allows; temporaries that killed runs left beside `final` are removed first."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise UserError(f"{final} already exists; choose another output directory or remove it first")
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.tmp-"
    remove_stale(final.parent, prefix)
    tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=final.parent))
    try:
        yield tmp
        apply_umask(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_manifest(directory: str | os.PathLike, kind: str, **fields: Any) -> dict:
    """Write manifest.json listing every file of `directory` with its sha256, plus `fields`."""
    directory = Path(directory)
    files = {
        p.relative_to(directory).as_posix(): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"kind": kind, **fields, "files": files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(directory: str | os.PathLike, verify: bool = True) -> dict:
    """Read manifest.json; with `verify`, refuse a directory whose files do not match their sha256."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise UserError(f"{directory} has no {MANIFEST}: it was not written by this toolchain")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); rebuild the artifact") from e
    if verify:
        for rel, digest in manifest.get("files", {}).items():
            f = directory / rel
            if not f.is_file():
                raise UserError(f"{directory}: {rel} is listed in {MANIFEST} but missing; rebuild the artifact")
            if sha256_file(f) != digest:
                raise UserError(f"{directory}: {rel} does not match its sha256 in {MANIFEST} (modified or corrupt); rebuild the artifact")
    return manifest


def artifact_kind(path: str | os.PathLike) -> str | None:
    """What product artifact an existing file belongs to, in words, or None for a plain file: a manifest, a file
    listed in the manifest of a directory above it, or a JSON object that names its "format" or "kind"."""
    path = Path(path).absolute()
    if not path.is_file():
        return None
    if path.name == MANIFEST:
        return f"the manifest of {path.parent}"
    for parent in path.parents:
        if (parent / MANIFEST).is_file():
            try:
                manifest = json.loads((parent / MANIFEST).read_text())
            except (OSError, ValueError):
                break
            if isinstance(manifest, dict) and path.relative_to(parent).as_posix() in (manifest.get("files") or {}):
                return f"part of the {manifest.get('kind')!r} artifact {parent}"
            break
    if path.suffix == ".json" and path.stat().st_size <= _SNIFF_BYTES:
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        named = obj.get("format") or obj.get("kind") if isinstance(obj, dict) else None
        if isinstance(named, str):
            return f"a {named!r} file"
    return None


def _overlap(out: Path, src: Path, directory: bool) -> bool:
    if out == src or (out.exists() and src.exists() and os.path.samefile(out, src)):
        return True
    return directory and (src in out.parents or out in src.parents)


def _writable(path: Path, flag: str) -> None:
    """Refuse a path that cannot be created or written: the nearest existing directory above must be writable."""
    place = path.parent
    while not place.exists():
        place = place.parent
    if not place.is_dir():
        raise UserError(f"{flag} {path} cannot be created: {place} is a file, not a directory; choose another path")
    if not os.access(place, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path} cannot be written: no write permission in {place}; choose a writable place")
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path} cannot be written: no write permission in it; choose a writable place")


def check_output(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (), *, directory: bool = True,
                 kind: str | None = None, flag: str = "--out") -> Path:
    """Refuse, before any work, an output that would destroy what the command reads or another artifact, or that
    cannot be written; returns the output path.

    - it must not be an input (for a directory: nor lie inside one, nor hold one), so nothing read is overwritten;
    - a file must not be a directory, nor belong to an artifact (`artifact_kind`): a manifest, a file listed in
      one, or a JSON file that names its format, such as an MM-TOXIC-QA report;
    - a directory must not be a file, and when it exists and holds files, they must be an artifact of `kind`
      (when given: other kinds, or foreign files, are never replaced);
    - the nearest existing directory above it must be writable (atomic writes make a sibling there).
    """
    path = Path(out).expanduser()
    target = path.absolute()
    for given in inputs:
        if given is None:
            continue
        src = Path(given).expanduser().absolute()
        if not src.exists():  # a model name, or an input the command will refuse as missing
            continue
        if _overlap(target.resolve(), src.resolve(), directory):
            raise UserError(f"{flag} {path} would overwrite the input {given}, which this command reads; "
                            f"choose another {flag}")
    if directory:
        if path.exists() and not path.is_dir():
            raise UserError(f"{flag} {path} is a file; {flag} must be a directory")
        if kind is not None and path.is_dir() and any(path.iterdir()):
            have = None
            if (path / MANIFEST).is_file():
                try:
                    have = json.loads((path / MANIFEST).read_text()).get("kind")
                except (OSError, ValueError, AttributeError):
                    have = None
            if have != kind:
                what = f"a {have!r} artifact, not a {kind!r} one" if have else f"other files, not a {kind!r} artifact"
                raise UserError(f"{flag} {path} holds {what}; writing there would destroy them: choose another {flag}")
    else:
        if path.is_dir():
            raise UserError(f"{flag} {path} is a directory; pass a file name")
        belongs = artifact_kind(path)
        if belongs is not None:
            raise UserError(f"{flag} {path} is {belongs}; writing over it would destroy it: choose another file")
    _writable(target, flag)
    return path
