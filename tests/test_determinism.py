"""Same seed, same artefacts: the tiny zoo's tokenizers and weights are byte-identical when built in two
separate processes (each process has its own hash seed, which is what made the WordPiece trainer differ)."""

import hashlib
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = "import sys; from demo.tiny_zoo import build_tiny_zoo; build_tiny_zoo(sys.argv[1], seed=3)"


def _digests(root: str) -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def test_tiny_zoo_is_byte_identical_across_processes(tmp_path):
    for run in ("a", "b"):
        env = {**os.environ, "PYTHONHASHSEED": "1" if run == "a" else "2", "PYTHONPATH": ROOT}
        subprocess.run([sys.executable, "-c", BUILD, str(tmp_path / run)], cwd=ROOT, env=env, check=True)
    a, b = _digests(str(tmp_path / "a")), _digests(str(tmp_path / "b"))
    assert any(k.endswith("tokenizer.json") for k in a) and len(a) >= 12
    assert a == b, sorted(k for k in a if a[k] != b.get(k))
