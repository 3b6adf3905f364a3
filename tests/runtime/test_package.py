"""What ``pip install threadline`` puts on a machine: one package, ``threadline``, whose public
face is ``import threadline``; nothing named ``actors``, ``transport`` or ``runtime``."""

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OLD_NAMES = re.compile(r"^\s*(from|import)\s+(actors|transport|runtime)\b", re.M)


def build_wheel(into: Path) -> Path:
    """The wheel ``pip install .`` builds, made from a copy (a build writes ``build/`` beside
    the sources, and a test leaves the checkout as it found it)."""
    source = into / "source"
    source.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for top in ("actors", "transport", "runtime"):
        shutil.copytree(ROOT / top, source / top, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(into), str(source)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = into.glob("threadline-*.whl")
    return wheel


def test_the_wheel_installs_one_namespace_with_a_public_face(tmp_path):
    wheel = build_wheel(tmp_path / "dist")
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/")[0] for name in zf.namelist()}
        site = tmp_path / "site"
        zf.extractall(site)  # what pip's install does with a pure-Python wheel's files
    assert {top for top in tops if not top.endswith(".dist-info")} == {"threadline"}
    # From outside the repository, with only the installed files on the path.
    probe = (
        "import importlib.util, threadline\n"
        "print(threadline.__file__)\n"
        "print(threadline.open_runtime.__module__, threadline.open_server.__name__,"
        " threadline.Run.__name__, threadline.ToolRegistry.__name__)\n"
        "print([importlib.util.find_spec(n) for n in ('actors', 'transport', 'runtime')])\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env={"PYTHONPATH": str(site)})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(str(site))
    assert lines[1] == "threadline.api open_server Run ToolRegistry"
    assert lines[2] == "[None, None, None]"


def test_python_dash_m_threadline_is_the_command():
    out = subprocess.run([sys.executable, "-m", "threadline", "--version"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("threadline ")


def test_no_code_imports_the_repository_directories_by_their_own_names():
    # Inside the repository `actors` etc. would still import (the checkout is on sys.path), as a
    # second copy of every module: code must say `threadline.actors`, never `actors`.
    offenders = [str(path.relative_to(ROOT)) for top in ("actors", "transport", "runtime",
                                                         "tests", "bench")
                 for path in (ROOT / top).rglob("*.py") if OLD_NAMES.search(path.read_text())]
    assert offenders == []


def test_imports_flow_one_way_threadline_then_transport_then_actors():
    """``actors`` imports only itself (relatively); ``transport`` imports ``threadline.actors``
    and itself, never the assembly above it (``threadline.api``, ``.stores``, ...)."""
    absolute = re.compile(r"^\s*(?:from|import)\s+(threadline[\w.]*)", re.M)
    upward = {top: [f"{path.relative_to(ROOT)}: {name}" for path in (ROOT / top).rglob("*.py")
                    for name in absolute.findall(path.read_text())
                    if not name.startswith(allowed)]
              for top, allowed in (("actors", ("threadline.actors",)),
                                   ("transport", ("threadline.actors", "threadline.transport")))}
    assert upward == {"actors": [], "transport": []}
