"""Argument groups shared by every track, and the one parser that reads them.

Field names are hivemind's own parameter names wherever hivemind has one, so a group can be passed on with
`asdict(...)`. Flag names of the paper's code (`--experiment_prefix`, `--bandwidth`, ...) are kept as names or
aliases; the paper's other flags are translated or answered with today's equivalent (PAPER_ERA_FLAGS).
Override order: dataclass defaults, then a JSON preset given with `--config`, then command-line flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import ipaddress
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

from transformers import HfArgumentParser

from collab.errors import UserError

logger = logging.getLogger(__name__)

T = TypeVar("T")

REACHABILITY_CHOICES = ("public", "private")
COMPRESSION_CHOICES = ("none", "fp16", "scaled-fp16", "uniform8bit", "quantile8bit", "size-adaptive")


def _help(text: str, **extra: Any) -> dict:
    return dict(help=text, **extra)


INITIAL_PEERS_EXAMPLE = "/ip4/A.B.C.D/tcp/PORT/p2p/PEER_ID"


def _require_positive(group: Any, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(group, name)
        if not value > 0:  # written this way round so that nan is refused too
            raise UserError(f"--{name} must be positive, got {value}")


def split_host_port(address: str) -> Optional[tuple[str, str]]:
    """The paper's HOST:PORT form: '1.2.3.4:31337' -> ('1.2.3.4', '31337'), '[::]:*' -> ('::', '*'); else None."""
    host, colon, port = address.rpartition(":")
    if not colon or not (port.isdigit() or port == "*"):
        return None
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1], port
    return None if ":" in host else (host, port)  # an IPv6 address without brackets is not HOST:PORT


def _address_protocol(host: str) -> str:
    try:
        return f"ip{ipaddress.ip_address(host).version}"
    except ValueError:
        return "dns"


def _multiaddr_protocols(maddr: str) -> Optional[set[str]]:
    """Protocol names of a multiaddr, or None if it is not one."""
    if not maddr.startswith("/"):
        return None
    from hivemind.utils.multiaddr import Multiaddr  # here, not at the top: importing hivemind takes seconds

    try:
        return {proto.name for proto in Multiaddr(maddr).protocols()}
    except Exception:
        return None


def validate_initial_peers(maddrs: Sequence[str], flag: str = "--initial_peers") -> list[str]:
    """Check that every entry is a full multiaddr that names a peer ID."""
    for maddr in maddrs:
        host_port = split_host_port(maddr)
        if host_port is not None:  # hivemind 0.9 dialled HOST:PORT; libp2p also needs the peer to prove its ID
            host, port = host_port
            raise UserError(
                f"{flag} {maddr!r} is not a multiaddr: hivemind 1.x needs the full address with the peer ID, "
                f"/{_address_protocol(host)}/{host}/tcp/{port}/p2p/<the ID the coordinator printed> "
                f"(copy the --initial_peers line the coordinator prints)"
            )
        protocols = _multiaddr_protocols(maddr)
        if protocols is None:
            raise UserError(
                f"{flag} {maddr!r} is not a multiaddr; expected {INITIAL_PEERS_EXAMPLE} "
                f"(copy the line the coordinator prints)"
            )
        if "p2p" not in protocols:
            raise UserError(f"{flag} {maddr!r} lacks the peer ID; expected {INITIAL_PEERS_EXAMPLE}")
    return list(maddrs)


def listen_maddr(host: str, port: str) -> str:
    """The libp2p multiaddr to listen on for a paper-era HOST:PORT listen address (port '*': any free port)."""
    port = "0" if port == "*" else port
    if not 0 <= int(port) <= 65535:
        raise UserError(f"port {port} is out of range (0-65535)")
    if host in ("", "*", "::", "0.0.0.0"):
        # hivemind 0.9's [::] meant every interface; libp2p's /ip6/:: would accept no IPv4 peer, so use IPv4's
        return f"/ip4/0.0.0.0/tcp/{port}"
    protocol = _address_protocol(host)
    if protocol == "dns":
        raise UserError(f"cannot listen on a host name ({host}): pass --host_maddrs /ip4/ITS_ADDRESS/tcp/{port}")
    return f"/{protocol}/{host}/tcp/{port}"


