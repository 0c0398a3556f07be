"""The torchrun worker: build this rank's stages from a Plan, run the plan's own table with
``torch.distributed.pipelining``, time every action, check numerics, write a RunReport.

Rank layout: as the planner prices it, ``rank = (pp_index * dp + dp_index) * tp + tp_index``, on
a (pp, dp, tp) DeviceMesh whenever dp or tp is above 1 (``executor/parallel.py``).
The plan's table is lowered to send/recv actions by torch's ``_PipelineScheduleRuntime``
(compute-only format; on gloo every receive is then posted at the start of the step,
``build.lower_table``), so the executor runs exactly the compute order the simulator simulated
(``--torch-schedule NAME`` runs torch's own class instead, for comparison). Clocks: every rank
starts a step at one instant and times its actions from there (``StepClock``: a common
``time.perf_counter`` instant on one host). Several plans given at once run one after another in
the same processes (one launch; each plan gets its own RunReport).

Failures: a plan that does not fit the launch (world size, model, schedule placement) fails
on every rank before any compute. An exception in a step is logged with the rank, stage,
action and input shapes, and the process exits non-zero; torchrun then stops the other
ranks, and a rank blocked in a collective gives up after ``PG_TIMEOUT_S`` anyway.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from planner.plan import Plan, load_plan
from profiles.clikit import progress_bar
from profiles.contract import UserError, sha256_of
from profiles.materialize import tie_local, tied_paths, unit_materializer
from profiles.tuning import gc_paused, keep_freed_memory
from profiles.zoo import ZooModel, build_model, check_trusted
from profiles.zoo_hf import lm_loss
from simulator.modes import DPMode, DPModeSpec
from simulator.timeline import Event, RankStats, Timeline

from .build import (
    FP16_LOSS_SCALE,
    TORCH_SCHEDULES,
    Recorder,
    StepClock,
    build_schedule,
    build_stages,
    check_torch_schedule,
)
from .comm import CommMeter
from .config import WORKER, RunConfig, add_flags
from .data import TokenData
from .parallel import (
    apply_fsdp,
    apply_tp,
    build_mesh,
    build_optimizer,
    check_supported,
    like_param,
    local_tensor,
    optimizer_state,
    plain_tensor,
    tp_plan,
    vocab_parallel_lm_loss,
    vocab_start,
)
from .reference import GradCheck, check_outputs, reference_step
from .report import CheckResult, CommSpan, RunReport
from .status import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, STATUS_DIR_ENV

__all__ = [
    "main",
    "run_worker",
    "PG_TIMEOUT_S",
    "host_peak_bytes",
]

#: steps after the timed ones on which a plan with tp or dp times its collectives (``CommMeter``)
METERED_STEPS = 2
PG_TIMEOUT_S = 45  # collectives give up after this: every rank exits within 60 s of a failure
_LAUNCH_HINT = (
    "executor: run this under torchrun, one process per rank: torchrun --nproc_per_node N -m executor PLAN "
    "(or: pipeplan run PLAN)"
)


class _LiveSaved:
    """Live bytes saved for backward (each storage once), and their peak: the CPU stand-in for
    the CUDA allocator's peak, counted the way the profiler counts saved bytes."""

    def __init__(self, exclude: list[torch.Tensor]):
        self.skip = {p.untyped_storage().data_ptr() for p in exclude}
        self.refs: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def hooks(self):
        tracker = self

        class Holder:
            __slots__ = ("t", "ptr", "nbytes")

            def __init__(self, t: torch.Tensor):
                # an alias without grad_fn: a tensor a node saves from its own output (exp's,
                # log_softmax's, attention's) would otherwise point back at the node and make a
                # cycle through autograd's C++ objects that is never freed, counted forever
                self.t = t.detach()
                st = plain_tensor(t).untyped_storage()  # a DTensor (tp) counts its shard
                self.ptr, self.nbytes = st.data_ptr(), st.nbytes()
                if self.ptr in tracker.skip:
                    self.ptr = None
                    return
                n = tracker.refs.get(self.ptr, 0)
                if n == 0:
                    tracker.live += self.nbytes
                    tracker.peak = max(tracker.peak, tracker.live)
                tracker.refs[self.ptr] = n + 1

            def __del__(self):
                if self.ptr is None:
                    return
                n = tracker.refs.get(self.ptr, 1) - 1
                if n <= 0:
                    tracker.refs.pop(self.ptr, None)
                    tracker.live -= self.nbytes
                else:
                    tracker.refs[self.ptr] = n

        return torch.autograd.graph.saved_tensors_hooks(Holder, lambda h: h.t)


