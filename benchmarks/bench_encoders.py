"""Training-step throughput of vlptm's encoders against transformers' LXMERT and VisualBERT, in one run.

Pairs, each on an identical config, batch and weights (transformers' random weights are copied into
vlptm's encoder with ``load_lxmert`` / ``load_visualbert``):

- ``DualStreamEncoder`` vs ``transformers.LxmertModel``
- ``SingleStreamEncoder`` vs ``transformers.VisualBertModel``

A step is forward + backward of the same scalar loss on all outputs (no optimizer) in train mode (dropout
on). Each pair is timed under fp32 and under bf16 autocast. Measurements are interleaved (A, B, B, A, ...)
and the medians compared, since the machine is shared and noisy. Ratio = transformers time / vlptm time
(> 1: vlptm is faster).

On ``--device cuda`` the models and the batch live on the GPU, bf16 rows use CUDA autocast, and the
device is synchronised before each timer is read (the CPU-time column is then the host's launch work).

Run:
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_encoders.py            # hidden 384, B=32, T=20, R=36
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_encoders.py --hidden 768 --heads 12 --repeats 7
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_encoders.py --threads 1 --profile  # + GEMM / other split
    python benchmarks/bench_encoders.py --device cuda --hidden 768 --heads 12 --layers 12 --l-layers 9 \
        --r-layers 5 --x-layers 5 --batch 64                               # LXMERT-base size on a GPU
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Callable, Dict, List

import torch


def _batch(batch_size: int, text_len: int, regions: int, feat_dim: int, pos_dim: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(text_len // 2, text_len + 1, (batch_size,), generator=gen)
    mask = (torch.arange(text_len)[None] < lengths[:, None]).long()  # (B, T)
    ids = torch.randint(1000, 30000, (batch_size, text_len), generator=gen) * mask  # (B, T)
    boxes = torch.rand(batch_size, regions, pos_dim, generator=gen)  # (B, R, P)
    return {
        "input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
        "region_feats": torch.rand(batch_size, regions, feat_dim, generator=gen),  # (B, R, D)
        "region_pos": boxes, "region_mask": torch.ones(batch_size, regions, dtype=torch.long),
    }


def _loss(*tensors: torch.Tensor) -> torch.Tensor:
    return sum(t.float().pow(2).mean() for t in tensors)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_fn(model: torch.nn.Module, forward: Callable[[], tuple], bf16: bool,
             device: torch.device) -> Callable[[], tuple]:
    def step() -> tuple:
        context = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        with context:
            outputs = forward()
        _loss(*outputs).backward()
        _sync(device)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        model.zero_grad(set_to_none=True)
        return elapsed, cpu

    return step


GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_mm")


def _profile(step: Callable[[], tuple], steps: int = 3) -> Dict[str, float]:
    """Self CPU time (s) of ``steps`` steps by operator, with "GEMM" and "total" sums."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    times = {event.key: event.self_cpu_time_total / 1e6 for event in prof.key_averages()}
    times["GEMM"] = sum(times.get(op, 0.0) for op in GEMM_OPS)
    times["total"] = sum(t for op, t in times.items() if op != "GEMM")
    return times


def _print_profile(title: str, precision: str, hf: Dict[str, float], ours: Dict[str, float], goal: float) -> None:
    """Where each side's step time goes, and what the ratio could reach if vlptm's non-GEMM work shrank."""
    def rest(t: Dict[str, float]) -> Dict[str, float]:
        return {op: v for op, v in t.items() if op not in GEMM_OPS + ("GEMM", "total")}

    print(f"  {title} {precision}, profiled self-CPU seconds over 3 steps:")
    for name, t in (("transformers", hf), ("vlptm", ours)):
        top = sorted(rest(t).items(), key=lambda kv: -kv[1])[:6]
        print(f"    {name:12s} total {t['total']:.3f}  GEMM {t['GEMM']:.3f} ({t['GEMM'] / t['total']:.0%})  other "
              f"{t['total'] - t['GEMM']:.3f}: " + ", ".join(f"{op.replace('aten::', '')} {v:.3f}" for op, v in top))
    ceiling = hf["total"] / ours["GEMM"]
    budget = hf["total"] / goal - ours["GEMM"]
    print(f"    ratio {hf['total'] / ours['total']:.2f}; with no vlptm work but its GEMMs it would be {ceiling:.2f}; "
          f"x{goal:.2f} needs vlptm's non-GEMM time <= {budget:.3f} s (now {ours['total'] - ours['GEMM']:.3f})")


