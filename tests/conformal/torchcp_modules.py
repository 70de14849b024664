"""TorchCP's score and quantile modules without its package ``__init__`` (which imports torch_geometric and other
parts these tests do not need): each module loaded from its file under stub parent packages."""

import importlib.util
import sys
import types
from pathlib import Path


def torchcp_module(name: str):
    """``torchcp.<name>`` (e.g. ``classification.score.lac``), or a pytest skip when TorchCP is not installed."""
    import pytest

    if "torchcp" in sys.modules:
        root = Path(sys.modules["torchcp"].__path__[0])
    else:
        spec = importlib.util.find_spec("torchcp")  # (finds it without running its __init__)
        if spec is None or spec.origin is None:
            pytest.skip("TorchCP (tests/requirements-nodeps.txt) is not installed")
        root = Path(spec.origin).parent
    parts = ["torchcp", *name.split(".")]
    for depth in range(1, len(parts)):
        package = ".".join(parts[:depth])
        if package not in sys.modules or not hasattr(sys.modules[package], "__path__"):
            stub = types.ModuleType(package)
            stub.__path__ = [str(root.joinpath(*parts[1:depth]))]
            sys.modules[package] = stub
    full = ".".join(parts)
    if full not in sys.modules:
        module_spec = importlib.util.spec_from_file_location(full, root.joinpath(*parts[1:]).with_suffix(".py"))
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[full] = module
        module_spec.loader.exec_module(module)
    return sys.modules[full]
