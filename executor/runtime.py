"""The torchrun worker: build this rank's stages from a Plan, run the plan's own table with
``torch.distributed.pipelining``, time every action, check numerics, write a RunReport.

Rank layout: ``rank = dp_index * pp + pp_index``; a plan with tp > 1 or a sharded dp mode runs
on the (pp, dp, tp) DeviceMesh, laid out as the planner prices it (``executor/parallel.py``).
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
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from planner.plan import Plan, load_plan
from profiles.contract import ContractError, UserError, sha256_of
from profiles.materialize import tie_local, tied_paths, unit_materializer
from profiles.tuning import gc_paused, keep_freed_memory
from profiles.zoo import ZooModel, build_model, check_trusted
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
from .data import TokenData
from .parallel import apply_fsdp, apply_tp, build_mesh, check_supported, local_tensor, plain_tensor, tp_plan
from .reference import CHECK_RTOL, GradCheck, check_outputs, reference_step
from .report import RunReport
from .status import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, STATUS_DIR_ENV

__all__ = [
    "main",
    "run_worker",
    "PG_TIMEOUT_S",
    "host_peak_bytes",
]

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
                self.t = t
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


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="torchrun ... -m executor", description="Run Plans (one process per rank).")
    p.add_argument("plans", type=Path, nargs="+", metavar="PLAN", help="plan files, run one after another")
    p.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--check", action="store_true", help="compare loss and gradients with one process")
    p.add_argument("--report", type=Path, help="RunReport path (one plan only; default <plan>.run.json)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--torch-schedule", metavar="NAME", help="run torch's schedule class NAME instead of the table")
    p.add_argument(
        "--data",
        type=Path,
        help="tokens: a .bin token file (uint16/uint32), or text (its bytes); default: synthetic tokens",
    )
    p.add_argument("--data-dtype", choices=("uint16", "uint32"), help="a .bin file's token width (default: by vocab)")
    p.add_argument("--torch-profiler", type=Path, metavar="DIR", help="write a torch.profiler trace per rank")
    p.add_argument("--trust-remote-code", action="store_true", help="run the module:function model a profile names")
    p.add_argument("--fail-at-step", type=int, default=None, help=argparse.SUPPRESS)  # fault-injection tests
    p.add_argument("--fail-rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--perturb-grad", type=float, default=0.0, help=argparse.SUPPRESS)  # --check failure tests
    args = p.parse_args(argv)
    if args.report and len(args.plans) > 1:
        raise UserError("--report names one report: give one plan, or leave --report out")
    if args.steps < 1 or args.warmup < 0:
        raise UserError("--steps must be >= 1 and --warmup >= 0")
    return args


def _parallel(plan: Plan) -> tuple[int, str]:
    """The plan's tp degree and data-parallel mode as run here. zero1 shards only the optimizer
    state, which changes no number: it runs as ddp."""
    mode = plan.dp_mode.value
    return plan.tp, "ddp" if mode == "zero1" else mode


def _on_mesh(plan: Plan) -> bool:
    """Whether the plan runs on the (pp, dp, tp) DeviceMesh (tp or sharded data parallel); other
    plans keep the layout ``rank = dp_index * pp + pp_index``."""
    tp, mode = _parallel(plan)
    return tp > 1 or mode != "ddp"


def _validate_launch(plan: Plan, path: Path, world: int, args) -> str | None:
    """Everything that can be wrong before compute: fail alike on every rank, one line."""
    tp, mode = _parallel(plan)
    if _on_mesh(plan) and args.torch_schedule:
        raise UserError(
            f"--torch-schedule: {path} runs tp {tp} / dp mode {mode} on a DeviceMesh, with the plan's own table "
            "only: leave out --torch-schedule"
        )
    if mode != "ddp" and plan.dp == 1:
        raise UserError(f"{path}: dp mode {mode} shards over data-parallel replicas: it needs dp > 1; re-plan")
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
    check_trusted(plan.profile.model_name, args.trust_remote_code, path)
    torch_schedule = check_torch_schedule(plan, args.torch_schedule) if args.torch_schedule else None
    if args.data and not args.data.is_file():
        node = os.uname().nodename
        raise UserError(f"--data {args.data}: no such file on {node}: every node needs the file at this path")
    if args.data and "vocab_size" not in plan.profile.model_config:
        raise UserError(f"--data {args.data}: model {plan.profile.model_name} takes no tokens; leave --data out")
    if args.data:
        TokenData(args.data, int(plan.profile.model_config["vocab_size"]), args.data_dtype)  # its size and width
    if plan.job.forward_only and torch_schedule:
        raise UserError("--torch-schedule: a forward-only plan runs its own table only")
    return torch_schedule


def run_worker(args: argparse.Namespace) -> int:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    plans = []
    for path in args.plans:
        try:
            plan = load_plan(path)
        except ContractError as e:
            raise UserError(str(e)) from None
        plans.append((path, plan, _validate_launch(plan, path, world, args)))
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
            report = args.report or path.with_suffix(".run.json")
            code = max(code, _run(plan, path, report, args, rank, world, device, torch_schedule))
        dist.barrier()  # clean teardown: nobody destroys the group while another still uses it
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return code


def _groups(pp: int, dp: int, pp_rank: int, dp_rank: int):
    if dp == 1:
        return None, None
    timeout = timedelta(seconds=PG_TIMEOUT_S)  # torch's default for a new group is 30 min on gloo
    pp_groups = [dist.new_group([d * pp + i for i in range(pp)], timeout=timeout) for d in range(dp)]
    dp_groups = [dist.new_group([d * pp + i for d in range(dp)], timeout=timeout) for i in range(pp)]
    return pp_groups[dp_rank], dp_groups[pp_rank]


def _layout(plan: Plan, args, rank: int, device: torch.device):
    """This rank's pipeline and data-parallel index, its pipeline and data-parallel groups, and the
    tp and dp meshes. On the mesh (tp or sharded data parallel, ``_on_mesh``) ranks are laid out as
    the planner prices them, ``rank = (pp_index * dp + dp_index) * tp + tp_index``; otherwise
    ``rank = dp_index * pp + pp_index``, with no mesh."""
    pp, dp = plan.pp, plan.dp
    tp, mode = _parallel(plan)
    if _on_mesh(plan):
        mesh = build_mesh(pp, dp, tp, device.type, timeout=timedelta(seconds=PG_TIMEOUT_S))
        # ddp: the executor all-reduces each rank's gradient shards over the dp group; FSDP
        # reduces its own
        dp_group = mesh["dp"].get_group() if mode == "ddp" and dp > 1 else None
        return rank // (dp * tp), (rank // tp) % dp, mesh["pp"].get_group(), dp_group, mesh["tp"], mesh["dp"]
    pp_rank, dp_rank = rank % pp, rank // pp
    return pp_rank, dp_rank, *_groups(pp, dp, pp_rank, dp_rank), None, None


def _run(
    plan: Plan,
    path: Path,
    report_path: Path,
    args,
    rank: int,
    world: int,
    device: torch.device,
    torch_schedule: str | None,
) -> int:
    dp = plan.dp
    tp, mode = _parallel(plan)
    pp_rank, dp_rank, pp_group, dp_group, tp_mesh, dp_mesh = _layout(plan, args, rank, device)
    profile = plan.profile
    host_base = _host_bytes("VmRSS")
    # the whole model on the meta device (no memory); only this rank's units are materialised
    model = build_model(
        profile.model_name,
        config=profile.model_config,
        seed=0,
        attention=profile.measurement.get("attention", "sdpa"),
        device="meta",
    )
    make_unit = unit_materializer(model, seed=0)
    mine_idx = {s.index for s in plan.stages if s.rank == pp_rank}
    my_units = {u for s in plan.stages if s.index in mine_idx for u in range(s.first, s.end)}
    units = [make_unit(i, device) if i in my_units else u for i, u in enumerate(model.units)]
    if tp > 1:
        tp_styles = tp_plan(profile.model_config, plan.sequence_parallel)
        for i in my_units:
            apply_tp(units[i], tp_styles, tp_mesh)
    forward_only = plan.job.forward_only
    loss_scale = FP16_LOSS_SCALE if any(s.dtype == "fp16" for s in plan.stages) and not forward_only else 1.0
    loss_fn = model.loss_fn if loss_scale == 1.0 else (lambda out, y: model.loss_fn(out, y) * loss_scale)
    tie_local(model, units, my_units)  # tied copies on this rank: one parameter
    stages, mods = build_stages(plan, units, pp_rank, device, pp_group)
    tied = _tied_groups(plan, model, units, dp, pp_rank, dp_rank)
    del units
    if mode != "ddp":
        for mod in mods:
            apply_fsdp(mod, dp_mesh, mode)
    params = list({id(p): p for mod in mods for p in mod.parameters()}.values())  # a tied weight once
    recorder = Recorder(rank=rank)
    if args.fail_at_step is not None and rank == args.fail_rank:
        recorder.fail_at = (args.fail_at_step, rank)
    for st in stages:
        recorder.wrap(st)
    # forward-only: no loss function, so torch's runtime expects (and validates) no backward
    schedule = build_schedule(plan, stages, None if forward_only else loss_fn, torch_schedule)
    recorder.wrap_loss(schedule)
    opt = torch.optim.AdamW(params, lr=args.lr) if params and not forward_only else None
    first_stage, last_stage = 0 in mine_idx, len(plan.stages) - 1 in mine_idx
    seq_len, batch = profile.seq_len, plan.microbatches * plan.microbatch_size
    data = TokenData(args.data, int(profile.model_config["vocab_size"]), args.data_dtype) if args.data else None
    tracker = _LiveSaved([local_tensor(p) for p in params])
    # saved-tensor hooks cost Python time per tensor, so memory is counted on an untimed step, and
    # not on step 0 when there is another: torch's first step also runs shape inference
    track_step = 1 if args.warmup >= 2 else 0
    step_times, losses, step_events, tails, check = [], [], [], [], {}
    total = args.warmup + args.steps
    prof = _profiler(args, path, rank)
    clock = StepClock()
    with gc_paused():  # the profile was timed with it off too
        for step in range(total):
            gc.collect(1)  # young generations only, between steps (off the clock)
            batches = [
                data.batch(batch, seq_len, step * dp + d) if data else model.make_batch(batch, seq_len, 1000 * step + d)
                for d in range(dp)
            ]
            x, y = (t.to(device) for t in batches[dp_rank])
            step_losses: list[torch.Tensor] = []
            recorder.events, recorder.step, recorder.current, recorder.off_cpu_s = [], step, "", 0.0
            recorder.t0 = t0 = clock.start()
            if prof is not None and step == args.warmup:
                prof.start()
            try:
                with tracker.hooks() if step == track_step and not forward_only else nullcontext():
                    out = _one_step(schedule, x, y, step_losses, first_stage, last_stage, forward_only)
            except Exception as e:
                print(
                    f"executor rank {rank}: step {step} failed in {recorder.current or 'the schedule'} "
                    f"({plan.schedule}, {path}): {type(e).__name__}: {e}",
                    file=sys.stderr,
                    flush=True,
                )
                traceback.print_exc()
                raise
            t_sched = time.perf_counter() - t0
            if forward_only and args.check and step == 0:
                check = check_outputs(plan, make_unit, out, x, device) if last_stage else {}
            if not forward_only:
                _sum_tied(tied)
                _finish_grads(params, dp if dp_group is not None else 1, dp_group, loss_scale)
                if args.perturb_grad and step == 0 and rank == 0 and params and params[0].grad is not None:
                    g = params[0].grad
                    g.view(-1)[0] += args.perturb_grad * g.abs().max()  # tests: --check must catch this
                if args.check and step == 0:
                    grads = GradCheck(plan, mods, sorted(mine_idx), tied_paths(model))
                    ref_losses = reference_step(
                        plan, make_unit, model.loss_fn, batches, device, grads.visit, grads.units_to_visit(), loss_scale
                    )
                    pipe_loss = torch.stack(step_losses).mean().item() / loss_scale if step_losses else None
                    check = grads.result(pipe_loss, ref_losses[dp_rank])
                t_opt = time.perf_counter()
                if opt is not None:
                    if loss_scale == 1.0 or all(torch.isfinite(p.grad).all() for p in params if p.grad is not None):
                        opt.step()
                    opt.zero_grad(set_to_none=True)
                t_opt = time.perf_counter() - t_opt
            t_end = time.perf_counter() - t0
            if prof is not None and step >= args.warmup:
                prof.step()
            if step_losses:
                losses.append(torch.stack(step_losses).mean().item() / loss_scale)
            if step >= args.warmup:
                step_times.append(t_end)
                step_events.append(list(recorder.events))
                tails.append(StepTail(t_sched, 0.0 if forward_only else t_opt, recorder.off_cpu_s))
    if prof is not None:
        prof.stop()
        prof.export_chrome_trace(str(args.torch_profiler / f"{path.stem}.rank{rank}.trace.json"))
    static = sum(local_tensor(p).numel() * p.element_size() for p in params) * (
        1 if forward_only else 2
    )  # weights (+ grads)
    if opt is not None:
        static += sum(
            local_tensor(t).numel() * t.element_size()
            for st in opt.state.values()
            for t in st.values()
            if torch.is_tensor(t) and t.dim() > 0
        )
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else static + tracker.peak
    mine = RankResult(
        rank=rank,
        steps=step_times,
        events=step_events,
        tails=tails,
        params=sum(local_tensor(p).numel() for p in params),  # this rank's share (tp shards)
        losses=losses if last_stage else [],
        peak=int(peak),
        check=check,
        host_peak=host_peak_bytes(),
        host_base=host_base,
    )
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    code = 0
    if rank == 0:
        report = _report(plan, path, args, gathered, world, device, torch_schedule)
        report.save(report_path)
        _print_summary(report, report_path)
        if report.check and not report.check.get("passed", False):
            c = report.check
            print(
                f"executor: CHECK FAILED for {path}: {c.get('why', '')} (max relative gradient difference "
                f"{c.get('max_rel_diff', float('nan')):.2e} at {c.get('where', '?')}, tolerance {c.get('rtol')})",
                file=sys.stderr,
                flush=True,
            )
            code = EXIT_CHECK_FAILED
    codes = [code]
    dist.broadcast_object_list(codes, src=0)
    del schedule, stages
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


def _one_step(schedule, x, y, losses, first: bool, last: bool, forward_only: bool):
    """One step; returns the last stage's output in forward-only mode (else None)."""
    args = (x,) if first else ()
    if forward_only:
        with torch.no_grad():
            return schedule.eval(*args)
    schedule.step(*args, **({"target": y, "losses": losses} if last else {}))
    return None


