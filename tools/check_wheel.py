"""Install the built wheel into a clean virtual environment and check that it works there.

Installing torch into a fresh environment takes minutes, so the clean environment gets the wheel alone
(``--no-deps``) and sees the dependencies of the environment running this script through a ``.pth`` file. That
file only appends the dependencies' folder to ``sys.path``: the wheel's own ``vitkit`` comes first, and the checks
below fail if ``vitkit`` is imported from anywhere else. Everything runs from a temporary folder outside the
repository, so that the source tree cannot stand in for the installed package.

    python tools/check_wheel.py dist
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig
import tempfile
import venv
from pathlib import Path

# What the installed package must do: its import resolves inside the clean environment, and the files that are
# not Python (the serve page) are in the wheel.
IMPORT_CHECK = """
import sys
from pathlib import Path

import vitkit

where = Path(vitkit.__file__).resolve()
if not where.is_relative_to(Path(sys.prefix).resolve()):
    raise SystemExit(f"vitkit was imported from {where}, not from the clean environment {sys.prefix}")
static = where.parent / "serve" / "static"  # located without importing vitkit.serve, which loads torch
missing = [name for name in ("index.html", "app.js", "style.css") if not (static / name).is_file()]
if missing:
    raise SystemExit(f"the wheel lacks the serve page's files {missing} under {static}")
print(f"vitkit {vitkit.__version__} from {where.parent}")
"""


def clean_environment() -> dict[str, str]:
    """This process's environment without what would put another ``vitkit`` on the path: a ``PYTHONPATH`` to the
    source tree (whose ``vitkit.egg-info`` would even make pip think the wheel is installed already), an active
    virtual environment, the user's site-packages."""
    dropped = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
    return {key: value for key, value in os.environ.items() if key not in dropped} | {"PYTHONNOUSERSITE": "1"}


def run(command: list[str], cwd: Path) -> str:
    """Run ``command`` in ``cwd`` with a clean environment; on failure stop with its output."""
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=clean_environment())
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout


def check_wheel(wheel: Path) -> None:
    """Install ``wheel`` into a fresh environment and run the command and the import from outside the repository."""
    dependencies = sysconfig.get_paths()["purelib"]
    with tempfile.TemporaryDirectory(prefix="vitkit-wheel-") as scratch:
        scratch_dir = Path(scratch)
        env_dir = scratch_dir / "venv"
        venv.EnvBuilder(with_pip=False).create(env_dir)
        env_python = env_dir / "bin" / "python"
        # The running interpreter's pip installs into the clean environment, which saves bootstrapping a pip there.
        run([sys.executable, "-m", "pip", "--python", str(env_python), "install", "--quiet", "--no-deps", "--no-index",
             str(wheel.resolve())], cwd=scratch_dir)  # fmt: skip
        site_packages = Path(run([str(env_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 cwd=scratch_dir).strip())  # fmt: skip
        (site_packages / "zz_dependencies.pth").write_text(dependencies + "\n")
        script = env_dir / "bin" / "vitkit"
        if not script.is_file():
            raise SystemExit(f"installing {wheel.name} made no `vitkit` script in {script.parent}")
        help_text = run([str(script), "--help"], cwd=scratch_dir)
        if "train" not in help_text:
            raise SystemExit(f"`vitkit --help` does not list the train command:\n{help_text}")
        print(run([str(env_python), "-c", IMPORT_CHECK], cwd=scratch_dir).strip())
        print(f"{wheel.name}: `vitkit --help` and `import vitkit` work in a clean environment")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dist", type=Path, help="the folder `python -m build` wrote the wheel to")
    wheels = sorted(parser.parse_args().dist.glob("vitkit-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one vitkit wheel in the dist folder, found {[w.name for w in wheels]}")
    check_wheel(wheels[0])


if __name__ == "__main__":
    main()
