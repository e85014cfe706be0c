"""Self-describing, relocatable model folders: ``fsiad fit`` writes one, ``fsiad predict`` loads it.

Layout::

    model.json          format, method name, config, encoder name + weights checksum, shots, seed,
                        references (absolute paths + sha256, optional copies), threshold
                        (value, rule, LOO scores), fsiad/torch versions
    method.json         ``AnomalyMethod.save`` metadata (config, describe) and the sha256 of the state
    state.safetensors   the method's fitted state (memory bank / statistics / text embeddings)
    prompts.yaml        copy of the prompt file the method was built with (prompt-based methods)
    references/         copies of the reference images (``save_model(..., copy_references=True)``)

Loading is safe with files from anyone:

* nothing is unpickled: the state is a safetensors file; older folders' ``state.pt`` is read
  with ``torch.load(weights_only=True)`` only (a crafted pickle is refused, nothing runs);
* the state's sha256 recorded in ``method.json`` is checked BEFORE the state is parsed, and
  the encoder weights' sha256 recorded at fit time is checked BEFORE the weights are read
  (``expect_weights_checksum``), so a swapped file is refused with one line;
* the folder cannot make fsiad read files outside itself: ``config.weights`` / ``config.prompts``
  naming a path outside the folder are refused unless the caller passes the file (``--weights``);
* malformed ``method.json`` / ``model.json`` / state files raise ``ModelError`` naming the file
  and what to do (one line), never a traceback.

References are recorded with their absolute path and content sha256, so a folder moved to
another place and used from any working directory still finds them: copies inside the folder
first, then the recorded path when its content is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from fsiad.fewshot.errors import FsiadError, UnsafeFileError, one_line
from fsiad.fewshot.fileio import atomic_path, atomic_write_json, hash_file, is_inside
from fsiad.fewshot.methods.base import AnomalyMethod, MethodConfig
from fsiad.fewshot.workflow.thresholds import Calibration

FORMAT = "fsiad-model/1"
STATE_FILE = "state.safetensors"
LEGACY_STATE_FILE = "state.pt"
PROMPTS_FILE = "prompts.yaml"
REFERENCES_DIR = "references"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ModelError(FsiadError, ValueError):
    """A model folder is missing, malformed, or does not match the weights it is loaded with."""


class UnsafeModelError(ModelError, UnsafeFileError):
    """A model folder refused for safety: a checksum mismatch or a file outside the folder."""


def encoder_identity(describe: dict[str, Any]) -> dict[str, Any]:
    """Encoder name and weights checksum from ``method.describe()`` (flat or nested ``encoder``)."""
    if not isinstance(describe, dict):
        describe = {}
    flat = {**describe, **describe["encoder"]} if isinstance(describe.get("encoder"), dict) else describe
    return {k: flat.get(k) for k in ("encoder", "weights_checksum", "weights_source", "weights_path")}


def method_weights_file(describe: dict[str, Any]) -> dict[str, Any] | None:
    """A method's own trained file read through ``--weights`` besides its encoder's weights
    (``describe()["weights_file"] = {"path", "sha256"}``, e.g. a RegAD checkpoint); else ``None``."""
    wf = describe.get("weights_file")
    return wf if isinstance(wf, dict) and isinstance(wf.get("sha256"), str) else None


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object file, or ``ModelError`` naming it (missing, unreadable, bad JSON, not an object)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: missing; {what}") from None
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: invalid JSON ({e.msg} at line {e.lineno}); {what}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: unreadable ({one_line(e)}); {what}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object, got {type(data).__name__}; {what}")
    return data


# -- method.json + state (AnomalyMethod.save / AnomalyMethod.load delegate here) ---------------
def _state_tensors(state: dict[str, Any], name: str) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors, none sharing memory (what safetensors requires)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}: get_state() must return tensors only, {key!r} is {type(value).__name__}")
        t = value.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else 0
        if ptr and ptr in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr() if t.numel() else 0)
        out[str(key)] = t
    return out


def _write_state(state: dict[str, torch.Tensor], path: Path) -> str:
    """Write ``state`` as safetensors atomically (unique temp name); return its sha256."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "fsiad-state/1"})
        digest = hash_file(tmp)
    return digest


