"""A tripwire for upgrades of hivemind: the kit overrides, copies or calls these hivemind 1.1.12 internals
(collab/optimizer.py, collab/sync.py, collab/follower.py, collab/peer.py), and its guarantees were checked against
their code. If hivemind changes, this fails in a second with the list of what to read again, instead of a swarm
test failing (or, worse, passing) for a reason nobody sees."""
import hashlib
import importlib
import inspect

import hivemind

PINNED_VERSION = "1.1.12"
# "module:Class.method": first 16 hex digits of the SHA-256 of its source in hivemind 1.1.12
SOURCES = {
    "hivemind.optim.optimizer:Optimizer._update_global_epoch": "03a36523a3fce65e",
    "hivemind.optim.optimizer:Optimizer._begin_averaging_gradients": "f17d8bb258a0c551",
    "hivemind.optim.optimizer:Optimizer._average_gradients_and_load_into_optimizer": "d95bb5ebc061749e",
    "hivemind.optim.optimizer:Optimizer._check_and_accumulate_gradients": "163c06c8f4909c30",
    "hivemind.optim.optimizer:Optimizer._maybe_schedule_gradient_averaging": "868f8c36bdaa41e6",
    "hivemind.optim.optimizer:Optimizer._maybe_schedule_state_averaging": "f6ba5e5eab04f4eb",
    "hivemind.optim.optimizer:Optimizer._make_state_averager": "59a43eff001c3284",
    "hivemind.optim.optimizer:Optimizer._make_progress_tracker": "a3fe70a367d732d6",
    "hivemind.optim.optimizer:Optimizer.load_state_from_peers": "87030a961ecf8f7f",
    "hivemind.optim.optimizer:Optimizer._tag_along_with_zero_weight": "a3181486ff4e2ac7",
    "hivemind.optim.optimizer:Optimizer.step": "7072604b4ad450ac",
    "hivemind.optim.optimizer:Optimizer._make_gradient_averager": "b9a4450197c1e6fb",
    "hivemind.optim.optimizer:Optimizer._load_averaged_gradients_into_optimizer_": "cdf2fbb98f778b8d",
    "hivemind.optim.grad_averager:GradientAverager.__init__": "9f7a702bd6f3dee5",
    "hivemind.optim.grad_averager:GradientAverager.load_accumulators_into_averager_": "916123f43bafd6da",
    "hivemind.averaging.averager:DecentralizedAverager.get_tensors": "daa9a40ccb08aa4d",
    "hivemind.optim.grad_averager:GradientAverager.schedule_step": "ff580482bac40508",
    "hivemind.optim.grad_averager:GradientAverager.step": "9d556a76d4a889cf",
    "hivemind.optim.state_averager:TrainingStateAverager.load_state_from_peers": "e4d647a9ea78cde8",
    "hivemind.optim.state_averager:TrainingStateAverager.get_current_state": "d2ee431a0a4b4074",
    "hivemind.optim.state_averager:TrainingStateAverager._update_scheduler": "9b8de2a7b6020122",
    "hivemind.averaging.averager:DecentralizedAverager.load_state_from_peers": "973fae40a3d1e16f",
    "hivemind.optim.progress_tracker:ProgressTracker._progress_reporter": "affc9ed95108eacf",
    "hivemind.dht.protocol:DHTProtocol.call_ping": "7282d8ddc614b2c4",
    "hivemind.dht.protocol:DHTProtocol.update_routing_table": "2deae2e944d3ca8f",
    # the all-reduce's "own values plus a compressed delta" and per-tensor compression: RoleGradientAverager's grid
    "hivemind.averaging.allreduce:AllReduceRunner._accumulate_parts_streaming": "6c5a3c7266060303",
    "hivemind.averaging.allreduce:AllReduceRunner.run": "d145a0e368a57df1",
    "hivemind.averaging.partition:TensorPartContainer.__init__": "b652a9b7267354d8",
    "hivemind.compression.floating:Float16Compression.compress": "030d1b00af00dc4c",
    "hivemind.compression.adaptive:SizeAdaptiveCompression.choose_compression": "54f4e41c96ae91de",
}


def source_digest(path: str) -> str:
    module_name, qualified = path.split(":")
    owner = importlib.import_module(module_name)
    for name in qualified.split("."):
        owner = getattr(owner, name)
    return hashlib.sha256(inspect.getsource(owner).encode()).hexdigest()[:16]


def test_hivemind_is_the_version_the_kit_was_checked_against():
    assert hivemind.__version__ == PINNED_VERSION


def test_the_internals_the_kit_relies_on_are_unchanged():
    changed = [path for path, digest in SOURCES.items() if source_digest(path) != digest]
    assert not changed, f"hivemind changed these internals; re-read them against collab/ and update SOURCES: {changed}"