def _check_listen_maddrs(maddrs: Sequence[str], flag: str) -> None:
    """Catch the paper's HOST:PORT form early (a full multiaddr check would import hivemind; libp2p checks later)."""
    for maddr in maddrs:
        if not maddr.startswith("/"):
            host_port = split_host_port(maddr)
            example = listen_maddr(*host_port) if host_port else "/ip4/0.0.0.0/tcp/PORT"
            raise UserError(f"{flag} {maddr!r} is not a multiaddr; expected e.g. {example}")


@dataclass
class PeerArguments:
    """How this peer joins the swarm (the DHT): addresses, identity, NAT options."""

    run_id: str = field(
        default="albert",
        metadata=_help(
            "Name of the training run; every peer of one run must use the same value. Prefix of all DHT keys.",
            aliases=["--experiment_prefix"],
        ),
    )
    initial_peers: list[str] = field(
        default_factory=list,
        metadata=_help(
            "Multiaddrs of peers already in the swarm, e.g. /ip4/203.0.113.5/tcp/31337/p2p/Qm... "
            "(the coordinator prints this line). Leave empty only on the first peer."
        ),
    )
    host_maddrs: list[str] = field(
        default_factory=lambda: ["/ip4/0.0.0.0/tcp/0"],
        metadata=_help("Multiaddrs to listen on. tcp/0 picks a free port; use a fixed port on the coordinator."),
    )
    announce_maddrs: list[str] = field(
        default_factory=list,
        metadata=_help("Public multiaddrs to announce to others, e.g. behind port forwarding or in Docker."),
    )
    identity_path: Optional[str] = field(
        default=None,
        metadata=_help("File with this peer's private key, created on the first run (owner-only): keeps the peer ID "
                       "across restarts. Never share or commit it."),
    )
    use_ipfs: bool = field(
        default=False, metadata=_help("Also use the public IPFS DHT to find peers (helps peers behind NAT meet).")
    )
    client_mode: bool = field(
        default=False,
        metadata=_help(
            "Accept no incoming connections (for peers behind NAT/firewalls, e.g. Colab): the peer still sends "
            "gradients and downloads state, but other peers cannot connect to it."
        ),
    )
    use_relay: bool = field(
        default=True,
        metadata=_help("Allow reaching peers that are only reachable via a relay (p2p-circuit addresses)."),
    )
    use_auto_relay: bool = field(
        default=False,
        metadata=_help(
            "Become reachable from behind NAT: reserve a slot on a relay (a public peer of the swarm) and announce "
            "an address through it, so others can connect (see p2p/circuit-relay.md)."
        ),
    )
    trusted_relays: list[str] = field(
        default_factory=list,
        metadata=_help(
            "Relays to reserve a slot on at once (full multiaddrs, e.g. the coordinator's); implies --use_auto_relay. "
            "Without it the libp2p daemon first looks for 4 relay candidates, which in a small swarm means waiting "
            "3 minutes before it becomes reachable."
        ),
    )
    force_reachability: Optional[str] = field(
        default=None,
        metadata=_help(
            "Skip libp2p's AutoNAT guess: 'private' behind NAT (relay reservations start right away), 'public' for "
            "a relay or coordinator with a public address. Default: detect it.",
            choices=REACHABILITY_CHOICES,
        ),
    )
    startup_timeout: float = field(default=30.0, metadata=_help("Seconds to wait for the libp2p daemon to start."))

    def __post_init__(self) -> None:
        # checked here, while parsing, so that a bad address is reported before the dataset and model load
        validate_initial_peers(self.initial_peers)
        validate_initial_peers(self.trusted_relays, flag="--trusted_relays")
        _check_listen_maddrs(self.host_maddrs, "--host_maddrs")
        _check_listen_maddrs(self.announce_maddrs, "--announce_maddrs")
        _require_positive(self, ["startup_timeout"])
        if not self.run_id or "." in self.run_id:
            raise UserError(f"--run_id {self.run_id!r} is invalid: use a non-empty name without dots")
        if self.client_mode and not self.initial_peers:
            raise UserError("--client_mode needs --initial_peers: a client cannot be the first peer of a swarm")
        if self.use_ipfs and self.initial_peers:
            raise UserError("--use_ipfs finds peers through the public IPFS DHT and cannot be combined with "
                            "--initial_peers (hivemind refuses both): pass one of them")
        if self.trusted_relays:
            if self.client_mode:
                raise UserError("--trusted_relays makes this peer reachable through relays, --client_mode makes it "
                                "unreachable: pass one of them")
            if not self.use_relay:
                raise UserError("--trusted_relays needs --use_relay (the default): drop --use_relay false")
            self.use_auto_relay = True  # relays to reserve on only make sense with auto relay (the daemon insists)