def _args(argv: list[str] | None = None) -> tuple[list[Path], RunConfig]:
    """The plan files and the run's settings, from the worker's command line."""
    p = argparse.ArgumentParser(prog="torchrun ... -m executor", description="Run Plans (one process per rank).")
    p.add_argument("plans", type=Path, nargs="+", metavar="PLAN", help="plan files, run one after another")
    add_flags(p, WORKER)
    args = vars(p.parse_args(argv))
    plans = args.pop("plans")
    cfg = RunConfig.from_dict(args)
    if cfg.report and len(plans) > 1:
        raise UserError("--report names one report: give one plan, or leave --report out")
    return plans, cfg


@dataclass(frozen=True, kw_only=True)
class _Context:
    """This process's place in the launch and the plan it is running: what every step of one plan
    on one rank needs besides the settings (``RunConfig``) and its built stages (``_Rank``)."""

    plan: Plan
    path: Path  # the plan's file
    report: Path  # where rank 0 writes the RunReport
    torch_schedule: str | None  # torch's schedule class name (``--torch-schedule``), or None: the plan's table
    rank: int  # global rank
    world: int  # processes in the launch
    device: torch.device


def _parallel(plan: Plan) -> tuple[int, DPModeSpec]:
    """The plan's tp degree and what its data-parallel mode does."""
    return plan.tp, plan.dp_mode.spec


def _sharded(plan: Plan) -> bool:
    """Whether the plan shards its stages (tp > 1, or a mode FSDP2's ``fully_shard`` runs)."""
    tp, mode = _parallel(plan)
    return tp > 1 or mode.fully_shard


def _validate_launch(plan: Plan, path: Path, world: int, cfg: RunConfig) -> str | None:
    """Everything that can be wrong before compute: fail alike on every rank, one line."""
    tp, mode = _parallel(plan)
    name = plan.dp_mode.value
    if _sharded(plan) and cfg.torch_schedule:
        raise UserError(
            f"--torch-schedule: {path} runs tp {tp} / dp mode {name} on a DeviceMesh, with the plan's own table "
            "only: leave out --torch-schedule"
        )
    if mode.zero_redundancy_optimizer and tp > 1:
        others = " or ".join(m.value for m in DPMode if m.spec.sharded and not m.spec.zero_redundancy_optimizer)
        raise UserError(
            f"{path}: {name} with tp {tp} is not run by this executor (its ZeRO-1 optimizer flattens whole "
            f"parameters, not tp shards): re-plan with --dp-mode {others}, or with --tp 1"
        )
    if mode.sharded and plan.dp == 1:
        raise UserError(f"{path}: dp mode {name} shards over data-parallel replicas: it needs dp > 1; re-plan")
    if plan.profile is not None:
        check_supported(plan.profile.model_config, tp, plan.sequence_parallel, str(path))
    need = plan.pp * plan.dp * tp
    if need != world:
        tpx = f" x tp {tp}" if tp > 1 else ""
        raise UserError(
            f"{path}: the plan needs {need} processes (pp {plan.pp} x dp {plan.dp}{tpx}) "
            f"but torchrun started {world}: use --nproc_per_node {need}"
        )
    if plan.profile is None or plan.profile.model_name != plan.model_name and plan.model_name:
        raise UserError(
            f"{path}: the plan is for model {plan.model_name!r} but its profile is of "
            f"{plan.profile.model_name if plan.profile else '?'}: re-plan"
        )
    check_trusted(plan.profile.model_name, cfg.trust_remote_code, path)
    torch_schedule = check_torch_schedule(plan, cfg.torch_schedule) if cfg.torch_schedule else None
    if cfg.data and not cfg.data.is_file():
        node = os.uname().nodename
        raise UserError(f"--data {cfg.data}: no such file on {node}: every node needs the file at this path")
    if cfg.data and "vocab_size" not in plan.profile.model_config:
        raise UserError(f"--data {cfg.data}: model {plan.profile.model_name} takes no tokens; leave --data out")
    if cfg.data:
        TokenData(cfg.data, int(plan.profile.model_config["vocab_size"]), cfg.data_dtype)  # its size and width
    if plan.job.forward_only and torch_schedule:
        raise UserError("--torch-schedule: a forward-only plan runs its own table only")
    return torch_schedule


