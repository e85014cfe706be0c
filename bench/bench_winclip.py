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
same queries and text prototypes: speed-up from interleaved runs and max map / score drift.
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

    out = {}
    fns = {"fp32": lambda: out.__setitem__("fp32", m32.predict(queries)),
           "bf16 autocast": lambda: out.__setitem__("bf16 autocast", m16.predict(queries)),
           "fp32 + oneDNN bf16 GEMMs": lambda: out.__setitem__("fp32 + oneDNN bf16 GEMMs", gemm_bf16())}
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


if __name__ == "__main__":
    main()
