"""The released package: build the sdist and wheel, install the wheel into a fresh venv.

``python -m build`` makes the sdist and, from it, the wheel (so the sdist is proven to build);
the wheel is then installed with its real dependencies (JAX, not Equinox or Flax) into a new
virtual environment that cannot see this checkout or the dev venv, and probed there:
``import stable_layers`` works with JAX alone, each framework module names its missing extra,
and one version runs through ``__init__.py``, the file names and the installed metadata.
``twine check --strict`` checks both archives the way an upload would.

About a minute on 2 cores (the install dominates), hence ``slow``: deselected by the default
command, run by ``pytest -m slow`` and by CI.
Missing build tools fail the test, they do not skip it: install the ``dev`` extra.
"""

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "src" / "stable_layers"
DIST_NAME = "stable-layers"


def _require(module: str) -> None:
    """Fail (never skip) when a build tool from the dev extra is missing."""
    if importlib.util.find_spec(module) is None:
        pytest.fail(
            f"{module!r} is not installed in {sys.executable}; it comes with the dev extra: "
            'pip install -e ".[dev]"'
        )


def _run(cmd: list[str], *, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
        f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    )
    return proc


def _clean_env() -> dict[str, str]:
    """This process's environment without anything that would put the checkout on sys.path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def _source_version() -> str:
    """``__version__`` as written in src/stable_layers/__init__.py, read without importing."""
    tree = ast.parse((PACKAGE_DIR / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError("src/stable_layers/__init__.py defines no __version__")


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """The sdist and the wheel built from it, as an upload would get them."""
    _require("build")
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], timeout=600)
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


@pytest.fixture(scope="module")
def fresh_venv(dist, tmp_path_factory) -> Path:
    """A new venv (no system site-packages) with the wheel and its dependencies installed."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    # No ensurepip (slow, and the dev venv's pip can install into any interpreter); no
    # bytecode compilation (imports compile what they need). The dependencies are resolved
    # and installed for real, from the configured package index.
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    _run(
        [*pip, "install", "--no-compile", "--progress-bar", "off", str(dist["wheel"])],
        timeout=900,
        env=_clean_env(),
    )
    _run([*pip, "check"], timeout=120, env=_clean_env())
    return python