@dataclass
class AveragerArguments:
    """Averaging rounds (gradients and state). Passed to *both* hivemind averagers."""

    target_group_size: Optional[int] = field(
        default=None, metadata=_help("Largest group of one all-reduce round (None: everyone in one group).")
    )
    min_group_size: int = field(default=2, metadata=_help("Smallest group that runs an all-reduce round."))
    request_timeout: float = field(
        default=3.0,
        metadata=_help("Seconds to wait for a matchmaking reply; must be below --matchmaking_time."),
    )
    min_vector_size: int = field(
        default=0, metadata=_help("Peers get no all-reduce part smaller than this many values.")
    )
    part_size_bytes: int = field(default=2**19, metadata=_help("Size of one streamed all-reduce message."))

    def __post_init__(self) -> None:
        _require_positive(self, ["request_timeout", "min_group_size", "part_size_bytes"])
        if self.target_group_size is not None and self.target_group_size < self.min_group_size:
            raise UserError(f"--target_group_size ({self.target_group_size}) must be at least --min_group_size "
                            f"({self.min_group_size})")
        if self.min_vector_size < 0:
            raise UserError(f"--min_vector_size must be >= 0, got {self.min_vector_size}")


@dataclass
class ProgressTrackerArguments:
    """How often peers exchange their progress toward the target batch size (hivemind.optim.ProgressTracker)."""

    min_refresh_period: float = field(default=0.5, metadata=_help("Fastest progress refresh, seconds."))
    max_refresh_period: float = field(default=10.0, metadata=_help("Slowest progress refresh, seconds."))
    default_refresh_period: float = field(default=3.0, metadata=_help("Refresh period with no estimate yet."))
    expected_drift_peers: float = field(default=3.0, metadata=_help("Refresh when this many peers could finish."))
    expected_drift_rate: float = field(default=0.2, metadata=_help("Refresh when this fraction of work is done."))
    metadata_expiration: float = field(default=60.0, metadata=_help("Seconds a peer's progress record stays alive."))

    def __post_init__(self) -> None:
        _require_positive(self, [f.name for f in dataclasses.fields(self)])
        if self.min_refresh_period > self.max_refresh_period:
            raise UserError(f"--min_refresh_period ({self.min_refresh_period}) must not exceed --max_refresh_period "
                            f"({self.max_refresh_period})")


