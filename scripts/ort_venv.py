"""Makes numpy, onnx and onnxruntime importable for the scripts in this folder.

`ensure_ort(script)` returns when the three import; otherwise it creates the venv
`$MIXPREC_ORT_VENV` (default /tmp/venv-ort) on demand, installs them from PyPI and re-executes
`script` with the same arguments inside it.
"""

import os
import subprocess
import sys

VENV = os.environ.get("MIXPREC_ORT_VENV", "/tmp/venv-ort")


def ensure_ort(script):
    try:
        import numpy  # noqa: F401
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        return
    except ImportError:
        pass
    py = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.executable) == os.path.realpath(py) and os.environ.get("_MIXPREC_REEXEC"):
        sys.exit(f"error: numpy, onnx and onnxruntime are still missing in {VENV}; "
                 f"run {VENV}/bin/pip install numpy onnx onnxruntime")
    if not os.path.exists(py):
        print(f"creating {VENV} (numpy, onnx, onnxruntime)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    subprocess.run([os.path.join(VENV, "bin", "pip"), "install", "-q", "numpy", "onnx", "onnxruntime"],
                   check=True)
    env = dict(os.environ, _MIXPREC_REEXEC="1")
    os.execve(py, [py, os.path.abspath(script)] + sys.argv[1:], env)