def _tied_groups(plan: Plan, model: ZooModel, units: list, dp: int, pp_rank: int, dp_rank: int) -> list:
    """Parameters held by stages on different ranks (tied input and output embeddings): a
    process group of those ranks (per data-parallel replica and tp rank: each holds its own
    copy, or its own tp shard, of the parameter) and this rank's copy, for the ones this rank
    holds (``units``: this rank's materialised units, the meta model's elsewhere). Every rank
    creates every group, as torch requires."""
    pp, tp = plan.pp, plan.tp
    on_mesh = _on_mesh(plan)
    tp_rank = dist.get_rank() % tp if on_mesh else 0

    def rank_of(p: int, d: int, t: int) -> int:
        return (p * dp + d) * tp + t if on_mesh else d * pp + p

    stage_of = {u: s for s in plan.stages for u in range(s.first, s.end)}
    out = []
    for paths in tied_paths(model):
        ranks = sorted({stage_of[u].rank for u in paths})
        if len(ranks) < 2:
            continue  # one rank holds every copy: tie_local made them one parameter
        for d in range(dp):
            for t in range(tp if on_mesh else 1):
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


def _profiler(args, path: Path, rank: int):
    if not args.torch_profiler:
        return None
    args.torch_profiler.mkdir(parents=True, exist_ok=True)
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    return profile(activities=acts, record_shapes=True)