_PROBE = textwrap.dedent(
    """
    import importlib.metadata, importlib.util, json, sys
    out = {"prefix": sys.prefix}
    out["installed"] = {
        m: importlib.util.find_spec(m) is not None for m in ("jax", "equinox", "flax")
    }
    import jax.numpy as jnp
    import stable_layers
    out["file"] = stable_layers.__file__
    out["version"] = stable_layers.__version__
    out["dist_version"] = importlib.metadata.version("stable-layers")
    out["softplus"] = [float(v) for v in stable_layers.softplus(jnp.array([-100.0, 0.0, 100.0]))]
    out["frameworks_imported"] = sorted(m for m in ("equinox", "flax") if m in sys.modules)
    for sub in ("equinox", "linen", "nnx"):
        try:
            __import__("stable_layers." + sub)
            out[sub] = None
        except ImportError as err:
            out[sub] = str(err)
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def probe(fresh_venv, tmp_path_factory) -> dict:
    """What the installed package reports, run isolated (-I) from an empty directory."""
    cwd = tmp_path_factory.mktemp("probe")
    proc = _run([str(fresh_venv), "-I", "-c", _PROBE], timeout=300, cwd=cwd, env=_clean_env())
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------
# Configuration and archives
# ----------------------------------------------------------------------------------------


def test_version_has_one_source():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"], "pyproject.toml must not repeat the version"
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["hatch"]["version"]["path"] == "src/stable_layers/__init__.py"
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc)?\d*", _source_version())


def test_file_names_carry_the_source_version(dist):
    version = _source_version()
    assert dist["wheel"].name == f"stable_layers-{version}-py3-none-any.whl"
    assert dist["sdist"].name == f"stable_layers-{version}.tar.gz"


def test_wheel_ships_the_package_alone(dist):
    version = _source_version()
    info = f"stable_layers-{version}.dist-info/"
    with zipfile.ZipFile(dist["wheel"]) as zf:
        names = zf.namelist()
        metadata = zf.read(info + "METADATA").decode()
    outside = [n for n in names if not n.startswith(("stable_layers/", info))]
    assert outside == [], f"files outside the package and its dist-info: {outside}"
    assert not any(n.startswith("tests/") or "/tests/" in n for n in names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    expected = {
        "stable_layers/" + p.relative_to(PACKAGE_DIR).as_posix()
        for p in PACKAGE_DIR.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert "stable_layers/py.typed" in expected
    assert {n for n in names if n.startswith("stable_layers/")} == expected

    fields = [line.split(": ", 1) for line in metadata.split("\n\n", 1)[0].splitlines()]
    meta: dict[str, list[str]] = {}
    for key, value in (f for f in fields if len(f) == 2):
        meta.setdefault(key, []).append(value)
    assert meta["Name"] == [DIST_NAME]
    assert meta["Version"] == [version]
    assert meta["Requires-Python"] == [">=3.11"]
    assert meta["License-Expression"] == ["Apache-2.0"]
    assert meta["Description-Content-Type"] == ["text/markdown"]
    assert {"equinox", "flax", "docs", "dev", "all"} <= set(meta["Provides-Extra"])
    required = [r for r in meta["Requires-Dist"] if "extra ==" not in r]
    assert any(r.startswith("jax>=") for r in required)
    assert not any(r.startswith(("equinox", "flax")) for r in required), required


def test_sdist_has_sources_tests_and_docs_but_no_local_clutter(dist):
    version = _source_version()
    top = f"stable_layers-{version}/"
    with tarfile.open(dist["sdist"]) as tf:
        names = [m.name for m in tf.getmembers() if m.isfile()]
    assert all(n.startswith(top) for n in names), names
    rel = {n[len(top) :] for n in names}
    for needed in (
        "PKG-INFO",
        "pyproject.toml",
        "README.md",
        "CHANGELOG.md",
        "src/stable_layers/__init__.py",
        "src/stable_layers/py.typed",
        "tests/test_package.py",
    ):
        assert needed in rel, f"sdist lacks {needed}"
    clutter = [
        n
        for n in rel
        if n.startswith((".venv/", ".git/", ".ci/", "runs/", "dist/", "build/"))
        or "__pycache__" in n
        or n.endswith((".pyc", ".png"))
    ]
    assert clutter == [], clutter


def test_twine_check_strict(dist):
    _require("twine")
    proc = _run(
        [
            sys.executable,
            "-m",
            "twine",
            "check",
            "--strict",
            str(dist["wheel"]),
            str(dist["sdist"]),
        ],
        timeout=300,
    )
    assert proc.stdout.count("PASSED") == 2, proc.stdout


# ----------------------------------------------------------------------------------------
# The installed wheel, in a venv with JAX and without Equinox or Flax
# ----------------------------------------------------------------------------------------


def test_installed_from_the_wheel_into_a_bare_venv(probe, fresh_venv):
    assert Path(probe["prefix"]) == fresh_venv.parent.parent
    assert Path(probe["file"]).is_relative_to(fresh_venv.parent.parent), probe["file"]
    assert probe["installed"] == {"jax": True, "equinox": False, "flax": False}


def test_import_needs_jax_alone(probe):
    assert probe["frameworks_imported"] == []
    assert probe["softplus"] == pytest.approx([0.0, 0.6931472, 100.0], rel=1e-6, abs=1e-30)


@pytest.mark.parametrize(
    "sub, extra",
    [
        ("equinox", "stable-layers[equinox]"),
        ("linen", "stable-layers[flax]"),
        ("nnx", "stable-layers[flax]"),
    ],
)
def test_framework_module_names_its_extra(probe, sub, extra):
    msg = probe[sub]
    assert msg is not None, f"stable_layers.{sub} imported without its framework"
    assert f"stable_layers.{sub} needs" in msg
    assert f'pip install "{extra}"' in msg


def test_versions_agree(probe, dist):
    version = _source_version()
    assert probe["version"] == version
    assert probe["dist_version"] == version
    assert dist["wheel"].name.split("-")[1] == version
