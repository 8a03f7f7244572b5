"""The viewer's JavaScript, vendored: pinned npm packages, the files we serve from them and
their sha256. No Node build step: the files are the packages' own prebuilt `dist/` files.

`python -m hud_ray.view.vendor` re-fetches each package with `npm pack NAME@VERSION`,
checks every file against the sha256 pinned here, and copies it (with the package's
licence) into `static/vendor/`. `--check` only verifies the files already vendored.

Why these two: Tabulator renders only the visible rows (a virtual DOM), so 100,000 rows
scroll smoothly, and it pages, sorts and filters through the server (`paginationMode:
"remote"`); Chart.js draws the histograms and the throughput line from one UMD file.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VENDOR_DIR = Path(__file__).parent / "static" / "vendor"

# package, version, {file inside the package: sha256}
PINNED: list[tuple[str, str, dict[str, str]]] = [
    ("tabulator-tables", "6.5.3", {
        "dist/js/tabulator.min.js":
            "ffac518cb793c672a2f0522b7fc80bf862234d96bb1e581c8aaf7f48f130eafa",
        "dist/css/tabulator.min.css":
            "405ae24218357d80df2a5f3addf138666d035f970dac4ebdb0265d0b5373efcb",
        "LICENSE":
            "191a2ee554684e1064c897b432f0e1bc6dfa714ca045d3f6ea2cf692cbd398b7",
    }),
    ("chart.js", "4.6.1", {
        "dist/chart.umd.min.js":
            "87364cc2b2a76a6684929e7d6b80b18a897794db38400caff1fcf1791c6925d2",
        "LICENSE.md":
            "41a84aa2caba645f966a18d9c2056b73e6d3a81d80bc0046bc0011a2634d4cce",
    }),
]


def target_name(package: str, member: str) -> str:
    """Where a pinned file lands in static/vendor/ (the licence named after its package)."""
    name = Path(member).name
    return f"{package}.{name}" if name.startswith("LICENSE") else name


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check() -> list[str]:
    """Every vendored file that is missing or differs from its pin (empty: all good)."""
    problems = []
    for package, version, files in PINNED:
        for member, digest in files.items():
            path = VENDOR_DIR / target_name(package, member)
            if not path.is_file():
                problems.append(f"{path.name}: missing (run python -m hud_ray.view.vendor)")
            elif sha256(path) != digest:
                problems.append(f"{path.name}: sha256 differs from {package}@{version}'s pin")
    return problems


def fetch() -> None:
    """npm pack each pinned package, verify each file's sha256, copy it into static/vendor/."""
    VENDOR_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for package, version, files in PINNED:
            out = subprocess.run(["npm", "pack", f"{package}@{version}", "--silent"], cwd=tmp,
                                 check=True, capture_output=True, text=True).stdout.split()[-1]
            root = Path(tmp) / package
            with tarfile.open(Path(tmp) / out) as archive:
                archive.extractall(root, filter="data")
            for member, digest in files.items():
                source = root / "package" / member
                if sha256(source) != digest:
                    raise SystemExit(f"{package}@{version} {member}: sha256 {sha256(source)} "
                                     f"is not the pinned {digest}")
                shutil.copyfile(source, VENDOR_DIR / target_name(package, member))


if __name__ == "__main__":
    if "--check" not in sys.argv[1:]:
        fetch()
    problems = check()
    print("\n".join(problems) or "vendored JS: every file matches its pin")
    sys.exit(1 if problems else 0)