@dataclass
class CollaborationArguments:
    """The collaborative optimizer (hivemind.Optimizer): global batch, averaging and its timeouts."""

    target_batch_size: int = field(
        default=4096, metadata=_help("Samples summed over all peers per global optimizer step (paper: 4096).")
    )
    batch_size_lead: int = field(
        default=0,
        metadata=_help("Start averaging this many samples before the target is reached, to hide latency."),
    )
    matchmaking_time: float = field(
        default=5.0,
        metadata=_help("Seconds to look for peers before an averaging round starts.",
                       aliases=["--averaging_expiration"]),  # hivemind 0.9's name (its averager's min_matchmaking_time)
    )
    averaging_timeout: float = field(
        default=60.0,
        metadata=_help("Give up an averaging round after this many seconds; must be above --matchmaking_time."),
    )
    load_state_timeout: float = field(
        default=300.0, metadata=_help("Seconds one attempt to download the training state from a peer may take.")
    )
    load_state_attempts: int = field(
        default=5,
        metadata=_help("Attempts to download the training state (each tries every peer offering it) before going on "
                       "with the local state; the waits between attempts double from 2 s."),
    )
    compression: str = field(
        default="fp16",
        metadata=_help(
            "Compression of averaged tensors: none, fp16, scaled-fp16, uniform8bit, quantile8bit, or "
            "size-adaptive (fp16 below 65536 values, 8-bit above, as in past collaborations).",
            choices=COMPRESSION_CHOICES,
        ),
    )
    bandwidth: Optional[float] = field(
        default=None,
        metadata=_help(
            "This peer's upload bandwidth in Mbit/s; all-reduce gives faster peers a larger share "
            "(bandwidth-aware load balancing). Unset: equal shares."
        ),
    )
    average_state_every: int = field(
        default=0,
        metadata=_help(
            "Average parameters (and --average_opt_statistics) every this many global steps; 0 (the default) turns "
            "it off. Peers stay on one model without it: they apply the same averaged gradient, and a peer that "
            "did not re-syncs by downloading an exact state (collab/sync.py). Averaging parameters with a peer "
            "that fell out of sync would pull the others toward it, and a round that reaches only part of the "
            "swarm leaves two models."
        ),
    )
    average_opt_statistics: list[str] = field(
        default_factory=list,
        metadata=_help(
            "Optimizer statistics to average along with the parameters (needs --average_state_every and "
            "--compression none: fp16 flushes LAMB's small second moments to zero). Not needed to keep peers "
            "together: a peer that falls out of sync downloads the exact moments."
        ),
    )
    offload_optimizer: bool = field(
        default=True, metadata=_help("Keep the optimizer and averaged gradients on CPU (saves accelerator memory).")
    )
    delay_optimizer_step: bool = field(
        default=False, metadata=_help("Run the optimizer step in the background (delayed parameter updates).")
    )
    delay_grad_averaging: bool = field(
        default=False,
        metadata=_help("Average gradients in the background, overlapping the next steps' compute "
                       "(needs --delay_optimizer_step)."),
    )
    verbose_optimizer: bool = field(
        default=False, metadata=_help("Let hivemind.Optimizer log every internal event (matchmaking, rounds, ...).")
    )

    def __post_init__(self) -> None:
        _require_positive(self, ["target_batch_size", "matchmaking_time", "averaging_timeout", "load_state_timeout"])
        if self.average_state_every < 0:
            raise UserError(f"--average_state_every must be >= 0 (0: off), got {self.average_state_every}")
        if self.average_opt_statistics and (self.average_state_every == 0 or self.compression != "none"):
            raise UserError("--average_opt_statistics averages optimizer statistics in the parameter-averaging round: "
                            "it needs --average_state_every N and --compression none (fp16 and 8-bit flush LAMB's "
                            "small second moments to zero); peers that fall out of sync download exact moments anyway")
        if self.averaging_timeout <= self.matchmaking_time:
            # hivemind schedules a round up to --matchmaking_time ahead, and asserts that it starts within the timeout
            raise UserError(f"--averaging_timeout ({self.averaging_timeout}) must be above --matchmaking_time "
                            f"({self.matchmaking_time})")
        if self.compression not in COMPRESSION_CHOICES:  # argparse checks flags; this catches code and presets too
            raise UserError(f"--compression {self.compression!r} is not one of {', '.join(COMPRESSION_CHOICES)}")
        if not 0 <= self.batch_size_lead < self.target_batch_size:
            raise UserError("--batch_size_lead must be >= 0 and smaller than --target_batch_size")
        if self.delay_grad_averaging and not self.delay_optimizer_step:
            raise UserError("--delay_grad_averaging needs --delay_optimizer_step as well")
        if self.load_state_attempts < 1:
            raise UserError(f"--load_state_attempts must be at least 1, got {self.load_state_attempts}")
        if self.bandwidth is not None and not (0 <= self.bandwidth and math.isfinite(self.bandwidth)):
            raise UserError(f"--bandwidth is in Mbit/s and must be a finite number >= 0, got {self.bandwidth}")


