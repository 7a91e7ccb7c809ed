"""The wire format of per-peer training metrics: signed, schema-checked DHT records, and their aggregation.

Every trainer stores its latest `LocalMetrics` under the key `<run_id>_metrics` with a subkey that carries its
RSA public key (`[owner:...]`): the DHT's validators reject records that do not match the schema and records
that were not signed by the key in their subkey, so no peer can overwrite another peer's numbers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import hivemind
import pydantic.v1 as pydantic
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.schema import BytesWithPublicKey, SchemaValidator
from hivemind.dht.validation import RecordValidatorBase
from hivemind.utils import get_dht_time
from hivemind.utils.crypto import RSAPrivateKey

logger = logging.getLogger(__name__)


RoundOutcome = pydantic.constr(regex=r"^(averaged|failed|expired|alone)$", strict=True)


class LocalMetrics(pydantic.BaseModel):
    """What one peer contributed to one global step."""

    step: pydantic.conint(ge=0, strict=True)  # global steps completed, counting the one this record is about
    samples_per_second: pydantic.confloat(ge=0.0, strict=True)
    samples_accumulated: pydantic.conint(ge=0, strict=True)
    loss_sum: pydantic.StrictFloat  # sum of mini-step losses (the mean is computed over the swarm)
    mini_steps: pydantic.conint(ge=0, strict=True)
    # this step's gradient round, as the peer saw it (collab.optimizer.RoundReport)
    outcome: RoundOutcome = "alone"
    trainers_averaged: pydantic.conint(ge=0, strict=True) = 1  # trainers in the group, this one included
    aux_in_group: pydantic.conint(ge=0, strict=True) = 0  # aux peers and coordinators in the group
    # since this peer started; a partial round is one hivemind called a success that the value check (collab.sync)
    # found to differ, and it counts as a failed round
    rounds_failed: pydantic.conint(ge=0, strict=True) = 0  # failed, expired or partial
    rounds_partial: pydantic.conint(ge=0, strict=True) = 0
    resyncs: pydantic.conint(ge=0, strict=True) = 0  # times it downloaded the state after falling out of sync


class MetricSchema(pydantic.BaseModel):
    metrics: Dict[BytesWithPublicKey, LocalMetrics]


def metrics_key(run_id: str) -> str:
    return f"{run_id}_metrics"


def make_validators(run_id: str, private_key: Optional[RSAPrivateKey] = None) -> tuple[list[RecordValidatorBase], bytes]:
    """DHT validators for this run's records, and this peer's public key (its metrics subkey).

    The key defaults to hivemind's process-wide one: one peer per process, as the scripts run it.
    """
    signature_validator = RSASignatureValidator(private_key)
    validators = [SchemaValidator(MetricSchema, prefix=run_id), signature_validator]
    return validators, signature_validator.local_public_key


def publish_metrics(
    dht: hivemind.DHT, run_id: str, public_key: bytes, metrics: LocalMetrics, expiration: float
) -> None:
    dht.store(
        key=metrics_key(run_id), subkey=public_key, value=metrics.dict(),
        expiration_time=get_dht_time() + expiration, return_future=True,
    )


def fetch_metrics(dht: hivemind.DHT, run_id: str) -> dict[bytes, LocalMetrics]:
    """Live metrics records of this run, by peer public key; expired records (dead peers) are not returned."""
    found = dht.get(metrics_key(run_id), latest=True)
    if found is None or not isinstance(found.value, dict):
        return {}
    records = {}
    for peer_key, entry in found.value.items():
        try:
            records[peer_key] = LocalMetrics.parse_obj(entry.value)
        except pydantic.ValidationError as e:  # the validator should have stopped it; never crash the monitor
            logger.warning(f"Ignoring a malformed metrics record: {e}")
    return records


@dataclass
class GlobalMetrics:
    """One global step as the swarm saw it."""

    step: int
    loss: float  # sum of the peers' losses / sum of their mini-steps
    alive_peers: int
    samples: int
    samples_per_second: float
    mini_steps: int


def aggregate(step: int, records: Sequence[LocalMetrics]) -> Optional[GlobalMetrics]:
    """Combine the records that peers published for one global step."""
    records = [record for record in records if record.step == step]
    mini_steps = sum(record.mini_steps for record in records)
    if not records or mini_steps == 0:
        return None
    return GlobalMetrics(
        step=step,
        loss=sum(record.loss_sum for record in records) / mini_steps,
        alive_peers=len(records),
        samples=sum(record.samples_accumulated for record in records),
        samples_per_second=sum(record.samples_per_second for record in records),
        mini_steps=mini_steps,
    )
