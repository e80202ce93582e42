"""``weakshot predict``: segment any images with only a checkpoint; index PNGs, overlays and COCO RLEs."""

from __future__ import annotations

import glob
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from rich.console import Console
from rich.markup import escape
from torch.utils.data import DataLoader, Dataset

from weakshot_cli.data.dataset import check_inference_size, collate_eval, load_rgb, normalise, resize_short
from weakshot_cli.data.labels import IMAGE_EXTS
from weakshot_cli.engine.inference import Inference, InferenceOptions
from weakshot_cli.engine.progress import image_bar
from weakshot_cli.folders import provisional_run_dir
from weakshot_cli.engine.visualise import default_palette, legend_entries, overlay, untinted, with_legend
from weakshot_cli.errors import Interrupted, UserError
from weakshot_cli.io import atomic_write, write_json, write_label_png


@dataclass(kw_only=True)
class PredictOptions(InferenceOptions):
    source: str
    batch: int = 1
    project: Path = Path("runs")
    name: str | None = None
    exist_ok: bool = False
    recursive: bool = False
    palette: bool = False
    save_overlay: bool = False
    json: bool = False


def _relative(path: Path, base: Path) -> PurePosixPath:
    """Where an image's outputs go under labels/: its path below ``base``, else just its name."""
    path, base = Path(os.path.normpath(path)), Path(os.path.normpath(base))
    try:
        rel = path.relative_to(base)
    except ValueError:
        return PurePosixPath(path.name)
    return PurePosixPath(rel.as_posix()) if ".." not in rel.parts else PurePosixPath(path.name)


def _unique(files: list[Path]) -> list[Path]:
    """One path per file: '**' follows links to folders, so a link loop reaches one image along many paths; the
    shortest one is kept."""
    seen: set[str] = set()
    kept = []
    for f in sorted(files, key=lambda p: (len(p.parts), str(p))):
        real = os.path.realpath(f)
        if real not in seen:
            seen.add(real)
            kept.append(f)
    return kept


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTS


def find_images(source: str, recursive: bool = False) -> list[tuple[Path, PurePosixPath]]:
    """(image, relative output path) pairs for a file, folder, glob pattern or .txt list."""
    path = Path(source)
    if not path.exists() and any(c in source for c in "*?["):
        parts = path.parts
        base = Path(*parts[:next(i for i, p in enumerate(parts) if any(c in p for c in "*?["))])
        files = _unique([Path(p) for p in glob.glob(source, recursive=recursive) if is_image(Path(p))])
    elif path.is_dir():
        base = path
        files = [p for p in (path.rglob("*") if recursive else path.iterdir()) if is_image(p)]
    elif path.is_file() and path.suffix.lower() == ".txt":
        base = path.parent
        lines = (line.strip() for line in path.read_text(encoding="utf-8-sig", errors="replace").splitlines())
        files = list(dict.fromkeys(Path(os.path.normpath(base / line)) for line in lines
                                   if line and not line.startswith("#")))
    elif path.is_file():
        base, files = path.parent, [path]
    else:
        raise UserError("no such image, folder, glob pattern or .txt list", source)
    if not files:
        hint = "" if recursive or not path.is_dir() else " (subfolders are searched with --recursive)"
        raise UserError(f"no images ({', '.join(IMAGE_EXTS)}) found{hint}", source)
    files = files if path.suffix.lower() == ".txt" else sorted(files)  # a list keeps the user's order
    return [(f, _relative(f, base)) for f in files]


def images_in_subfolders(source: str, recursive: bool) -> int:
    """How many images a folder SOURCE holds in subfolders that are skipped without --recursive (else 0)."""
    path = Path(source)
    if recursive or not path.is_dir():
        return 0
    return sum(is_image(p) for sub in path.iterdir() if sub.is_dir() for p in sub.rglob("*"))


def output_stems(rels: Sequence[PurePosixPath]) -> list[str]:
    """Output path per image without extension; where two images would share one (a.jpg, a.png) both keep
    their suffix (a.jpg, a.png), so no prediction silently overwrites another."""
    keys = [r.with_suffix("").as_posix() for r in rels]
    counts = Counter(k.casefold() for k in keys)
    stems: list[str] = []
    used: set[str] = set()
    for rel, key in zip(rels, keys):
        stem = candidate = key if counts[key.casefold()] == 1 else rel.as_posix()
        n = 2
        while candidate.casefold() in used:
            candidate, n = f"{stem}_{n}", n + 1
        used.add(candidate.casefold())
        stems.append(candidate)
    return stems


class PredictDataset(Dataset):
    """Images resized so the short side is ``imgsz``; an unreadable file, or one too small for the network at
    ``imgsz`` and ``scales``, gives an error record, not an exception, so one bad file does not stop a folder."""

    def __init__(self, paths: Sequence[Path], imgsz: int | None, keep_rgb: bool, scales: Sequence[float] = (1.0,)):
        self.paths, self.imgsz, self.keep_rgb, self.scales = paths, imgsz, keep_rgb, scales

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        try:
            rgb = load_rgb(self.paths[index], exif=True)
            check_inference_size(self.paths[index], *rgb.shape[-2:], self.imgsz, self.scales)
        except (UserError, OSError, ValueError, SyntaxError) as e:
            return {"index": index, "error": str(e) if isinstance(e, UserError) else f"{self.paths[index]}: {e}"}
        return {"index": index, "image": normalise(resize_short(rgb, self.imgsz)), "size": tuple(rgb.shape[-2:]),
                "rgb": rgb if self.keep_rgb else None}