@dataclass
class TrainingArguments:
    """The local training loop. Flag names follow Hugging Face's TrainingArguments."""

    output_dir: str = field(default="outputs/trainer", metadata=_help("Where checkpoints and logs are written."))
    per_device_train_batch_size: int = field(default=4, metadata=_help("Samples per forward/backward pass."))
    gradient_accumulation_steps: int = field(
        default=1, metadata=_help("Forward/backward passes summed locally before reporting progress to the swarm.")
    )
    learning_rate: float = field(default=0.00176, metadata=_help("Peak learning rate (paper: 0.00176 for LAMB)."))
    warmup_steps: int = field(default=5000, metadata=_help("Global steps of linear learning-rate warm-up."))
    total_steps: int = field(default=125000, metadata=_help("Global steps of the whole schedule (linear decay to 0)."))
    max_steps: int = field(
        default=-1, metadata=_help("Stop this peer when the global step reaches this value (-1: --total_steps).")
    )
    weight_decay: float = field(default=0.01, metadata=_help("Weight decay (not applied to biases and LayerNorm)."))
    adam_beta1: float = field(default=0.9, metadata=_help("First-moment decay of LAMB/Adam."))
    adam_beta2: float = field(default=0.999, metadata=_help("Second-moment decay of LAMB/Adam."))
    adam_epsilon: float = field(default=1e-6, metadata=_help("Epsilon of LAMB/Adam."))
    max_grad_norm: float = field(
        default=1.0, metadata=_help("Clip the *averaged* gradient to this global norm (0 disables).")
    )
    seed: int = field(default=42, metadata=_help("Seed for model initialisation; data order also mixes in the peer."))
    fp16: bool = field(default=False, metadata=_help("Mixed precision with hivemind's GradScaler (CUDA only)."))
    device: str = field(default="auto", metadata=_help("cpu, cuda, cuda:N, or auto (cuda if available)."))
    logging_steps: int = field(default=10, metadata=_help("Log local progress every this many local steps."))
    save_steps: int = field(
        default=50, metadata=_help("Save a local checkpoint every this many global steps (0: never).")
    )
    save_total_limit: int = field(default=2, metadata=_help("Keep only this many newest local checkpoints."))
    resume_from_checkpoint: Optional[str] = field(
        default=None, metadata=_help("Checkpoint folder to start from (default: newest one in --output_dir).")
    )
    dataloader_num_workers: int = field(default=0, metadata=_help("Worker processes that prepare batches."))
    final_sync_timeout: float = field(
        default=120.0,
        metadata=_help("At --max_steps, wait up to this many seconds for the other trainers to finish the last step "
                       "and agree on one final state (a lagging peer may need a whole --averaging_timeout)."),
    )
    statistics_expiration: float = field(
        default=600.0, metadata=_help("Seconds this peer's metrics record stays in the DHT after it stops.")
    )

    def __post_init__(self) -> None:
        _require_positive(self, ["per_device_train_batch_size", "gradient_accumulation_steps", "total_steps",
                                 "logging_steps", "final_sync_timeout", "statistics_expiration"])
        if self.save_steps < 0 or self.warmup_steps < 0:
            raise UserError(f"--save_steps and --warmup_steps must be >= 0, got {self.save_steps} and "
                            f"{self.warmup_steps}")
        if self.max_steps < 0:
            self.max_steps = self.total_steps

    @property
    def local_batch_size(self) -> int:
        """Samples this peer reports to the swarm per optimizer.step() call."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps


@dataclass(frozen=True)
class PaperEraFlag:
    """A flag of the original DeDLOC scripts (hivemind 0.9) that these scripts lack under that name."""

    modern: str  # what to pass today, or why nothing is needed: the whole error message when there is no `translate`
    translate: Optional[Callable[[str, str], tuple[str, str]]] = None  # (flag, value) -> (today's flag, its value)


def _listen_address_to_host_maddrs(flag: str, value: str) -> tuple[str, str]:
    host_port = split_host_port(value)
    if host_port is None:
        raise UserError(f"{flag} {value!r}: expected HOST:PORT as in the paper ([::]:31337, 0.0.0.0:*), or pass "
                        f"--host_maddrs /ip4/0.0.0.0/tcp/PORT")
    return "--host_maddrs", listen_maddr(*host_port)


_LOGS = ("not needed: a peer logs to stderr and a trainer's events go to <output_dir>/journal.jsonl; the coordinator "
         "(run_first_peer.py) records the run's metrics in wandb and <monitor_output_dir>/metrics.sqlite")
_ANNOUNCE = ("not needed: hivemind 1.x learns this peer's public address from its peers; to set it, pass "
             "--announce_maddrs /ip4/PUBLIC_IP/tcp/PORT")
_HUB = "the coordinator uploads every checkpoint it saves with --push_to_hub --hub_model_id USER/REPO"
_MODEL_CONFIG = "pick the model with --model_preset (albert-large is albert-large-v2's configuration)"
_COORDINATOR_ONLY = "only the coordinator (albert/run_first_peer.py) has this flag"

# The paper's flags (albert/ and sahajbert/ of the DeDLOC repository) that are not flags here under the same name.
# Accepted as they are: --initial_peers (full multiaddrs now), --client_mode, --bandwidth, --averaging_timeout,
# --target_batch_size, --batch_size_lead, --target_group_size, --statistics_expiration, --metadata_expiration,
# the refresh periods, --dataset_path, the Hugging Face training flags we use, and on the coordinator
# --wandb_project, --save_checkpoint_step_interval and --refresh_period. Accepted as aliases: --experiment_prefix
# (--run_id) and --averaging_expiration (--matchmaking_time). Consulted only for flags the parser does not know, so an
# entry for a coordinator-only flag answers a trainer and never shadows the coordinator's flag.
PAPER_ERA_FLAGS: dict[str, PaperEraFlag] = {
    # hivemind 1.x has one libp2p port for the DHT and averaging: both of the paper's listen addresses become it
    "--dht_listen_on": PaperEraFlag("--host_maddrs /ip4/0.0.0.0/tcp/PORT", _listen_address_to_host_maddrs),
    "--listen_on": PaperEraFlag("--host_maddrs /ip4/0.0.0.0/tcp/PORT", _listen_address_to_host_maddrs),
    "--overwrite_output_dir": PaperEraFlag(
        "not needed: a trainer resumes from its newest valid checkpoint in --output_dir; pass "
        "--resume_from_checkpoint DIR to start from another one, or a fresh --output_dir to start over"),
    "--logging_dir": PaperEraFlag(_LOGS),
    "--logging_first_step": PaperEraFlag(_LOGS),
    "--seq_length": PaperEraFlag(
        "the sequence length is fixed when the data is tokenized: albert/tokenize_wikitext103.py --max_seq_length N"),
    "--address": PaperEraFlag(_ANNOUNCE),
    "--endpoint": PaperEraFlag(_ANNOUNCE),
    "--model_config_path": PaperEraFlag(_MODEL_CONFIG),
    "--config_path": PaperEraFlag(_MODEL_CONFIG),
    "--tokenizer_path": PaperEraFlag(
        "the tokenizer is saved with the dataset (<dataset_path>/tokenizer): pass --dataset_path"),
    "--cache_dir": PaperEraFlag("not needed: pass --dataset_path (the output of albert/tokenize_wikitext103.py)"),
    "--repo_path": PaperEraFlag(_HUB),
    "--repo_url": PaperEraFlag(_HUB),
    "--upload_interval": PaperEraFlag(_HUB + ", every --save_checkpoint_step_interval global steps"),
    "--store_checkpoins": PaperEraFlag(  # sic: the paper's spelling
        "the coordinator saves a checkpoint every --save_checkpoint_step_interval global steps (0: never)"),
    "--performance_ema_alpha": PaperEraFlag("not a flag here: hivemind's default, the paper's 0.1, is used"),
    "--clamp_value": PaperEraFlag("not a flag here: albert/model.py fixes LAMB's clamp at the paper's 10000"),
    "--fp16_opt_level": PaperEraFlag("not needed: --fp16 uses PyTorch autocast with hivemind's GradScaler, not apex"),
    "--do_train": PaperEraFlag("not needed: run_trainer.py always trains"),
    "--per_device_eval_batch_size": PaperEraFlag("not needed: nothing is evaluated during pretraining"),
    "--wandb_project": PaperEraFlag(_COORDINATOR_ONLY + ": it records the run in wandb"),
    "--save_checkpoint_step_interval": PaperEraFlag(
        _COORDINATOR_ONLY + "; a trainer saves its own checkpoint every --save_steps global steps"),
    "--refresh_period": PaperEraFlag(
        _COORDINATOR_ONLY + "; a trainer refreshes the swarm's progress every --min_refresh_period to "
        "--max_refresh_period seconds"),
}


def parse_arguments(
    dataclass_types: Sequence[type],
    args: Optional[Sequence[str]] = None,
    description: Optional[str] = None,
    defaults: Optional[dict] = None,
    preset_shared_with: Sequence[type] = (),
) -> tuple:
    """Parse flags into the given dataclasses.

    Precedence, lowest first: dataclass defaults, the script's own `defaults` (e.g. the coordinator's fixed
    port), a JSON preset given with `--config`, command-line flags. A preset may also hold the fields of
    `preset_shared_with` (the other scripts of a track read the same preset); this script ignores them.
    Unknown flags, abbreviations included, are one UserError that names the flag to use instead.
    """
    args = list(sys.argv[1:] if args is None else args)
    parser = HfArgumentParser(dataclass_types, description=description, allow_abbrev=False)
    parser.add_argument(
        "--config", default=None, help="JSON preset of flag values (e.g. albert/configs/demo.json); flags override it."
    )
    if defaults:
        parser.set_defaults(**defaults)
    preset_path = _peek_config_path(args)
    if preset_path is not None:
        parser.set_defaults(**_load_preset(preset_path, parser, preset_shared_with))
    namespace, unknown = parser.parse_known_args(_translate_paper_era_flags(args, parser))
    if unknown:  # reported before any group checks its values: the flag itself is the first thing to fix
        raise UserError(_explain_unknown(unknown, parser))
    groups = tuple(_build_group(dtype, namespace) for dtype in dataclass_types)
    _check_across_groups(groups)
    return groups


def _build_group(dtype: type, namespace: argparse.Namespace) -> Any:
    return dtype(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(dtype) if f.init})


def _check_across_groups(groups: Sequence[Any]) -> None:
    """Checks that involve fields of two groups (each group checks its own fields in __post_init__)."""
    collab = next((group for group in groups if isinstance(group, CollaborationArguments)), None)
    averager = next((group for group in groups if isinstance(group, AveragerArguments)), None)
    if collab is not None and averager is not None and averager.request_timeout >= collab.matchmaking_time:
        raise UserError(f"--request_timeout ({averager.request_timeout}) must be below --matchmaking_time "
                        f"({collab.matchmaking_time}): a reply that takes longer ends matchmaking empty-handed")


def _translate_paper_era_flags(args: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """Replace the paper's flags that have an exact modern form (--dht_listen_on [::]:31337 -> --host_maddrs ...)."""
    kept: list[str] = []
    translated: dict[str, list[tuple[str, str]]] = {}  # today's flag -> (the paper's flag, today's value), in order
    tokens = iter(args)
    for token in tokens:
        flag, has_value, value = token.partition("=")
        entry = PAPER_ERA_FLAGS.get(flag)
        if entry is None or entry.translate is None or flag in parser._option_string_actions:
            kept.append(token)
            continue
        if not has_value:
            value = next(tokens, None)
            if value is None or value.startswith("--"):
                raise UserError(f"{flag} needs a value (HOST:PORT); today's flag is {entry.modern}")
        modern_flag, modern_value = entry.translate(flag, value)
        logger.info(f"{flag} {value} (original DeDLOC scripts) means {modern_flag} {modern_value} in hivemind 1.x: "
                    f"using that; pass {modern_flag} from now on")
        translated.setdefault(modern_flag, []).append((flag, modern_value))
    for modern_flag, sources in translated.items():
        if any(token.partition("=")[0] == modern_flag for token in kept):
            paper_flags = "/".join(dict.fromkeys(flag for flag, _ in sources))
            raise UserError(f"pass either {modern_flag} or {paper_flags} (its name in the original DeDLOC scripts), "
                            f"not both")
        kept += [modern_flag, *dict.fromkeys(value for _, value in sources)]
    return kept


