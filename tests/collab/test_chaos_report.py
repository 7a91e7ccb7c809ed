"""The chaos report's measures (collab/lab/chaos.py), each on small synthetic journals as collab.journal writes them."""
import pytest

from collab.checkpoints import save_checkpoint
from collab.lab.chaos import (
    Kill,
    checkpoint_measures,
    coordinator_measures,
    divergence_by_step,
    divergence_measures,
    first_reached,
    kill_measures,
    nonfinite_measures,
    progress_measures,
    rejoin_measures,
    restart_measures,
    round_measures,
    sample_measures,
    shows_download,
)


def step(time, step, pid=1, probe=(0.0, 0.0), outcome="averaged", **fields):
    return dict(event="step", time=time, pid=pid, step=step, probe=list(probe), outcome=outcome, trainers_averaged=2,
                samples_accumulated=fields.pop("samples_accumulated", 8), finite=True, **fields)


def state(time, reason, pid=1, step=0, **fields):
    return dict(event="state", time=time, pid=pid, reason=reason, step=step, probe=[0.0, 0.0], **fields)


def empty_store():
    return dict(global_steps=[], peer_metrics=[], checkpoints=[])


def test_first_reached_is_the_earliest_journal_time_of_each_step():
    steps = [step(12.0, 2, pid=2), step(10.0, 1), step(11.0, 2), step(13.0, 1, pid=2)]
    assert first_reached(steps) == {1: 10.0, 2: 11.0}


def test_progress_finds_the_longest_wait_between_steps_during_the_chaos():
    steps = [step(100.0, 1), step(103.0, 2), step(110.5, 3), step(111.0, 4), step(300.0, 5)]
    measures = progress_measures(steps, chaos_start=100.0, chaos_end=200.0, run_start=90.0)
    assert measures["longest_wait_for_a_step_s"] == 7.5  # 103 -> 110.5; step 5 came after the chaos
    assert measures["global_steps"] == 5
    assert measures["step_times"] == {"1": 10.0, "2": 13.0, "3": 20.5, "4": 21.0, "5": 210.0}
    assert measures["non_monotone_peers"] == 0


def test_progress_flags_an_incarnation_whose_step_went_backwards():
    steps = [step(1.0, 1, pid=7), step(2.0, 2, pid=7), step(3.0, 2, pid=7), step(4.0, 1, pid=8), step(5.0, 2, pid=8)]
    assert progress_measures(steps, 0.0, 10.0, 0.0)["non_monotone_peers"] == 1
    assert progress_measures([], 0.0, 10.0, 0.0) == dict(global_steps=0, longest_wait_for_a_step_s=0.0,
                                                         non_monotone_peers=0, step_times={})


def test_rounds_are_counted_by_outcome():
    steps = [step(1.0, 1), step(2.0, 2, outcome="alone"), step(3.0, 3, outcome="failed"), step(4.0, 4),
             step(5.0, 5, outcome="expired")]
    assert round_measures(steps) == dict(rounds_averaged=2, rounds_failed=2, rounds_alone=1)
    legacy = [dict(event="step", time=1.0, pid=1, step=1, round="alone", group_size=1)]  # before `outcome`
    assert round_measures(legacy) == dict(rounds_averaged=0, rounds_failed=0, rounds_alone=1)


def test_a_kill_is_survived_when_a_new_step_comes_within_the_bound():
    kills = [Kill(time=10.0, victim="trainer-2", timed_to_round=True, swarm_step=3),
             Kill(time=50.0, victim="coordinator", timed_to_round=False, swarm_step=5),
             Kill(time=60.0, victim="aux", timed_to_round=False, swarm_step=5)]
    reached = {3: 5.0, 4: 20.0, 5: 40.0, 6: 75.0}
    measures = kill_measures(kills, reached, stall_bound=20.0, run_start=0.0)
    assert measures["kills"] == 3 and measures["kills_inside_rounds"] == 1
    assert measures["kills_by_role"] == dict(trainer=1, aux=1, coordinator=1)
    assert measures["kills_survived"] == 2  # the coordinator kill at 50 s: next step at 75 s, past the bound
    assert [kill["victim"] for kill in measures["kill_log"]] == ["trainer-2", "coordinator", "aux"]


