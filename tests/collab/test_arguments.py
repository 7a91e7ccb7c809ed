import json

import pytest

from collab.arguments import (
    PAPER_ERA_FLAGS,
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


# The command lines of the original DeDLOC README (albert/README.md) and of its AWS launcher, as printed there.
PAPER_COORDINATOR = "--dht_listen_on [::]:31337 --experiment_prefix SOME_NAME --wandb_project YOUR_PROJECT"
PAPER_TRAINER = ("--output_dir ./outputs_trainer --overwrite_output_dir --logging_dir ./logs_trainer "
                 "--logging_first_step --logging_steps 100 --initial_peers 203.0.113.5:31337 "
                 "--experiment_prefix SOME_NAME --seed 42 --averaging_timeout 120 --bandwidth 1000")
PAPER_AUX = ("--output_dir ./outputs_aux --overwrite_output_dir --logging_dir ./logs_aux --logging_first_step "
             "--logging_steps 100 --initial_peers 203.0.113.5:31337 --experiment_prefix SOME_NAME --seed 42 "
             "--averaging_timeout 120 --fp16 False --bandwidth 1000")
PAPER_AWS_TRAINER = "--initial_peers 203.0.113.5:31337 --client_mode False --averaging_timeout 120 --bandwidth 100"
PAPER_ONLY_FLAGS = ("--overwrite_output_dir", "--logging_dir ./logs_trainer", "--logging_dir ./logs_aux",
                    "--logging_first_step")


def parse_albert(command_line: str, coordinator: bool = False) -> tuple:
    from albert.arguments import ARGUMENT_GROUPS, COORDINATOR_GROUPS
    from collab.monitor import COORDINATOR_DEFAULTS

    if coordinator:
        return parse_arguments(ARGUMENT_GROUPS + COORDINATOR_GROUPS, command_line.split(),
                               defaults=COORDINATOR_DEFAULTS)
    return parse_arguments(ARGUMENT_GROUPS, command_line.split(), preset_shared_with=COORDINATOR_GROUPS)


def drop(command_line: str, *parts: str) -> str:
    for part in parts:
        command_line = command_line.replace(f" {part} ", " ")
    return command_line


def test_paper_era_coordinator_line_is_translated(caplog):
    with caplog.at_level("INFO", logger="collab.arguments"):
        _, peer, *_, monitor = parse_albert(PAPER_COORDINATOR, coordinator=True)
    assert peer.host_maddrs == ["/ip4/0.0.0.0/tcp/31337"] and peer.run_id == "SOME_NAME"
    assert monitor.wandb_project == "YOUR_PROJECT"
    assert "means --host_maddrs /ip4/0.0.0.0/tcp/31337" in caplog.text  # says which flag to use from now on


@pytest.mark.parametrize("command_line", [PAPER_TRAINER, PAPER_AUX])
def test_paper_era_trainer_and_aux_lines_say_what_to_change(command_line):
    # 1. the flags that have no use today: one line that names each and says why
    with pytest.raises(UserError) as error:
        parse_albert(command_line)
    message = str(error.value)
    assert "\n" not in message
    assert "--overwrite_output_dir (a flag of the original DeDLOC scripts): not needed" in message
    assert "--logging_dir, --logging_first_step (flags of the original DeDLOC scripts)" in message
    assert "--resume_from_checkpoint" in message and "journal.jsonl" in message
    # 2. without them: the HOST:PORT initial peer, with the exact multiaddr shape hivemind 1.x needs
    with pytest.raises(UserError, match=r"/ip4/203\.0\.113\.5/tcp/31337/p2p/<the ID the coordinator printed>"):
        parse_albert(drop(command_line, *PAPER_ONLY_FLAGS))
    # 3. with the coordinator's line: the rest of the paper's flags mean what they meant
    _, peer, collab, _, _, training = parse_albert(
        drop(command_line, *PAPER_ONLY_FLAGS).replace("203.0.113.5:31337", RELAY))
    assert peer.run_id == "SOME_NAME" and peer.initial_peers == [RELAY]
    assert collab.averaging_timeout == 120 and collab.bandwidth == 1000
    assert training.seed == 42 and training.logging_steps == 100 and not training.fp16


def test_paper_era_launcher_line_parses_once_the_peer_id_is_given():
    with pytest.raises(UserError, match="needs the full address with the peer ID"):
        parse_albert(PAPER_AWS_TRAINER)
    _, peer, collab, *_ = parse_albert(PAPER_AWS_TRAINER.replace("203.0.113.5:31337", RELAY))
    assert not peer.client_mode and collab.bandwidth == 100


def test_flag_names_kept_from_the_paper():
    peer, collab, *_ = parse(
        "--experiment_prefix", "my_run", "--averaging_expiration", "4.5", "--averaging_timeout", "90",
        "--target_batch_size", "4096", "--batch_size_lead", "64", "--target_group_size", "16",
        "--statistics_expiration", "300", "--metadata_expiration", "30", "--client_mode", "--initial_peers", RELAY)
    assert peer.run_id == "my_run" and peer.client_mode
    assert collab.matchmaking_time == 4.5 and collab.averaging_timeout == 90 and collab.batch_size_lead == 64


@pytest.mark.parametrize("value, maddr", [
    ("[::]:31337", "/ip4/0.0.0.0/tcp/31337"),  # hivemind 0.9's "every interface"
    ("[::]:*", "/ip4/0.0.0.0/tcp/0"),
    ("0.0.0.0:5000", "/ip4/0.0.0.0/tcp/5000"),
    ("10.0.0.7:5000", "/ip4/10.0.0.7/tcp/5000"),
    ("[2001:db8::7]:5000", "/ip6/2001:db8::7/tcp/5000"),
])
def test_paper_listen_addresses_become_host_maddrs(value, maddr):
    assert parse("--dht_listen_on", value)[0].host_maddrs == [maddr]
    assert parse(f"--listen_on={value}")[0].host_maddrs == [maddr]


@pytest.mark.parametrize("argv, message", [
    (["--dht_listen_on", "[::]:1", "--host_maddrs", "/ip4/0.0.0.0/tcp/1"], "pass either --host_maddrs or"),
    (["--dht_listen_on", "somewhere"], "expected HOST:PORT"),
    (["--dht_listen_on", "example.com:1"], "cannot listen on a host name"),
    (["--dht_listen_on"], "needs a value"),
])
def test_bad_paper_listen_addresses(argv, message):
    with pytest.raises(UserError, match=message):
        parse(*argv)


@pytest.mark.parametrize("flag", sorted(flag for flag, entry in PAPER_ERA_FLAGS.items() if entry.translate is None))
def test_every_other_paper_flag_names_what_to_do_today(flag):
    with pytest.raises(UserError) as error:
        parse_albert(f"{flag} 1")
    assert str(error.value) == f"{flag} (a flag of the original DeDLOC scripts): {PAPER_ERA_FLAGS[flag].modern}"


def test_paper_flags_of_the_coordinator_still_work_there():
    *_, monitor = parse_albert("--wandb_project p --save_checkpoint_step_interval 7 --refresh_period 2",
                               coordinator=True)
    assert (monitor.wandb_project, monitor.save_checkpoint_step_interval, monitor.refresh_period) == ("p", 7, 2)


@pytest.mark.parametrize("argv, message", [
    (["--max_step", "5"], "unknown flag --max_step: did you mean --max_steps?"),  # argparse took it for --max_steps
    (["--target_batch", "5"], "unknown flag --target_batch: did you mean --target_batch_size?"),
    (["--conf", "x.json"], "unknown flag --conf: did you mean --config?"),
    (["--learning-rat", "0.1"], "did you mean --learning_rate?"),
    (["--zzzqqq", "3"], r"unknown flag --zzzqqq \(see --help\)"),
    (["--seed", "1", "stray"], "unexpected argument 'stray'"),
])
def test_unknown_flags_and_abbreviations_are_refused_with_the_closest_flag(argv, message):
    with pytest.raises(UserError, match=message):
        parse(*argv)


def test_unknown_flags_are_reported_before_other_mistakes():
    with pytest.raises(UserError, match="^unknown flag --max_step"):
        parse("--client_mode", "--max_step", "5")  # --client_mode alone would be refused too


def test_shared_preset_may_hold_the_coordinators_settings():
    *_, training = parse_albert("--config albert/configs/albert-large.json --per_device_train_batch_size 2")
    assert training.per_device_train_batch_size == 2 and training.warmup_steps == 5000
    with pytest.raises(UserError, match="unknown keys"):
        parse("--config", "albert/configs/albert-large.json")  # no track, no shared groups: still refused


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
    (["--initial_peers", "203.0.113.5:31337"], "needs the full address with the peer ID"),
    (["--initial_peers", "/ip4/203.0.113.5/tcp/31337"], "lacks the peer ID"),
    (["--trusted_relays", "not-an-address"], "is not a multiaddr"),
    (["--host_maddrs", "0.0.0.0:31337"], "expected e.g. /ip4/0.0.0.0/tcp/31337"),
    (["--average_state_every", "-1"], "--average_state_every must be >= 0"),
    (["--matchmaking_time", "0"], "--matchmaking_time must be positive"),
    (["--averaging_timeout", "-1"], "--averaging_timeout must be positive"),
    (["--load_state_timeout", "0"], "--load_state_timeout must be positive"),
    (["--request_timeout", "0"], "--request_timeout must be positive"),
    (["--startup_timeout", "0"], "--startup_timeout must be positive"),
    (["--final_sync_timeout", "nan"], "--final_sync_timeout must be positive"),
    (["--matchmaking_time", "30", "--averaging_timeout", "30"], "must be above --matchmaking_time"),
    (["--matchmaking_time", "2", "--request_timeout", "2"], "must be below --matchmaking_time"),
    (["--min_refresh_period", "5", "--max_refresh_period", "1"], "must not exceed --max_refresh_period"),
    (["--target_group_size", "1"], "at least --min_group_size"),
    (["--logging_steps", "0"], "--logging_steps must be positive"),
    (["--bandwidth", "inf"], "finite number"),
])
def test_cross_field_checks(argv, message):
    with pytest.raises(UserError, match=message):
        parse(*argv)


def test_code_gets_the_same_checks_as_flags():
    with pytest.raises(UserError, match="--compression 'fp8' is not one of"):
        CollaborationArguments(compression="fp8")  # argparse checks choices of flags only
    with pytest.raises(UserError, match="needs the full address"):
        PeerArguments(initial_peers=["127.0.0.1:31337"])


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
    assert "--experiment_prefix" in help_text and "--averaging_expiration" in help_text