def run_worker(paths: list[Path], cfg: RunConfig) -> int:
    """Run the plans at ``paths`` one after another on this rank (torchrun's environment names it);
    returns the exit code every rank agrees on."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    plans = []
    for path in paths:
        plan = load_plan(path)  # a ContractError is a UserError: one line, exit 2
        plans.append((path, plan, _validate_launch(plan, path, world, cfg)))
    cuda = torch.cuda.is_available() and plans[0][1].cluster.device != "cpu"
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        if any(p.profile.measurement.get("cpu_allocator_keeps_freed_memory") for _, p, _ in plans):
            keep_freed_memory()
    if cuda:  # a failed NCCL collective aborts the communicator instead of hanging past the timeout
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=PG_TIMEOUT_S))
    code = 0
    try:
        for path, plan, torch_schedule in plans:
            report = cfg.report or path.with_suffix(".run.json")
            ctx = _Context(
                plan=plan,
                path=path,
                report=report,
                torch_schedule=torch_schedule,
                rank=rank,
                world=world,
                device=device,
            )
            code = max(code, _run(ctx, cfg))
        dist.barrier()  # clean teardown: nobody destroys the group while another still uses it
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return code


def _layout(plan: Plan, rank: int, device: torch.device):
    """This rank's pipeline and data-parallel index, its pipeline and data-parallel groups, and the
    tp and dp meshes. Ranks are laid out as the planner prices them (pipeline stages furthest
    apart, tp ranks adjacent on a node): ``rank = (pp_index * dp + dp_index) * tp + tp_index``,
    on a (pp, dp, tp) DeviceMesh; a plain pipeline (dp and tp 1) needs no mesh."""
    pp, dp = plan.pp, plan.dp
    tp, mode = _parallel(plan)
    if dp == 1 and tp == 1:
        return rank, 0, None, None, None, None  # the world group is the pipeline's
    mesh = build_mesh(pp, dp, tp, device.type, timeout=timedelta(seconds=PG_TIMEOUT_S))
    # modes without fully_shard: the executor all-reduces each rank's gradients (its tp shards)
    # over the dp group; FSDP reduces its own
    dp_group = mesh["dp"].get_group() if not mode.fully_shard and dp > 1 else None
    return rank // (dp * tp), (rank // tp) % dp, mesh["pp"].get_group(), dp_group, mesh["tp"], mesh["dp"]


@dataclass(kw_only=True)
class _Rank:
    """This rank's share of one plan, built and ready to step."""

    rank: int
    pp_rank: int
    dp_rank: int
    dp_group: Any  # the executor's gradient all-reduce group; None: dp 1, or FSDP reduces its own
    stage_indices: list[int]  # the plan's stages this rank runs
    model: ZooModel  # the meta model (this rank's units materialised inside its stages)
    make_unit: Callable[[int, torch.device], nn.Module]  # a unit with its seeded weights (the reference's too)
    stages: list  # torch's PipelineStage per stage
    mods: list[nn.Module]  # the stages' modules
    params: list[torch.Tensor]  # each parameter once (a tied weight too)
    tied: list  # (group, parameter) for tied copies held on other ranks
    schedule: Any
    recorder: Recorder
    optimizer: torch.optim.Optimizer | None
    loss_scale: float  # fp16 stages: the loss is scaled up by this and the gradients down
    host_base: int  # resident set before the model was built, bytes
    comm: CommMeter | None = None  # times tp and dp collectives (plans with tp or dp only)

    @property
    def first(self) -> bool:
        return 0 in self.stage_indices

    def last(self, plan: Plan) -> bool:
        return len(plan.stages) - 1 in self.stage_indices


@dataclass
class _Measured:
    """What the timed steps of one plan gave on one rank."""

    steps: list[float] = field(default_factory=list)
    events: list[list[tuple]] = field(default_factory=list)
    tails: list[StepTail] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # every step's, warm-up included
    #: per metered step (after the timed ones): its length and its tp and dp collectives
    comm: list[tuple[float, list[CommSpan]]] = field(default_factory=list)
    check: CheckResult | None = None
    saved_peak: int = 0  # peak bytes saved for backward on the tracked step


def _run(ctx: _Context, cfg: RunConfig) -> int:
    """Build this rank's stages, step them, and write the plan's RunReport (rank 0); returns the
    exit code every rank agrees on."""
    rk = _build(ctx, cfg)
    measured = _train(rk, ctx, cfg)
    mine = _rank_result(rk, ctx, measured)
    del rk  # free this plan's stages before the next plan's are built
    return _gather_and_report(ctx, cfg, mine)