def _inside_or_relative(value: str | None, directory: Path) -> str | None:
    if value and is_inside(value, directory):
        return os.path.relpath(Path(value).resolve(), directory.resolve())
    return value


def write_method_folder(method: AnomalyMethod, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """``AnomalyMethod.save``: ``state.safetensors`` (its sha256 recorded) then ``method.json``.

    The prompt file of a prompt-based method is copied into the folder (``prompts.yaml``) so
    that the folder is self-contained; a weights file inside the folder is recorded relative
    to it. Both files are written atomically; an older ``state.pt`` is removed.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    digest = _write_state(_state_tensors(method.get_state(), method.name), directory / STATE_FILE)
    config = asdict(method.config)
    config["weights"] = _inside_or_relative(config.get("weights"), directory)
    prompts = config.get("prompts")
    if prompts and Path(prompts).is_file() and not is_inside(prompts, directory):
        shutil.copyfile(prompts, directory / PROMPTS_FILE)
        config["prompts"] = PROMPTS_FILE
    else:
        config["prompts"] = _inside_or_relative(prompts, directory)
    meta = {"name": method.name, "config": config, "describe": method.describe(), **(extra or {}),
            "state": {"file": STATE_FILE, "format": "safetensors", "sha256": digest}}
    atomic_write_json(directory / "method.json", meta)
    (directory / LEGACY_STATE_FILE).unlink(missing_ok=True)
    return directory


def _folder_file(directory: Path, meta_path: Path, key: str, value: Any, overridden: bool) -> str | None:
    """A path named by ``method.json`` config: inside the folder (absolute now) or refused."""
    if overridden or value in (None, ""):
        return value
    if not isinstance(value, str):
        raise ModelError(f"{meta_path}: config.{key} must be a path string, got {type(value).__name__}; "
                         "refit the model with `fsiad fit`")
    p = Path(value).expanduser()
    p = p if p.is_absolute() else directory / p
    if not is_inside(p, directory):
        hint = f"pass --weights {value} to use that file" if key == "weights" else "refit the model with `fsiad fit`"
        raise UnsafeModelError(f"{meta_path}: config.{key} names a file outside the model folder ({value}); "
                               f"a model folder may only use its own files: {hint}")
    return str(p)


def _read_state(directory: Path, meta: dict[str, Any], meta_path: Path) -> dict[str, torch.Tensor]:
    """The fitted state, its sha256 checked before parsing (legacy ``state.pt``: weights-only load)."""
    rec = meta.get("state")
    if rec is None:  # folder written before state checksums: state.pt through the restricted loader
        path = directory / LEGACY_STATE_FILE
        if not path.is_file():
            raise ModelError(f"{path}: missing; refit the model with `fsiad fit`")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - corrupt, truncated or crafted: one line, nothing ran
            from fsiad.fewshot.encoders.checkpoint import is_refusal

            if is_refusal(e):
                raise UnsafeModelError(f"{path}: refused: holds Python objects beyond tensors (loading it could "
                                       "run code); refit the model with `fsiad fit`") from None
            raise ModelError(f"{path}: corrupt state file ({type(e).__name__}: {one_line(e)}); "
                             "refit the model with `fsiad fit`") from None
    else:
        path = _state_record(directory, rec, meta_path)
        data = path.read_bytes()  # verified and parsed from the same bytes
        _check_state_digest(path, hashlib.sha256(data).hexdigest(), rec["sha256"])
        try:
            from safetensors.torch import load as load_safetensors

            state = load_safetensors(data)
        except Exception as e:  # noqa: BLE001 - any parse failure: name the file
            raise ModelError(f"{path}: corrupt state file ({type(e).__name__}: {one_line(e)}); "
                             "refit the model with `fsiad fit`") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ModelError(f"{path}: not a state of named tensors; refit the model with `fsiad fit`")
    return state


def read_method_folder(directory: str | Path, **overrides: Any) -> AnomalyMethod:
    """``AnomalyMethod.load``: rebuild a fitted method saved with ``write_method_folder``.

    Order: ``method.json`` validated -> file paths kept inside the folder (unless overridden)
    -> state sha256 checked -> weights sha256 checked (explicit file now, resolver-found file
    inside ``expect_weights_checksum``) -> method built -> state parsed and set.

    Raises:
        ModelError: missing/malformed ``method.json`` or state, unknown method, state that
            does not fit the method. ``UnsafeModelError`` (also an ``UnsafeFileError``) for a
            checksum mismatch or a path outside the folder.
    """
    from fsiad.fewshot.encoders.weights import expect_weights_checksum, sha256_file
    from fsiad.fewshot.methods.base import create_method

    directory = Path(directory)
    meta_path = directory / "method.json"
    if not meta_path.is_file():
        raise ModelError(f"{meta_path}: not a saved fsiad model (method.json missing; create one with `fsiad fit`)")
    refit = "refit the model with `fsiad fit`"
    meta = _read_json_object(meta_path, refit)
    name, config = meta.get("name"), meta.get("config")
    if not isinstance(name, str) or not name:
        raise ModelError(f"{meta_path}: missing or invalid 'name' (the method name); {refit}")
    if not isinstance(config, dict):
        raise ModelError(f"{meta_path}: missing or invalid 'config' (the method settings); {refit}")
    known = {f.name for f in fields(MethodConfig)}
    unknown = sorted(set(config) - known) + sorted(set(overrides) - known)
    if unknown:
        raise ModelError(f"{meta_path}: unknown config fields {unknown}; {refit}")
    config = {**config, **{k: v for k, v in overrides.items() if v is not None}}
    for key in ("weights", "prompts"):
        config[key] = _folder_file(directory, meta_path, key, config.get(key), overrides.get(key) is not None)
    if not isinstance(config.get("options", {}), dict):
        raise ModelError(f"{meta_path}: config.options must be an object; {refit}")
    try:
        cfg = MethodConfig(**config)
    except TypeError as e:
        raise ModelError(f"{meta_path}: invalid config ({one_line(e)}); {refit}") from None
    described = meta.get("describe") or {}
    expected = encoder_identity(described).get("weights_checksum")
    own = method_weights_file(described)  # the method's own --weights file (e.g. a RegAD checkpoint)
    explicit = own["sha256"] if own else expected  # what a --weights file must be
    if cfg.weights and Path(cfg.weights).exists() and isinstance(explicit, str) and _SHA256.match(explicit):
        now = sha256_file(cfg.weights)
        if now != explicit:
            raise UnsafeModelError(f"{directory}: encoder mismatch: the model was fitted with weights sha256 {explicit}, "
                                   f"but {cfg.weights} has sha256 {now}; pass --weights with the original file "
                                   "(refused before loading it)")
    _verify_state_checksum(directory, meta, meta_path)
    allowed = [c for c in (expected, own["sha256"] if own else None) if isinstance(c, str)]
    try:
        with expect_weights_checksum(allowed, f"the model {directory}"):
            method = create_method(name, cfg)
    except KeyError as e:
        raise ModelError(f"{meta_path}: {one_line(e)}; {refit} or install the method's package") from None
    state = _read_state(directory, meta, meta_path)
    try:
        method.set_state(state)
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError, AttributeError) as e:
        raise ModelError(f"{directory / _state_name(meta)}: state does not fit {name} "
                         f"({type(e).__name__}: {one_line(e)}); {refit}") from None
    method.fitted = True
    return method


def _state_name(meta: dict[str, Any]) -> str:
    return STATE_FILE if meta.get("state") is not None else LEGACY_STATE_FILE


def _state_record(directory: Path, rec: Any, meta_path: Path) -> Path:
    """The state file named by a well-formed ``method.json`` ``state`` entry (it must exist)."""
    if not isinstance(rec, dict) or rec.get("file") != STATE_FILE or not _SHA256.match(str(rec.get("sha256"))):
        raise ModelError(f"{meta_path}: malformed 'state' entry (expected file {STATE_FILE} and its sha256); "
                         "refit the model with `fsiad fit`")
    path = directory / STATE_FILE
    if not path.is_file():
        raise ModelError(f"{path}: missing; refit the model with `fsiad fit`")
    return path


def _check_state_digest(path: Path, digest: str, recorded: str) -> None:
    if digest != recorded:
        raise UnsafeModelError(f"{path}: checksum mismatch (sha256 {digest}, method.json records {recorded}): "
                               "the state was changed or damaged; refit the model with `fsiad fit`")


def _verify_state_checksum(directory: Path, meta: dict[str, Any], meta_path: Path) -> None:
    """Before the encoder is built: the state file exists and (current format) its sha256 matches."""
    rec = meta.get("state")
    if rec is None:
        if not (directory / LEGACY_STATE_FILE).is_file():
            raise ModelError(f"{directory / LEGACY_STATE_FILE}: missing; refit the model with `fsiad fit`")
        return
    path = _state_record(directory, rec, meta_path)
    _check_state_digest(path, hash_file(path), rec["sha256"])


# -- model.json ------------------------------------------------------------------------------
def _record_references(refs: list[str], directory: Path, copy: bool) -> list[dict[str, Any]]:
    """``[{"path": absolute, "sha256": ..., "copy": "references/..." | None}]``; copies written if asked."""
    entries = []
    ref_dir = directory / REFERENCES_DIR
    keep: set[str] = set()
    for i, ref in enumerate(refs):
        p = Path(os.path.abspath(Path(ref).expanduser()))
        digest = hash_file(p) if p.is_file() else None
        rel = None
        if copy and digest is not None:
            ref_dir.mkdir(exist_ok=True)
            rel = f"{REFERENCES_DIR}/{i:04d}-{digest[:12]}{p.suffix.lower()}"
            dst = directory / rel
            if not (dst.is_file() and hash_file(dst) == digest):
                with atomic_path(dst) as tmp:
                    shutil.copyfile(p, tmp)
            keep.add(Path(rel).name)
        entries.append({"path": str(p), "sha256": digest, "copy": rel})
    if ref_dir.is_dir():  # copies of an earlier save into the same folder
        for old in ref_dir.iterdir():
            if old.is_file() and old.name not in keep and re.match(r"^\d{4}-[0-9a-f]{12}", old.name):
                old.unlink()
    return entries


def save_model(method: AnomalyMethod, directory: str | Path, calibration: Calibration,
               info: dict[str, Any], *, copy_references: bool = False) -> Path:
    """Write a fitted method and its workflow metadata (``info``: shots, seed, references, ...).

    References (``info["references"]``, paths relative to the current directory or absolute)
    are recorded with their absolute path and sha256 (``reference_files``); with
    ``copy_references`` the images are also copied under ``references/`` so that the folder
    keeps them wherever it is moved.
    """
    import fsiad

    directory = Path(directory)
    method.save(directory)
    refs = [str(r) for r in info.get("references") or []]
    entries = _record_references(refs, directory, copy_references)
    meta = {
        "format": FORMAT,
        "method": method.name,
        "encoder": encoder_identity(method.describe()),
        "weights_file": method_weights_file(method.describe()),
        "threshold": calibration.to_dict(),
        "versions": {"fsiad": fsiad.__version__, "torch": torch.__version__},
        **info,
        "references": [e["path"] for e in entries],
        "reference_files": entries,
    }
    atomic_write_json(directory / "model.json", meta)
    return directory


def read_model_meta(directory: str | Path) -> dict[str, Any]:
    """``model.json`` of a model folder; raises ``ModelError`` naming the file when invalid.

    Checks the format tag, the threshold record, and the types of ``references`` /
    ``reference_files`` / ``seed`` / ``chunk_size`` so that later use cannot fail obscurely.
    """
    path = Path(directory) / "model.json"
    if not path.is_file():
        raise ModelError(f"{directory}: not an fsiad model folder (model.json missing; create one with `fsiad fit`)")
    refit = "refit the model with `fsiad fit`"
    meta = _read_json_object(path, refit)
    if meta.get("format") != FORMAT:
        raise ModelError(f"{path}: unsupported model format {meta.get('format')!r} (expected {FORMAT}); {refit}")
    thr = meta.get("threshold")
    try:
        if not isinstance(thr, dict):
            raise TypeError(f"expected an object, got {type(thr).__name__}")
        Calibration.from_dict(thr)
    except (TypeError, ValueError) as e:
        raise ModelError(f"{path}: invalid 'threshold' record ({one_line(e)}); {refit}") from None
    refs = meta.get("references", [])
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise ModelError(f"{path}: 'references' must be a list of paths; {refit}")
    files = meta.get("reference_files", [])
    if not isinstance(files, list) or not all(isinstance(e, dict) and isinstance(e.get("path"), str)
                                              for e in files):
        raise ModelError(f"{path}: 'reference_files' must be a list of {{path, sha256, copy}}; {refit}")
    for key in ("seed", "chunk_size"):
        if key in meta and meta[key] is not None and (not isinstance(meta[key], int) or isinstance(meta[key], bool)):
            raise ModelError(f"{path}: {key!r} must be an integer, got {meta[key]!r}; {refit}")
    if "chunk_size" in meta and isinstance(meta["chunk_size"], int) and meta["chunk_size"] < 1:
        raise ModelError(f"{path}: 'chunk_size' must be >= 1, got {meta['chunk_size']}; {refit}")
    return meta


def resolve_references(directory: str | Path, meta: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Where each recorded reference is now: ``(paths, status)`` in recorded order.

    A copy inside the folder comes first (when its sha256 still matches), then the recorded
    absolute path when its content is unchanged. ``status`` per reference: ``copy``,
    ``recorded``, ``changed`` (recorded file differs: not used) or ``missing``; an unfound
    reference keeps its recorded path. Older folders without ``reference_files`` keep their
    paths, made absolute when they exist relative to the current directory.
    """
    directory = Path(directory)
    entries = meta.get("reference_files")
    if not entries:
        paths = [os.path.abspath(p) if Path(p).exists() else p for p in meta.get("references", [])]
        return paths, ["recorded" if Path(p).is_file() else "missing" for p in paths]
    paths, status = [], []
    for e in entries:
        digest, copy, rec = e.get("sha256"), e.get("copy"), Path(e["path"])
        if isinstance(copy, str) and copy:
            c = directory / copy
            if is_inside(c, directory) and c.is_file() and (digest is None or hash_file(c) == digest):
                paths.append(str(c.absolute()))
                status.append("copy")
                continue
        if rec.is_file():
            ok = digest is None or hash_file(rec) == digest
            paths.append(str(rec))
            status.append("recorded" if ok else "changed")
        else:
            paths.append(str(rec))
            status.append("missing")
    return paths, status


def load_model(directory: str | Path, **overrides: Any) -> tuple[AnomalyMethod, dict[str, Any]]:
    """Rebuild the fitted method of a model folder and check its encoder weights.

    Args:
        directory: folder written by ``save_model`` (from any working directory, also after
            the folder was moved).
        overrides: ``MethodConfig`` fields to replace (``device``, ``batch_size``, ``weights``).

    Returns:
        ``(method, meta)``: ``meta`` is ``model.json`` with ``references`` replaced by where
        the references are now (see ``resolve_references``) and ``reference_status`` added.

    Raises:
        ModelError: not a model folder, malformed files, or the encoder weights differ from
            the ones the model was fitted with (sha256 checksum mismatch; checked before the
            weights are read, and again on the loaded encoder's identity).
    """
    meta = read_model_meta(directory)
    method = AnomalyMethod.load(directory, **overrides)
    saved, now = meta.get("encoder") or {}, encoder_identity(method.describe())
    if not isinstance(saved, dict):
        saved = {}
    own_saved = meta.get("weights_file") if isinstance(meta.get("weights_file"), dict) else None
    own_now = method_weights_file(method.describe())
    if (own_saved or {}).get("sha256") != (own_now or {}).get("sha256"):
        raise ModelError(f"{directory}: the model was fitted with {(own_saved or {}).get('path')} (sha256 "
                         f"{(own_saved or {}).get('sha256')}), but {(own_now or {}).get('path')} was loaded now; "
                         "pass --weights with the original file")
    if saved.get("weights_checksum") != now.get("weights_checksum") or saved.get("encoder") != now.get("encoder"):
        raise ModelError(
            f"{directory}: encoder mismatch: the model was fitted with {saved.get('encoder')} weights "
            f"sha256 {saved.get('weights_checksum')}, but the weights loaded now ({now.get('weights_path')}) "
            f"are {now.get('encoder')} sha256 {now.get('weights_checksum')}; pass --weights with the original file"
        )
    meta["references"], meta["reference_status"] = resolve_references(directory, meta)
    return method, meta
