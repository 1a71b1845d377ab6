"""The native host (`sgm-run`, native/, built by the root CMakeLists.txt) as a runtime.protocol.Generator.

`NativeGenerator.open(bundle)` starts `sgm-run serve --bundle B` and talks JSON lines to it: one request a line,
one result a line. Everything that decides tokens runs in the host (tokenizer, image preprocessing, the graphs,
greedy and seeded top-p sampling), so a run through it checks the program that ships to the device; this module
only hands over the requests. An image goes over as a lossless PNG of its RGB pixels (runtime.images.usable_image
first, as runtime.preprocess does), so the host decodes exactly the pixels the Python runtime would see.

Each request runs alone with its own random stream `request_rng(seed, first_index + i)`, as the Python runtime
runs a batch of one, so the tokens equal `BundleGenerator.generate(..., batch_size=1)`'s (tests/native).

    from runtime.native import NativeGenerator
    with NativeGenerator.open("build/bundle") as gen:
        [r] = gen.generate([GenerationRequest("What is in the image?", image)], GenerationConfig())
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Sequence

from runtime.errors import UserError
from runtime.images import usable_image
from runtime.protocol import GenerationConfig, GenerationRequest, GenerationResult

HOST_ENV = "SGM_NATIVE_HOST"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HOST = REPO_ROOT / "build-native" / "sgm-run"
BUILD_HINT = ("build it with `scripts/native-setup` then `cmake -S . -B build-native $(scripts/native-setup | tail -1) "
              "&& cmake --build build-native` (README, 'Native host'), or set " + HOST_ENV)


def find_host() -> Path | None:
    """The sgm-run executable: $SGM_NATIVE_HOST, else build-native/sgm-run of this checkout; None when neither is."""
    given = os.environ.get(HOST_ENV)
    path = Path(given).expanduser() if given else DEFAULT_HOST
    return path if path.is_file() and os.access(path, os.X_OK) else None


class NativeGenerator:
    """A bundle answered by the native host over JSON lines (the runtime.protocol.Generator interface)."""

    def __init__(self, bundle: str | os.PathLike, host: str | os.PathLike | None = None, threads: int | None = None,
                 decoder: str = "auto", verify: bool = True):
        exe = Path(host) if host is not None else find_host()
        if exe is None or not exe.is_file():
            raise UserError(f"the native host sgm-run is not built ({exe or DEFAULT_HOST} is missing); {BUILD_HINT}")
        cmd = [str(exe), "serve", "--bundle", str(bundle), "--decoder", decoder]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        if not verify:
            cmd.append("--no-verify")
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                      text=True, encoding="utf-8", bufsize=1)
        self._images = tempfile.TemporaryDirectory(prefix="sgm-native-")
        ready = self._read()
        if not ready.get("ready"):
            raise UserError(f"the native host did not start: {ready}")
        self._describe: dict[str, Any] = ready.get("describe", {})

    @classmethod
    def open(cls, directory: str | os.PathLike, **options: Any) -> "NativeGenerator":
        """Start the host on a bundle (it verifies the manifest itself; options: host, threads, decoder, verify)."""
        return cls(directory, **options)

    def _read(self) -> dict[str, Any]:
        line = self._proc.stdout.readline() if self._proc.stdout else ""
        if not line:
            self._proc.wait(timeout=30)
            self._stderr.seek(0)
            err = [l for l in self._stderr.read().splitlines() if l.strip()]
            msg = err[-1] if err else f"exit status {self._proc.returncode}"
            raise UserError(msg.removeprefix("sgm-run: error: ") if msg.startswith("sgm-run: error: ")
                            else f"the native host stopped: {msg}")
        return json.loads(line)

    def request(self, obj: dict[str, Any]) -> dict[str, Any]:
        """One request object in, its result object out (with "error" for a request the host refused)."""
        if self._proc.poll() is not None or self._proc.stdin is None:
            raise UserError("the native host has stopped; open the bundle again")
        self._proc.stdin.write(json.dumps(obj) + "\n")
        self._proc.stdin.flush()
        return self._read()

    def _image_path(self, image: Any, i: int) -> str:
        path = Path(self._images.name) / f"{i}.png"
        usable_image(image, getattr(image, "filename", "") or f"image {i + 1} of the batch").save(path, format="PNG")
        return str(path)

    def generate(self, requests: Sequence[GenerationRequest], config: GenerationConfig, batch_size: int = 8,
                 first_index: int = 0) -> list[GenerationResult]:
        """Answer each request in order, one at a time in the host (`batch_size` is accepted for the interface)."""
        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        results = []
        for i, r in enumerate(requests):
            obj: dict[str, Any] = {"id": i, "prompt": r.prompt, "chat": r.chat,
                                   "max_new_tokens": config.max_new_tokens, "do_sample": config.do_sample,
                                   "temperature": config.temperature, "top_p": config.top_p, "seed": config.seed,
                                   "index": first_index + i}
            if r.image is not None:
                obj["image"] = self._image_path(r.image, i)
            out = self.request(obj)
            if "error" in out:
                which = f"request {i + 1} of {len(requests)}: " if len(requests) > 1 else ""
                raise UserError(f"{which}{out['error']}")
            results.append(GenerationResult(out["text"], tuple(out["token_ids"]), out["finish_reason"]))
        return results

    def nll(self, texts: Sequence[str], max_length: int = 512) -> list[tuple[float, int]]:
        """Teacher-forced negative log-likelihood of plain texts, computed by the host: (sum, predicted tokens)."""
        out = []
        for text in texts:
            res = self.request({"nll": text, "max_length": max_length})
            if "error" in res:
                raise UserError(res["error"])
            out.append((float(res["nll"]), int(res["tokens"])))
        return out

    def describe(self) -> dict[str, Any]:
        """The host's provenance: backend "native", providers, model, dtype, bundle_sha256, precision, decoder ..."""
        return dict(self._describe)

    def close(self) -> None:
        if self._proc.poll() is None:
            if self._proc.stdin:
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout:
            self._proc.stdout.close()
        self._stderr.close()
        self._images.cleanup()

    def __enter__(self) -> "NativeGenerator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
