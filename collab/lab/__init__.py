"""The harness: tools that start, break and measure swarms on one machine, for tests, demos and benchmarks.

- swarm: starting and stopping local swarms of peer processes (demo, tests, benchmarks)
- demo: the offline demo of any track (a track's run_demo.py describes its scripts and flags)
- chaos: the chaos harness (kill and restart peers of a local swarm, then report)
- netlab: a small internet of network namespaces with NAT routers and bandwidth caps (root only)
- faults: faults injected on purpose into one trainer process, installed by the launcher `with_faults`
- with_faults: `python -m collab.lab.with_faults --faults SPEC SCRIPT [ARGS...]`
- recipes: the swarm recipes the chaos harness runs (ALBERT)

Production peers (the trainers, the coordinator, the aux peers of every track) never import this package:
everything here only drives, breaks or observes them from the outside (or, for faults, from a launcher that
wraps their script).
"""
