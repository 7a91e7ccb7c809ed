"""Collaboration kit: what every track shares to train one model over a swarm of volunteer peers.

- arguments: argument groups and the parser (defaults < JSON preset < flags)
- peer: DHT construction, initial-peers line, swarm configuration fingerprint
- optimizer: hivemind.Optimizer construction (compression, bandwidth hints, client/auxiliary modes), round
  outcomes, the re-sync of a peer that fell out of sync, bounded state downloads
- sync: the value check after every global step (did this peer apply the swarm's update?)
- follower: the coordinator's live copy of the swarm's state, served to joining peers and checkpointed
- metrics: signed per-peer metrics records in the DHT and their aggregation
- training: the collaborative training loop
- final_state: how trainers agree on one final state when the run ends
- checkpoints: atomic checkpoints and the resume order
- journal: each peer's own event log and the parameter probe that compares peers
- monitor: the coordinator's metrics/checkpoint loop (wandb + SQLite)
- store: the SQLite metrics store
- lab: the harness (local swarms, chaos, network lab, fault injection); production peers never import it
"""