def _build(ctx: _Context, cfg: RunConfig) -> _Rank:
    """This rank's units materialised from the meta model (the others stay meta), tensor and
    data parallelism applied, its stages, schedule, recorder and optimizer."""
    plan, rank, device = ctx.plan, ctx.rank, ctx.device
    tp, mode = _parallel(plan)
    pp_rank, dp_rank, pp_group, dp_group, tp_mesh, dp_mesh = _layout(plan, rank, device)
    profile = plan.profile
    host_base = _host_bytes("VmRSS")
    model = build_model(
        profile.model_name,
        config=profile.model_config,
        seed=0,
        attention=profile.measurement.get("attention", "sdpa"),
        device="meta",
    )
    make_unit = unit_materializer(model, seed=0)
    stage_indices = sorted(s.index for s in plan.stages if s.rank == pp_rank)
    my_units = {u for s in plan.stages if s.index in stage_indices for u in range(s.first, s.end)}
    units = [make_unit(i, device) if i in my_units else u for i, u in enumerate(model.units)]
    forward_only = plan.job.forward_only
    loss_fn = _loss_fn(model, plan, tp_mesh)
    if tp > 1:
        sharded_logits = loss_fn is not model.loss_fn
        tp_styles = tp_plan(profile.model_config, plan.sequence_parallel, sharded_logits=sharded_logits)
        for i in my_units:
            apply_tp(units[i], tp_styles, tp_mesh)
    loss_scale = FP16_LOSS_SCALE if any(s.dtype == "fp16" for s in plan.stages) and not forward_only else 1.0
    if loss_scale != 1.0:
        loss_fn = partial(_scaled, loss_fn, loss_scale)
    tie_local(model, units, my_units)  # tied copies on this rank: one parameter
    stages, mods = build_stages(plan, units, pp_rank, device, pp_group)
    tied = _tied_groups(plan, model, units, plan.dp, pp_rank, dp_rank)
    if mode.fully_shard:
        for mod in mods:  # resharded after forward as the plan's layout says (its mode's rule)
            apply_fsdp(mod, dp_mesh, plan.parallelism.reshard_after_forward, sync_each=mode.reduces_each_microbatch)
    params = list({id(p): p for mod in mods for p in mod.parameters()}.values())  # a tied weight once
    recorder = Recorder(rank=rank)
    if cfg.fail_at_step is not None and rank == cfg.fail_rank:
        recorder.fail_at = (cfg.fail_at_step, rank)
    for st in stages:
        recorder.wrap(st)
    # forward-only: no loss function, so torch's runtime expects (and validates) no backward
    schedule = build_schedule(plan, stages, None if forward_only else loss_fn, ctx.torch_schedule)
    recorder.wrap_loss(schedule)
    return _Rank(
        rank=rank,
        pp_rank=pp_rank,
        dp_rank=dp_rank,
        dp_group=dp_group,
        stage_indices=stage_indices,
        model=model,
        make_unit=make_unit,
        stages=stages,
        mods=mods,
        params=params,
        tied=tied,
        schedule=schedule,
        recorder=recorder,
        optimizer=build_optimizer(params, mode.zero_redundancy_optimizer, dp_group, cfg.lr)
        if params and not forward_only
        else None,
        loss_scale=loss_scale,
        host_base=host_base,
        comm=_comm_meter(rank, recorder, tp_mesh, dp_mesh) if tp > 1 or plan.dp > 1 else None,
    )


def _loss_fn(model, plan: Plan, tp_mesh) -> Callable:
    """The model's loss; under tp, when it is the language-model cross entropy of a training run,
    Megatron's vocabulary-parallel one on each rank's logits columns (what the cost model prices:
    three all-reduces of a value per token, where gathering the logits would move ``b·s·V``)."""
    if plan.tp == 1 or plan.job.forward_only or model.loss_fn is not lm_loss:
        return model.loss_fn
    vocab = tp_plan(plan.profile.model_config).vocab
    return partial(vocab_parallel_lm_loss, group=tp_mesh.get_group(), start=vocab_start(vocab, tp_mesh))


def _scaled(loss_fn: Callable, scale: float, out, target):
    """fp16's loss scaling: the loss times ``scale`` (its gradients then unscaled by the optimizer step)."""
    return loss_fn(out, target) * scale


def _comm_meter(rank: int, recorder: Recorder, tp_mesh, dp_mesh) -> CommMeter:
    """A meter of the mesh's tp and dp collectives, attributed to the recorder's action."""
    groups = {
        tuple(dist.get_process_group_ranks(mesh.get_group())): dim
        for dim, mesh in (("tp", tp_mesh), ("dp", dp_mesh))
        if mesh is not None and mesh.size() > 1  # a group of one rank moves nothing
    }
    return CommMeter(rank, groups, lambda: recorder.action)


