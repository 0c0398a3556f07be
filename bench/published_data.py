"""Published large-scale training configurations and what they achieved, for ``bench/published.py``.

Every figure below is copied from the cited table as printed; nothing is derived except where a
field says so (``dp``). Settings a table leaves out come from the run's public launch script
where there is one (``settings`` names it: Narayanan et al.'s microbatch sizes, virtual stages
and data-parallel implementation are in Megatron-LM's
``examples/academic_paper_scripts/sc21/run_table_1.sh``), else from the paper's text, else they
are stated assumptions (``settings`` says which).

Sources:

- ``NARAYANAN_2021``: D. Narayanan, M. Shoeybi, J. Casper, P. LeGresley, M. Patwary, V.
  Korthikanti, D. Vainbrand, P. Kashinkunti, J. Bernauer, B. Catanzaro, A. Phanishayee, M.
  Zaharia, "Efficient Large-Scale Language Model Training on GPU Clusters Using Megatron-LM",
  SC'21 (arXiv:2104.04473), Table 1 ("weak-scaling throughput for GPT models ranging from 1
  billion to 1 trillion parameters"): GPT models with vocabulary 51,200 and sequence length
  2048, mixed precision, on Selene (DGX A100 80GB nodes, 8 x 200 Gb/s HDR InfiniBand per
  node; A100 peak 312 TFLOP/s in 16-bit). The FLOPs behind its TFLOP/s column are the paper's
  Eq. (3), which counts the forward that activation recomputation repeats.
- ``KORTHIKANTI_2022``: V. Korthikanti, J. Casper, S. Lym, L. McAfee, M. Andersch, M. Shoeybi,
  B. Catanzaro, "Reducing Activation Recomputation in Large Transformer Models", MLSys 2023
  (arXiv:2205.05198), Table 3 (configurations: t = 8, no data parallelism, s = 2048, v = 51200,
  interleaved schedule with 3 stages per rank for 175B and 530B) and Table 5 ("present work":
  sequence parallelism + selective recompute; iteration time, MFU, HFU), plus §6.3's 530B run on
  2240 GPUs (8-way data parallel): 39.15 s per iteration, MFU 54.2%. Same Selene nodes.
- ``TORCHTITAN_2024``: the torchtitan repository's ``docs/performance.md``: tokens per second per
  GPU ("WPS") and MFU of Llama 3 and Llama 2 models trained with FSDP2 alone on 64 A100 80GB GPUs,
  local batch 1 or 2, bf16; its MFU counts ``6·N + 12·l·h·s`` FLOPs per token (N every parameter,
  the attention term without a causal saving). Rows kept: those whose activation checkpointing
  is none or full; torchtitan's selective checkpointing (every other layer, or per op) is not one
  of pipeplan's recompute modes, so the 8B rows and the 70B selective-op row are left out. The
  page does not name the network: the DGX A100 preset is assumed (8 x 200 Gb/s per node), with
  SDPA's flash kernel and FSDP2's prefetch and reduce-scatter overlapped with compute.
- ``LLAMA3_2024``: Llama Team, AI @ Meta, "The Llama 3 Herd of Models" (arXiv:2407.21783),
  Table 4 ("Scaling configurations and MFU for each stage of Llama 3 405B pre-training") and
  Table 3 (the 405B model: 126 layers, width 16,384, FFN 53,248, 128 attention heads, 8
  key/value heads, vocabulary 128,000). H100 80GB GPUs, 8 per server over NVLink, 400 Gb/s per
  GPU across servers (RoCE); BF16 peak taken as 989 TFLOP/s (dense, H100 SXM datasheet). DP
  there is FSDP (the paper's Figure 5 caption: "DP stands for FSDP"); CP is context parallelism.

How the figures were found: Narayanan et al.'s Table 1 and Korthikanti et al.'s Tables 3 and 5
and §6.3 were read from text transcriptions of the two papers in public repositories (NVIDIA's
Megatron-LM README shows Table 1 only as an image; its text confirms V = 51,200, s = 2048 and
80GB A100s). Llama 3's Table 4 agrees across several independent transcriptions (one printed DP
4 in the last row, which does not multiply out to 16,384 GPUs; 8 does). Each table is checked
against itself by tests: Narayanan's params column is its Eq. (2) (:func:`narayanan_params`) to
the printed rounding, its aggregate column is GPUs x TFLOP/s per GPU, its % of peak is TFLOP/s
over 312; Korthikanti's MFU column follows from its Eq. (7) and the iteration times to 0.2
points; Llama 3's GPUs are TP x CP x PP x DP and its batches 16M tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "PublishedRun",
    "NARAYANAN_2021",
    "KORTHIKANTI_2022",
    "LLAMA3_2024",
    "TORCHTITAN_2024",
    "torchtitan_flops_per_token",
    "llama_params",
    "PUBLISHED",
    "narayanan_flops_per_iteration",
    "model_flops_per_iteration",
    "narayanan_params",
    "A100_BF16_PEAK",
    "H100_BF16_PEAK",
]

A100_BF16_PEAK = 312e12  #: FLOP/s, dense 16-bit (NVIDIA A100 datasheet)
H100_BF16_PEAK = 989e12  #: FLOP/s, dense BF16 (NVIDIA H100 SXM datasheet, 989.4 without sparsity)

NARAYANAN = "Narayanan et al., SC'21 (arXiv:2104.04473), Table 1"
KORTHIKANTI = "Korthikanti et al., MLSys'23 (arXiv:2205.05198), Tables 3 and 5"
LLAMA3 = "Llama Team, The Llama 3 Herd of Models (arXiv:2407.21783), Tables 3 and 4"
TORCHTITAN = "torchtitan, docs/performance.md (FSDP2 on 64 A100 80GB), Llama 3 and Llama 2 tables"


@dataclass(frozen=True)
class PublishedRun:
    """One published configuration and its published throughput."""

    source: str  #: where the row comes from (paper, table)
    model: str  #: the paper's name for the model
    params_b: float  #: parameters, billions, as printed
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    seq_len: int
    device: str  #: cluster preset node type (planner/clusters.yaml)
    gpus: int
    tp: int
    pp: int
    dp: int  #: derived: gpus / (tp * pp * cp) unless the table prints it
    global_batch: int  #: sequences per iteration
    tflops_per_gpu: float | None = None  #: achieved TFLOP/s per GPU, as printed (None: not printed)
    peak_fraction: float | None = None  #: share of peak (Narayanan: "% of theoretical peak"; others: MFU)
    cp: int = 1  #: context-parallel degree
    microbatch: int | None = None  #: sequences per microbatch (None: not printed)
    iteration_s: float | None = None  #: seconds per iteration (None: not printed)
    hfu: float | None = None  #: hardware FLOPs utilisation, counting recomputation (None: not printed)
    aggregate_pflops: float | None = None  #: all GPUs together, PFLOP/s, as printed
    notes: str = ""
    #: the attention kernel the run used (profiles.ops): ``math`` keeps the s×s scores (Megatron's
    #: fused softmax of 2021-22), ``flash`` is a fused kernel
    attention: str = "math"
    schedule: str = "1F1B"  #: pipeline schedule (torch's name)
    virtual: int = 1  #: stages per pipeline rank (interleaved schedules)
    recompute: str = "full"  #: activation recomputation: none, selective (Korthikanti et al.) or full
    #: data parallelism (``simulator.modes``): ddp (replicas, gradients all-reduced), zero2 (gradients
    #: sharded, reduced each microbatch) or fsdp
    dp_mode: str = "ddp"
    sequence_parallel: bool = False  #: Megatron sequence parallelism beside tp
    #: data-parallel gradient reduction overlapped with the backward (torch DDP's buckets); False:
    #: after the whole forward-backward (Megatron's ``DDP=local`` of 2021)
    overlap_grad_reduce: bool = False
    #: gradients accumulated and reduced in fp32 (``Layout.grads_fp32``); False: in the model's
    #: 16-bit dtype (Megatron-LM's fp16 runs of 2021-22 without ``--accumulate-allreduce-grads-in-fp32``)
    grads_fp32: bool = False
    #: pipeline sends beside compute; False: the sender waits for its send (Megatron-LM's
    #: ``p2p_communication._communicate`` of 2021-22 waited on its batched sends and receives)
    overlap_sends: bool = True
    #: the first and the last pipeline stage hold one layer fewer, the embedding and the head taking
    #: their places (Llama 3 §3.3.2); False: layers dealt evenly, the embedding added to the first
    #: stage and the head to the last (Megatron's default)
    ends_take_a_layer: bool = False
    settings: str = ""  #: where the settings the table does not print come from
    #: attention and hidden dropout probability the run trained with (Megatron-LM's defaults,
    #: ``--attention-dropout 0.1 --hidden-dropout 0.1``, for the GPT runs, whose activation
    #: accounting in Korthikanti et al. §4.1 holds the dropout masks; Llama 3 has none)
    dropout: float = 0.0
    #: how the run's pointwise operations ran (``profiles.ops.FUSIONS``): ``default``, runs of them
    #: fused (Megatron's fused kernels, a compiler); ``none``, eager PyTorch, each its own kernel;
    #: ``norm``, eager but the norm layers a fused kernel
    fusion: str = "default"


_SC21 = "Megatron-LM examples/academic_paper_scripts/sc21/run_table_1.sh"


def _narayanan(*, params_b, heads, hidden, layers, tp, pp, gpus, batch, tflops, pct, agg, mbs, layers_per_chunk, ddp):
    chunks = layers // (pp * layers_per_chunk) if layers_per_chunk else 1
    return PublishedRun(
        source=NARAYANAN,
        model=f"GPT {params_b}B",
        params_b=params_b,
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=heads,
        ffn=4 * hidden,
        vocab=51200,
        seq_len=2048,
        device="a100",
        gpus=gpus,
        tp=tp,
        pp=pp,
        dp=gpus // (tp * pp),
        global_batch=batch,
        tflops_per_gpu=tflops,
        peak_fraction=pct / 100,
        aggregate_pflops=agg,
        notes="activation recomputation; FLOPs per Eq. (3)",
        dropout=0.1,
        microbatch=mbs,
        schedule="Interleaved1F1B" if chunks > 1 else "1F1B",
        virtual=chunks,
        recompute="full",  # --activations-checkpoint-method uniform, every row
        overlap_grad_reduce=ddp == "torch",  # torch DDP reduces buckets during the backward
        overlap_sends=False,
        settings=f"{_SC21}: --micro-batch-size {mbs}, --DDP-impl {ddp}"
        + (f", --num-layers-per-virtual-pipeline-stage {layers_per_chunk}" if layers_per_chunk else ""),
    )


def _rows(build: Callable[..., PublishedRun], columns: str, rows: Sequence[tuple]) -> tuple[PublishedRun, ...]:
    """A table's rows, each a tuple in the order of ``columns`` (the paper's), built by keyword."""
    names = columns.split()
    if any(len(row) != len(names) for row in rows):
        raise ValueError(f"a row of {build.__name__} does not have the {len(names)} columns {columns!r}")
    return tuple(build(**dict(zip(names, row))) for row in rows)


#: Table 1: params (B), heads, hidden, layers, TP, PP, GPUs, batch, TFLOP/s per GPU, % of peak, aggregate
#: PFLOP/s; then from the run script: microbatch size, layers per virtual stage (0: not interleaved), DDP-impl.
NARAYANAN_2021: tuple[PublishedRun, ...] = _rows(
    _narayanan,
    "params_b heads hidden layers tp pp gpus batch tflops pct agg mbs layers_per_chunk ddp",
    (
        (1.7, 24, 2304, 24, 1, 1, 32, 512, 137, 44, 4.4, 16, 0, "torch"),
        (3.6, 32, 3072, 30, 2, 1, 64, 512, 138, 44, 8.8, 16, 0, "torch"),
        (7.5, 32, 4096, 36, 4, 1, 128, 512, 142, 46, 18.2, 16, 0, "torch"),
        (18.4, 48, 6144, 40, 8, 1, 256, 1024, 135, 43, 34.6, 8, 0, "torch"),
        (39.1, 64, 8192, 48, 8, 2, 512, 1536, 138, 44, 70.8, 4, 0, "local"),
        (76.1, 80, 10240, 60, 8, 4, 1024, 1792, 140, 45, 143.8, 2, 5, "local"),
        (145.6, 96, 12288, 80, 8, 8, 1536, 2304, 148, 47, 227.1, 2, 5, "local"),
        (310.1, 128, 16384, 96, 8, 16, 1920, 2160, 155, 50, 297.4, 1, 3, "local"),
        (529.6, 128, 20480, 105, 8, 35, 2520, 2520, 163, 52, 410.2, 1, 1, "local"),
        (1008.0, 160, 25600, 128, 8, 64, 3072, 3072, 163, 52, 502.0, 1, 0, "local"),
    ),
)


def _korthikanti(*, model, params_b, heads, hidden, layers, pp, gpus, batch, mb, iteration_s, mfu, hfu, notes=""):
    interleaved = pp > 1 and layers % (3 * pp) == 0  # Table 3: 3 stages per rank for 175B and 530B
    return PublishedRun(
        source=KORTHIKANTI,
        model=model,
        params_b=params_b,
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=heads,
        ffn=4 * hidden,
        vocab=51200,
        seq_len=2048,
        device="a100",
        gpus=gpus,
        tp=8,
        pp=pp,
        dp=gpus // (8 * pp),
        global_batch=batch,
        peak_fraction=mfu,
        microbatch=mb,
        iteration_s=iteration_s,
        hfu=hfu,
        notes=notes or "sequence parallel + selective recompute",
        dropout=0.1,
        schedule="Interleaved1F1B" if interleaved else "1F1B",
        virtual=3 if interleaved else 1,
        recompute="selective",
        sequence_parallel=True,
        overlap_sends=False,
        settings="the paper's Table 3 and §6 (sequence parallelism, selective recompute, DP all-reduce not overlapped)",
    )


DP8 = "§6.3: 8-way data parallel, batch per model instance kept; no overlap of the gradient all-reduce"

#: Table 3 configurations with Table 5's "present work" iteration time, MFU and HFU; and §6.3's data-parallel run.
KORTHIKANTI_2022: tuple[PublishedRun, ...] = _rows(
    _korthikanti,
    "model params_b heads hidden layers pp gpus batch mb iteration_s mfu hfu notes",
    (
        ("22B", 22, 64, 6144, 48, 1, 8, 4, 4, 1.10, 0.415, 0.437, ""),
        ("175B (GPT-3)", 175, 96, 12288, 96, 8, 64, 64, 1, 13.75, 0.514, 0.528, ""),
        ("530B (MT-NLG)", 530, 128, 20480, 105, 35, 280, 280, 1, 37.83, 0.560, 0.570, ""),
        ("1T", 1000, 160, 25600, 128, 64, 512, 512, 1, 71.49, 0.563, 0.570, ""),
        ("530B (MT-NLG)", 530, 128, 20480, 105, 35, 2240, 2240, 1, 39.15, 0.542, None, DP8),
    ),
)


def _llama3(*, gpus, cp, dp, seq, batch_per_dp, tflops, mfu) -> PublishedRun:
    return PublishedRun(
        source=LLAMA3,
        model="Llama 3 405B",
        params_b=405,
        layers=126,
        hidden=16384,
        heads=128,
        kv_heads=8,
        ffn=53248,
        vocab=128000,
        seq_len=seq,
        device="h100",
        gpus=gpus,
        tp=8,
        pp=16,
        dp=dp,
        cp=cp,
        global_batch=dp * batch_per_dp,
        tflops_per_gpu=tflops,
        peak_fraction=mfu,
        notes="DP is FSDP as ZeRO-2 (gradients sharded, reduced each microbatch); 16M tokens per batch",
        attention="flash",
        microbatch=1,
        schedule="Interleaved1F1B",
        virtual=(126 + 2) // 16,  # one layer per stage, the embedding and the head a stage each (§3.3.2)
        ends_take_a_layer=True,
        recompute="none",
        dp_mode="zero2",
        overlap_grad_reduce=True,
        grads_fp32=True,
        sequence_parallel=True,
        settings="the paper's §3.3.2 (interleaved schedule; one layer fewer on the first and the last stage, so "
        "that 'the first model chunk on the first stage has only the embedding' and the last only the output "
        "projection and loss: one layer per model chunk, 8 chunks per rank; no activation checkpointing at 8K; "
        "FSDP 'shards optimizer states and gradients' but does not reshard the weights after forward, with FP32 "
        "gradient accumulation and reduce-scatter over the microbatches, its collectives asynchronous; asynchronous "
        "pipeline sends); assumed: microbatch 1, torch's and Megatron's default of pp microbatches per round, "
        "sequence parallel beside TP, a fused (flash) attention kernel, the overlapped collectives slowing the "
        "compute beside them by the cited mean factor (simulator.costs.OVERLAP_SLOWDOWN)",
    )


#: Table 4: GPUs, CP, DP, sequence length, batch size per DP, TFLOP/s per GPU, BF16 MFU (TP 8, PP 16 throughout).
LLAMA3_2024: tuple[PublishedRun, ...] = _rows(
    _llama3,
    "gpus cp dp seq batch_per_dp tflops mfu",
    (
        (8192, 1, 64, 8192, 32, 430, 0.43),
        (16384, 1, 128, 8192, 16, 400, 0.41),
        (16384, 16, 8, 131072, 16, 380, 0.38),
    ),
)


def torchtitan_flops_per_token(params: int, layers: int, hidden: int, seq_len: int) -> float:
    """torchtitan's FLOPs per token behind its MFU: ``6·N + 12·l·h·s`` (N every parameter)."""
    return 6.0 * params + 12.0 * layers * hidden * seq_len


