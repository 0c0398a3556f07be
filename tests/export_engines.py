"""What torchtitan's and megatron-core's own code make of pipeplan's exports (the ``[export]`` extra).

Run by ``tests/test_export.py`` in a process of its own (torchtitan's imports and the fake
process groups stay out of the test process); prints one JSON object.

    python tests/export_engines.py torchtitan CONFIG.py ...
        loads each config with torchtitan's ConfigManager, builds its model on the meta device and
        splits it with torchtitan's own pipeline split, once per pp rank (a fake process group of
        pp ranks): per stage, the rank that builds it and the modules it keeps; and the sizes of
        torchtitan's llama3 flavors
    python tests/export_engines.py megatron LAYOUT PP LAYERS
        parses the layout with megatron-core's PipelineParallelLayerLayout: per stage (k on rank
        k % pp), its layers and the offset of its first decoder layer
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path


def torchtitan_split(config_py: str) -> dict:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from torchtitan.config import ConfigManager
    from torchtitan.distributed.pipeline_parallel import _build_pipeline_schedule, _pipeline_module_split

    path = Path(config_py)
    sys.path.insert(0, str(path.parent))
    config = ConfigManager().parse_args(["--module", path.stem, "--config", "pipeplan_plan"])
    par = config.parallelism
    with torch.device("meta"):
        model = config.model_spec.model.build()
    stages, schedules = {}, {}
    for rank in range(par.pipeline_parallel_degree):
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=par.pipeline_parallel_degree)
        try:
            mesh = init_device_mesh("cpu", (par.pipeline_parallel_degree,), mesh_dim_names=("pp",))
            built, parts = _pipeline_module_split(
                model, mesh, par.pipeline_parallel_schedule, torch.device("meta"), par.module_fqns_per_model_part
            )
            # torchtitan's own schedule for this rank's stages (torch's class, or its runtime
            # reading the CSV), as its trainer builds it
            schedule = _build_pipeline_schedule(
                parallelism=par,
                local_batch_size=config.training.local_batch_size,
                stages=built,
                loss_fn=lambda *args, **kwargs: (None, None),
            )
            schedules[rank] = {
                "class": type(schedule).__name__,
                "microbatches": schedule._n_microbatches,
                "actions": {r: len([a for a in acts if a is not None]) for r, acts in schedule.pipeline_order.items()},
            }
            for stage, part in zip(built, parts):
                stages[stage.stage_index] = {
                    "rank": rank,
                    "modules": [n for n, m in part.named_children() if m is not None and n != "layers"],
                    "layers": [int(k) for k in part.layers.keys()],
                }
        finally:
            dist.destroy_process_group()
    csv = par.pipeline_parallel_schedule_csv
    return {
        "flavor": config.model_spec.flavor,
        "stages": [stages[k] for k in sorted(stages)],
        "schedule": par.pipeline_parallel_schedule,
        "built": [schedules[r] for r in sorted(schedules)],
        "csv_rows": Path(csv).read_text().strip().splitlines() if csv else None,
        "microbatch_size": par.pipeline_parallel_microbatch_size,
        "tp": par.tensor_parallel_degree,
        "sequence_parallel": par.enable_sequence_parallel,
        "dp_shard": par.data_parallel_shard_degree,
        "dp_replicate": par.data_parallel_replicate_degree,
        "ac": None if config.activation_checkpoint is None else type(config.activation_checkpoint).__qualname__,
        "local_batch_size": config.training.local_batch_size,
        "global_batch_size": config.training.global_batch_size,
        "seq_len": config.training.seq_len,
        "mixed_precision_param": config.training.mixed_precision_param,
        "torch_schedule_known": _torch_knows(par.pipeline_parallel_schedule),
    }


def _torch_knows(name: str) -> bool:
    from torch.distributed.pipelining.schedules import get_schedule_class

    try:
        get_schedule_class(name)
    except ValueError:
        return False
    return True


def megatron_layout(layout: str, pp: int, layers: int) -> dict:
    from megatron.core import parallel_state
    from megatron.core.transformer.enums import LayerType
    from megatron.core.transformer.pipeline_parallel_layer_layout import PipelineParallelLayerLayout

    parsed = PipelineParallelLayerLayout(layout, pp)
    parsed.validate_layer_layout(num_layers=layers, mtp_num_layers=None)
    if parsed.virtual_pipeline_model_parallel_size > 1:  # as Megatron sets it before building stages
        parallel_state.set_virtual_pipeline_model_parallel_world_size(parsed.virtual_pipeline_model_parallel_size)
    stages = []
    for k in range(pp * parsed.virtual_pipeline_model_parallel_size):
        rank, vpp = k % pp, k // pp
        stages.append(
            {
                "rank": rank,
                "layers": [t.name for t in parsed.layout[rank][vpp]],
                "first_decoder": parsed.get_layer_offset(LayerType.decoder, vp_stage=vpp, pp_rank=rank),
            }
        )
    return {"virtual": parsed.virtual_pipeline_model_parallel_size, "stages": stages}


def torchtitan_flavors() -> dict:
    """Per llama3 flavor: hidden size, layers, heads, kv heads, FFN width, vocabulary, tied."""
    from torchtitan.models.llama3 import llama3_configs, model_registry

    out = {}
    for name in llama3_configs:
        c = model_registry(name).model
        a, ffn = c.layers[0].attention, c.layers[0].feed_forward
        out[name] = [
            c.dim,
            len(c.layers),
            a.n_heads,
            a.n_kv_heads or a.n_heads,
            ffn.w1.out_features,
            c.vocab_size,
            bool(c.enable_weight_tying),
        ]
    return out


def main(argv: list[str]) -> None:
    if argv[0] == "torchtitan":
        out = {"configs": {Path(p).stem: torchtitan_split(p) for p in argv[1:]}, "flavors": torchtitan_flavors()}
    elif argv[0] == "megatron":
        out = megatron_layout(argv[1], int(argv[2]), int(argv[3]))
    else:
        raise SystemExit(f"unknown check {argv[0]!r}")
    print(json.dumps(out))


def available() -> dict[str, bool]:
    """Which engines are installed (not whether they import: a failing import is a failure)."""
    return {name: importlib.util.find_spec(name) is not None for name in ("torchtitan", "megatron")}


if __name__ == "__main__":
    main(sys.argv[1:])