def _train(rk: _Rank, ctx: _Context, cfg: RunConfig) -> _Measured:
    """The warm-up and timed steps, each timed from one instant common to every rank, then the
    metered steps of a plan with tp or dp (its collectives timed)."""
    plan, path, rank, device = ctx.plan, ctx.path, ctx.rank, ctx.device
    profile = plan.profile
    seq_len, batch = profile.seq_len, plan.microbatches * plan.microbatch_size
    data = TokenData(cfg.data, int(profile.model_config["vocab_size"]), cfg.data_dtype) if cfg.data else None
    tracker = _LiveSaved([local_tensor(p) for p in rk.params])
    # saved-tensor hooks cost Python time per tensor, so memory is counted on an untimed step, and
    # not on step 0 when there is another: torch's first step also runs shape inference
    track_step = 1 if cfg.warmup >= 2 else 0
    forward_only = plan.job.forward_only
    out = _Measured()
    prof = _profiler(cfg)
    clock = StepClock()
    timed_end = cfg.warmup + cfg.steps
    # the comm meter costs a Python call per op, which would slow the timed steps: it runs on
    # steps of its own after them
    metered = METERED_STEPS if rk.comm else 0
    bar = progress_bar(timed_end + metered, path.name, enabled=rank == 0)  # off the clock, rank 0's only
    with bar, gc_paused():  # the profile was timed with it off too
        for step in range(timed_end + metered):
            gc.collect(1)  # young generations only, between steps (off the clock)
            batches = [
                data.batch(batch, seq_len, step * plan.dp + d)
                if data
                else rk.model.make_batch(batch, seq_len, 1000 * step + d)
                for d in range(plan.dp)
            ]
            x, y = (t.to(device) for t in batches[rk.dp_rank])
            step_losses: list[torch.Tensor] = []
            recorder = rk.recorder
            recorder.events, recorder.step, recorder.current, recorder.off_cpu_s = [], step, "", 0.0
            recorder.t0 = t0 = clock.start()
            if prof is not None and step == cfg.warmup:
                prof.start()
            meter = rk.comm if step >= timed_end else nullcontext()
            if rk.comm:
                rk.comm.t0 = t0
            with tracker.hooks() if step == track_step and not forward_only else nullcontext(), meter:
                output = _schedule_step(rk, ctx, x, y, step_losses, step)
            t_sched = time.perf_counter() - t0
            t_opt = 0.0
            if forward_only and cfg.check and step == 0:
                out.check = check_outputs(plan, rk.make_unit, output, x, device) if rk.last(plan) else None
            if not forward_only:
                # the tail's collectives are timed too, the --check reference's are not
                with meter if not (cfg.check and step == 0) else nullcontext():
                    t_opt, check = _after_backward(rk, ctx, cfg, step, batches, step_losses)
                out.check = check or out.check
            t_end = time.perf_counter() - t0
            if prof is not None and step >= cfg.warmup:
                prof.step()
            if step_losses and step < timed_end:  # the report's losses: warm-up and timed steps
                out.losses.append(torch.stack(step_losses).mean().item() / rk.loss_scale)
            if cfg.warmup <= step < timed_end:
                out.steps.append(t_end)
                out.events.append(list(recorder.events))
                out.tails.append(StepTail(t_sched, t_opt, recorder.off_cpu_s))
            if step >= timed_end:
                out.comm.append((t_end, rk.comm.take()))
            bar.update()
    if prof is not None:
        prof.stop()
        prof.export_chrome_trace(str(cfg.torch_profiler / f"{path.stem}.rank{rank}.trace.json"))
    out.saved_peak = tracker.peak
    return out