def test_samples_wasted_are_computed_minus_contributed():
    events = [dict(event="computed", time=1.0, pid=1, samples=40, step=0),
              step(2.0, 1, pid=1, samples_computed=64, samples_accumulated=48),
              dict(event="computed", time=3.0, pid=2, samples=16, step=1)]
    steps = [event for event in events if event["event"] == "step"]
    assert sample_measures(events, steps) == dict(samples_computed=80, samples_in_global_steps=48,
                                                  wasted_fraction=0.4)
    assert sample_measures([], [])["wasted_fraction"] is None


@pytest.mark.parametrize("event, downloaded", [
    (state(1.0, "joined", downloaded=True), True),
    (state(1.0, "joined", downloaded=False), False),
    (state(1.0, "joined"), True),  # a journal from before the `downloaded` field
    (state(1.0, "downloaded"), True),
    (state(1.0, "resynced"), True),
    (state(1.0, "final"), False),
    (step(1.0, 1), False),
])
def test_which_events_show_a_download(event, downloaded):
    assert shows_download(event) is downloaded


def test_a_restart_rejoins_only_when_its_journal_shows_a_download():
    restarts = [dict(peer="trainer-1", pid=11, time=100.0), dict(peer="trainer-2", pid=21, time=200.0),
                dict(peer="trainer-3", pid=31, time=300.0), dict(peer="trainer-3", pid=32, time=400.0, refused=True)]
    events = [
        dict(event="start", time=100.5, pid=11), state(104.0, "joined", pid=11, downloaded=True), step(110.0, 5, pid=11),
        state(202.0, "joined", pid=21, downloaded=False), state(206.0, "downloaded", pid=21), step(212.0, 8, pid=21),
        state(303.0, "joined", pid=31, downloaded=False),  # never got a state, then killed again: not expected
    ]
    measures = rejoin_measures(events, restarts)
    assert measures["trainer_restarts"] == 4
    assert measures["trainer_restarts_rejoined"] == 2
    assert measures["trainer_restarts_expected_to_rejoin"] == 2
    assert measures["rejoin_s_median"] == 5.0  # 4 s and 6 s
    assert measures["first_contribution_s_median"] == 11.0  # 10 s and 12 s


def test_a_restart_that_never_downloaded_and_was_not_superseded_is_still_expected():
    restarts = [dict(peer="trainer-1", pid=11, time=100.0)]
    measures = rejoin_measures([state(101.0, "joined", pid=11, downloaded=False)], restarts)
    assert (measures["trainer_restarts_rejoined"], measures["trainer_restarts_expected_to_rejoin"]) == (0, 1)
    assert measures["rejoin_s_median"] is None and measures["rejoin_s_p95"] is None


def test_divergence_is_the_max_probe_distance_per_step():
    steps = [step(1.0, 1, pid=1, probe=(1.0, 2.0)), step(1.1, 1, pid=2, probe=(1.5, 2.0)),
             step(1.2, 1, pid=3, probe=(1.25, 1.0)),
             step(2.0, 2, pid=1, probe=(3.0, 3.0)), step(2.1, 2, pid=2, probe=(3.0, 3.0)),
             step(3.0, 3, pid=1, probe=(9.0, 9.0))]  # one peer only: nothing to compare
    divergence = divergence_by_step(steps)
    assert divergence == {1: 1.0, 2: 0.0}
    assert divergence_measures(divergence) == dict(max_divergence=1.0, median_divergence=0.5,
                                                   divergence_by_step={"1": 1.0, "2": 0.0})
    assert divergence_measures({}) == dict(max_divergence=None, median_divergence=None, divergence_by_step={})


