"""Tensor parallelism and FSDP inside pipeline stages, as the planner plans them (Plan schema 2:
``tp``, ``dp_mode``): tiny GPT-2 and Llama on 4 CPU ranks (gloo) match one process, gradient by
gradient. One torchrun launch runs every plan (pp 2 x tp 2, pp 2 x dp 2 fsdp, dp 2 x tp 2 with
ddp and with FSDP over the tp shards, sequence parallelism with pp 2 x tp 2 and with FSDP, pp 2 x
dp 2 with zero1, zero2 and ddp), two steps each."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from test_executor_schedules import torchrun

MODELS = ("gpt2-tiny", "llama-tiny")
#: GPT-2 with its input and output embeddings tied: one copy on each end stage's ranks, or both on
#: one stage (dp2-tp2-fsdp: FSDP2 shards the two units together)
TIED = "gpt2-tiny-tied"
TIED_LAYOUTS = ("pp2-tp2", "pp2-dp2-fsdp", "dp2-tp2-fsdp")
#: name -> (pp, tp, dp mode, sequence parallel); the planner fills 4 devices (dp = 4 / (pp x tp))
LAYOUTS = {
    "pp2-tp2": (2, 2, "ddp", False),
    "pp2-tp2-sp": (2, 2, "ddp", True),
    "pp2-dp2-fsdp": (2, 1, "fsdp", False),
    "dp2-tp2-ddp": (1, 2, "ddp", False),
    "dp2-tp2-fsdp": (1, 2, "fsdp", False),
    "dp2-tp2-fsdp-sp": (1, 2, "fsdp", True),
    "pp2-dp2-ddp": (2, 1, "ddp", False),
    "pp2-dp2-zero1": (2, 1, "zero1", False),
    "pp2-dp2-zero2": (2, 1, "zero2", False),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every (model, layout) planned by the planner and run in one launch with --check."""
    from planner import Cluster, Job, plan
    from profiles import load_profile, profile_model

    tmp = tmp_path_factory.mktemp("tp")
    out = {}
    for model in (*MODELS, TIED):
        prof_path = tmp / f"{model}.json"
        tied = {"tie_word_embeddings": True} if model == TIED else None
        profile_model("gpt2-tiny" if tied else model, seq_len=16, overrides=tied, repeats=1, warmup=0).save(prof_path)
        prof = load_profile(prof_path)
        for name, (pp, tp, mode, sp) in LAYOUTS.items():
            if model == TIED and name not in TIED_LAYOUTS:
                continue
            job = Job(
                global_batch=4,
                microbatch_size=1,
                schedules=("1F1B",),
                pp=(pp,),
                tp=(tp,),
                dp_modes=(mode,),
                sequence_parallel="on" if sp else "off",
            )
            best = plan(prof, Cluster(devices=4, memory_bytes=2**30), job, top=1, profile_path=prof_path)[0]
            assert (best.pp, best.dp, best.tp, best.dp_mode.value) == (pp, 4 // (pp * tp), tp, mode)
            assert best.sequence_parallel == sp
            out[model, name] = (prof, best, best.save(tmp / f"{model}-{name}.json"))
    r, _ = torchrun(4, *(str(path) for *_, path in out.values()), "--check", "--steps", "2", "--warmup", "0")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-4000:]
    reports = {key: path.with_suffix(".run.json") for key, (*_, path) in out.items()}
    return {key: (prof, p, json.loads(reports[key].read_text()), path) for key, (prof, p, path) in out.items()}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_gradient_matches_one_process(runs, model, layout):
    _, _, data, _ = runs[model, layout]
    check = data["check"]
    assert data["world_size"] == 4 and check["passed"] and check["max_rel_diff"] <= 1e-4, check
    assert check["loss_rel_diff"] <= 1e-5, check
    assert {e["rank"] for e in data["events"]} == {0, 1, 2, 3}  # every rank ran its stage's actions