def _metered_spans(ranks: list[RankResult]) -> tuple[CommSpan, ...]:
    """Every rank's collectives in the metered step of median length (its slowest rank's)."""
    metered = [g.comm for g in ranks if g.comm]
    if not metered:
        return ()
    length = [max(m[k][0] for m in metered) for k in range(min(map(len, metered)))]
    med = sorted(range(len(length)), key=length.__getitem__)[(len(length) - 1) // 2]
    return tuple(s for m in metered for s in m[med][1])


def _schedule_step(rk: _Rank, ctx: _Context, x, y, losses: list, step: int):
    """One step of the schedule; a failure is logged with the rank, step and action, then raised."""
    plan, path = ctx.plan, ctx.path
    try:
        return _one_step(rk, plan, x, y, losses)
    except Exception as e:
        print(
            f"executor rank {ctx.rank}: step {step} failed in {rk.recorder.current or 'the schedule'} "
            f"({plan.schedule}, {path}): {type(e).__name__}: {e}",
            file=sys.stderr,
            flush=True,
        )
        traceback.print_exc()
        raise


def _after_backward(
    rk: _Rank, ctx: _Context, cfg: RunConfig, step: int, batches: list, step_losses: list
) -> tuple[float, CheckResult | None]:
    """Gradients summed over tied copies and data-parallel replicas, checked against one process
    (``--check``, step 0), then the optimizer step. Returns the optimizer step's time and the
    check's verdict."""
    plan = ctx.plan
    _sum_tied(rk.tied)
    # zero1's optimizer reduce-scatters the gradients itself; --check compares whole mean gradients,
    # so its step reduces them first (the optimizer then reduces d equal copies: the same mean)
    reduce = rk.dp_group is not None and (not _parallel(plan)[1].zero_redundancy_optimizer or (cfg.check and step == 0))
    _finish_grads(rk.params, plan.dp if reduce else 1, rk.dp_group, rk.loss_scale)
    if cfg.perturb_grad and step == 0 and rk.rank == 0 and rk.params:
        g = rk.params[0].grad
        if g is not None:
            g.view(-1)[0] += cfg.perturb_grad * g.abs().max()  # tests: --check must catch this
    check = None
    if cfg.check and step == 0:
        grads = GradCheck(plan, rk.mods, rk.stage_indices, tied_paths(rk.model))
        ref_losses = reference_step(
            plan,
            rk.make_unit,
            rk.model.loss_fn,
            batches,
            device=ctx.device,
            visit=grads.visit,
            keep=grads.units_to_visit(),
            loss_scale=rk.loss_scale,
        )
        pipe_loss = torch.stack(step_losses).mean().item() / rk.loss_scale if step_losses else None
        check = grads.result(pipe_loss, ref_losses[rk.dp_rank])
    t = time.perf_counter()
    opt = rk.optimizer
    if opt is not None:
        if rk.loss_scale == 1.0 or all(torch.isfinite(p.grad).all() for p in rk.params if p.grad is not None):
            opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t, check


def _rank_result(rk: _Rank, ctx: _Context, m: _Measured) -> RankResult:
    plan, device = ctx.plan, ctx.device
    forward_only = plan.job.forward_only
    # weights (+ gradients, + the optimizer's state): this rank's shards
    static = sum(local_tensor(p).numel() * p.element_size() for p in rk.params) * (1 if forward_only else 2)
    if rk.optimizer is not None:
        static += sum(
            local_tensor(t).numel() * t.element_size()
            for st in optimizer_state(rk.optimizer).values()
            for t in st.values()
            if torch.is_tensor(t) and t.dim() > 0
        )
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else static + m.saved_peak
    return RankResult(
        rank=ctx.rank,
        steps=m.steps,
        events=m.events,
        tails=m.tails,
        params=sum(local_tensor(p).numel() for p in rk.params),  # this rank's share (tp shards)
        losses=m.losses if rk.last(plan) else [],
        peak=int(peak),
        check=m.check,
        host_peak=host_peak_bytes(),
        host_base=rk.host_base,
        comm=m.comm,
    )


def _gather_and_report(ctx: _Context, cfg: RunConfig, mine: RankResult) -> int:
    """Every rank's results gathered on rank 0, which writes the report and prints its summary;
    the exit code (``EXIT_CHECK_FAILED`` when the check failed) reaches every rank."""
    gathered = [None] * ctx.world if ctx.rank == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    code = 0
    if ctx.rank == 0:
        report = _report(ctx, cfg, gathered)
        report.save(ctx.report)
        _print_summary(report, ctx.report)
        c = report.check
        if c is not None and not c.passed:
            print(
                f"executor: CHECK FAILED for {ctx.path}: {c.why} (max relative {c.what} difference "
                f"{c.max_rel_diff:.2e} at {c.where or '?'}, tolerance {c.rtol})",
                file=sys.stderr,
                flush=True,
            )
            code = EXIT_CHECK_FAILED
    codes = [code]
    dist.broadcast_object_list(codes, src=0)
    return codes[0]


def _host_bytes(field: str) -> int:
    """``VmHWM`` (peak resident set) or ``VmRSS`` (now) of this process, in bytes (Linux); elsewhere
    the peak from ``getrusage``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def host_peak_bytes() -> int:
    """This process's peak host memory (resident set) so far, in bytes."""
    return _host_bytes("VmHWM")


def _one_step(rk: _Rank, plan: Plan, x, y, losses: list):
    """One step; returns the last stage's output in forward-only mode (else None)."""
    args = (x,) if rk.first else ()
    if plan.job.forward_only:
        with torch.no_grad():
            return rk.schedule.eval(*args)
    rk.schedule.step(*args, **({"target": y, "losses": losses} if rk.last(plan) else {}))
    return None


def _tied_groups(plan: Plan, model: ZooModel, units: list, dp: int, pp_rank: int, dp_rank: int) -> list:
    """Parameters held by stages on different ranks (tied input and output embeddings): a
    process group of those ranks (per data-parallel replica and tp rank: each holds its own
    copy, or its own tp shard, of the parameter) and this rank's copy, for the ones this rank
    holds (``units``: this rank's materialised units, the meta model's elsewhere). Every rank
    creates every group, as torch requires."""
    tp = plan.tp
    tp_rank = dist.get_rank() % tp
    stage_of = {u: s for s in plan.stages for u in range(s.first, s.end)}

    def rank_of(p: int, d: int, t: int) -> int:  # the mesh's layout (``_layout``)
        return (p * dp + d) * tp + t

    out = []
    for paths in tied_paths(model):
        ranks = sorted({stage_of[u].rank for u in paths})
        if len(ranks) < 2:
            continue  # one rank holds every copy: tie_local made them one parameter
        for d in range(dp):
            for t in range(tp):
                group = dist.new_group([rank_of(r, d, t) for r in ranks], timeout=timedelta(seconds=PG_TIMEOUT_S))
                if (d, t) == (dp_rank, tp_rank) and pp_rank in ranks:
                    u = next(u for u in paths if stage_of[u].rank == pp_rank)
                    out.append((group, units[u].get_parameter(paths[u])))
    return out


def _sum_tied(tied: list) -> None:
    """Each rank holding a tied parameter has the gradient of its own uses: sum them, so every
    copy steps with the whole gradient and the copies stay equal (Megatron's embedding all-reduce)."""
    for group, p in tied:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad = like_param(p.grad, p)  # e.g. a vocabulary-parallel embedding's gradient comes whole
        dist.all_reduce(local_tensor(p.grad), group=group)  # this rank's tp shard, if sharded


def _finish_grads(params: list[torch.Tensor], dp: int, dp_group, loss_scale: float) -> None:
    grads = [local_tensor(p.grad) for p in params if p.grad is not None]  # tp: this rank's shards
    if dp > 1 and grads:
        # one all-reduce of all this rank's gradients, flattened (as DDP's buckets do), then the mean
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat, group=dp_group)
        flat /= dp
        for g, reduced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            g.copy_(reduced)
    if loss_scale != 1.0:
        for p in params:
            if p.grad is not None:
                p.grad /= loss_scale


