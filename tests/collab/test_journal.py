import torch

from collab.journal import Journal, ParameterProbe, optimizer_digest, read_journal


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(50, 40), torch.nn.LayerNorm(40), torch.nn.Linear(40, 3))


def test_probe_reads_the_same_positions_in_every_process():
    first, same, other = make_model(0), make_model(0), make_model(1)
    probe = ParameterProbe(first).read()
    assert len(probe["probe"]) == 256 and probe["finite"]
    assert probe == ParameterProbe(same).read()
    assert probe["probe"] != ParameterProbe(other).read()["probe"]


def test_probe_sees_a_changed_or_broken_parameter():
    model = make_model(0)
    probe = ParameterProbe(model, size=4000)  # dense enough to hit every tensor
    before = probe.read()["probe"]
    with torch.no_grad():
        model[2].bias.add_(1.0)
    assert probe.read()["probe"] != before
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    assert probe.read()["finite"] is False


def test_journal_survives_a_line_cut_short(tmp_path):
    journal = Journal(tmp_path / "peer" / "journal.jsonl")
    journal.write("step", step=1, loss=float("nan"))
    journal.write("step", step=2)
    with open(journal.path, "a") as file:
        file.write('{"event": "step", "st')  # the peer was killed mid-write
    events = read_journal(journal.path)
    assert [e["step"] for e in events] == [1, 2] and events[0]["loss"] != events[0]["loss"]
    Journal(None).write("anything")  # a journal without a file is a no-op


def test_optimizer_digest_tells_states_apart():
    model = make_model(0)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(2, 50)).sum().backward()
    optimizer.step()
    digest = optimizer_digest(optimizer.state_dict())
    assert set(digest) == {"exp_avg", "exp_avg_sq"}
    optimizer.step()
    assert optimizer_digest(optimizer.state_dict()) != digest