def _pairs(args: argparse.Namespace, device: torch.device):
    from transformers import LxmertConfig, LxmertModel, VisualBertConfig, VisualBertModel

    from vlptm.models import (DualStreamEncoder, SingleStreamEncoder, infer_lxmert_config, infer_visualbert_config,
                              load_lxmert, load_visualbert)

    common = dict(hidden_size=args.hidden, num_attention_heads=args.heads, intermediate_size=4 * args.hidden)
    torch.manual_seed(0)
    lxmert = LxmertModel(LxmertConfig(l_layers=args.l_layers, r_layers=args.r_layers, x_layers=args.x_layers,
                                      visual_feat_dim=args.feat_dim, visual_pos_dim=4, **common)).train()
    dual = DualStreamEncoder(infer_lxmert_config(lxmert.state_dict(), num_attention_heads=args.heads,
                                                 attention_backend=args.attention_backend)).train()
    load_lxmert(dual, lxmert.state_dict(), strict=True)
    visualbert = VisualBertModel(VisualBertConfig(num_hidden_layers=args.layers, visual_embedding_dim=args.feat_dim,
                                                  **common)).train()
    single = SingleStreamEncoder(infer_visualbert_config(visualbert.state_dict(), num_attention_heads=args.heads,
                                                         attention_backend=args.attention_backend)).train()
    load_visualbert(single, visualbert.state_dict(), strict=True)
    for model in (lxmert, dual, visualbert, single):
        model.to(device)

    b4 = {k: v.to(device) for k, v in _batch(args.batch, args.text_len, args.regions, args.feat_dim, 4).items()}
    b0 = {k: v for k, v in b4.items() if k != "region_pos"}

    def hf_lxmert():
        o = lxmert(input_ids=b4["input_ids"], attention_mask=b4["attention_mask"], token_type_ids=b4["token_type_ids"],
                   visual_feats=b4["region_feats"], visual_pos=b4["region_pos"],
                   visual_attention_mask=b4["region_mask"])
        return o.language_output, o.vision_output, o.pooled_output

    def ours_dual():
        o = dual(b4)
        return o.text_hidden, o.region_hidden, o.pooled

    def hf_visualbert():
        o = visualbert(input_ids=b0["input_ids"], attention_mask=b0["attention_mask"],
                       token_type_ids=b0["token_type_ids"], visual_embeds=b0["region_feats"],
                       visual_attention_mask=b0["region_mask"])
        return o.last_hidden_state, o.pooler_output

    def ours_single():
        o = single(b0)
        return o.text_hidden, o.region_hidden, o.pooled

    return [
        ("dual stream vs LxmertModel", (lxmert, hf_lxmert), (dual, ours_dual)),
        ("single stream vs VisualBertModel", (visualbert, hf_visualbert), (single, ours_single)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--layers", type=int, default=6, help="single stream / VisualBERT layers")
    parser.add_argument("--l-layers", type=int, default=6)
    parser.add_argument("--r-layers", type=int, default=3)
    parser.add_argument("--x-layers", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--text-len", type=int, default=20)
    parser.add_argument("--regions", type=int, default=36)
    parser.add_argument("--feat-dim", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=9, help="timed steps per model and precision")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (models and batch live there)")
    parser.add_argument("--attention-backend", default="auto", choices=("auto", "sdpa", "explicit"),
                        help="vlptm's attention kernel (auto: SDPA except CPU autograd passes)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile 3 steps of each side (torch.profiler) and split GEMM / other time")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available")
    if args.profile and device.type != "cpu":
        parser.error("--profile splits CPU operator time; it has no meaning for GPU kernels")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {where}, {torch.get_num_threads()} threads; hidden {args.hidden}, "
          f"{args.heads} heads, B={args.batch}, T={args.text_len}, R={args.regions}, D={args.feat_dim}; dual {args.l_layers}/"
          f"{args.r_layers}/{args.x_layers}, single {args.layers} layers; {args.repeats} interleaved steps each; "
          f"vlptm attention_backend={args.attention_backend}")
    rows: List[Dict[str, object]] = []
    for title, (hf_model, hf_fwd), (our_model, our_fwd) in _pairs(args, device):
        for bf16 in (False, True):
            hf_step, our_step = _step_fn(hf_model, hf_fwd, bf16, device), _step_fn(our_model, our_fwd, bf16, device)
            for _ in range(args.warmup):
                hf_step(), our_step()
            hf_times, our_times = [], []
            for i in range(args.repeats):
                order = ((hf_step, hf_times), (our_step, our_times))
                for step, times in (order if i % 2 == 0 else order[::-1]):
                    times.append(step())
            hf_t, our_t = (statistics.median(t for t, _ in times) for times in (hf_times, our_times))
            hf_c, our_c = (statistics.median(c for _, c in times) for times in (hf_times, our_times))
            rows.append(dict(pair=title, precision="bf16 autocast" if bf16 else "fp32", ratio=hf_t / our_t,
                             cpu_ratio=hf_c / our_c))
            print(f"  {title:34s} {rows[-1]['precision']:13s} wall: transformers {hf_t * 1e3:7.1f} ms, vlptm "
                  f"{our_t * 1e3:7.1f} ms (x{hf_t / our_t:.2f})   cpu: {hf_c * 1e3:7.1f} ms vs {our_c * 1e3:7.1f} ms "
                  f"(x{hf_c / our_c:.2f})", flush=True)
            if args.profile:
                _print_profile(title, rows[-1]["precision"], _profile(hf_step), _profile(our_step),
                               1.3 if bf16 else 1.0)
    print("\nsummary: speed-up = transformers / vlptm, medians of wall-clock (and of process CPU time, less "
          "sensitive to other load); goal >= 1.00 in fp32, >= 1.30 under bf16 autocast")
    for row in rows:
        goal = 1.3 if row["precision"] != "fp32" else 1.0
        verdict = "meets goal" if row["ratio"] >= goal else "MISSES goal"
        print(f"  {row['pair']:34s} {row['precision']:13s} x{row['ratio']:.2f} (cpu x{row['cpu_ratio']:.2f})  "
              f"{verdict}")


if __name__ == "__main__":
    main()
