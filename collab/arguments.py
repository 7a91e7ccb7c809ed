"""Argument groups shared by every track, and the one parser that reads them.

Field names are hivemind's own parameter names wherever hivemind has one, so a group can be passed on with
`asdict(...)`. Flag names of the paper's code (`--experiment_prefix`, `--bandwidth`, ...) are kept as names or
aliases. Override order: dataclass defaults, then a JSON preset given with `--config`, then command-line flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, TypeVar

from transformers import HfArgumentParser

from collab.errors import UserError

T = TypeVar("T")

REACHABILITY_CHOICES = ("public", "private")
COMPRESSION_CHOICES = ("none", "fp16", "scaled-fp16", "uniform8bit", "quantile8bit", "size-adaptive")


def _help(text: str, **extra: Any) -> dict:
    return dict(help=text, **extra)


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
        metadata=_help("File with this peer's private key (created if missing): keeps the peer ID across restarts."),
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


@dataclass
class ProgressTrackerArguments:
    """How often peers exchange their progress toward the target batch size (hivemind.optim.ProgressTracker)."""

    min_refresh_period: float = field(default=0.5, metadata=_help("Fastest progress refresh, seconds."))
    max_refresh_period: float = field(default=10.0, metadata=_help("Slowest progress refresh, seconds."))
    default_refresh_period: float = field(default=3.0, metadata=_help("Refresh period with no estimate yet."))
    expected_drift_peers: float = field(default=3.0, metadata=_help("Refresh when this many peers could finish."))
    expected_drift_rate: float = field(default=0.2, metadata=_help("Refresh when this fraction of work is done."))
    metadata_expiration: float = field(default=60.0, metadata=_help("Seconds a peer's progress record stays alive."))


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
        default=5.0, metadata=_help("Seconds to look for peers before an averaging round starts.")
    )
    averaging_timeout: float = field(
        default=60.0, metadata=_help("Give up an averaging round after this many seconds and use local gradients.")
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
        default=1, metadata=_help("Average parameters and optimizer statistics every this many global steps.")
    )
    average_opt_statistics: list[str] = field(
        default_factory=list,
        metadata=_help(
            "Optimizer statistics to average along with the parameters, e.g. exp_avg exp_avg_sq for LAMB/Adam. "
            "Costs bandwidth, but after a round that did not reach every peer it makes all peers' optimizer "
            "states identical again (parameters alone converge, moments would not)."
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
        if self.target_batch_size <= 0:
            raise UserError(f"--target_batch_size must be positive, got {self.target_batch_size}")
        if not 0 <= self.batch_size_lead < self.target_batch_size:
            raise UserError("--batch_size_lead must be >= 0 and smaller than --target_batch_size")
        if self.delay_grad_averaging and not self.delay_optimizer_step:
            raise UserError("--delay_grad_averaging needs --delay_optimizer_step as well")
        if self.load_state_attempts < 1:
            raise UserError(f"--load_state_attempts must be at least 1, got {self.load_state_attempts}")
        if self.bandwidth is not None and self.bandwidth < 0:
            raise UserError("--bandwidth is in Mbit/s and must be >= 0")


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
    save_steps: int = field(default=50, metadata=_help("Save a local checkpoint every this many global steps."))
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
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "total_steps"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.max_steps < 0:
            self.max_steps = self.total_steps

    @property
    def local_batch_size(self) -> int:
        """Samples this peer reports to the swarm per optimizer.step() call."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps


def parse_arguments(
    dataclass_types: Sequence[type],
    args: Optional[Sequence[str]] = None,
    description: Optional[str] = None,
    defaults: Optional[dict] = None,
) -> tuple:
    """Parse flags into the given dataclasses.

    Precedence, lowest first: dataclass defaults, the script's own `defaults` (e.g. the coordinator's fixed
    port), a JSON preset given with `--config`, command-line flags.
    """
    args = list(sys.argv[1:] if args is None else args)
    parser = HfArgumentParser(dataclass_types, description=description)
    parser.add_argument(
        "--config", default=None, help="JSON preset of flag values (e.g. albert/configs/demo.json); flags override it."
    )
    if defaults:
        parser.set_defaults(**defaults)
    preset_path = _peek_config_path(args)
    if preset_path is not None:
        parser.set_defaults(**_load_preset(preset_path, parser))
    parsed = parser.parse_args_into_dataclasses(args=args, look_for_args_file=False)
    return tuple(item for item in parsed if not isinstance(item, argparse.Namespace))


def _peek_config_path(args: Sequence[str]) -> Optional[str]:
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--config", default=None)
    known, _ = peek.parse_known_args(args)
    return known.config


def _load_preset(path: str, parser: argparse.ArgumentParser) -> dict:
    preset_file = Path(path)
    if not preset_file.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        preset = json.loads(preset_file.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"--config {path} is not valid JSON: {e}") from e
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(preset) - known)
    if unknown:
        raise UserError(f"--config {path} has unknown keys {unknown}; see --help for valid names")
    return preset


def to_dict(*groups: Any) -> dict:
    """Merge argument groups into one flat dict (for logging and for saving beside checkpoints)."""
    merged: dict = {}
    for group in groups:
        merged.update(dataclasses.asdict(group))
    return merged
