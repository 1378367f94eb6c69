"""Unpack llama.cpp's HF -> GGUF converter from the installed llama-cpp-python's source distribution.

`make peer` runs this after installing llama-cpp-python: pip builds the binding from the sdist but
installs only the library, and `sizewise study --peers` converts the parent with llama.cpp's own
`convert_hf_to_gguf.py` (with its vendored gguf-py and conversion/ package, so the converter and the
library are the same version). Writes <venv>/llama.cpp-src/ (sizewise.study_peers.converter_dir).
Run with the venv's python; uses PyPI (an install step), never at run time.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

KEEP = ("convert_hf_to_gguf.py", "gguf-py/", "conversion/")


def main() -> None:
    import llama_cpp

    version = llama_cpp.__version__
    dest = Path(sys.prefix) / "llama.cpp-src"
    stamp = dest / ".version"
    if stamp.is_file() and stamp.read_text().strip() == version:
        print(f"llama.cpp converter {version} already in {dest}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={version}", "-d", tmp], check=True)
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        staging = Path(tmp) / "out"
        with tarfile.open(sdist) as tf:
            for m in tf.getmembers():
                parts = m.name.split("/vendor/llama.cpp/", 1)
                if len(parts) == 2 and parts[1].startswith(KEEP) and (m.isfile() or m.isdir()):
                    m.name = parts[1]
                    tf.extract(m, staging, filter="data")
        if not (staging / "convert_hf_to_gguf.py").is_file():
            sys.exit(f"{sdist.name} has no vendor/llama.cpp/convert_hf_to_gguf.py")
        (staging / ".version").write_text(version + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        shutil.move(str(staging), dest)
    print(f"llama.cpp converter {version} unpacked into {dest}")


if __name__ == "__main__":
    main()
