"""``weakshot export``: a checkpoint as one ONNX or TorchScript file that runs without weakshot (models.deploy:
RGB in 0..255, any size, scores and labels out); class names, colours and the inference size travel inside it."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from models.deploy import Segmenter
from weakshot_cli import __version__, folders
from weakshot_cli.data.dataset import MEAN, STD
from weakshot_cli.engine.checkpoint import load_checkpoint
from weakshot_cli.engine.inference import inference_size, model_from_checkpoint, score_scale
from weakshot_cli.engine.visualise import default_palette
from weakshot_cli.errors import UserError
from weakshot_cli.io import atomic_write

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript"}
META_KEY = "weakshot"  # ONNX metadata_props key; weakshot.json in a TorchScript archive
KIND = "weakshot-segmenter"
EXTRA = "the onnx extra (pip install 'weakshot[onnx]')"


def metadata(ckpt: dict) -> dict:
    return {"kind": KIND, "version": __version__, "classes": ckpt["classes"], "novel": ckpt["novel"],
            "palette": ckpt.get("palette") or default_palette(len(ckpt["classes"])),
            "imgsz": inference_size(ckpt, None), "novel_scale": ckpt.get("novel_scale", 1.0),
            "novel_class_scale": ckpt.get("novel_class_scale") or {},
            "input": "images: float32 RGB [B, 3, H, W] in 0..255, any H and W",
            "outputs": "scores: [B, K, H, W] class scores; labels: [B, H, W] int64 argmax"}


def segmenter(ckpt: dict, checkpoint: Path) -> Segmenter:
    """The checkpoint's network with normalisation, padding and its score calibration around it, in eval mode."""
    scale = score_scale(ckpt)
    scale = torch.ones(len(ckpt["classes"])) if scale is None else scale
    return Segmenter(model_from_checkpoint(ckpt, torch.device("cpu"), str(checkpoint)), MEAN, STD, scale).eval()


def _write_onnx(model: Segmenter, meta: dict, path: Path) -> None:
    try:
        import onnx  # noqa: F401  (the exporter needs it; named here so a missing one is a clear error)
        import onnxscript  # noqa: F401
    except ImportError:
        raise UserError(f"--format onnx needs {EXTRA}") from None
    example = torch.rand(2, 3, 64, 96) * 255  # a batch of 2: the exporter specialises a size of 1
    dynamic = torch.export.Dim.DYNAMIC
    optimiser_log = logging.getLogger("onnxscript")  # one "skipping constant folding" line per attention layer
    level = optimiser_log.level
    optimiser_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (example,), input_names=["images"], output_names=["scores", "labels"],
                                        dynamic_shapes={"images": {0: dynamic, 2: dynamic, 3: dynamic}},
                                        dynamo=True, verbose=False)
    finally:
        optimiser_log.setLevel(level)
    proto = program.model_proto
    proto.metadata_props.add(key=META_KEY, value=json.dumps(meta))
    path.write_bytes(proto.SerializeToString())


def _write_torchscript(model: Segmenter, meta: dict, path: Path) -> None:
    with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export; the archive still loads
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, torch.rand(2, 3, 64, 96) * 255, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={f"{META_KEY}.json": json.dumps(meta)})


def run_export(checkpoint: Path, fmt: str, out: Path | None = None, exist_ok: bool = False) -> Path:
    """Write the export (atomically) to ``out``, by default beside the checkpoint with the format's suffix; a file
    already there is replaced only with ``exist_ok`` and only if weakshot exported it."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    ckpt = load_checkpoint(checkpoint)
    source = checkpoint / "weights" / "last.pt" if checkpoint.is_dir() else checkpoint
    out = out or source.with_suffix(FORMATS[fmt])
    folders.claim_file(out, exist_ok, lambda path: exported_meta(path) is not None)
    model, meta = segmenter(ckpt, checkpoint), metadata(ckpt)
    atomic_write(out, lambda tmp: (_write_onnx if fmt == "onnx" else _write_torchscript)(model, meta, tmp))
    return out


def exported_meta(path: Path) -> dict | None:
    """The metadata of a file weakshot exported (ONNX or TorchScript), else None."""
    try:
        if path.suffix.lower() == ".onnx":
            import onnx

            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            meta = json.loads(props[META_KEY])
        else:
            files = {f"{META_KEY}.json": ""}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit's deprecation
                torch.jit.load(str(path), map_location="cpu", _extra_files=files)
            meta = json.loads(files[f"{META_KEY}.json"])
    except Exception:  # noqa: BLE001 - whatever the file is, it is not ours
        return None
    return meta if isinstance(meta, dict) and meta.get("kind") == KIND else None


def onnx_forward(path: Path, device: str) -> tuple[dict, Callable[[torch.Tensor], torch.Tensor]]:
    """An exported ONNX model as Inference runs a network: its metadata in a checkpoint's shape (classes, novel,
    palette, the inference size as config) and normalised, padded images -> scores [B, K, H, W]."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError(f"running an ONNX model needs {EXTRA}", path) from None
    if device not in ("auto", "cpu"):
        raise UserError(f"--device {device}: ONNX models run on the CPU here (onnxruntime); use --device cpu", path)
    if not path.is_file():
        raise UserError("ONNX model not found", path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own classes for a file it cannot use
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise UserError(f"not a usable ONNX model ({first[:160]})", path) from None
    try:
        meta = json.loads(session.get_modelmeta().custom_metadata_map[META_KEY])
        classes, palette, imgsz = meta["classes"], meta["palette"], meta["imgsz"]
        ok = meta.get("kind") == KIND and all(isinstance(c, str) for c in classes) and isinstance(imgsz, int)
    except (KeyError, ValueError, TypeError):
        ok = False
    names = [o.name for o in session.get_outputs()]
    if not ok or names[:1] != ["scores"] or session.get_outputs()[0].shape[1] != len(classes):
        raise UserError("an ONNX model, but not a segmenter weakshot exported (export one with weakshot export)", path)
    mean, std = MEAN.reshape(1, 3, 1, 1), STD.reshape(1, 3, 1, 1)

    def forward(images: torch.Tensor) -> torch.Tensor:
        rgb = (images.float().cpu() * std + mean).numpy()
        return torch.from_numpy(session.run(["scores"], {"images": rgb})[0])

    ckpt = {"classes": classes, "novel": meta.get("novel", []), "palette": palette,
            "config": {"val_imgsz": imgsz, "imgsz": imgsz}}
    return ckpt, forward
