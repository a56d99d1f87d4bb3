"""notebooks/quickstart.ipynb runs top to bottom and shows its images and the evaluation table."""

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


@pytest.fixture
def python3_kernel(tmp_path, monkeypatch):
    """A `python3` kernel spec for this interpreter, found first on JUPYTER_PATH.

    A fresh venv may have no kernel spec installed, and an installed one may point at another
    Python (without torch); this one runs ipykernel in the interpreter running the tests.
    """
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    # Small tensors: one OpenMP thread is as fast and immune to a busy second core.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # The notebook trains in tempfile.mkdtemp() (its replay is tens of MB): keep that in tmp_path.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    return "python3"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quickstart_notebook_runs(python3_kernel):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), (
        "save the notebook without outputs"
    )
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name=python3_kernel,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) >= 3  # reconstructions, dream grid, learning curves
    assert any("image/gif" in output.get("data", {}) for output in outputs)
    text = "".join(
        output.get("text", "") + output.get("data", {}).get("text/plain", "") for output in outputs
    )
    assert "Evaluation after" in text  # the score table of trainer.test
    assert "'return_mean'" in text  # model.last_eval
