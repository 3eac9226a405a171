"""Every notebook in notebooks/ runs top to bottom without errors, and is stored without outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
# what a notebook's rich outputs must show: thumbnails, the truncated sample's reason, the writer's table
EXPECTED_HTML = {"getting-started.ipynb": ("data:image/jpeg;base64,", "decode_error", "by stage / reason"),
                 "dedup-captions-search.ipynb": ("data:image/jpeg;base64,", "dedup_exact", "clip_score")}

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [], f"cell {cell.source[:40]!r} was saved with outputs"
        assert cell.execution_count is None, f"cell {cell.source[:40]!r} was saved with an execution count"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    # a kernel spec for this interpreter, so the notebook runs in the environment under test
    # whatever "python3" kernel the user's Jupyter directories hold
    spec = tmp_path / "kernels" / "imgcurate-tests"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "imgcurate tests", "language": "python",
    }))
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")], ensure_native_kernel=False)
    manager = KernelManager(kernel_name="imgcurate-tests", kernel_spec_manager=specs)

    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, km=manager, timeout=300,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the traceback, on the first failing cell

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs if o.output_type in ("execute_result", "display_data"))
    for marker in EXPECTED_HTML.get(path.name, ()):
        assert marker in html, f"no {marker!r} in the notebook's HTML outputs"