def _explain_unknown(leftovers: Sequence[str], parser: argparse.ArgumentParser) -> str:
    """One line that names each unknown flag and what to pass instead."""
    known = [flag for flag in parser._option_string_actions if flag.startswith("--") and "-" not in flag[2:]]
    problems: list[str] = []
    paper_era: dict[str, list[str]] = {}  # message -> the paper's flags it answers (several share one)
    for flag in dict.fromkeys(_unknown_flags(leftovers)):
        if not flag.startswith("-"):
            problems.append(f"unexpected argument {flag!r}")
        elif flag in PAPER_ERA_FLAGS:
            paper_era.setdefault(PAPER_ERA_FLAGS[flag].modern, []).append(flag)
        else:
            problems.append(f"unknown flag {flag}" + _closest_flag_hint(flag, known))
    for message, flags in paper_era.items():
        what = "a flag" if len(flags) == 1 else "flags"
        problems.append(f"{', '.join(flags)} ({what} of the original DeDLOC scripts): {message}")
    return "; ".join(problems)


def _unknown_flags(leftovers: Sequence[str]) -> list[str]:
    """The flags among argparse's leftovers, without their values; a value with no flag before it is kept as is."""
    flags: list[str] = []
    after_flag = False
    for token in leftovers:
        if token.startswith("-") and not _is_number(token):
            flags.append(token.partition("=")[0])
            after_flag = True
        elif not after_flag:
            flags.append(token)
    return flags


