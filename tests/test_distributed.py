"""One process's view of a data-parallel run (the collectives across processes are tested by launching several in
tests/engine/test_step.py)."""

import numpy as np
import pytest
import torch

from polar_vbll.distributed import Ranks, current_ranks
from polar_vbll.errors import PolarVBLLError


def test_a_single_process_owns_everything_and_its_collectives_change_nothing(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ranks = current_ranks()
    assert ranks == Ranks(0, 1) and ranks.main and all(ranks.owns(n) for n in range(5))
    rows = np.arange(6.0).reshape(3, 2)
    assert ranks.gather_rows(rows) is rows and ranks.all_objects({"a": 1}) == [{"a": 1}]
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.full((3,), 2.0)
    ranks.mean_gradients_([param])
    assert torch.equal(param.grad, torch.full((3,), 2.0))


def test_work_is_shared_round_robin():
    owned = [[n for n in range(7) if Ranks(rank, 3).owns(n)] for rank in range(3)]
    assert owned == [[0, 3, 6], [1, 4], [2, 5]] and not Ranks(1, 3).main


@pytest.mark.parametrize(
    ("variable", "name"), [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")]
)
def test_a_launch_config_that_shards_the_model_is_refused_in_one_line(monkeypatch, variable, name):
    monkeypatch.setenv(variable, "true")
    with pytest.raises(PolarVBLLError, match=f"^{variable}: the accelerate config asks for {name}, but") as error:
        current_ranks()
    assert "\n" not in str(error.value)


def test_a_launched_process_closes_its_process_group_at_exit(tmp_path):
    """Left open, gloo's threads can abort a finished process at exit (SIGABRT): the launch then fails."""
    import os
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(
        "import atexit, torch, torch.distributed as dist\n"
        "from polar_vbll.distributed import current_ranks\n"
        "ranks = current_ranks()\n"
        "assert ranks.size == 2 and float(ranks.sum_(torch.ones(1))) == 2.0\n"
        "atexit._run_exitfuncs()\n"
        "print('open after exit handlers:', dist.is_initialized())\n"
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("open after exit handlers: False") == 2
