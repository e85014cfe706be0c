"""WinCLIP throughput on CPU: zero-shot and 4-shot images/s, fp32 and bf16, and token efficiency.

Run: ``OMP_WAIT_POLICY=PASSIVE python -m bench.bench_winclip [--images 4] [--repeats 3]``

Random-init ``ViT-B-16-plus-240`` weights (timing does not depend on weight values). For each
precision it reports the median over ``--repeats`` runs of:
    * plain: one ordinary image forward (226 tokens per image);
    * zero-shot / 4-shot: ``WinCLIP.predict`` per image (windows at scales 2 and 3, the
      image-level pass and, by default, the five multi-crop forwards);
    * efficiency = time per image / (tokens encoded / tokens of one plain forward x plain time);
      1.0 means the windowed encoding costs exactly its token work, the target is <= 1.2;
      given on wall time and on process CPU time (less sensitive to a shared, loaded machine);
    * the three timings are taken round-robin each repeat, after one warm-up round;
    * peak RSS (``ru_maxrss``, process-wide, monotone over the run).

``--vs-reference``: side by side with the reference path of the same equations (open_clip's
own transformer blocks with ``nn.MultiheadAttention``, full last block for pooled outputs,
i.e. anomalib's way of running the windows; still loop-free), interleaved fast/reference
runs, images/s of both, the ratio on wall and CPU time, and the max map / score difference.

``--drift``: fp32 against bf16 autocast (``precision=bf16``) and against fp32 with oneDNN bf16
matrix products (``torch.backends.mkldnn.matmul.fp32_precision = "bf16"``), zero-shot on the
same queries and text prototypes: speed-up from interleaved runs and max map / score drift;
also int8 dynamic quantisation of the MLP ``nn.Linear`` layers (``torch.ao`` ``quantize_dynamic``,
per-tensor weights, activations quantised per call) on a copy of the encoder.

``--ceiling``: why fp32 speed-ups at parity are bounded. Counts the FLOPs one ``predict`` pushes
through the transformer per image (every window, crop and image-level sequence; linear layers
and attention separately), measures this machine's matrix-product throughput at the model's own
shapes (fp32, bf16, int8 with int32 accumulation), and prints the fp32 floor (linear FLOPs /
fp32 GEMM throughput) beside the measured fast and reference times: the largest fp32 speed-up
over the reference that the token work allows is ``reference time / floor``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def _round_robin(fns: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall, cpu) per function, timing the functions in turn each round (load drift
    on a shared machine then hits all of them alike); one warm-up round first."""
    for fn in fns.values():
        fn()
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            runs[k].append(_timed(fn))
    return {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tokens_per_image(method) -> int:
    """Tokens pushed through the transformer per query image by ``method.predict``."""
    plain = 1 + method.encoder.num_patches
    windows = sum(w.shape[0] * (1 + w.shape[1]) for w in method.windows)
    crops = 5 * plain if method.opts["multi_crop"] else 0
    return plain + windows + crops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4, help="query images per predict call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--encoder", default="clip_vitb16plus_240")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--no-multi-crop", action="store_true")
    ap.add_argument("--vs-reference", action="store_true", help="interleaved fast vs reference path")
    ap.add_argument("--drift", action="store_true", help="bf16 variants against fp32: speed-up and map drift")
    ap.add_argument("--ceiling", action="store_true", help="FLOPs per image against this machine's GEMM throughput")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["FSIAD_HOME"] = tempfile.mkdtemp(prefix="fsiad-bench-")  # keep random text embeddings out

    from fsiad.fewshot.encoders import create_encoder
    from fsiad.fewshot.methods import MethodConfig
    from fsiad.fewshot.methods.winclip import WinCLIP

    g = torch.Generator().manual_seed(0)
    queries = torch.rand(args.images, 3, 240, 240, generator=g)
    shots = torch.rand(4, 3, 240, 240, generator=g)
    opts = {"multi_crop": not args.no_multi_crop}
    if args.vs_reference:
        _vs_reference(args, queries, shots, opts)
        return
    if args.drift:
        _drift(args, queries, opts)
        return
    if args.ceiling:
        _ceiling(args, queries, opts)
        return
    print(f"# WinCLIP CPU benchmark: {args.encoder} random-init, {args.threads} threads, "
          f"{args.images} images/call, median of {args.repeats}, multi_crop={opts['multi_crop']}")
    print("| precision | mode | s/image | images/s | tokens/image | plain s/image | efficiency (wall) "
          "| efficiency (CPU time) | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for precision in args.precisions.split(","):
        enc = create_encoder(args.encoder, allow_random=True, precision=precision)
        zs = WinCLIP(MethodConfig(class_name="bottle", options=opts, batch_size=args.images), encoder=enc).fit()
        fs = WinCLIP(MethodConfig(class_name="bottle", options=opts, batch_size=args.images), encoder=enc).fit(shots)
        t = _round_robin({"plain": lambda e=enc: e.image_embedding(queries),
                          "zero-shot": lambda m=zs: m.predict(queries), "4-shot": lambda m=fs: m.predict(queries)},
                         args.repeats)
        ntok, plain_tok = tokens_per_image(zs), 1 + enc.num_patches
        plain_w, plain_c = (v / args.images for v in t["plain"])
        for mode in ("zero-shot", "4-shot"):
            per_w, per_c = (v / args.images for v in t[mode])
            eff_w = per_w / (ntok / plain_tok * plain_w)
            eff_c = per_c / (ntok / plain_tok * plain_c)
            print(f"| {precision} | {mode} | {per_w:.3f} | {1 / per_w:.2f} | {ntok} | {plain_w:.4f} | {eff_w:.2f} | "
                  f"{eff_c:.2f} | {_peak_rss_mb():.0f} |", flush=True)

def _vs_reference(args, queries: torch.Tensor, shots: torch.Tensor, opts: dict) -> None:
    from fsiad.fewshot.encoders import create_encoder
    from fsiad.fewshot.methods import MethodConfig
    from fsiad.fewshot.methods.winclip import WinCLIP

    print(f"# WinCLIP fast vs reference path: {args.encoder} random-init, {args.threads} threads, "
          f"{args.images} images/call, median of {args.repeats} interleaved rounds, multi_crop={opts['multi_crop']}")
    print("| precision | mode | fast images/s | reference images/s | ratio (wall) | ratio (CPU time) "
          "| max map diff | max score diff |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for precision in args.precisions.split(","):
        enc = create_encoder(args.encoder, allow_random=True, precision=precision)
        fast_flags = (enc._plain_blocks, enc._cls_last)
        for mode, refs in (("zero-shot", None), ("4-shot", shots)):
            m = WinCLIP(MethodConfig(class_name="bottle", options=opts, batch_size=args.images), encoder=enc)
            m.fit(refs)
            out = {}

            def run(path: str, m=m, out=out, enc=enc, fast_flags=fast_flags):
                enc._plain_blocks, enc._cls_last = fast_flags if path == "fast" else (False, False)
                out[path] = m.predict(queries)

            t = _round_robin({"fast": lambda: run("fast"), "reference": lambda: run("reference")}, args.repeats)
            enc._plain_blocks, enc._cls_last = fast_flags
            (fw, fc), (rw, rc) = t["fast"], t["reference"]
            dmap = (out["fast"].anomaly_maps - out["reference"].anomaly_maps).abs().max().item()
            dscore = (out["fast"].image_scores - out["reference"].image_scores).abs().max().item()
            print(f"| {precision} | {mode} | {args.images / fw:.3f} | {args.images / rw:.3f} | {rw / fw:.2f} | "
                  f"{rc / fc:.2f} | {dmap:.1e} | {dscore:.1e} |", flush=True)


def _drift(args, queries: torch.Tensor, opts: dict) -> None:
    from fsiad.fewshot.encoders import create_encoder
    from fsiad.fewshot.methods import MethodConfig
    from fsiad.fewshot.methods.winclip import WinCLIP

    e32 = create_encoder(args.encoder, allow_random=True)
    e16 = create_encoder(args.encoder, allow_random=True, precision="bf16")
    cfg = MethodConfig(class_name="bottle", options=opts, batch_size=args.images)
    m32 = WinCLIP(cfg, encoder=e32).fit()
    m16 = WinCLIP(cfg, encoder=e16).fit()
    m16.text_features = m32.text_features.clone()  # same prototypes: drift of the image side only
    mkl = torch.backends.mkldnn.matmul

    def gemm_bf16():
        mkl.fp32_precision = "bf16"
        try:
            return m32.predict(queries)
        finally:
            mkl.fp32_precision = "none"

    e8 = create_encoder(args.encoder, allow_random=True)
    e8.model.load_state_dict(e32.model.state_dict())
    for block in e8.visual.transformer.resblocks:  # the MLPs' nn.Linear layers: 2/3 of the linear FLOPs
        block.mlp = torch.ao.quantization.quantize_dynamic(block.mlp, {torch.nn.Linear}, dtype=torch.qint8)
    m8 = WinCLIP(cfg, encoder=e8).fit()
    m8.text_features = m32.text_features.clone()
    out = {}
    fns = {"fp32": lambda: out.__setitem__("fp32", m32.predict(queries)),
           "bf16 autocast": lambda: out.__setitem__("bf16 autocast", m16.predict(queries)),
           "fp32 + oneDNN bf16 GEMMs": lambda: out.__setitem__("fp32 + oneDNN bf16 GEMMs", gemm_bf16()),
           "int8 dynamic (MLP layers)": lambda: out.__setitem__("int8 dynamic (MLP layers)", m8.predict(queries))}
    t = _round_robin(fns, args.repeats)
    print(f"# WinCLIP precision drift: {args.encoder} random-init, zero-shot, {args.threads} threads, "
          f"{args.images} images/call, median of {args.repeats} interleaved rounds, multi_crop={opts['multi_crop']}")
    print("| variant | images/s | speed-up (wall) | speed-up (CPU time) | max map drift | max score drift |")
    print("|---|---:|---:|---:|---:|---:|")
    for k, (w, c) in t.items():
        dm = (out[k].anomaly_maps - out["fp32"].anomaly_maps).abs().max().item()
        ds = (out[k].image_scores - out["fp32"].image_scores).abs().max().item()
        print(f"| {k} | {args.images / w:.3f} | {t['fp32'][0] / w:.2f} | {t['fp32'][1] / c:.2f} | {dm:.1e} | {ds:.1e} |",
              flush=True)


def transformer_flops(sequences: list[tuple[int, int, bool]], width: int, hidden: int, layers: int
                      ) -> tuple[float, float]:
    """(linear FLOPs, attention FLOPs) of ``(count, length, cls_only_last_block)`` sequences.

    Per block and token: QKV ``2*3*d*d``, output projection ``2*d*d``, MLP ``2*2*d*h``; attention
    ``2*2*n*d`` per query row (scores and weighted sum). A CLS-only last block computes keys and
    values for every token and the rest for the CLS row only (``CLIPEncoder._encode_pooled``).
    """
    lin = att = 0.0
    row = 2 * (3 * width * width + width * width + 2 * width * hidden)
    for count, n, cls_last in sequences:
        full = layers - 1 if cls_last else layers
        lin += count * full * n * row
        att += count * full * 4 * n * n * width
        if cls_last:
            lin += count * (n * 2 * 2 * width * width + (row - 2 * 2 * width * width))
            att += count * 4 * n * width
    return lin, att


def _gemm_throughput(m: int, k: int, n: int, dtype: str, repeats: int = 5) -> float:
    """Median GFLOP/s (GOP/s for int8) of an ``[m, k] x [k, n]`` product on this machine."""
    g = torch.Generator().manual_seed(0)
    if dtype == "int8":
        a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
        b = torch.randint(-128, 128, (k, n), dtype=torch.int8, generator=g)

        def fn():
            return torch._int_mm(a, b)
    else:
        dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
        a, w = torch.randn(m, k, generator=g).to(dt), torch.randn(n, k, generator=g).to(dt)
        bias = torch.zeros(n, dtype=dt)

        def fn():
            return torch.nn.functional.linear(a, w, bias)
    fn()
    times = [_timed(fn)[0] for _ in range(repeats)]
    return 2 * m * k * n / statistics.median(times) / 1e9


def _ceiling(args, queries: torch.Tensor, opts: dict) -> None:
    from fsiad.fewshot.encoders import create_encoder
    from fsiad.fewshot.methods import MethodConfig
    from fsiad.fewshot.methods.winclip import WinCLIP

    enc = create_encoder(args.encoder, allow_random=True)
    m = WinCLIP(MethodConfig(class_name="bottle", options=opts, batch_size=args.images), encoder=enc).fit()
    blocks = enc.visual.transformer.resblocks
    width, layers = int(enc.visual.transformer.width), len(blocks)
    hidden = int(blocks[0].mlp.c_fc.out_features)
    plain = 1 + enc.num_patches
    cls_last = bool(enc._cls_last)
    seqs = [(1, plain, False)] + [(int(w.shape[0]), 1 + int(w.shape[1]), cls_last) for w in m.windows]
    if opts["multi_crop"]:
        seqs.append((5, plain, cls_last))
    lin, att = transformer_flops(seqs, width, hidden, layers)
    rows = args.images * sum(c * n for c, n, _ in seqs[1:])  # the batched window/crop GEMMs' M
    shapes = [(rows, width, 3 * width), (rows, width, width), (rows, width, hidden), (rows, hidden, width)]
    weights = [3, 1, 2, 2]  # FLOP shares of QKV, output projection, MLP in, MLP out
    tput = {}
    for dt in ("fp32", "bf16", "int8"):
        per = [_gemm_throughput(*shp, dt) for shp in shapes]
        tput[dt] = sum(weights) / sum(w / p for w, p in zip(weights, per, strict=True))  # FLOP-weighted
    fast_flags = (enc._plain_blocks, enc._cls_last)

    def run(path: str):
        enc._plain_blocks, enc._cls_last = fast_flags if path == "fast" else (False, False)
        m.predict(queries)

    t = _round_robin({"fast": lambda: run("fast"), "reference": lambda: run("reference")}, args.repeats)
    enc._plain_blocks, enc._cls_last = fast_flags
    fast, ref = t["fast"][0] / args.images, t["reference"][0] / args.images
    floor = lin / (tput["fp32"] * 1e9)
    print(f"# WinCLIP fp32 ceiling: {args.encoder} random-init, zero-shot, {args.threads} threads, "
          f"{args.images} images/call, multi_crop={opts['multi_crop']}, median of {args.repeats} interleaved rounds")
    print(f"sequences per image (count x tokens): {', '.join(f'{c} x {n}' for c, n, _ in seqs)}; "
          f"width {width}, MLP {hidden}, {layers} blocks, CLS-only last block for pooled sequences: {cls_last}")
    print(f"FLOPs per image: linear {lin / 1e9:.1f} G, attention {att / 1e9:.2f} G")
    print(f"GEMM throughput at the window batch's shapes (M = {rows}): fp32 {tput['fp32']:.0f} GFLOP/s, "
          f"bf16 {tput['bf16']:.0f} GFLOP/s, int8 (int32 accumulation) {tput['int8']:.0f} GOP/s")
    print("| path | s/image | images/s | share of the fp32 floor |")
    print("|---|---:|---:|---:|")
    print(f"| fp32 floor (linear FLOPs / fp32 GEMM throughput) | {floor:.3f} | {1 / floor:.3f} | 1.00 |")
    print(f"| fsiad fast path | {fast:.3f} | {1 / fast:.3f} | {floor / fast:.2f} |")
    print(f"| reference path (anomalib's way) | {ref:.3f} | {1 / ref:.3f} | {floor / ref:.2f} |")
    print(f"largest fp32 speed-up over the reference that the token work allows: x{ref / floor:.2f} "
          f"(measured x{ref / fast:.2f})", flush=True)


if __name__ == "__main__":
    main()
