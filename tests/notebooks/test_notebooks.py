"""The notebooks: in step with their source (scripts/make_notebooks.py), committed with the outputs of the normal
setting, using only the public API, and executed top to bottom in the fast setting (real model: marked slow)."""

import ast
import importlib
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import make_notebooks  # noqa: E402

NAMES = list(make_notebooks.CELLS)


def _outputs(notebook) -> list:
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]


def _text(notebook) -> str:
    return "".join(o.get("text", "") for o in _outputs(notebook))


def test_every_notebook_is_committed():
    assert sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_matches_its_source_and_holds_normal_outputs(name):
    notebook = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    nbformat.validate(notebook)
    assert make_notebooks.sources(notebook) == make_notebooks.sources(make_notebooks.build(name))
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code), "every code cell ran"
    assert not [o for o in _outputs(notebook) if o.output_type == "error"]
    assert "setting: normal" in _text(notebook) and "setting: fast" not in _text(notebook)
    assert not [c for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", [])]


@pytest.mark.parametrize("name", ["01_calibrated_finetuning", "02_ood_detection"])
def test_plots_are_visible_without_running(name):
    notebook = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    assert sum("image/png" in o.get("data", {}) for o in _outputs(notebook)) >= 2


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_use_only_the_public_api(name):
    for kind, source in make_notebooks.sources(make_notebooks.build(name)):
        if kind != "code":
            continue
        assert not re.search(r"\._[A-Za-z]", source), f"{name}: private attribute in\n{source}"
        for node in ast.walk(ast.parse(source)):
            modules = (
                [(node.module, [a.name for a in node.names])]
                if isinstance(node, ast.ImportFrom) and node.module
                else [(a.name, []) for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            for module, names in modules:
                if not module.startswith("polar_vbll"):
                    continue
                assert not any(part.startswith("_") for part in module.split(".")), module
                public = importlib.import_module(module).__all__
                assert set(names) <= set(public), f"{name}: {module} does not export {set(names) - set(public)}"


def test_parameters_are_injected_after_the_parameters_cell():
    notebook = make_notebooks.build(NAMES[0])
    injected = make_notebooks.with_parameters(notebook, fast=True)
    index = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", []))
    assert injected.cells[index + 1].source == "fast = True"
    assert injected.cells[index + 1].metadata["tags"] == ["injected-parameters"]
    assert make_notebooks.sources(injected) == make_notebooks.sources(notebook)
    assert len(notebook.cells) == len(injected.cells) - 1  # the original is left as it was


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom_in_the_fast_setting(name, tmp_path):
    notebook = make_notebooks.with_parameters(make_notebooks.build(name), fast=True)
    executed = make_notebooks.execute(notebook, tmp_path, timeout=900)
    assert "setting: fast" in _text(executed)
    assert not [o for o in _outputs(executed) if o.output_type == "error"]
    assert list((tmp_path / "runs" / "notebooks").iterdir()), "the notebook's runs go below its working directory"
