"""Metrics records and the swarm-settings check, on two real DHT nodes talking over loopback."""
import hivemind
import pytest
from hivemind.utils import get_dht_time
from hivemind.utils.crypto import RSAPrivateKey

from collab.errors import UserError
from collab.metrics import LocalMetrics, fetch_metrics, make_validators, metrics_key, publish_metrics
from collab.peer import check_swarm_config, declare_swarm_config, validate_initial_peers

RUN = "metrics_test"


@pytest.fixture(scope="module")
def two_peers():
    validators_a, key_a = make_validators(RUN)
    dht_a = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], record_validators=validators_a)
    validators_b, key_b = make_validators(RUN, RSAPrivateKey())  # a second peer has its own key
    dht_b = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], record_validators=validators_b,
                         initial_peers=dht_a.get_visible_maddrs())
    yield (dht_a, key_a), (dht_b, key_b)
    dht_b.shutdown()
    dht_a.shutdown()


def metrics(loss: float) -> LocalMetrics:
    return LocalMetrics(step=3, samples_per_second=1.5, samples_accumulated=32, loss_sum=loss, mini_steps=4, outcome="averaged", trainers_averaged=2)


def test_records_are_signed_by_their_owner(two_peers):
    (dht_a, key_a), (dht_b, key_b) = two_peers
    assert key_a != key_b
    publish_metrics(dht_a, RUN, key_a, metrics(8.0), expiration=60)
    publish_metrics(dht_b, RUN, key_b, metrics(4.0), expiration=60)
    # Peer B forges a record in A's name: the validators reject it, A's numbers stay.
    forged = dht_b.store(metrics_key(RUN), subkey=key_a, value=metrics(0.0).dict(),
                         expiration_time=get_dht_time() + 120)
    assert not forged
    seen = {key: record.loss_sum for key, record in fetch_metrics(dht_b, RUN).items()}
    assert seen == {key_a: 8.0, key_b: 4.0}


def test_malformed_records_are_rejected(two_peers):
    (dht_a, key_a), _ = two_peers
    bad = dict(metrics(1.0).dict(), loss="low")
    assert not dht_a.store(metrics_key(RUN), subkey=key_a, value=bad, expiration_time=get_dht_time() + 60)


def test_mismatched_settings_are_refused(two_peers):
    (dht_a, _), (dht_b, _) = two_peers
    swarm = dict(hidden_size=64, target_batch_size=256)
    assert declare_swarm_config(dht_a, RUN, swarm, expiration=60).result(timeout=30)
    check_swarm_config(dht_b, RUN, dict(swarm))  # same settings: fine
    with pytest.raises(UserError, match="hidden_size: swarm=64 here=128"):
        check_swarm_config(dht_b, RUN, dict(swarm, hidden_size=128))


@pytest.mark.parametrize("maddr, message", [
    ("not-an-address", "is not a multiaddr"),
    ("/ip4/127.0.0.1/tcp/31337", "lacks the peer ID"),
])
def test_malformed_initial_peers(maddr, message):
    with pytest.raises(UserError, match=message):
        validate_initial_peers([maddr])
