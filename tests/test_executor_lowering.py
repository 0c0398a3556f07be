"""How the executor lowers a plan's table for gloo: torch's send/recv lowering, then every
receive posted at the start of the step (``receives_first``). Gloo matches a peer's k-th send
with the k-th receive posted from that peer, so the move must keep, for every pair of ranks,
the receiver's order of receives equal to the sender's order of sends; and nothing but
receives may move. Checked on torch's own lowering of every schedule (the torchrun tests
then run these tables and compare gradients with one process)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from torch.distributed.pipelining.schedules import _add_send_recv  # noqa: E402
from torch.distributed.pipelining.schedules import _ComputationType as C

from executor.build import receives_first, torch_actions  # noqa: E402
from simulator import make_schedule  # noqa: E402
from simulator.actions import stage_ranks  # noqa: E402
from simulator.placement import placement_table  # noqa: E402

CASES = [
    ("GPipe", 2, 1),
    ("1F1B", 4, 1),
    ("Interleaved1F1B", 2, 2),
    ("Interleaved1F1B", 4, 2),
    ("LoopedBFS", 2, 2),
    ("InterleavedZeroBubble", 2, 2),
    ("ZBVZeroBubble", 2, 2),
    ("DualPipeV", 2, 2),
]
RECVS = (C.RECV_F, C.RECV_B)


def _lowered(table):
    owner = stage_ranks(table)
    return _add_send_recv(torch_actions(table), stage_to_rank=lambda s: owner[s], num_stages=len(owner)), owner


def _messages(order, owner):
    """Per (sender, receiver): the messages in the sender's send order and in the receiver's
    receive order, each named by the receiving (stage, direction, microbatch)."""
    sends, recvs = {}, {}
    for rank, acts in order.items():
        for a in acts:
            s, kind, mb = a.stage_index, a.computation_type, a.microbatch_index
            if kind == C.SEND_F:
                sends.setdefault((rank, owner[s + 1]), []).append((s + 1, "F", mb))
            elif kind == C.SEND_B:
                sends.setdefault((rank, owner[s - 1]), []).append((s - 1, "B", mb))
            elif kind == C.RECV_F:
                recvs.setdefault((owner[s - 1], rank), []).append((s, "F", mb))
            elif kind == C.RECV_B:
                recvs.setdefault((owner[s + 1], rank), []).append((s, "B", mb))
    return sends, recvs


@pytest.mark.parametrize("name,p,v", CASES)
def test_receives_first_keeps_every_pairs_message_order(name, p, v):
    order, owner = _lowered(make_schedule(name, p, 6, v))
    moved = receives_first(order)
    for rank, acts in order.items():
        new = moved[rank]
        n = sum(a.computation_type in RECVS for a in acts)
        assert n > 0 or p == 1
        assert all(a.computation_type in RECVS for a in new[:n]), rank  # all receives first ...
        assert [a for a in new if a.computation_type not in RECVS] == [
            a for a in acts if a.computation_type not in RECVS
        ], rank  # ... the rest untouched
    sends, recvs = _messages(moved, owner)
    assert sends == recvs  # the k-th send to a rank is the k-th receive it posted from the sender
    assert sends == _messages(order, owner)[0]


def test_receives_first_on_an_unequal_placement():
    order, owner = _lowered(placement_table([0, 1, 0, 1, 1], 5))
    sends, recvs = _messages(receives_first(order), owner)
    assert sends == recvs
    assert sum(map(len, sends.values())) == 3 * 2 * 5  # 3 of 4 boundaries cross ranks; F and B; 5 microbatches
