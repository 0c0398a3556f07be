"""The torchrun worker: build this rank's stages from a Plan, run the plan's own table with
``torch.distributed.pipelining``, time every action, check numerics, write a RunReport.

Rank layout: ``rank = dp_index * pp + pp_index``. The plan's table is lowered to
send/recv actions by torch's ``_PipelineScheduleRuntime`` (compute-only format), so the
executor runs exactly what the simulator simulated. Clocks: every step starts after a
barrier; each rank times its actions from there (``time.perf_counter``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import _Action, _ComputationType, _PipelineScheduleRuntime

from planner.plan import Plan, load_plan
from profiles.contract import UserError, sha256_of
from profiles.zoo import ZooModel, build_model
from simulator.timeline import Event, RankStats, Timeline

from .report import RunReport

__all__ = ["main", "run_worker", "reference_grads", "CHECK_RTOL"]

CHECK_RTOL = 1e-4  # fp32: pipelined and single-process runs do the same ops in the same order


@dataclass
class _Recorder:
    """Wraps a stage's compute entry points and records (stage, kind, microbatch, start, end)."""

    t0: float = 0.0
    events: list[tuple[int, str, int, float, float]] = field(default_factory=list)

    def wrap(self, stage: PipelineStage) -> None:
        idx = stage.stage_index
        fwd, bwd, wgt = stage.forward_one_chunk, stage.backward_one_chunk, stage.backward_weight_one_chunk

        def forward_one_chunk(mb, *a, **k):
            t = time.perf_counter()
            out = fwd(mb, *a, **k)
            self.events.append((idx, "F", mb, t - self.t0, time.perf_counter() - self.t0))
            return out

        def backward_one_chunk(mb, *a, **k):
            full = k.get("full_backward", a[1] if len(a) > 1 else True)
            t = time.perf_counter()
            out = bwd(mb, *a, **k)
            self.events.append((idx, "B" if full else "I", mb, t - self.t0, time.perf_counter() - self.t0))
            return out

        def backward_weight_one_chunk(mb, *a, **k):
            t = time.perf_counter()
            out = wgt(mb, *a, **k)
            self.events.append((idx, "W", mb, t - self.t0, time.perf_counter() - self.t0))
            return out

        stage.forward_one_chunk = forward_one_chunk
        stage.backward_one_chunk = backward_one_chunk
        stage.backward_weight_one_chunk = backward_weight_one_chunk


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
            __slots__ = ("t", "ptr")

            def __init__(self, t: torch.Tensor):
                self.t = t
                st = t.untyped_storage()
                self.ptr = st.data_ptr()
                if self.ptr in tracker.skip:
                    self.ptr = None
                    return
                n = tracker.refs.get(self.ptr, 0)
                if n == 0:
                    tracker.live += st.nbytes()
                    tracker.peak = max(tracker.peak, tracker.live)
                tracker.refs[self.ptr] = n + 1

            def __del__(self):
                if self.ptr is None:
                    return
                n = tracker.refs.get(self.ptr, 1) - 1
                if n <= 0:
                    tracker.refs.pop(self.ptr, None)
                    tracker.live -= self.t.untyped_storage().nbytes()
                else:
                    tracker.refs[self.ptr] = n

        return torch.autograd.graph.saved_tensors_hooks(Holder, lambda h: h.t)


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="torchrun ... -m executor", description="Run a Plan (one process per rank).")
    p.add_argument("plan", type=Path)
    p.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--check", action="store_true", help="compare loss and gradients with one process")
    p.add_argument("--report", type=Path, help="RunReport path (default <plan>.run.json)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--fail-at-step", type=int, default=None, help=argparse.SUPPRESS)  # fault-injection tests
    p.add_argument("--fail-rank", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args()


def reference_grads(model: ZooModel, batches: list[tuple[torch.Tensor, torch.Tensor]],
                    microbatches: int) -> list[float]:
    """Gradients of one process over the same data: each replica's batch cut into the same
    microbatches, the loss averaged over microbatches and replicas (what the pipeline optimizes).
    Returns each replica's mean loss."""
    losses = []
    scale = microbatches * len(batches)
    for inputs, targets in batches:
        mine = []
        for x, y in zip(inputs.chunk(microbatches), targets.chunk(microbatches)):
            loss = model.loss_fn(model.forward(x), y)
            (loss / scale).backward()
            mine.append(loss.detach())
        losses.append(torch.stack(mine).mean().item())
    return losses


def _build_stages(plan: Plan, model: ZooModel, pp_rank: int, device: torch.device, group) -> list[PipelineStage]:
    stages = []
    for s in plan.stages:
        if s.rank != pp_rank:
            continue
        mod = nn.Sequential(*model.units[s.first:s.end]).to(device)
        stages.append(PipelineStage(mod, s.index, len(plan.stages), device, group=group))
    return stages


def run_worker(args: argparse.Namespace) -> int:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    plan = load_plan(args.plan)
    if plan.world_size != world:
        raise UserError(f"{args.plan}: the plan needs {plan.world_size} processes (pp {plan.pp} x dp {plan.dp}) "
                        f"but torchrun started {world}: use --nproc_per_node {plan.world_size}")
    if args.steps < 1 or args.warmup < 0:
        raise UserError("--steps must be >= 1 and --warmup >= 0")
    cuda = torch.cuda.is_available() and plan.cluster.device != "cpu"
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=45))
    try:
        return _run(plan, args, rank, world, device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _run(plan: Plan, args, rank: int, world: int, device: torch.device) -> int:
    pp, dp = plan.pp, plan.dp
    pp_rank, dp_rank = rank % pp, rank // pp
    pp_groups = [dist.new_group([d * pp + i for i in range(pp)]) for d in range(dp)] if dp > 1 else [None]
    dp_groups = [dist.new_group([d * pp + i for d in range(dp)]) for i in range(pp)] if dp > 1 else [None]
    pp_group, dp_group = pp_groups[dp_rank if dp > 1 else 0], dp_groups[pp_rank if dp > 1 else 0]
    profile = plan.profile
    model = build_model(profile.model_name, config=profile.model_config, seed=0)
    stages = _build_stages(plan, model, pp_rank, device, pp_group)
    my_units = [u for s in plan.stages if s.rank == pp_rank for u in model.units[s.first:s.end]]
    params = [p for u in my_units for p in u.parameters()]
    recorder = _Recorder()
    for st in stages:
        recorder.wrap(st)
    m = plan.microbatches
    schedule = _PipelineScheduleRuntime(stages, m, loss_fn=model.loss_fn)
    actions = {r: [_Action(a.stage, _ComputationType(a.kind.value), a.microbatch) for a in acts]
               for r, acts in plan.table.items()}
    schedule._prepare_schedule_with_comms(actions)
    opt = torch.optim.AdamW(params, lr=args.lr) if params else None
    first_stage = any(s.index == 0 for s in plan.stages if s.rank == pp_rank)
    last_stage = any(s.index == len(plan.stages) - 1 for s in plan.stages if s.rank == pp_rank)
    seq_len = profile.seq_len
    batch = m * plan.microbatch_size
    tracker = _LiveSaved(params)
    step_times, losses, step_events, check = [], [], [], {}
    total = args.warmup + args.steps
    for step in range(total):
        x, y = model.make_batch(batch, seq_len, seed=1000 * step + dp_rank)
        x, y = x.to(device), y.to(device)
        step_losses: list[torch.Tensor] = []
        recorder.events = []
        if args.fail_at_step is not None and step == args.fail_at_step and rank == args.fail_rank:
            raise RuntimeError(f"injected failure on rank {rank} at step {step} (--fail-at-step)")
        dist.barrier()
        recorder.t0 = t0 = time.perf_counter()
        with tracker.hooks():
            if first_stage and last_stage:
                schedule.step(x, target=y, losses=step_losses)
            elif first_stage:
                schedule.step(x)
            elif last_stage:
                schedule.step(target=y, losses=step_losses)
            else:
                schedule.step()
        if dp > 1:
            for p in params:
                if p.grad is not None:
                    dist.all_reduce(p.grad, group=dp_group)
                    p.grad /= dp
        if args.check and step == 0:
            batches = [model.make_batch(batch, seq_len, seed=1000 * step + d) for d in range(dp)]
            check = _check(plan, model, my_units, batches, step_losses, device, dp_rank)
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        t_end = time.perf_counter() - t0
        losses.append(torch.stack(step_losses).mean().item() if step_losses else float("nan"))
        if step >= args.warmup:
            step_times.append(t_end)
            step_events.append(list(recorder.events))
    static = sum(p.numel() * p.element_size() for p in params) * 2  # weights + gradients
    if opt is not None:
        static += sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
                      if torch.is_tensor(t) and t.dim() > 0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else static + tracker.peak
    mine = {"rank": rank, "pp_rank": pp_rank, "dp_rank": dp_rank, "steps": step_times, "events": step_events,
            "losses": losses if last_stage else [], "peak": int(peak), "check": check}
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    if rank == 0:
        report = _report(plan, args, gathered, world, device)
        out = args.report or args.plan.with_suffix(".run.json")
        report.save(out)
        _print_summary(report, out)
        failed = report.check and not report.check.get("passed", False)
        code = 3 if failed else 0
    else:
        code = 0
    codes = [code]
    dist.broadcast_object_list(codes, src=0)
    dist.barrier()
    return codes[0]


def _check(plan, model, my_units, batches, step_losses, device, dp_rank: int) -> dict:
    """The same data through a single-process copy; compare this rank's gradients (and loss)."""
    ref = build_model(plan.profile.model_name, config=plan.profile.model_config, seed=0)
    for u in ref.units:
        u.to(device)
    ref_loss = reference_grads(ref, [(x.to(device), y.to(device)) for x, y in batches], plan.microbatches)[dp_rank]
    mine = {id(u) for u in my_units}
    worst, worst_name, compared = 0.0, "", 0
    for i, (u, r) in enumerate(zip(model.units, ref.units)):
        if id(u) not in mine:
            continue
        for (name, p), (_, q) in zip(u.named_parameters(), r.named_parameters()):
            if p.grad is None or q.grad is None:
                if (p.grad is None) != (q.grad is None):
                    return {"passed": False, "max_rel_diff": float("inf"), "where": f"unit {i} {name}: grad missing"}
                continue
            diff = ((p.grad - q.grad).abs().max() / q.grad.abs().max().clamp_min(1e-12)).item()
            compared += 1
            if diff > worst:
                worst, worst_name = diff, f"{model.unit_names[i]}.{name}"
    out = {"passed": compared > 0 and worst <= CHECK_RTOL, "max_rel_diff": worst, "where": worst_name,
           "rtol": CHECK_RTOL, "tensors": compared}
    if step_losses:
        pipe_loss = torch.stack(step_losses).mean().item()
        loss_diff = abs(pipe_loss - ref_loss) / max(abs(ref_loss), 1e-12)
        out.update(loss=pipe_loss, loss_reference=ref_loss, loss_rel_diff=loss_diff)
        out["passed"] = out["passed"] and loss_diff <= CHECK_RTOL
    return out


def _report(plan: Plan, args, gathered: list[dict], world: int, device: torch.device) -> RunReport:
    n = len(gathered[0]["steps"])
    steps = [max(g["steps"][i] for g in gathered) for i in range(n)]
    med = sorted(range(n), key=lambda i: steps[i])[n // 2]
    events, stats = [], []
    for g in sorted(gathered, key=lambda g: g["rank"]):
        ev = [Event(g["rank"], s, k, mb, a, b) for s, k, mb, a, b in g["events"][med]]
        events += ev
        busy = sum(e.end_s - e.start_s for e in ev)
        stats.append(RankStats(g["rank"], busy, 1 - busy / steps[med] if steps[med] else 0.0, g["peak"]))
    tl = Timeline(steps[med], tuple(stats), tuple(sorted(events, key=lambda e: (e.rank, e.start_s))),
                  source="measured")
    losses = next((g["losses"] for g in gathered if g["losses"]), [])
    checks = [g["check"] for g in gathered if g["check"]]
    check = {}
    if checks:
        worst = max(checks, key=lambda c: c.get("max_rel_diff", 0.0))
        check = {"passed": all(c.get("passed") for c in checks), "max_rel_diff": worst.get("max_rel_diff"),
                 "where": worst.get("where", ""), "rtol": CHECK_RTOL,
                 "tensors": sum(c.get("tensors", 0) for c in checks)}
        for c in checks:
            if "loss" in c:
                check.update(loss=c["loss"], loss_reference=c["loss_reference"], loss_rel_diff=c["loss_rel_diff"])
    return RunReport(str(args.plan), sha256_of(args.plan), world, "nccl" if device.type == "cuda" else "gloo",
                     device.type, tuple(steps), tl, tuple(losses), check,
                     plan.predicted.step_s if plan.predicted else None,
                     {"runtime": "_PipelineScheduleRuntime", "torch": torch.__version__, "warmup": args.warmup,
                      "schedule": plan.schedule, "microbatches": plan.microbatches})


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
        print(f"check {'passed' if c['passed'] else 'FAILED'}: max relative gradient difference "
              f"{c['max_rel_diff']:.2e} over {c.get('tensors', 0)} gradient tensors"
              + (f", loss {c['loss']:.6f} vs {c['loss_reference']:.6f}" if "loss" in c else ""), flush=True)
    print(f"wrote {path}", flush=True)


def main() -> int:
    args = _args()
    try:
        return run_worker(args)
    except UserError as e:
        print(f"executor rank {os.environ.get('RANK', '?')}: error: {' '.join(str(e).split())}", file=sys.stderr,
              flush=True)
        return 2