def _is_number(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


def _closest_flag_hint(flag: str, known: Sequence[str]) -> str:
    wanted = flag.lstrip("-").replace("-", "_")
    matches = difflib.get_close_matches(wanted, [name[2:] for name in known], n=1, cutoff=0.6)
    return f": did you mean --{matches[0]}?" if matches else " (see --help)"


def _peek_config_path(args: Sequence[str]) -> Optional[str]:
    peek = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    peek.add_argument("--config", default=None)
    known, _ = peek.parse_known_args(args)
    return known.config


def _load_preset(path: str, parser: argparse.ArgumentParser, shared_with: Sequence[type] = ()) -> dict:
    preset_file = Path(path)
    if not preset_file.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        preset = json.loads(preset_file.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"--config {path} is not valid JSON: {e}") from e
    known = {action.dest for action in parser._actions}
    for_other_scripts = {f.name for dtype in shared_with for f in dataclasses.fields(dtype)}
    unknown = sorted(set(preset) - known - for_other_scripts)
    if unknown:
        raise UserError(f"--config {path} has unknown keys {unknown}; see --help for valid names")
    return {key: value for key, value in preset.items() if key in known}


def to_dict(*groups: Any) -> dict:
    """Merge argument groups into one flat dict (for logging and for saving beside checkpoints)."""
    merged: dict = {}
    for group in groups:
        merged.update(dataclasses.asdict(group))
    return merged
