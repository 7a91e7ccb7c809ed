"""benchmarks/strategies.py at a tiny size, so that it never rots: every strategy runs on capped links of the network
lab, every round is checked and counted, the report holds times, the LP bound and the bytes each link moved; and the
bound's model agrees with its closed form. Timings themselves are not asserted (not a timed test)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from benchmarks.strategies import (
    BITS_PER_VALUE,
    STRATEGIES,
    Peer,
    StrategiesArguments,
    closed_form_bound,
    hivemind_shares,
    hivemind_split,
    lp_bound,
    participants,
    sender_values,
    split_seconds,
    summarize_strategy,
    table,
)
from collab.errors import UserError
from collab.lab.swarm import REPO_ROOT

pytestmark = pytest.mark.timeout(480)
slow = pytest.mark.slow  # the tests that run the benchmark (1-3 minutes on 2 busy cores: 3 x 3-4 peer processes)

VECTOR_SIZE = 100_000
TINY = ["--public_mbit", "200", "200", "--client_mbit", "200", "--aux_mbit", "400", "--vector_size", str(VECTOR_SIZE),
        "--rounds", "2", "--warmup_rounds", "0", "--matchmaking_time", "1"]


@pytest.fixture(scope="module")
def report(tmp_path_factory, run_benchmark):
    if os.geteuid() != 0:
        pytest.skip("the network lab needs root (network namespaces); CI runs as root")
    missing = [tool for tool in ("ip", "tc", "iptables") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the network lab needs {', '.join(missing)}")
    return run_benchmark(tmp_path_factory.mktemp("strategies"), "strategies", TINY, timeout=420)


@slow
def test_every_strategy_is_measured_and_every_round_counted(report):
    rows = {row["strategy"]: row for row in report["rows"]}
    assert list(rows) == list(STRATEGIES)
    for row in rows.values():
        assert row["rounds"] == 2 and row["seconds"]["count"] == 2 and row["seconds"]["min"] > 0, row
        # a round where a peer keeps part of its own values can happen under CPU contention: it must be counted
        assert 1 <= row["rounds_exact"] <= 2 and (row["rounds_exact"] == 2) == (not row["incomplete"]), row
        assert row["bound_seconds"] > 0 and row["ratio_to_bound"] > 0 and row["split_seconds"] > 0
    assert [peer["mode"] for peer in rows["parameter-server"]["peers"]] == ["aux", "client", "client", "client"]
    assert rows["parameter-server"]["peers"][0]["share"] == 1.0
    assert [peer["mode"] for peer in rows["equal"]["peers"]] == ["node", "node", "client"]
    assert [peer["bandwidth_hint"] for peer in rows["bandwidth-aware"]["peers"]] == [200, 200, 200]


@slow
def test_link_counters_hold_at_least_the_model_traffic(report):
    """In every exact round, every sender's link carried its vector out and the average back, and the aux received
    everyone's vector (a round that failed says nothing about a strategy's traffic: a peer left out of the group
    sends nothing; such rounds are counted in the other test)."""
    for row in report["rows"]:
        for peer in row["peers"]:
            model, tx, rx = peer["model_bytes_per_round"], peer["tx_bytes_per_round"], peer["rx_bytes_per_round"]
            assert len(model) == len(tx) == len(rx) == row["rounds_exact"], (row["strategy"], peer)
            for each_way, sent, received in zip(model, tx, rx):
                assert sent >= each_way > 0 and received >= each_way, (row["strategy"], peer)
            assert peer["tx_bytes"] >= peer["model_bytes_each_way"] > 0, (row["strategy"], peer)
            assert peer["rx_bytes"] >= peer["model_bytes_each_way"], (row["strategy"], peer)
            assert 0 <= peer["share"] <= 1 and peer["finish_seconds"]["median"] > 0
        assert row["busiest_link_seconds"] > 0 and row["wire_bytes_per_round"] > 0
    layouts = [bound["layout"] for bound in report["bounds"]]
    assert layouts == ["butterfly among the peers", "aux peer reduces all"]
    assert all(bound["seconds"] > 0 for bound in report["bounds"])
    assert report["machine"]["hivemind"] == "1.1.12" and report["settings"]["vector_size"] == VECTOR_SIZE


def test_lp_bound_matches_its_closed_form():
    args = StrategiesArguments()
    peers = participants(args, "equal")
    seconds, shares = lp_bound(args.vector_size, peers)
    assert seconds == pytest.approx(closed_form_bound(args.vector_size, peers))
    # the default layout: the 10 Mbit/s peers must ship their whole vector, which no split can avoid
    assert seconds == pytest.approx(BITS_PER_VALUE * args.vector_size / 10e6)
    assert sum(shares) == pytest.approx(1.0) and shares[-2:] == [0.0, 0.0]  # clients reduce nothing
    # links fast enough that balancing binds: T = 32 V (S - 2 + R) / sum of the reducers' caps
    fast = [Peer("a", 100, True, True), Peer("b", 50, True, True), Peer("c", 50, True, True),
            Peer("d", 40, True, False)]
    seconds, shares = lp_bound(1_000_000, fast)
    assert seconds == pytest.approx(32e6 * (4 - 2 + 3) / 200e6) == pytest.approx(closed_form_bound(1_000_000, fast))
    assert split_seconds(1_000_000, fast, shares) == pytest.approx(seconds)
    assert shares[0] > shares[1] == pytest.approx(shares[2]) and shares[3] == 0


def test_parameter_server_bound_is_the_servers_link_or_the_slowest_sender():
    args = StrategiesArguments(aux_mbit=40.0)  # 8 senders through one 40 Mbit/s link: the server is the bottleneck
    seconds, shares = lp_bound(args.vector_size, participants(args, "parameter-server"))
    assert shares[0] == pytest.approx(1.0)
    assert seconds == pytest.approx(8 * BITS_PER_VALUE * args.vector_size / 40e6)
    args = StrategiesArguments(aux_mbit=1000.0)
    seconds, _ = lp_bound(args.vector_size, participants(args, "parameter-server"))
    assert seconds == pytest.approx(BITS_PER_VALUE * args.vector_size / 10e6)


def test_hivemind_splits_the_default_vector_as_the_strategies_intend():
    args = StrategiesArguments()
    equal = hivemind_shares(args.vector_size, participants(args, "equal"))
    assert equal == [pytest.approx(1 / 6)] * 6 + [0.0, 0.0]  # 18 parts of 512 KB: 3 for each public peer
    aware = participants(args, "bandwidth-aware")
    targets = hivemind_split(args.vector_size, aware)
    assert targets[0] > targets[2] > targets[5] == 0 and targets[6:] == [0.0, 0.0]
    shares = hivemind_shares(args.vector_size, aware)
    assert sum(shares) == pytest.approx(1.0) and shares[5] == 0
    bound, _ = lp_bound(args.vector_size, aware)
    assert split_seconds(args.vector_size, aware, shares) == pytest.approx(bound)  # optimal at these caps
    assert split_seconds(args.vector_size, aware, equal) == pytest.approx(2 * bound)  # the 10 Mbit/s peer reduces


def test_a_round_with_unaveraged_values_is_counted():
    args = StrategiesArguments(public_mbit=[100.0, 100.0], client_mbit=[50.0], vector_size=10_000)

    def worker(name, mode, shares_exact, sent):
        rounds = [dict(round=index, warmup=False, error=None, peers=3, group=["p1", "p2", "c1"], start=10.0 * index,
                       end=10.0 * index + 1 + index, share_exact=share, tx_bytes=tx, rx_bytes=tx)
                  for index, (share, tx) in enumerate(zip(shares_exact, sent))]
        return dict(name=name, mode=mode, rounds=rounds)

    row = summarize_strategy(args, "equal", [worker("p1", "node", [1.0, 1.0], [80_500, 80_600]),
                                             worker("p2", "node", [1.0, 0.97], [40_300, 40_400]),
                                             worker("c1", "client", [1.0, 1.0], [40_200, 300])])
    assert row["rounds"] == 2 and row["rounds_exact"] == 1 and row["round_seconds"] == [1.0, 2.0]
    assert row["incomplete"] == [dict(round=1, peer="p2", share_exact=0.97, error=None, peers=3)]
    assert [peer["share"] for peer in row["peers"]] == [1.0, 0.0, 0.0]  # 10k values: one part, the first peer's
    # link bytes and the model's traffic come from the exact round only: c1 sent nothing in the other one
    p1, p2, c1 = row["peers"]
    assert p1["model_bytes_per_round"] == [80_000] and p2["model_bytes_per_round"] == c1["model_bytes_per_round"] \
        == [40_000]
    assert c1["tx_bytes_per_round"] == [40_200] and c1["tx_bytes"] == 40_200 >= c1["model_bytes_each_way"]
    assert row["wire_bytes_per_round"] == 80_500 + 40_300 + 40_200 and row["rounds_regrouped"] == []


def test_a_round_whose_group_was_formed_again_is_reported():
    args = StrategiesArguments(public_mbit=[100.0, 100.0], client_mbit=[50.0], vector_size=10_000)
    left_out = dict(statuses={"0": "matched", "1": "matched", "2": "left-out"}, matched_at={"0": 1.0, "1": 1.1})
    again = dict(statuses={"0": "matched", "1": "matched", "2": "matched"}, matched_at={"0": 9.0, "1": 9.0, "2": 9.1})
    reports = [dict(name=name, mode=mode, rounds=[dict(
        round=0, warmup=False, error=None, peers=3, group=["p1", "p2", "c1"], start=10.0, end=11.0, share_exact=1.0,
        tx_bytes=90_000, rx_bytes=90_000, matchmaking=[left_out, again])])
        for name, mode in (("p1", "node"), ("p2", "node"), ("c1", "client"))]
    row = summarize_strategy(args, "equal", reports)
    assert row["rounds_exact"] == 1 and row["rounds_regrouped"] == [dict(round=0, statuses=[left_out["statuses"]])]
    assert "1 of 1; matchmaking redone before 1" in table(dict(rows=[dict(row, strategy="equal")], bounds=[]))


def test_no_sender_holds_the_mean_before_averaging():
    """Otherwise a round that left that sender's values alone would pass the check by value."""
    import numpy as np

    for senders in range(2, 17):
        values = sender_values(senders)
        mean = sum(values) / senders
        assert mean == 2 ** senders - 1 and mean not in values
        assert np.float32(sum(values)) == sum(values) and np.float32(mean) * senders == sum(values)  # exact in fp32
    with pytest.raises(UserError, match="at most 16 peers"):
        StrategiesArguments(public_mbit=[10.0] * 15, client_mbit=[10.0, 10.0])


def test_help_explains_every_flag():
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks/strategies.py"), "--help"],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0
    for flag in ("--vector_size", "--public_mbit", "--client_mbit", "--aux_mbit", "--strategies", "--rounds",
                 "--results_dir"):
        assert flag in done.stdout
