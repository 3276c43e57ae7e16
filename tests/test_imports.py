"""The torch-free entry points stay torch-free: a report or a selection starts in well under a second."""
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.parametrize("module", ["report", "selection", "scorefile", "cli"])
def test_module_imports_without_torch(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'jepa') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
