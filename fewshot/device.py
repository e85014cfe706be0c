"""Device and precision resolution: ``auto`` picks CUDA, then Apple MPS, then the CPU.

``resolve_device("auto")`` -> ``"cuda"`` when a CUDA device is usable, else ``"mps"`` when
Apple's Metal backend is, else ``"cpu"``. An explicit device that is not usable here
(``cuda`` without a GPU, ``cuda:7`` on a one-GPU machine, a misspelling) raises one
``OptionError`` naming ``--device`` and what exists, before any model is built.

``resolve_precision("auto", device)`` -> ``"bf16"`` on a CUDA device that supports bfloat16
(autocast of the encoder forward), else ``"fp32"``: CPU results stay bit-comparable with the
fp32 references the methods were validated against.
"""

from __future__ import annotations

from fsiad.fewshot.errors import OptionError

DEVICE_HELP = "auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:<i> or mps."
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _cuda_count() -> int:
    import torch

    try:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001  (a broken driver counts as no GPU)
        return 0


def _mps_ok() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: str | None) -> str:
    """``auto`` / ``cpu`` / ``cuda[:i]`` / ``mps`` -> a device string usable here.

    Raises:
        OptionError: the device does not exist on this machine or is not a device name.
    """
    text = (spec or "auto").strip().lower()
    if text == "auto":
        return "cuda" if _cuda_count() else ("mps" if _mps_ok() else "cpu")
    if text == "cpu":
        return "cpu"
    if text == "mps":
        if not _mps_ok():
            raise OptionError("--device mps: Apple MPS is not available here; use --device auto or cpu")
        return "mps"
    if text == "cuda" or text.startswith("cuda:"):
        n = _cuda_count()
        index = text.partition(":")[2]
        if index and not index.isdigit():
            raise OptionError(f"--device {spec}: expected cuda:<index>, e.g. cuda:0")
        if n == 0:
            raise OptionError(f"--device {spec}: no CUDA device is available here "
                              "(no GPU, or a CPU build of torch); use --device auto or cpu")
        if index and int(index) >= n:
            raise OptionError(f"--device {spec}: only {n} CUDA device(s) here (cuda:0..cuda:{n - 1})")
        return text
    raise OptionError(f"--device {spec}: unknown device; use {DEVICE_HELP}")


def resolve_precision(spec: str | None, device: str) -> str:
    """``auto`` -> ``bf16`` on a bf16-capable CUDA device, else ``fp32``; others validated."""
    text = (spec or "auto").strip().lower()
    if text not in PRECISIONS:
        raise OptionError(f"--precision {spec}: expected one of {', '.join(PRECISIONS)}")
    if text != "auto":
        return text
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "fp32"
