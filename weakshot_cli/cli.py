"""The ``weakshot`` command line: parse options, call one function, print."""

from __future__ import annotations

import os
import sys

# Spinning OpenMP threads stall when data-loader workers or other jobs share the cores; set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from weakshot_cli import __version__
from weakshot_cli.errors import Interrupted, UserError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
state = {"debug": False}

app = typer.Typer(
    name="weakshot",
    help="Segment more classes than your masks cover: base-class masks + novel-class image tags "
    "-> a full-class segmenter (SimFormer).\n\n"
    "Typical path: weakshot split -> train -> evaluate -> pseudolabel -> retrain -> predict. "
    "Try 'weakshot demo' for the whole path on a synthetic dataset.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        console.print(f"weakshot {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    state["debug"] = debug


def _csv(value: Optional[str]) -> Optional[list[str]]:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


# Largest test-time scale: common choices stay within 0.5..2, and an image's memory grows with the scale squared.
SCALE_MAX = 4


def _scales(value: Optional[str]) -> tuple[float, ...]:
    """--scales 0.75,1,1.25 for test-time augmentation; default one scale."""
    try:
        scales = tuple(float(v) for v in _csv(value)) if value is not None else (1.0,)
        if not scales:
            raise ValueError
    except ValueError:
        raise UserError(f"--scales {value}: expected comma-separated numbers such as 0.75,1,1.25") from None
    if not all(0 < s <= SCALE_MAX for s in scales):  # also refuses nan and inf
        raise UserError(f"--scales {value}: scales must be positive finite numbers up to {SCALE_MAX}")
    return scales


# Options of split.
SplitOut = Annotated[Path, typer.Option("--out", "-o", help="Folder for the new weak-shot dataset.")]
Images = Annotated[Path, typer.Option(help="Image folder; train/ and val/ subfolders name the splits.")]
Masks = Annotated[Optional[Path], typer.Option(help="Label PNG folder, same layout and stems as --images.")]
Classes = Annotated[Optional[Path], typer.Option(help="Class names, one per line (line i = value i).")]
Coco = Annotated[
    Optional[list[str]],
    typer.Option(help="COCO JSON instead of PNG masks, as PATH or SPLIT=PATH; repeat for each split."),
]
Novel = Annotated[Optional[str], typer.Option(help="Comma-separated novel class names.")]
NovelRatio = Annotated[
    Optional[float], typer.Option(help="Pick this fraction of classes as novel at random (SimFormer: 0.25).")
]
SplitPreset = Annotated[
    Optional[str], typer.Option(help="Published SimFormer split: coco-stuff-10k-s1..s4 or ade20k-s1..s4.")
]
NovelSeed = Annotated[int, typer.Option(help="Seed for --novel-ratio.")]
Tags = Annotated[
    Optional[Path],
    typer.Option(help="Real mode: image-level tags (.json, .csv or .npy) for masks that cover base classes only; "
                      "training images with tags but no label PNG become tag-only images."),
]
UnknownClass = Annotated[
    Optional[str],
    typer.Option(help="Class whose mask pixels become unknown (ignore), for masks that call unannotated objects "
                      "e.g. 'background'."),
]
Background = Annotated[
    Optional[str],
    typer.Option(help="COCO: class of the pixels outside every annotation (a category name, or a new class); "
                      "default ignore."),
]
TagOnlyFraction = Annotated[
    float,
    typer.Option(help="Benchmark mode: this fraction of training images (drawn with --seed) keep only their "
                      "tags, to measure what tag-only images add."),
]
Examples = Annotated[
    int,
    typer.Option(help="Benchmark mode: keep the full masks of this many training images per novel class (drawn with "
                      "--seed): example masks, to measure what a few annotations buy where tags cannot name a class."),
]
IgnoreIndex = Annotated[int, typer.Option(help="Label value meaning 'unlabelled' (CamVid 11, COCO 255).")]
ReduceZeroLabel = Annotated[bool, typer.Option(help="ADE20K convention: value 0 is ignore and k becomes class k-1.")]
LabelMap = Annotated[
    Optional[Path], typer.Option(help="JSON/CSV source value -> class id ('ignore' allowed); unlisted -> ignore.")
]
ImgSuffix = Annotated[str, typer.Option(help="Suffix stripped from image stems (e.g. _leftImg8bit).")]
MaskSuffix = Annotated[str, typer.Option(help="Suffix stripped from label stems (e.g. _gtFine_labelIds).")]
Strict = Annotated[bool, typer.Option(help="Treat label-convention warnings as errors.")]
AllValues = Annotated[bool, typer.Option(help="Show every label value, not only the 20 commonest.")]
SplitExistOk = Annotated[
    bool, typer.Option(help="Replace the weak-shot dataset already in --out (its own files only).")
]


@app.command()
def split(
    out: SplitOut, images: Images, masks: Masks = None, classes: Classes = None, coco: Coco = None,
    novel: Novel = None, novel_ratio: NovelRatio = None, preset: SplitPreset = None, seed: NovelSeed = 0,
    tags: Tags = None, unknown_class: UnknownClass = None, background: Background = None,
    tag_only_fraction: TagOnlyFraction = 0.0, examples: Examples = 0, ignore_index: IgnoreIndex = 255,
    reduce_zero_label: ReduceZeroLabel = False, label_map: LabelMap = None, img_suffix: ImgSuffix = "",
    mask_suffix: MaskSuffix = "", strict: Strict = False, all_values: AllValues = False,
    exist_ok: SplitExistOk = False,
) -> None:
    """Make a weak-shot dataset: hide novel-class pixels from training labels and keep image-level tags.

    Benchmark mode (full masks): pick novel classes with --novel, --novel-ratio or --preset; training
    labels get novel pixels set to ignore and tags come from the full masks; validation keeps full masks.

    Real mode (base-only masks): pass --tags; novel classes are those no training mask contains and some
    training image is tagged with; training images with tags and no mask are kept as tag-only images.

    Example (CamVid, void = 11):

      weakshot split --images data/camvid/images --masks data/camvid/labels
        --classes data/camvid/classes.txt --ignore-index 11 --novel tree,car,sign_symbol -o camvid-ws
    """
    from weakshot_cli.data.split import SplitOptions, run_split
    from weakshot_cli.tables import dataset_table, identifiability_table, value_table

    opts = SplitOptions(
        out=out, images=images, masks=masks, coco=coco or [], classes=classes, ignore_index=ignore_index,
        reduce_zero_label=reduce_zero_label, label_map=label_map, img_suffix=img_suffix, mask_suffix=mask_suffix,
        novel=_csv(novel), novel_ratio=novel_ratio, preset=preset, seed=seed, tags=tags, unknown_class=unknown_class,
        background=background, tag_only_fraction=tag_only_fraction, examples=examples, all_values=all_values,
        strict=strict,
        exist_ok=exist_ok,
    )
    manifest = run_split(opts, console, argv=sys.argv[1:], err=err_console,
                         show_values=lambda values: console.print(value_table(values)))
    console.print(dataset_table(manifest))
    pairs = identifiability_table(manifest)
    if pairs is not None:
        console.print(pairs)
    console.print(f"Wrote [bold]{out / 'weakshot.json'}[/]")


# Options shared by train and retrain.
Preset = Annotated[str, typer.Option(help="Model/schedule preset: r50 (the paper's), mobile (pretrained "
                                          "MobileNetV2, for CPUs) or small (from scratch, for tests).")]
Method = Annotated[Optional[str], typer.Option(
    help="Loss profile: tags (tag terms and novel-score calibration in weak-shot training; train's default on a "
         "pretrained backbone), dense (SimFormer, plus a dense cross-entropy where every pixel is labelled; train's "
         "default from scratch, retrain's default; formerly 'weakshot') or paper (SimFormer exactly as published).",
    show_default=False)]
Iters = Annotated[
    Optional[int], typer.Option(help="Training iterations (with --resume: continue the run to this many).")
]
Epochs = Annotated[Optional[int], typer.Option(help="Train for this many epochs instead of --iters (with --resume: "
                                                    "continue the run to this many).")]
Batch = Annotated[Optional[int], typer.Option(help="Global batch size (split across processes).")]
ImgSize = Annotated[Optional[int], typer.Option(help="Training crop size (multiple of 32).")]
Device = Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N.")]
Workers = Annotated[Optional[int], typer.Option(help="Data-loading worker processes.")]
Backbone = Annotated[Optional[str], typer.Option(help="resnet18/34/50/101, mobilenet_v2, mobilenet_v3_large, "
                                                      "efficientnet_b0, convnext_tiny or regnet_y_400mf.")]
BackboneWeights = Annotated[
    Optional[str], typer.Option(help="imagenet (torchvision weights), none (from scratch) or a state-dict path.")
]
Lr = Annotated[Optional[float], typer.Option(help="AdamW learning rate.")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed.")]
Amp = Annotated[Optional[str], typer.Option(help="Mixed precision: auto, bf16, fp16 (CUDA only) or off.")]
InferAmp = Annotated[str, typer.Option(help="Mixed precision: auto (bf16 on CUDA and on CPUs with AMX), bf16, fp16 "
                                            "(CUDA only) or off.")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Override any config field: --set lr=5e-4.")]
Project = Annotated[Path, typer.Option(help="Parent folder of run folders.")]
Name = Annotated[Optional[str], typer.Option(help="Run name (default: the stage, then stage2, ...).")]
ExistOk = Annotated[bool, typer.Option(help="Reuse the run folder --name if it exists.")]
Resume = Annotated[
    Optional[Path],
    typer.Option(help="Continue a run exactly: its folder or weights/last.pt. Only --iters or --epochs (a new length; "
                      "the poly lr schedule is then redrawn over the new total), --device and --workers may be given "
                      "with it."),
]
BestMetric = Annotated[
    Optional[str],
    typer.Option(help="Validation figure weights/best.pt maximises: mean_base_novel (default: the mean of base and "
                      "novel mIoU), mIoU, base_mIoU, novel_mIoU, hIoU, pAcc or mAcc; on a tie the later weights win."),
]
Weights = Annotated[Optional[Path], typer.Option(help="Start a new run from this checkpoint's weights.")]


def _typed(ctx: typer.Context) -> dict[str, str]:
    """The command's parameters typed on the command line (not left at their defaults): name -> as typed."""
    typed = {}
    for p in ctx.command.params:
        source = ctx.get_parameter_source(p.name)
        if source is not None and source.name == "COMMANDLINE":
            typed[p.name] = p.opts[0] if p.param_type_name == "option" else p.name.upper()
    return typed


# Options of train and retrain that set the TrainConfig field of the same name (left out: the preset's value).
CONFIG_OPTIONS = ("iters", "epochs", "batch", "imgsz", "device", "workers", "backbone", "backbone_weights", "lr",
                  "seed", "amp", "best_metric")


def _train(ctx: typer.Context, stage: str, **train_only: Optional[bool]) -> None:
    """Run train or retrain with the command's own parameters (``ctx.params``): those in CONFIG_OPTIONS and
    ``train_only`` (the fields only train sets: --oracle and the ablations) override the preset."""
    import torch

    from weakshot_cli.engine.config import PRESETS, TrainConfig, build_config
    from weakshot_cli.engine.train import RESUME_OPTIONS, retrain_start, run_train

    p = ctx.params
    dataset, preset, resume, weights = p["dataset"], p["preset"], p["resume"], p["weights"]
    overrides = {**{key: p[key] for key in CONFIG_OPTIONS}, **train_only}
    if stage == "retrain" and resume is None and dataset is not None and preset in PRESETS:
        preset_iters = TrainConfig(**PRESETS[preset]).iters  # r50 is TrainConfig's defaults: no entry of its own
        overrides, weights = retrain_start(dataset, overrides, p["set_"] or [], weights, preset_iters)
    if resume is not None:  # DATASET and --weights are checked against the run by run_train
        changes = [typed for key, typed in _typed(ctx).items()
                   if key not in (*RESUME_OPTIONS, "resume", "dataset", "weights")]
        if changes:
            raise UserError(f"{changes[0]} would change the run that --resume continues; with --resume give only "
                            "--iters or --epochs (a new length), --device or --workers")

    def config() -> TrainConfig:
        cfg = build_config(preset, overrides, p["set_"] or [], p["method"])
        if preset == "r50" and cfg.device == "auto" and not torch.cuda.is_available():
            raise UserError(f"the r50 preset is for GPUs ({cfg.iters:,} iterations of a ResNet-50); on this CPU-only "
                            "machine pass --preset small (or --device cpu to train r50 on the CPU anyway)")
        return cfg

    summary = run_train(dataset, config, p["project"], p["name"], p["exist_ok"], resume, weights, console,
                        stage, resume_with={key: overrides[key] for key in RESUME_OPTIONS})
    if summary["interrupted"]:  # on a process other than the main one, which has said so (run_train)
        raise typer.Exit(130)
    if summary["main"]:
        console.print(f"Done: {summary['iter']}/{summary['iters']} iterations; weights in "
                      f"[bold]{Path(summary['run_dir']) / 'weights'}[/]")


@app.command()
def train(
    ctx: typer.Context,
    dataset: Annotated[Optional[Path], typer.Argument(help="Weak-shot dataset folder made by 'weakshot split'.")] = None,
    preset: Preset = "r50", method: Method = None, iters: Iters = None, epochs: Epochs = None,
    batch: Batch = None, imgsz: ImgSize = None,
    device: Device = None, workers: Workers = None, backbone: Backbone = None,
    backbone_weights: BackboneWeights = None, lr: Lr = None, seed: Seed = None, amp: Amp = None,
    no_sim: Annotated[bool, typer.Option("--no-sim", help="Ablation: no SimNet loss.")] = False,
    no_dist: Annotated[bool, typer.Option("--no-dist", help="Ablation: no distillation into novel masks.")] = False,
    no_comp: Annotated[bool, typer.Option("--no-comp", help="Ablation: no complementary loss.")] = False,
    oracle: Annotated[
        bool, typer.Option(help="Upper bound: plain MaskFormer on full masks (benchmark-mode datasets only).")
    ] = False,
    best_metric: BestMetric = None, set_: Sets = None, project: Project = Path("runs"), name: Name = None,
    exist_ok: ExistOk = False, resume: Resume = None, weights: Weights = None,
) -> None:
    """Train SimFormer on a weak-shot dataset; writes runs/train/NAME with weights, logs and plots.

    Examples:

      weakshot train datasets/camvid-ws --preset small --iters 2000 --device cpu

      weakshot train datasets/coco-ws --preset r50 --batch 8 --iters 60000 --set comp_weight=0.15

      torchrun --nproc-per-node 4 -m weakshot_cli train datasets/coco-ws --batch 16

      weakshot train --resume runs/train/train3

      weakshot train --resume runs/train/train3 --iters 4000     # continue a finished run to 4000 iterations
    """
    _train(ctx, "train", oracle=oracle or None, use_sim=False if no_sim else None,
           use_dist=False if no_dist else None, use_comp=False if no_comp else None)


# Options shared by evaluate, predict and pseudolabel.
Checkpoint = Annotated[Path, typer.Argument(help="Checkpoint (weights/best.pt) or run folder.")]
InferDevice = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
InferImgsz = Annotated[
    Optional[int], typer.Option("--imgsz", help="Resize the short side to this before inference (0: original size; "
                                                "default: the checkpoint's validation size).")
]
InferWorkers = Annotated[int, typer.Option("--workers", help="Data-loading worker processes.")]
Flip = Annotated[bool, typer.Option("--flip", help="Test-time augmentation: average with the mirrored image.")]
Scales = Annotated[Optional[str], typer.Option("--scales", help="Multi-scale test-time augmentation, e.g. 0.75,1,1.25.")]


@app.command()
def evaluate(
    checkpoint: Checkpoint,
    dataset: Annotated[Path, typer.Argument(help="Weak-shot dataset folder (weakshot.json).")],
    split: Annotated[str, typer.Option(help="Split to score; it needs full ground truth (val).")] = "val",
    device: InferDevice = "auto",
    imgsz: InferImgsz = None,
    batch: Annotated[int, typer.Option(help="Images per forward pass.")] = 4,
    workers: InferWorkers = 0,
    flip: Flip = False,
    scales: Scales = None,
    amp: InferAmp = "auto",
    samples: Annotated[int, typer.Option(help="Images in the plots/samples.png overlay grid.")] = 6,
    project: Project = Path("runs"),
    name: Annotated[Optional[str], typer.Option(help="Run name (default: evaluate, evaluate2, ...).")] = None,
    exist_ok: ExistOk = False,
) -> None:
    """Score a checkpoint on a dataset split: mIoU, base and novel mIoU, harmonic mean, per-class IoU.

    One confusion matrix at original resolution against full ground truth (ignore pixels excluded); a class
    absent from both ground truth and prediction is left out of every mean, one that is only predicted
    counts with IoU 0. Writes runs/evaluate/NAME/metrics.json and plots (confusion matrix, per-class IoU,
    sample overlays).

    Example: weakshot evaluate runs/train/train/weights/best.pt camvid-ws --split val --flip
    """
    from weakshot_cli.engine.evaluate import EvaluateOptions, run_evaluate
    from weakshot_cli.tables import print_evaluation

    result = run_evaluate(EvaluateOptions(checkpoint=checkpoint, dataset=dataset, split=split, project=project,
                                          name=name, exist_ok=exist_ok, device=device, imgsz=imgsz, batch=batch,
                                          workers=workers, flip=flip, scales=_scales(scales), samples=samples,
                                          amp=amp), console)
    if result:  # processes other than the first under torchrun report nothing
        print_evaluation(console, result)


@app.command()
def predict(
    checkpoint: Checkpoint,
    source: Annotated[
        str, typer.Argument(help="Image file, folder, quoted glob pattern ('photos/*.jpg') or .txt list of paths.")
    ],
    device: InferDevice = "auto",
    imgsz: InferImgsz = None,
    batch: Annotated[int, typer.Option(help="Images per forward pass (different sizes are padded).")] = 1,
    workers: InferWorkers = 0,
    flip: Flip = False,
    scales: Scales = None,
    amp: InferAmp = "auto",
    recursive: Annotated[bool, typer.Option(help="Also take images in subfolders (kept under labels/).")] = False,
    palette: Annotated[bool, typer.Option(help="Save label PNGs as palette PNGs in the checkpoint's colours.")] = False,
    save_overlay: Annotated[bool, typer.Option(help="Also save colour overlays as overlays/<stem>.jpg.")] = False,
    json_: Annotated[
        bool, typer.Option("--json", help="Also save predictions.json: COCO-style RLE results per image and class.")
    ] = False,
    project: Project = Path("runs"),
    name: Annotated[Optional[str], typer.Option(help="Run name (default: predict, predict2, ...).")] = None,
    exist_ok: ExistOk = False,
) -> None:
    """Segment images with a checkpoint: labels/<stem>.png class-index maps at each image's original size.

    Needs only the checkpoint (class names and colours come from it). Unreadable files are skipped with a
    warning; the command fails only when no image could be read. Writes runs/predict/NAME.

    Examples:

      weakshot predict runs/train/train/weights/best.pt photos/ --save-overlay

      weakshot predict runs/train/train photos/ --recursive --palette --json --flip --scales 0.75,1,1.25
    """
    from weakshot_cli.engine.predict import PredictOptions, run_predict

    run_predict(PredictOptions(checkpoint=checkpoint, source=source, project=project, name=name, exist_ok=exist_ok,
                               device=device, imgsz=imgsz, batch=batch, workers=workers, flip=flip,
                               scales=_scales(scales), recursive=recursive, palette=palette,
                               save_overlay=save_overlay, json=json_, amp=amp), console, err_console)


@app.command()
def pseudolabel(
    checkpoint: Checkpoint,
    dataset: Annotated[Path, typer.Argument(help="Weak-shot dataset folder (weakshot.json).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the new, pseudo-labelled dataset.")],
    min_score: Annotated[
        float, typer.Option(help="Leave novel pixels whose class score (summed over queries) is below this as ignore.")
    ] = 0.0,
    tag_only_min_score: Annotated[
        Optional[float], typer.Option(help="The score a pixel of a tag-only image (no mask: every label is the "
                                           "model's) needs to be labelled; default: --min-score.")
    ] = None,
    mode: Annotated[
        str, typer.Option(help="choose (default): an unknown pixel takes its best-scoring tagged class; keep: it "
                               "keeps its winning class only if the image is tagged with it (the paper's rule).")
    ] = "choose",
    device: InferDevice = "auto",
    imgsz: InferImgsz = None,
    batch: Annotated[int, typer.Option(help="Images per forward pass.")] = 4,
    workers: InferWorkers = 0,
    flip: Flip = False,
    scales: Scales = None,
    amp: InferAmp = "auto",
    exist_ok: Annotated[bool, typer.Option(help="Redo a pseudo-labelled dataset already in --out.")] = False,
    coco: Annotated[bool, typer.Option(help="Also write the expanded training labels as one COCO stuff JSON, "
                                            "coco.json (one RLE per image and class), for other tools.")] = False,
) -> None:
    """Pseudo-label the novel classes on the training images and write a new dataset for 'weakshot retrain'.

    Per unknown pixel (no base ground truth): the best-scoring of the image's tagged classes, if its score reaches
    --min-score (--mode choose, default), or the winning class only if the image is tagged with it (--mode keep,
    the paper's rule); base ground truth always wins; everything else stays ignore. A tag-only image (tags, no
    mask) may take any class it is tagged with, base or novel. The input dataset is
    untouched; an interrupted run resumes where it stopped when rerun with the same options.
    Printed and saved as pseudolabel.json: per novel class, what the tags alone can check (how often it is
    found in images tagged with it and predicted in images not tagged with it, coverage, mean score); on
    benchmark-mode datasets also novel IoU and coverage against the full masks.

    Example: weakshot pseudolabel runs/train/train/weights/best.pt camvid-ws -o camvid-pl
    """
    from weakshot_cli.engine.pseudolabel import PseudolabelOptions, run_pseudolabel
    from weakshot_cli.tables import pseudolabel_tables

    o = PseudolabelOptions(checkpoint=checkpoint, dataset=dataset, out=out, min_score=min_score,
                           tag_only_min_score=tag_only_min_score, mode=mode, device=device, imgsz=imgsz, batch=batch,
                           workers=workers, flip=flip, scales=_scales(scales), exist_ok=exist_ok, amp=amp, coco=coco)
    report = run_pseudolabel(o, console, err_console)
    for table in pseudolabel_tables(report) if report else []:  # processes other than the first report nothing
        console.print(table)


@app.command()
def retrain(
    ctx: typer.Context,
    dataset: Annotated[
        Optional[Path], typer.Argument(help="Pseudo-labelled dataset folder made by 'weakshot pseudolabel'.")
    ] = None,
    preset: Preset = "r50", method: Method = "dense", iters: Iters = None, epochs: Epochs = None,
    batch: Batch = None, imgsz: ImgSize = None,
    device: Device = None, workers: Workers = None, backbone: Backbone = None,
    backbone_weights: BackboneWeights = None, lr: Lr = None, seed: Seed = None, amp: Amp = None,
    best_metric: BestMetric = None, set_: Sets = None, project: Project = Path("runs"), name: Name = None,
    exist_ok: ExistOk = False, resume: Resume = None, weights: Weights = None,
    reject: Annotated[Optional[Path], typer.Option(
        help="rejections.json saved from 'weakshot review': those images' (or classes') pseudo-labels are read as "
             "ignore; base masks stay.")] = None,
) -> None:
    """Train a plain MaskFormer on pseudo-labelled data (novel classes now have masks; no SimNet, distillation
    or complementary loss); writes runs/retrain/NAME. Starts, by default, from the weights of the checkpoint that
    made the pseudo-labels, for half the preset's iterations; --weights CKPT starts from another checkpoint,
    --backbone-weights from a backbone initialisation as train does (both keep the preset's iterations).

    Example: weakshot retrain camvid-pl --preset small --iters 2000
    """
    _train(ctx, "retrain", reject=str(reject.resolve()) if reject else None)


@app.command()
def review(
    dataset: Annotated[Path, typer.Argument(help="Pseudo-labelled dataset folder made by 'weakshot pseudolabel'.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for the site (default: DATASET/review).")
                   ] = None,
    exist_ok: Annotated[bool, typer.Option(help="Redo a review already in --out.")] = False,
) -> None:
    """Look at the pseudo-labels before retraining: a static page (open review/index.html in any browser; no server)
    with every training image and its pseudo-label, most doubtful first (lowest mean score, lowest coverage of the
    unknown pixels, a class predicted where untagged), filtered by class and signal. Reject an image or a class in
    it with a click, save rejections.json, then: weakshot retrain DATASET --reject rejections.json

    Example: weakshot review datasets/camvid-pl
    """
    from weakshot_cli.engine.review import run_review

    index = run_review(dataset, out, exist_ok, console)
    console.print(f"Review: open [bold]{index}[/] in a browser")


@app.command()
def export(
    checkpoint: Checkpoint,
    format_: Annotated[str, typer.Option("--format", "-f", help="onnx (onnxruntime, any runtime that reads ONNX) or "
                                                                "torchscript (torch.jit.load).")] = "onnx",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output file (default: beside the checkpoint, "
                                                                    "best.onnx or best.torchscript).")] = None,
    exist_ok: Annotated[bool, typer.Option(help="Replace an export already at the output path.")] = False,
) -> None:
    """Export a checkpoint as one file that runs without weakshot: RGB images in (float 0..255, [B, 3, H, W], any
    size; normalisation inside), per-class scores and labels at the input size out, the novel-score calibration
    inside; class names, colours and the inference size in its metadata. 'weakshot predict model.onnx' runs it.
    ONNX needs the onnx extra: pip install 'weakshot[onnx]'.

    Example: weakshot export runs/retrain/retrain/weights/last.pt --format onnx
    """
    from weakshot_cli.engine.export import run_export

    path = run_export(checkpoint, format_, out, exist_ok)
    console.print(f"Exported [bold]{path}[/]")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Working folder for the demo.")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="Seed of the synthetic dataset and of training.")] = 0,
    iters: Annotated[int, typer.Option(help="SimFormer training iterations.")] = 300,
    retrain_iters: Annotated[int, typer.Option(help="Retraining iterations on the pseudo-labels.")] = 150,
    exist_ok: Annotated[bool, typer.Option(help="Reuse a demo folder that already exists.")] = False,
    amp: Annotated[str, typer.Option(help="Mixed precision for training: auto, bf16, fp16 (CUDA) or off.")] = "auto",
) -> None:
    """The whole path on a synthetic dataset made from a seed, in about 5 minutes on a 2-core CPU:
    split, train, evaluate, pseudolabel, retrain, evaluate, predict.

    Example: weakshot demo -o runs/demo
    """
    from weakshot_cli.demo import run_demo

    run_demo(out, seed, exist_ok, console, iters, retrain_iters, amp)


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    try:
        app()  # standalone: usage errors and --help are handled (and exited) by Typer itself
    except UserError as e:
        if state["debug"] or "--debug" in sys.argv[1:]:
            raise
        err_console.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True)
        sys.exit(2)
    except Interrupted as e:
        err_console.print(escape(str(e)), soft_wrap=True)
        sys.exit(130)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as e:
        if state["debug"] or "--debug" in sys.argv[1:]:
            raise
        err_console.print(f"[red]internal error:[/] {e.__class__.__name__}: {escape(str(e))} (rerun with --debug for the "
                          "traceback and please report it)", soft_wrap=True)
        sys.exit(1)