def test_nonfinite_values_and_injected_faults():
    steps = [step(1.0, 1, nonfinite_losses=3, nonfinite_gradients=0),
             step(2.0, 2, nonfinite_losses=12, nonfinite_gradients=2, probe=(float("nan"), 0.0))]
    events = [*steps, dict(event="round", time=1.5, pid=1, finite=False), state(3.0, "joined")]
    assert nonfinite_measures(events, steps) == dict(nonfinite_values=2, injected_nonfinite_losses=12,
                                                     injected_nonfinite_gradients=2)


def test_coordinator_measures_steps_while_down_and_records_after_its_restart():
    kills = [Kill(time=10.0, victim="coordinator", timed_to_round=False, swarm_step=2, back_at=20.0),
             Kill(time=30.0, victim="trainer-1", timed_to_round=False, swarm_step=4, back_at=33.0)]
    reached = {2: 5.0, 3: 12.0, 4: 18.0, 5: 25.0}
    store = dict(empty_store(), global_steps=[dict(time=6.0), dict(time=21.0), dict(time=26.0)],
                 checkpoints=[dict(time=7.0), dict(time=22.0), dict(time=99.0)])
    assert coordinator_measures(kills, reached, store, restart_phase=50.0) == dict(
        steps_while_coordinator_down=2, coordinator_steps_recorded=3, coordinator_steps_recorded_after_restart=2,
        coordinator_checkpoints_after_restart=1)
    measures = coordinator_measures(kills[1:], reached, empty_store(), restart_phase=50.0)
    assert measures["coordinator_steps_recorded_after_restart"] is None
    assert measures["coordinator_checkpoints_after_restart"] is None


def test_checkpoints_written_come_from_the_store_and_the_journals_and_torn_ones_are_found(tmp_path):
    from transformers import AlbertConfig, AlbertForPreTraining

    model = AlbertForPreTraining(AlbertConfig(vocab_size=50, embedding_size=8, hidden_size=16, num_hidden_layers=1,
                                              num_attention_heads=2, intermediate_size=32, max_position_embeddings=32))
    folders = [save_checkpoint(tmp_path / "trainer-1/checkpoints", number, model, {"state": {}}, {})
               for number in (3, 6)]
    weights = folders[-1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    events = [dict(event="checkpoint", time=1.0, pid=1, step=3), step(2.0, 4), dict(event="checkpoint", time=3.0,
                                                                                    pid=1, step=6)]
    store = dict(empty_store(), checkpoints=[dict(time=1.0)])
    measures = checkpoint_measures(store, events, [*folders, folders[0]], tmp_path)
    assert measures == dict(checkpoints_written=3, checkpoints_verified=1,
                            checkpoints_corrupted=[str(folders[-1].relative_to(tmp_path))])


def test_restart_measures_compare_the_joined_trainers_with_the_checkpoint():
    digest = dict(exp_avg=1.0, step=12.0)
    joined = {"trainer-1": dict(step=6, probe=[1.0, 2.0], optimizer=digest),
              "trainer-2": dict(step=6, probe=[1.0, 2.5], optimizer=dict(digest)),
              "trainer-3": dict(step=7, probe=[0.0, 0.0], optimizer=dict(exp_avg=5.0, step=1.0))}
    check = dict(joined=joined, expected_step=6, corrupted="step-9", expected_probe=[1.0, 2.0],
                 expected_optimizer=digest, coordinator_log="... Skipping corrupted checkpoint step-9 ...",
                 resumed_steps=[6, 7, 8, 9])
    final = dict(exit_codes={}, checkpoint_steps={}, max_steps=9, max_distance=0.0)
    measures = restart_measures(check, final)
    assert measures["restart_joined_steps"] == [6, 6, 7] and measures["restart_expected_step"] == 6
    assert measures["restart_probe_distance"] == 0.5
    assert measures["restart_optimizer_match"] and measures["restart_skipped_corrupted"]
    assert measures["restart_corrupted_checkpoint"] == "step-9" and measures["restart_final_states"] is final
    assert restart_measures(dict(check, expected_step=5), final)["restart_probe_distance"] is None
