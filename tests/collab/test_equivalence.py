"""Two collaborating peers end where one process taking large-batch steps over the same samples ends.

This is the property the whole project rests on: hivemind.Optimizer, as we configure it (LAMB with clipping of
the averaged gradient, a per-global-step schedule, no compression), is exactly large-batch data-parallel training.
"""
import json
import sys
from pathlib import Path

import pytest
import torch

from collab.lab.swarm import LocalSwarm

sys.path.insert(0, str(Path(__file__).parent))
import equivalence_peer as peer_script  # noqa: E402

MAX_STEPS = 6


def read_contributions(log: Path) -> tuple[dict[int, list[list[int]]], set[int]]:
    """Batches per global step, and the steps whose local contribution this peer discarded."""
    batches, discarded = {}, set()
    for line in log.read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "batch":
            batches.setdefault(event["epoch"], []).append(event["ids"])
        else:
            discarded.add(event["epoch"])
    return batches, discarded


def reference_training(steps: dict[int, list[list[int]]]) -> dict:
    """One process: at step e, the gradient is the mean over every mini-batch the swarm contributed to e."""
    args = peer_script.training_arguments(batch_size=4, max_steps=MAX_STEPS)
    model, (x, y) = peer_script.make_model(), peer_script.make_data()
    groups = peer_script.parameter_groups(model, args.weight_decay)
    optimizer = peer_script.make_optimizer_factory(args)(groups)
    scheduler = peer_script.make_scheduler_factory(args)(optimizer)
    for epoch in range(MAX_STEPS):
        assert steps.get(epoch), f"no samples recorded for global step {epoch}"
        model.zero_grad()
        for ids in steps[epoch]:
            loss = peer_script.mse_loss(model, dict(x=x[ids], y=y[ids])) / len(steps[epoch])
            loss.backward()
        optimizer.step()
        scheduler.step()
    return model.state_dict()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_peers_equal_one_large_batch_process(tmp_path):
    script = "tests/collab/equivalence_peer.py"
    with LocalSwarm(tmp_path / "logs") as swarm:
        first = swarm.start("peer-1", script, ["--log", str(tmp_path / "peer1.jsonl"), "--data_seed", "1",
                                                "--max_steps", str(MAX_STEPS),
                                                "--start_after", str(tmp_path / "peer2.ready")])
        maddrs = swarm.wait_for_file(tmp_path / "peer1.maddrs", 60, watch=[first]).split()[1:]
        second = swarm.start("peer-2", script, ["--log", str(tmp_path / "peer2.jsonl"), "--data_seed", "2",
                                                 "--max_steps", str(MAX_STEPS), "--initial_peers", *maddrs])
        swarm.wait_until(lambda: not first.alive and not second.alive, 240, "both peers to finish")
        for peer in (first, second):
            assert peer.popen.returncode == 0, peer.log_tail()

    steps: dict[int, list[list[int]]] = {}
    contributors: dict[int, int] = {}
    for log in (tmp_path / "peer1.jsonl", tmp_path / "peer2.jsonl"):
        batches, discarded = read_contributions(log)
        for epoch, ids in batches.items():
            if epoch not in discarded:
                steps.setdefault(epoch, []).extend(ids)
                contributors[epoch] = contributors.get(epoch, 0) + 1
    shared = sum(count == 2 for count in contributors.values())
    assert shared >= MAX_STEPS // 2, f"the peers shared only {shared} of {MAX_STEPS} global steps"

    expected = reference_training(steps)
    # each peer's own parameters, saved before the end-of-run agreement: both trajectories, not one copied
    for name in ("peer1", "peer2"):
        actual = torch.load(tmp_path / f"{name}.before_agreement.pt")
        for key, value in expected.items():
            torch.testing.assert_close(actual[key], value, rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