@pytest.mark.parametrize("layout", TIED_LAYOUTS)
def test_tied_embeddings_on_both_end_stages_match_one_process(runs, layout):
    """The tied embedding and head weights (vocabulary-parallel with tp, FSDP-sharded with fsdp)
    sum their gradients over the end stages' ranks and match the one-process gradient."""
    _, _, data, _ = runs[TIED, layout]
    check = data["check"]
    assert check["passed"] and check["max_rel_diff"] <= 1e-4, check


@pytest.mark.parametrize("model", MODELS)
def test_pp2_tp2_ranks_hold_half_of_their_stage(runs, model):
    """Mesh layout, tp innermost: ranks 0 and 1 run stage 0. Each holds half of its stage: the
    blocks' projections (GPT-2's fused q/k/v included) and the vocabulary-parallel embedding and
    head are split; only norms, row-wise biases and GPT-2's position embedding stay whole."""
    prof, p, data, _ = runs[model, "pp2-tp2"]
    units = [u.params for u in prof.entries[0].units]
    params = data["extra"]["params"]
    assert {(e["rank"], e["stage"]) for e in data["events"]} == {(0, 0), (1, 0), (2, 1), (3, 1)}
    assert params[0] == params[1] and params[2] == params[3]
    for rank, s in ((0, p.stages[0]), (2, p.stages[1])):
        stage = sum(units[s.first : s.end])
        assert stage // 2 <= params[rank] < stage // 2 + stage // 8, (rank, stage, params)


@pytest.mark.parametrize("model", MODELS)
def test_fsdp_over_tp_holds_a_quarter_of_the_model(runs, model):
    """dp 2 x tp 2 fsdp: FSDP2 shards the tensor-parallel shards again over dp (2-D); ddp keeps
    each tp shard whole on both replicas."""
    prof, _, fsdp, _ = runs[model, "dp2-tp2-fsdp"]
    _, _, ddp, _ = runs[model, "dp2-tp2-ddp"]
    whole = sum(u.params for u in prof.entries[0].units)
    assert len(set(ddp["extra"]["params"])) == 1 and len(set(fsdp["extra"]["params"])) == 1
    assert whole // 2 <= ddp["extra"]["params"][0] < whole // 2 + whole // 8
    assert fsdp["extra"]["params"][0] == pytest.approx(ddp["extra"]["params"][0] / 2, rel=0.01)


@pytest.mark.parametrize("model", MODELS)
def test_sequence_parallel_keeps_less_for_backward(runs, model):
    """With sequence parallelism the norms (and what they save for backward) run on half the
    sequence: no rank's peak is higher than without it and a rank with blocks keeps less, with
    the same weights on each rank."""
    _, _, tp, _ = runs[model, "pp2-tp2"]
    _, _, sp, _ = runs[model, "pp2-tp2-sp"]
    assert sp["extra"]["params"] == tp["extra"]["params"]
    peaks = [(a["peak_bytes"], b["peak_bytes"]) for a, b in zip(sp["ranks"], tp["ranks"])]
    assert all(a <= b for a, b in peaks) and any(a < b for a, b in peaks), peaks
    assert sp["losses"] == pytest.approx(tp["losses"], rel=1e-6)  # the optimizer step alike too


@pytest.mark.parametrize("model", MODELS)
def test_zero1_shards_the_optimizer_state_and_steps_as_ddp(runs, model):
    """zero1 (ZeRO-1 over the dp group, ``executor.zero``): every rank holds less than
    under ddp (its share of the AdamW state), and the second step's loss is ddp's."""
    _, _, ddp, _ = runs[model, "pp2-dp2-ddp"]
    _, _, zero1, _ = runs[model, "pp2-dp2-zero1"]
    assert len(zero1["losses"]) == 2 and zero1["losses"] == pytest.approx(ddp["losses"], rel=1e-6)
    for a, b in zip(zero1["ranks"], ddp["ranks"]):
        assert a["peak_bytes"] < b["peak_bytes"], (a, b)


