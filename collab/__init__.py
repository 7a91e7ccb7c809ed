"""Collaboration kit: what every track shares to train one model over a swarm of volunteer peers.

- arguments: argument groups and the parser (defaults < JSON preset < flags)
- peer: DHT construction, initial-peers line, swarm configuration fingerprint
- optimizer: hivemind.Optimizer construction (compression, bandwidth hints, client/auxiliary modes)
- metrics: signed per-peer metrics records in the DHT and their aggregation
- training: the collaborative training loop
- final_state: how trainers agree on one final state when the run ends
- checkpoints: atomic checkpoints and the resume order
- journal: each peer's own event log and the parameter probe that compares peers
- faults: faults injected on purpose (COLLAB_FAULTS), for the chaos harness and tests
- chaos: the chaos harness (kill and restart peers of a local swarm, then report)
- monitor: the coordinator's metrics/checkpoint loop (wandb + SQLite)
- swarm: starting and stopping local swarms of peer processes (demo, tests)
- netlab: a small internet of network namespaces with NAT routers and bandwidth caps (root only)
"""
