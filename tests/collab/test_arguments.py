import json

import pytest

from collab.arguments import (
    AveragerArguments,
    CollaborationArguments,
    PeerArguments,
    ProgressTrackerArguments,
    TrainingArguments,
    parse_arguments,
)
from collab.errors import UserError

RELAY = "/ip4/11.0.0.2/tcp/31337/p2p/12D3KooWDvfzxwKpxKfDvydReXuXzvTdiiUoKu19sTsn9DZQPgiZ"

GROUPS = (PeerArguments, CollaborationArguments, AveragerArguments, ProgressTrackerArguments, TrainingArguments)


def parse(*argv, **kwargs):
    return parse_arguments(GROUPS, list(argv), **kwargs)


def test_paper_era_flag_names_parse():
    peer, collab, averager, tracker, training = parse(
        "--experiment_prefix", "my_run", "--initial_peers", "/ip4/1.2.3.4/tcp/31337/p2p/QmX", "/ip4/5.6.7.8/tcp/1/p2p/QmY",
        "--target_batch_size", "4096", "--batch_size_lead", "64", "--client_mode", "--bandwidth", "100",
        "--averaging_timeout", "90", "--matchmaking_time", "4.5", "--compression", "size-adaptive",
        "--host_maddrs", "/ip4/0.0.0.0/tcp/31337", "--announce_maddrs", "/ip4/1.2.3.4/tcp/31337",
        "--identity_path", "id.key", "--per_device_train_batch_size", "4",
        "--gradient_accumulation_steps", "2", "--learning_rate", "0.00176", "--warmup_steps", "5000",
        "--seed", "7", "--output_dir", "out", "--logging_steps", "5", "--fp16",
    )
    assert peer.run_id == "my_run" and len(peer.initial_peers) == 2 and peer.client_mode
    assert parse("--use_ipfs")[0].use_ipfs  # hivemind 1.x refuses it together with --initial_peers
    assert peer.announce_maddrs == ["/ip4/1.2.3.4/tcp/31337"] and peer.identity_path == "id.key"
    assert collab.target_batch_size == 4096 and collab.batch_size_lead == 64 and collab.bandwidth == 100.0
    assert collab.averaging_timeout == 90 and collab.matchmaking_time == 4.5 and collab.compression == "size-adaptive"
    assert training.local_batch_size == 8 and training.fp16 and training.seed == 7
    assert training.max_steps == training.total_steps  # -1 means "the whole schedule"


def test_preset_then_flags_override(tmp_path):
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps({"target_batch_size": 128, "learning_rate": 0.01, "run_id": "from_preset"}))
    peer, collab, _, _, training = parse("--config", str(preset), "--learning_rate", "0.5")
    assert collab.target_batch_size == 128 and peer.run_id == "from_preset"
    assert training.learning_rate == 0.5


def test_script_defaults_lose_to_preset(tmp_path):
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps({"identity_path": "preset.id"}))
    peer, *_ = parse("--config", str(preset), defaults=dict(identity_path="script.id", host_maddrs=["/ip4/0.0.0.0/tcp/9"]))
    assert peer.identity_path == "preset.id" and peer.host_maddrs == ["/ip4/0.0.0.0/tcp/9"]


@pytest.mark.parametrize("content, message", [
    ('{"no_such_flag": 1}', "unknown keys"),
    ("{not json", "not valid JSON"),
])
def test_bad_presets_are_one_line_errors(tmp_path, content, message):
    preset = tmp_path / "preset.json"
    preset.write_text(content)
    with pytest.raises(UserError, match=message):
        parse("--config", str(preset))


@pytest.mark.parametrize("argv, message", [
    (["--run_id", "has.dot"], "without dots"),
    (["--client_mode"], "needs --initial_peers"),
    (["--target_batch_size", "0"], "must be positive"),
    (["--target_batch_size", "64", "--batch_size_lead", "64"], "batch_size_lead"),
    (["--delay_grad_averaging"], "delay_optimizer_step"),
    (["--per_device_train_batch_size", "0"], "must be positive"),
    (["--config", "/nonexistent.json"], "no such file"),
    (["--client_mode", "--initial_peers", RELAY, "--trusted_relays", RELAY], "pass one of them"),
    (["--trusted_relays", RELAY, "--use_relay", "false"], "needs --use_relay"),
    (["--use_ipfs", "--initial_peers", RELAY], "cannot be combined"),
])
def test_cross_field_checks(argv, message):
    with pytest.raises(UserError, match=message):
        parse(*argv)


def test_reachability_is_public_or_private(capsys):
    assert parse("--force_reachability", "private")[0].force_reachability == "private"
    with pytest.raises(SystemExit):
        parse("--force_reachability", "sometimes")
    assert "invalid choice" in capsys.readouterr().err


def test_trusted_relays_turn_on_auto_relay_and_skip_relay_discovery():
    from hivemind.p2p import P2P

    from collab.peer import _use_only_trusted_relays

    peer = parse("--trusted_relays", RELAY)[0]
    assert peer.use_auto_relay and peer.trusted_relays == [RELAY]
    _use_only_trusted_relays()
    # without -relayDiscovery=0 the daemon waits for 4 relay candidates or 3 minutes (p2p/circuit-relay.md)
    assert "-relayDiscovery=0" in P2P._make_process_args("p2pd", autoRelay=True, trustedRelays=RELAY)
    assert "-relayDiscovery=0" not in P2P._make_process_args("p2pd", autoRelay=True)


def test_every_flag_has_help(capsys):
    with pytest.raises(SystemExit):
        parse("--help")
    help_text = capsys.readouterr().out
    for group in GROUPS:
        for name in group.__dataclass_fields__:
            assert f"--{name}" in help_text
    assert "--experiment_prefix" in help_text
