"""BatchNorm statistics ride along with the gradients: after a global step both peers of a round hold the
sample-weighted average of their running statistics, with and without --offload_optimizer (two peer processes,
tests/collab/buffer_averaging_peer.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import hivemind
import pytest
import torch

pytestmark = pytest.mark.timeout(180)

PEER_SCRIPT = Path(__file__).with_name("buffer_averaging_peer.py")


@pytest.mark.parametrize("offload", [1, 0], ids=["offload", "no-offload"])
def test_running_statistics_are_averaged_by_samples_at_every_global_step(offload, tmp_path):
    bootstrap = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    fills, batch_sizes = [1.0, 3.0], [48, 16]  # one local step each reaches the target of 64 together
    try:
        peers = [subprocess.Popen([sys.executable, str(PEER_SCRIPT), "--initial_peer",
                                   str(bootstrap.get_visible_maddrs()[0]), "--fill", str(fill),
                                   "--batch_size", str(size), "--offload", str(offload),
                                   "--output", str(tmp_path / f"peer-{index}.json")],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for index, (fill, size) in enumerate(zip(fills, batch_sizes))]
        logs = [peer.communicate(timeout=150)[0] for peer in peers]
    finally:
        bootstrap.shutdown()
    assert [peer.returncode for peer in peers] == [0, 0], logs
    results = [json.loads((tmp_path / f"peer-{index}.json").read_text()) for index in range(2)]
    assert [(result["step"], result["outcome"]) for result in results] == [(1, "averaged")] * 2, logs
    expected_mean = (48 * 1.0 + 16 * 3.0) / 64
    expected_var = (48 * 2.0 + 16 * 4.0) / 64
    for result in results:
        torch.testing.assert_close(torch.tensor(result["running_mean"]), torch.full((3,), expected_mean))
        torch.testing.assert_close(torch.tensor(result["running_var"]), torch.full((3,), expected_var))
        assert result["statistics_probed"], "the value check must compare the statistics too"
    # the averaged gradient still reached the parameters: both peers hold the same ones (to the last bits: hivemind
    # sends each peer the average minus its own part, which each adds back with its own rounding)
    for first, second in zip(results[0]["parameters"], results[1]["parameters"]):
        torch.testing.assert_close(torch.tensor(first), torch.tensor(second), rtol=1e-6, atol=1e-7)