def _profiler(cfg: RunConfig):
    if not cfg.torch_profiler:
        return None
    cfg.torch_profiler.mkdir(parents=True, exist_ok=True)
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    return profile(activities=acts, record_shapes=True)


@dataclass(frozen=True)
class StepTail:
    """What one rank measured of one step besides its actions."""

    schedule_s: float  # from the step's start to the end of the schedule (every action and send)
    optimizer_s: float  # the optimizer step (after the gradients are reduced)
    off_cpu_s: float  # time its thread was ready but off the CPU (other load on the machine)


@dataclass(frozen=True, kw_only=True)
class RankResult:
    """One rank's measurements, gathered on rank 0 for the report."""

    rank: int
    steps: list[float]  # each timed step's time
    events: list[list[tuple]]  # per timed step: (stage, kind, microbatch, start_s, end_s) per action
    tails: list[StepTail]  # per timed step
    params: int  # parameters this rank holds (its tp shard)
    losses: list[float]  # per step, on the last stage's ranks (empty elsewhere)
    peak: int  # peak bytes: the allocator's on CUDA, else static + saved tensors
    check: CheckResult | None  # this rank's --check verdict
    host_peak: int  # peak resident set, bytes
    host_base: int  # resident set before the model was built, bytes
    comm: list[tuple[float, list[CommSpan]]] = field(default_factory=list)  # per metered step (_Measured)