def llama_params(layers: int, hidden: int, heads: int, kv_heads: int, ffn: int, vocab: int) -> int:
    """Parameters of a Llama model (untied embedding and output, RMSNorm weights, no biases)."""
    hd = hidden // heads
    block = hidden * (hidden + 2 * kv_heads * hd) + hidden * hidden + 3 * hidden * ffn + 2 * hidden
    return 2 * vocab * hidden + layers * block + hidden


def _torchtitan(*, model, config, layers, hidden, heads, kv_heads, ffn, vocab, seq, batch, recompute, norm, wps, mfu):
    params = llama_params(layers, hidden, heads, kv_heads, ffn, vocab)
    flops = torchtitan_flops_per_token(params, layers, hidden, seq)
    return PublishedRun(
        source=TORCHTITAN,
        model=model,
        params_b=round(params / 1e9, 1),
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        ffn=ffn,
        vocab=vocab,
        seq_len=seq,
        device="a100",
        gpus=64,
        tp=1,
        pp=1,
        dp=64,
        global_batch=64 * batch,
        tflops_per_gpu=wps * flops / 1e12,  # derived: tokens/s per GPU x the page's FLOPs per token
        peak_fraction=mfu,
        microbatch=batch,
        notes=f"{wps} tokens/s per GPU",
        attention="flash",
        recompute=recompute,
        dp_mode="fsdp",
        overlap_grad_reduce=True,
        grads_fp32=True,  # FSDP2's MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32) at 157a12c
        fusion="norm" if norm == "fused_rmsnorm" else "none",  # eager: compile = false
        settings=f"the page's text (FSDP2 alone, local batch, activation checkpointing); {_TT_CONFIGS}/{config}.toml: "
        f"compile = false (eager), norm_type = {norm!r}; torchtitan/parallelisms/"
        "parallelize_llama.py: FSDP2 reduce_dtype float32; assumed: the DGX A100 network, SDPA's flash kernel, FSDP2's "
        "prefetch and reduce-scatter overlapped with compute",
    )


