"""The value check of collab.sync on records shaped like the ones peers publish (synthetic, exact)."""
import random

from collab.sync import GRADIENT_TOLERANCE, SyncRecord, choose_reference, gradient_gap, judge, parameter_gap


def record(peer: str, gradient, parameters, move=0.01, serving=True, outcome="averaged", step=5) -> SyncRecord:
    return SyncRecord(step=step, gradient=list(gradient), parameters=list(parameters), move=move, serving=serving,
                      outcome=outcome, peer=peer)


def swarm(num_peers=3, size=64, compression_noise=0.0, seed=0):
    """Peers that applied the same averaged gradient, each with its own compression residual."""
    rng = random.Random(seed)
    gradient = [rng.gauss(0, 1e-2) for _ in range(size)]
    parameters = [rng.gauss(0, 5e-2) for _ in range(size)]
    return gradient, parameters, [
        record(f"p{i}", [g * (1 + rng.uniform(-compression_noise, compression_noise)) for g in gradient],
               parameters) for i in range(num_peers)]


def test_peers_that_applied_the_same_update_are_in_sync_within_the_compression_residual():
    for noise in (0.0, 1e-3, 0.03):  # none, fp16-like, 8-bit-like residuals
        _, _, records = swarm(compression_noise=noise)
        for own in records:
            assert judge(own, records).in_sync, noise


def test_a_failed_round_zero_gradient_is_out_of_sync():
    gradient, parameters, records = swarm(compression_noise=1e-3)
    failed = record("p9", [0.0] * len(gradient), parameters, outcome="failed")
    verdict = judge(failed, records)
    assert not verdict.in_sync and verdict.gradient_gap == 1.0 and verdict.agreeing == 3
    assert all(judge(own, records + [failed]).in_sync for own in records)  # the others are not disturbed


def test_a_partial_round_is_out_of_sync_even_though_its_peer_said_averaged():
    gradient, parameters, records = swarm()
    local = list(gradient)
    for k in range(len(local) // 3):  # the dead reducer's part: this survivor kept its own values
        local[k] = gradient[k] + 0.5 * max(abs(g) for g in gradient)
    verdict = judge(record("p9", local, parameters), records)
    assert not verdict.in_sync and verdict.gradient_gap > GRADIENT_TOLERANCE


def test_stale_parameters_with_the_right_gradient_are_out_of_sync():
    gradient, parameters, records = swarm()
    stale = record("p9", gradient, [p + 0.05 for p in parameters])  # five steps of 0.01 behind
    verdict = judge(stale, records)
    assert not verdict.in_sync and verdict.parameter_gap > 1 and "parameters" in verdict.reasons[0]


def test_parameters_within_fp16_rounding_are_not_a_gap():
    assert parameter_gap([1.0 + 2**-12], [1.0], move=1e-9) == 0.0
    assert parameter_gap([1.0 + 2**-8], [1.0], move=1e-9) > 1e5


def test_every_peer_chooses_the_same_reference_and_a_split_swarm_follows_the_larger_group():
    gradient, parameters, records = swarm(num_peers=3)
    other = record("q", [-g for g in gradient], parameters)
    everyone = records + [other]
    references = {choose_reference(everyone[i:] + everyone[:i])[0].peer for i in range(len(everyone))}
    assert len(references) == 1 and references.pop() != "q"
    assert not judge(other, everyone).in_sync


def test_two_disagreeing_peers_prefer_one_that_serves_its_state():
    gradient, parameters, _ = swarm()
    client = record("client", gradient, parameters, serving=False)
    server = record("server", [-value for value in gradient], parameters)
    reference, _ = choose_reference([client, server])
    assert reference.peer == "server"  # the one others can download from; the client re-syncs to it
    assert not judge(client, [server]).in_sync and judge(server, [client]).in_sync


def test_a_lone_trainer_is_the_reference_over_a_coordinator_that_applied_nothing():
    """One trainer with samples steps alone; the coordinator (which serves, has no samples) steps with a zero
    gradient: the trainer's update is the swarm's, and the coordinator is the one to re-sync."""
    gradient, parameters, _ = swarm()
    trainer = record("trainer", gradient, parameters, serving=False, outcome="alone")
    coordinator = record("coordinator", [0.0] * len(gradient), [p + 1.0 for p in parameters], outcome="alone")
    assert choose_reference([coordinator, trainer])[0].peer == "trainer"
    assert judge(trainer, [coordinator]).in_sync and not judge(coordinator, [trainer]).in_sync


def test_alone_is_in_sync_and_a_swarm_where_every_round_failed_is_in_sync():
    gradient, parameters, _ = swarm()
    assert judge(record("a", gradient, parameters), []).in_sync
    zeros = [record(p, [0.0] * len(gradient), parameters, outcome="failed") for p in "abc"]
    assert all(judge(own, zeros).in_sync for own in zeros)
    assert gradient_gap([0.0, 0.0], [0.0, 0.0]) == 0.0


def test_non_finite_values_are_never_close():
    assert gradient_gap([float("nan"), 1.0], [0.5, 1.0]) == float("inf")
    assert parameter_gap([float("nan")], [1.0], move=1.0) == float("inf")


def test_records_of_other_steps_are_ignored():
    gradient, parameters, records = swarm()
    old = record("p9", [0.0] * len(gradient), parameters, step=4)
    assert judge(records[0], records + [old]).peers_compared == 3


def test_of_two_disagreeing_peers_the_one_whose_round_failed_resyncs():
    gradient, parameters, _ = swarm()
    healthy = record("healthy", gradient, parameters)
    failed = record("failed", [0.0] * len(gradient), parameters, outcome="failed")
    assert judge(healthy, [failed]).in_sync and not judge(failed, [healthy]).in_sync