def _worse(diff: float) -> float:
    """Order of differences, NaN the worst (a comparison with NaN is always false)."""
    return float("inf") if diff != diff else diff


@dataclass(frozen=True)
class StepTail:
    """What one rank measured of one step besides its actions."""

    schedule_s: float  # from the step's start to the end of the schedule (every action and send)
    optimizer_s: float  # gradient reduction and the optimizer step after it
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
    check: dict  # this rank's --check verdict (empty without --check)
    host_peak: int  # peak resident set, bytes
    host_base: int  # resident set before the model was built, bytes


def _report(
    plan: Plan,
    path: Path,
    args,
    gathered: list[RankResult],
    world: int,
    device: torch.device,
    torch_schedule: str | None,
) -> RunReport:
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
    checks = [g.check for g in gathered if g.check]
    check = {}
    if checks:
        worst = max(checks, key=lambda c: _worse(c.get("max_rel_diff", 0.0)))
        check = {
            "passed": all(c.get("passed") for c in checks),
            "max_rel_diff": worst.get("max_rel_diff"),
            "where": worst.get("where", ""),
            "rtol": worst.get("rtol", CHECK_RTOL),
            "why": next((c["why"] for c in checks if c.get("why")), ""),
            "tensors": sum(c.get("tensors", 0) for c in checks),
        }
        for c in checks:
            if "loss" in c:
                check.update(loss=c["loss"], loss_reference=c["loss_reference"], loss_rel_diff=c["loss_rel_diff"])
    return RunReport(
        str(path),
        sha256_of(path),
        world,
        "nccl" if device.type == "cuda" else "gloo",
        device.type,
        tuple(steps),
        tl,
        tuple(losses),
        check,
        plan.predicted.step_s if plan.predicted else None,
        host_peak_bytes=tuple(g.host_peak for g in ordered),
        extra={
            "runtime": f"torch {TORCH_SCHEDULES[torch_schedule]}" if torch_schedule else "_PipelineScheduleRuntime",
            "torch": torch.__version__,
            "warmup": args.warmup,
            "schedule": plan.schedule,
            "microbatches": plan.microbatches,
            "data": str(args.data) if args.data else "synthetic",
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
    if report.check:
        c = report.check
        what = "output" if c.get("where") == "last stage output" else "gradient"
        print(
            f"check {'passed' if c['passed'] else 'FAILED'}: max relative {what} difference "
            f"{c['max_rel_diff']:.2e} over {c.get('tensors', 0)} {what} tensors"
            + (f", loss {c['loss']:.6f} vs {c['loss_reference']:.6f}" if "loss" in c else ""),
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
        args = _args(argv)
        if not all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")):
            print(_LAUNCH_HINT, file=sys.stderr, flush=True)
            return EXIT_BAD_INPUT
        _exit_with_agent(agent or os.getppid())
        return run_worker(args)
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