#: torchtitan's train configs as of the performance page (commit 157a12c, 2024-04-24)
_TT_CONFIGS = "torchtitan train_configs at 157a12c (2024-04-24)"

#: model, its train config, layers, hidden, heads, kv heads, FFN, vocabulary, sequence, local batch,
#: checkpointing, the config's norm_type, WPS, MFU.
TORCHTITAN_2024: tuple[PublishedRun, ...] = _rows(
    _torchtitan,
    "model config layers hidden heads kv_heads ffn vocab seq batch recompute norm wps mfu",
    (
        ("Llama 3 70B", "llama3_70b", 80, 8192, 64, 8, 28672, 128256, 8192, 1, "full", "rmsnorm", 331, 0.517),
        ("Llama 2 13B", "llama2_13b", 40, 5120, 40, 40, 13824, 32000, 4096, 2, "none", "fused_rmsnorm", 2162, 0.611),
        ("Llama 2 70B", "llama2_70b", 80, 8192, 64, 8, 28672, 32000, 4096, 2, "full", "rmsnorm", 353, 0.505),
    ),
)

PUBLISHED: tuple[PublishedRun, ...] = NARAYANAN_2021 + KORTHIKANTI_2022 + LLAMA3_2024 + TORCHTITAN_2024


def narayanan_flops_per_iteration(batch: int, seq_len: int, layers: int, hidden: int, vocab: int) -> float:
    """Narayanan et al. Eq. (3): ``96·B·s·l·h²·(1 + s/(6h) + V/(16·l·h))`` FLOPs per iteration —
    the model's forward and backward plus the forward that activation recomputation repeats
    (GEMMs only; the logits GEMM is not recomputed)."""
    b, s, l_, h, v = batch, seq_len, layers, hidden, vocab
    return 96.0 * b * s * l_ * h**2 * (1 + s / (6 * h) + v / (16 * l_ * h))


def model_flops_per_iteration(batch: int, seq_len: int, layers: int, hidden: int, vocab: int) -> float:
    """Korthikanti et al. Eq. (7), the model FLOPs behind MFU: ``72·B·L·s·h²·(1 + s/(6h) + v/(12·h·L))``
    (one forward and one backward, GEMMs only, no recomputation)."""
    b, s, l_, h, v = batch, seq_len, layers, hidden, vocab
    return 72.0 * b * l_ * s * h**2 * (1 + s / (6 * h) + v / (12 * h * l_))


def narayanan_params(layers: int, hidden: int, vocab: int, seq_len: int) -> float:
    """Narayanan et al. Eq. (2): ``P = 12·l·h²·(1 + 13/(12h) + (V + s)/(12·l·h))`` parameters of a GPT model."""
    return 12.0 * layers * hidden**2 * (1 + 13 / (12 * hidden) + (vocab + seq_len) / (12 * layers * hidden))