@pytest.mark.parametrize("model", MODELS)
def test_zero2_reduces_every_microbatch_inside_its_backward(runs, model):
    """zero2 reduce-scatters each unit's gradient at every microbatch's backward (no rank holds a
    whole gradient for the step), as the cost layer prices it (``UnitRecord.dp_reduce_s``); the
    step's tail gathers no gradient."""
    _, plan, report, _ = runs[model, "pp2-dp2-zero2"]
    spans = [c for c in report["comm"] if c["group"] == "dp" and "reduce_scatter" in c["op"]]
    for rank in range(4):
        mine = [c for c in spans if c["rank"] == rank]
        stage = next(s for s in plan.stages if s.rank == rank // 2)
        units = stage.end - stage.first  # each holds parameters
        assert {c["kind"] for c in mine} <= {"B", "W"}, mine
        assert len(mine) == plan.microbatches * units, (rank, len(mine), plan.microbatches, units)
    costs = plan.cost_model()
    assert all(r.dp_reduce_s > 0 for s in plan.stages for r in costs.records[s.option][s.first : s.end])


def test_validate_compares_each_pipeline_rank_with_a_rank_that_ran_it(runs):
    """On the mesh global rank 1 is pipeline rank 0's second tp rank: validate's table sets
    simulated pipeline rank 1 against global rank 2, the first that ran stage 1."""
    from executor.cli import compare_table
    from executor.report import load_report
    from simulator.engine import simulate

    _, p, data, path = runs["llama-tiny", "pp2-tp2"]
    table = compare_table(simulate(p), load_report(path.with_suffix(".run.json")))
    busy = {r["rank"]: r["busy_s"] for r in data["ranks"]}
    line = next(x for x in table.splitlines() if x.startswith("rank 1 busy"))
    assert float(line.split()[5]) == pytest.approx(busy[2] * 1e3, abs=0.06), (line, busy)


def test_gpt2_fused_qkv_is_split_by_heads():
    """Each tp rank's contiguous shard of the fused [q | k | v] columns holds its own heads' q, k
    and v; the layout of the one-process model comes back from the permuted one."""
    from torch import nn

    from executor.parallel import TP_COLUMN_ORDER, fused_qkv_order, reference_layout

    order = fused_qkv_order(hidden=4, heads=2, tp=2)
    assert order.tolist() == [0, 1, 4, 5, 8, 9, 2, 3, 6, 7, 10, 11]
    unit = nn.Module()
    unit.attn = nn.Module()
    setattr(unit.attn, TP_COLUMN_ORDER, order)
    w = torch.arange(24.0).view(2, 12)
    assert torch.equal(reference_layout(unit, "attn.weight", w[:, order]), w)
    with pytest.raises(ValueError):
        fused_qkv_order(hidden=6, heads=3, tp=2)


def test_layouts_not_run_yet_are_refused_before_compute():
    from executor.parallel import check_supported, tp_plan
    from profiles.contract import UserError

    gpt2 = {"model_type": "gpt2", "n_head": 2, "n_embd": 64}
    assert tp_plan(gpt2).block["attn.c_attn"] == "colwise_fused_qkv"  # pipeplan's own plan for GPT-2
    check_supported(gpt2, 2, False, "plan.json")
    check_supported(gpt2, 2, True, "plan.json")
    with pytest.raises(UserError, match="plan.json: sequence parallelism .* --sequence-parallel off"):
        check_supported({"model_type": "gemma2"}, 2, True, "plan.json")
    with pytest.raises(UserError, match="tp 4 does not divide"):
        check_supported(gpt2, 4, False, "plan.json")
    with pytest.raises(UserError, match="--tp 1"):
        tp_plan({"n_layers": 2})  # not a Hugging Face model


@pytest.fixture
def fake_tp2():
    """A 1-D tp mesh of 2 on torch's fake process group (one process; collectives do nothing, but
    a dispatch mode sees them)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", rank=0, world_size=2, store=FakeStore())
    try:
        yield init_device_mesh("cpu", (2,))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("model", MODELS)
def test_block_collectives_are_the_cost_models(fake_tp2, model):
    """A block runs the collectives simulator/collectives.tp_block_comm_s prices: 2 all-reduces
    forward and 2 backward (one per attention and per MLP, however many column-parallel layers
    share the input: Llama's q, k, v); with sequence parallelism 2 all-gathers and 2
    reduce-scatters each way. Between units a rank's share of the sequence moves.

    Counted by the runtime's own meter (``executor.comm.CommMeter``, what ``validate`` reports),
    not torch's ``CommDebugMode``: that one's module tracker keys the forward hooks it adds by
    module name, so two modules of one name (transformers' kernel function wrappers, a
    process-wide module and its per-model copy) leave a hook behind on a module every Llama
    shares, and later builds in the process fail."""
    from executor.comm import CommMeter
    from executor.parallel import apply_tp, plain_tensor, tp_plan
    from profiles.materialize import unit_materializer
    from profiles.zoo import build_model

    meta = build_model(model, seed=0, device="meta")
    make = unit_materializer(meta, seed=0)
    want = {
        False: {"all_reduce": 2},
        True: {"all_gather_into_tensor": 2, "reduce_scatter_tensor": 2},
    }
    group = tuple(torch.distributed.get_process_group_ranks(fake_tp2.get_group()))
    for sp in (False, True):
        block = make(1, "cpu")
        apply_tp(block, tp_plan(meta.config, sequence_parallel=sp), fake_tp2)
        x = torch.randn(2, 8 if sp else 16, 64, requires_grad=True)
        meters = [CommMeter(0, {group: "tp"}, lambda: None) for _ in range(2)]
        with meters[0]:
            y = plain_tensor(block(x))
        with meters[1]:
            y.square().sum().backward()
        counts = [Counter(s.op for s in m.take()) for m in meters]
        assert counts == [want[sp], want[sp]], (sp, counts)
        assert y.shape == x.shape  # [b, s/t, h] in and out with sequence parallelism


def _vocab_parallel_rank(rank: int, world: int, init: str, out: dict) -> None:
    """One tp rank of ``test_vocab_parallel_loss_is_the_whole_cross_entropy``."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from executor.parallel import vocab_parallel_lm_loss, vocab_start

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        logits, labels = _vocab_parallel_case()
        start = vocab_start(logits.shape[-1], mesh)
        mine = logits.detach()[..., start : start + -(-logits.shape[-1] // world)].clone().requires_grad_()
        loss = vocab_parallel_lm_loss(mine, labels, group=mesh.get_group(), start=start)
        loss.backward()
        out[rank] = (loss.item(), start, mine.grad)
    finally:
        dist.destroy_process_group()


def _vocab_parallel_case():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 11, generator=g) * 4  # a vocabulary of 11: ranks hold 6 and 5 columns
    labels = torch.randint(0, 11, (2, 5), generator=g)
    labels[0, 1] = -100  # ignored, as cross_entropy ignores it
    labels[1, 2] = 10  # the last column, held by the last rank
    return logits, labels


def test_vocab_parallel_loss_is_the_whole_cross_entropy(tmp_path):
    """Megatron's vocabulary-parallel cross entropy on 2 gloo ranks, each holding its columns of
    the logits (11 of them: 6 and 5), gives the one-process loss and, column by column, its
    gradient; an ignored label (-100) counts in neither."""
    import torch.multiprocessing as mp

    from profiles.zoo_hf import lm_loss

    logits, labels = _vocab_parallel_case()
    whole = logits.clone().requires_grad_()
    want = lm_loss(whole, labels)
    want.backward()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_vocab_parallel_rank, args=(2, f"file://{tmp_path}/store", out), nprocs=2)
        got = dict(out)
    assert sorted(got) == [0, 1]
    for loss, start, grad in got.values():
        assert loss == pytest.approx(want.item(), rel=1e-6)
        torch.testing.assert_close(grad, whole.grad[..., start : start + grad.shape[-1]])
    assert [got[r][1] for r in (0, 1)] == [0, 6] and got[1][2].shape[-1] == 5


def test_the_head_keeps_its_logits_split_for_the_vocab_parallel_loss(fake_tp2):
    """With ``sharded_logits`` the head's forward moves nothing (each rank its ``ceil(V/t)``
    logits columns) and the loss all-reduces three values per token, as the cost model prices
    Megatron's loss; gathered logits (forward-only runs) cost an all-gather of ``b·s·V``."""
    from executor.comm import CommMeter
    from executor.parallel import apply_tp, tp_plan, vocab_parallel_lm_loss, vocab_start
    from profiles.materialize import unit_materializer
    from profiles.zoo import build_model

    meta = build_model("llama-tiny", seed=0, device="meta")
    make = unit_materializer(meta, seed=0)
    group = tuple(torch.distributed.get_process_group_ranks(fake_tp2.get_group()))
    vocab = tp_plan(meta.config).vocab
    x = torch.randn(2, 16, 64)
    for sharded in (True, False):
        head = make(len(meta.units) - 1, "cpu")
        apply_tp(head, tp_plan(meta.config, sharded_logits=sharded), fake_tp2)
        meters = [CommMeter(0, {group: "tp"}, lambda: None) for _ in range(2)]
        with meters[0]:
            logits = head(x)
        assert logits.shape[-1] == (-(-vocab // 2) if sharded else vocab)
        if sharded:
            labels = torch.randint(0, vocab, (2, 16))
            with meters[1]:
                vocab_parallel_lm_loss(logits, labels, group=fake_tp2.get_group(), start=vocab_start(vocab, fake_tp2))
        counts = [Counter(s.op for s in m.take()) for m in meters]
        want = [{}, {"allreduce_": 3}] if sharded else [{"all_gather_into_tensor": 1}, {}]
        assert counts == want, (sharded, counts)


def _zero1_rank(rank: int, world: int, init: str, out: dict) -> None:
    """One data-parallel rank of ``test_zero1_optimizer_steps_as_adamw_on_the_mean_gradient``."""
    import torch.distributed as dist

    from executor.zero import ZeroOneAdamW

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        params, grads = _zero1_case()
        mine = [p.clone() for p in params]
        opt = ZeroOneAdamW(mine, dist.group.WORLD, lr=0.1)
        moments = []
        for step in range(3):
            for p, g in zip(mine, grads(step, rank)):
                p.grad = g
            opt.step()
            opt.zero_grad()
            fp32_shard = opt.optim.param_groups[0]["params"][0]
            moments.append(sum(t.numel() for t in opt.state[fp32_shard].values() if t.dim()))
        out[rank] = ([p.detach().clone() for p in mine], moments)
    finally:
        dist.destroy_process_group()


def _zero1_case():
    g = torch.Generator().manual_seed(5)
    params = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g), torch.randn(7, generator=g).double()]

    def grads(step: int, rank: int):
        r = torch.Generator().manual_seed(100 * step + rank)
        return [torch.randn(p.shape, generator=r, dtype=p.dtype) for p in params]

    return params, grads


def test_zero1_optimizer_steps_as_adamw_on_the_mean_gradient(tmp_path):
    """ZeRO-1 on 2 gloo ranks, each handed its own gradients: after 3 steps every rank holds the
    parameters AdamW reaches on the mean gradients in one process (two dtypes, 17 and 7 elements:
    shards padded), while each holds the moments of its half only."""
    import torch.multiprocessing as mp

    params, grads = _zero1_case()
    want = [p.clone() for p in params]
    ref = torch.optim.AdamW(want, lr=0.1)
    for step in range(3):
        for i, p in enumerate(want):
            p.grad = (grads(step, 0)[i] + grads(step, 1)[i]) / 2
        ref.step()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_zero1_rank, args=(2, f"file://{tmp_path}/store", out), nprocs=2)
        got = dict(out)
    for rank in (0, 1):
        final, moments = got[rank]
        for a, b in zip(final, want):
            torch.testing.assert_close(a, b)
        assert moments == [2 * 9] * 3  # exp_avg and exp_avg_sq of its ceil(17 / 2) fp32 elements