def collate_predict(batch: list[dict]) -> dict:
    """Error records set aside; the rest padded by collate_eval, whose 'label' field carries the original size."""
    ok = [b for b in batch if "error" not in b]
    padded = collate_eval([{"image": b["image"], "label": b["size"], "index": b["index"]} for b in ok]) if ok else {}
    return {**padded, "out_sizes": padded.get("labels", []), "index": [b["index"] for b in ok],
            "rgb": [b["rgb"] for b in ok], "errors": [(b["index"], b["error"]) for b in batch if "error" in b]}


def rle_results(mean_score: torch.Tensor, label: np.ndarray, image_id: str, file_name: str,
                classes: list[str]) -> list:
    """COCO-style results, one per predicted class; ``mean_score[c]`` is class c's mean score over its mask."""
    results = []
    for c in np.unique(label).tolist():
        mask = label == c
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        results.append({"image_id": image_id, "file_name": file_name, "category_id": c, "category_name": classes[c],
                        "segmentation": rle, "score": float(mean_score[c]),
                        "area": int(mask.sum())})
    return results


def run_predict(o: PredictOptions, console: Console, err: Console | None = None) -> dict:
    """Validate every input before the run folder exists, then predict image by image. Warnings go to ``err``
    (default stderr); those for unreadable files come after the run, so that a run where no file could be read
    ends in its one error line alone."""
    err = err or Console(stderr=True, highlight=False)
    o.check()
    run = Inference.load(o)
    images = find_images(o.source, o.recursive)
    nested = images_in_subfolders(o.source, o.recursive)
    if nested:
        err.print(f"[yellow]warning:[/] skipped {nested} images in subfolders of {escape(o.source)}; pass "
                      "--recursive to include them", soft_wrap=True)
    classes = run.ckpt["classes"]
    palette = run.ckpt.get("palette") or default_palette(len(classes))
    imgsz = run.imgsz
    stems = output_stems([rel for _, rel in images])
    ddp = run.ddp  # under torchrun each process predicts every world-th batch
    batches = ddp.shard([list(range(i, min(i + o.batch, len(images)))) for i in range(0, len(images), o.batch)])
    loader = DataLoader(PredictDataset([p for p, _ in images], imgsz or None, o.save_overlay, o.scales),
                        batch_sampler=batches, collate_fn=collate_predict, num_workers=o.workers)
    written, errors, results = 0, [], []
    run_dir: Path | None = None
    try:  # Ctrl-C keeps the predictions written (each file atomically) and says so
        with provisional_run_dir(o.project, "predict", o.name, o.exist_ok, ddp=ddp) as run_dir:
            with image_bar(console if ddp.main else Console(quiet=True)) as bar:
                task = bar.add_task("predict", total=sum(map(len, batches)))
                for batch in loader:
                    errors += batch["errors"]
                    if batch["index"]:
                        scores = run(batch["image"], batch["sizes"], batch["out_sizes"])
                        for s, i, rgb in zip(scores, batch["index"], batch["rgb"]):
                            label, mean_score = s.argmax()
                            label = label.numpy()
                            write_label_png(run_dir / "labels" / f"{stems[i]}.png", label,
                                            palette if o.palette else None)
                            written += 1  # counted as soon as its label is on disk: what Ctrl-C reports
                            if o.save_overlay:
                                shown = overlay(rgb.permute(1, 2, 0).numpy(), label, palette, skip=untinted(classes))
                                blend = Image.fromarray(with_legend(shown, legend_entries([label], classes, palette)))
                                atomic_write(run_dir / "overlays" / f"{stems[i]}.jpg",
                                             lambda p, im=blend: im.save(p, format="JPEG", quality=90))
                            if o.json:
                                results.append((i, rle_results(mean_score, label, stems[i], str(images[i][0]),
                                                               classes)))
                    bar.advance(task, len(batch["index"]) + len(batch["errors"]))
            parts = ddp.gather((written, errors, results))
            written = sum(part[0] for part in parts)
            errors = [e for _, e in sorted(e for part in parts for e in part[1])]
            if not written:
                raise UserError(f"no image could be read ({len(errors)} skipped; first: {errors[0]})", o.source)
            if not ddp.main:
                return {}
            if o.json:
                write_json(run_dir / "predictions.json",
                           [r for _, rs in sorted((r for part in parts for r in part[2]), key=lambda x: x[0])
                            for r in rs])
    except KeyboardInterrupt:
        where = f" to {run_dir / 'labels'}" if written else ""
        unwritten = "; predictions.json is written only by a finished run" if o.json else ""
        raise Interrupted(f"interrupted: {written} of {len(images)} predictions written{where}{unwritten}") from None
    for error in errors:
        err.print(f"[yellow]warning:[/] skipped {escape(error)}", soft_wrap=True)
    console.print(f"{written} images written to [bold]{run_dir}[/], {len(errors)} skipped")
    return {"run_dir": str(run_dir), "written": written, "skipped": len(errors)}