def _report(ctx: _Context, cfg: RunConfig, gathered: list[RankResult]) -> RunReport:
    """The plan's RunReport from every rank's results: the median step's events and stats."""
    plan, torch_schedule = ctx.plan, ctx.torch_schedule
    n = len(gathered[0].steps)
    steps = [max(g.steps[i] for g in gathered) for i in range(n)]
    med = sorted(range(n), key=lambda i: steps[i])[n // 2]
    events, stats = [], []
    ordered = sorted(gathered, key=lambda g: g.rank)
    for g in ordered:
        ev = [Event(g.rank, s, k, mb, a, b) for s, k, mb, a, b in g.events[med]]
        events += ev
        busy = sum(e.end_s - e.start_s for e in ev)
        stats.append(RankStats(g.rank, busy, 1 - busy / steps[med] if steps[med] else 0.0, g.peak))
    tl = Timeline(steps[med], tuple(stats), tuple(sorted(events, key=lambda e: (e.rank, e.start_s))), source="measured")
    last = [g.losses for g in gathered if g.losses]  # one per data-parallel replica
    losses = [sum(xs) / len(xs) for xs in zip(*last)] if last else []
    return RunReport(
        plan_path=str(ctx.path),
        plan_sha256=sha256_of(ctx.path),
        world_size=ctx.world,
        backend="nccl" if ctx.device.type == "cuda" else "gloo",
        device=ctx.device.type,
        step_s=tuple(steps),
        timeline=tl,
        losses=tuple(losses),
        check=CheckResult.merged([g.check for g in gathered if g.check is not None]),
        predicted_step_s=plan.predicted.step_s if plan.predicted else None,
        host_peak_bytes=tuple(g.host_peak for g in ordered),
        comm=_metered_spans(ordered),
        extra={
            "runtime": f"torch {TORCH_SCHEDULES[torch_schedule]}" if torch_schedule else "_PipelineScheduleRuntime",
            "torch": torch.__version__,
            "warmup": cfg.warmup,
            "schedule": plan.schedule,
            "microbatches": plan.microbatches,
            "data": str(cfg.data) if cfg.data else "synthetic",
            "schedule_end_s": [g.tails[med].schedule_s for g in ordered],
            "optimizer_s": [g.tails[med].optimizer_s for g in ordered],
            "params": [g.params for g in ordered],
            # per rank: resident set before the model was built (the interpreter, torch, the
            # process groups); ranks[].host_peak_bytes minus this is what the plan's run added
            "host_base_bytes": [g.host_base for g in ordered],
            # per rank, in the median step: share of its compute time spent ready but off the CPU
            # (other load on the machine); the simulator assumes none
            "off_cpu_fraction": [g.tails[med].off_cpu_s / max(1e-12, st.busy_s) for g, st in zip(ordered, stats)],
        },
    )


def _print_summary(report: RunReport, path: Path) -> None:
    med = report.step_s_median
    line = f"measured step {med * 1e3:.1f} ms (median of {len(report.step_s)})"
    if report.predicted_step_s:
        line += f", predicted {report.predicted_step_s * 1e3:.1f} ms, error {report.error:+.1%}"
    print(line, flush=True)
    if report.losses:
        print("losses: " + " ".join(f"{x:.4f}" for x in report.losses), flush=True)
    c = report.check
    if c is not None:
        print(
            f"check {'passed' if c.passed else 'FAILED'}: max relative {c.what} difference "
            f"{c.max_rel_diff:.2e} over {c.tensors} {c.what} tensors"
            + (f", loss {c.loss:.6f} vs {c.loss_reference:.6f}" if c.loss is not None else ""),
            flush=True,
        )
    print(f"wrote {path}", flush=True)


def main(argv: list[str] | None = None, agent: int | None = None) -> int:
    """The worker's entry point; ``agent``: the torchrun agent's pid (default: this parent)."""
    code = _main(argv, agent)
    status_dir = os.environ.get(STATUS_DIR_ENV)
    if status_dir and os.path.isdir(status_dir):
        Path(status_dir, f"rank{os.environ.get('RANK', 'x')}").write_text(str(code))
    return code


def _main(argv: list[str] | None, agent: int | None) -> int:
    try:
        plans, cfg = _args(argv)
        if not all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")):
            print(_LAUNCH_HINT, file=sys.stderr, flush=True)
            return EXIT_BAD_INPUT
        _exit_with_agent(agent or os.getppid())
        return run_worker(plans, cfg)
    except UserError as e:
        print(
            f"executor rank {os.environ.get('RANK', '?')}: error: {' '.join(str(e).split())}",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_BAD_INPUT


def _exit_with_agent(agent: int, poll_s: float = 0.5) -> None:
    """Exit within ``poll_s`` once the torchrun agent that started this worker (pid ``agent``) is
    gone (this process then has another parent), so a killed agent leaves no rank training alone.
    On Linux the kernel's parent-death signal (``__main__``) is quicker; this covers the rest, and
    a thread that cannot get the GIL for a while (seen: 4 s under load) only delays it."""

    def watch() -> None:
        while os.getppid() == agent:
            time.sleep(poll_s)
        print(
            f"executor rank {os.environ.get('RANK', '?')}: torchrun's agent (pid {agent}) is gone: exiting",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)

    threading.Thread(target=watch, name="agent-watch", daemon=True).start()
