"""The swarm's live state on the always-on, reachable coordinator: a peer that follows every global step.

hivemind 1.1.12 lets neither client-mode peers nor auxiliary peers serve the training state. In a public run,
where most volunteers sit behind NAT in client mode (Colab, Kaggle, home routers), nobody could then serve it: a
volunteer joining at step 4 would train from the initial weights, and the coordinator could checkpoint nothing.

The follower fixes this. It is a SwarmOptimizer without data: it takes part in every gradient round with weight
zero (it sends nothing of its own and receives the swarm's average, which also makes it a reducer that client-mode
peers can reach, the job of an aux peer), applies the same optimizer step, and so holds the same parameters and
optimizer statistics as the trainers. It runs the same value check (collab.sync) and re-syncs from a trainer when
it missed the swarm's update. It serves its state exactly (uncompressed), a little below the priority of a live
trainer at the same step, and it is what the coordinator checkpoints (collab.monitor.Checkpointer).

Like hivemind's aux peers it publishes no training progress (it has no samples), so trainers do not count it as a
trainer: a single trainer alone in the swarm steps alone, and the follower catches up by downloading that
trainer's state if it can (not from a lone client-mode trainer: see the README's known limits).
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import hivemind
import torch

from collab.arguments import AveragerArguments, CollaborationArguments, PeerArguments, ProgressTrackerArguments
from collab.optimizer import OptimizerFactory, SchedulerFactory, SwarmOptimizer, create_optimizer

logger = logging.getLogger(__name__)


class StateFollower:
    """Follows the swarm's global steps on a model that never computes a gradient of its own."""

    def __init__(self, *, dht: hivemind.DHT, peer: PeerArguments, collab: CollaborationArguments,
                 averager: AveragerArguments, tracker: ProgressTrackerArguments, model: torch.nn.Module,
                 params, optimizer_factory: OptimizerFactory, scheduler_factory: Optional[SchedulerFactory],
                 role: str = "coordinator", averaged_buffers: Sequence[torch.Tensor] = ()):
        if dht.client_mode:
            raise ValueError("a follower serves the state: it cannot run in client mode")
        self.model = model
        for param in model.parameters():  # hivemind accumulates into .grad (reuse_grad_buffers): zeros, weight 0
            param.grad = torch.zeros_like(param)
        self.opt: SwarmOptimizer = create_optimizer(
            dht=dht, peer=peer, collab=collab, averager=averager, tracker=tracker, params=params,
            optimizer_factory=optimizer_factory, scheduler_factory=scheduler_factory, batch_size_per_step=0,
            role=role, averaged_buffers=averaged_buffers,
        )

    @torch.no_grad()
    def load_parameters_from_model(self) -> None:
        """After weights were loaded into the model: copy them into the optimizer's own parameters (with
        --offload_optimizer, the default, those are separate copies, and they are what the follower serves)."""
        optimized = [param for group in self.opt.state_averager.optimizer.param_groups for param in group["params"]]
        for optimized_param, model_param in zip(optimized, self.opt.state_averager.main_parameters):
            if optimized_param is not model_param:
                optimized_param.copy_(model_param)

    @property
    def step(self) -> int:
        return self.opt.local_epoch

    @property
    def in_sync(self) -> bool:
        """It holds the swarm's state: not found out of sync, and not suspected (its last round failed or expired,
        and the value check has not cleared it yet)."""
        return self.opt.in_sync and not self.opt.suspect

    def poll(self) -> bool:
        """Join the round if the swarm is ready to step (else return at once); True if a global step was taken."""
        before = self.opt.local_epoch
        self.opt.step(batch_size=0)
        while self.opt.sync_events:
            event = self.opt.sync_events.pop(0)
            if event["event"] == "resynced":
                logger.info(f"Follower re-synced at global step {event['step']}")
        if self.opt.local_epoch != before:
            logger.info(f"Following the swarm: global step {self.opt.local_epoch} "
                        f"({self.opt.last_round.outcome if self.opt.last_round else 'downloaded'})")
            return True
        return False

    def shutdown(self) -> None:
        self.opt.shutdown()
