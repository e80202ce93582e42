"""The tables the commands print, built from what the stages return, so no stage decides how its results look:
split's label values and dataset summary, evaluate's metrics, pseudolabel's reports, the demo's figures."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from weakshot_cli.data.identify import SEPARATING_SHARE
from weakshot_cli.data.manifest import Manifest
from weakshot_cli.engine.progress import figure

if TYPE_CHECKING:
    from weakshot_cli.data.split import LabelValues


def value_table(values: LabelValues) -> Table:
    """Per label value as stored: the class it becomes, its pixels and the images holding that class."""
    table = Table(title="Label values" + (" (rasterised from COCO)" if values.coco else ""))
    for col in ("value", "class id", "class", "pixels", "%", "images"):
        table.add_column(col, justify="right" if col not in ("class",) else "left")
    total = max(values.pixels, 1)
    for row in values.rows:
        table.add_row(str(row.value), "-" if row.class_id is None else str(row.class_id), row.name, f"{row.pixels:,}",
                      f"{100 * row.pixels / total:.2f}", "-" if row.images is None else str(row.images))
    if values.hidden:
        table.add_section()
        table.add_row("", "", f"{values.hidden} rarer values not shown (--all-values)", "", "", "")
    return table


def dataset_table(m: Manifest) -> Table:
    """Each class's role and how many images of each split are tagged with it, then the image counts."""
    unused = set(m.source.get("unused", []))
    table = Table(title=f"Weak-shot dataset: {len(m.base) - len(unused)} base + {len(m.novel)} novel classes"
                        + (f" ({len(unused)} unused)" if unused else ""))
    table.add_column("id", justify="right")
    table.add_column("class")
    table.add_column("role")
    for name in m.splits:
        table.add_column(f"{name} images", justify="right")
    counts: dict[str, Counter] = {name: Counter() for name in m.splits}
    tag_only, example_tags, per_split = Counter(), Counter(), {}
    for name, items in m.splits.items():  # one pass: split's items are made as they are read
        per_split[name] = {"masked": 0, "tag_only": 0}
        for it in items:
            counts[name].update(it.tags)
            per_split[name]["tag_only" if it.label is None else "masked"] += 1
            if name == "train" and it.label is None:
                tag_only.update(it.tags)
            if name == "train" and it.example:
                example_tags.update(it.tags)
    if tag_only:
        table.add_column("train tag-only", justify="right")
    examples = {c: example_tags[c] for c in m.novel}
    if any(examples.values()):
        table.add_column("example masks", justify="right")
    for c, cname in enumerate(m.classes):
        role = "[magenta]novel[/]" if c in m.novel else "[dim]unused[/]" if c in unused else "base"
        extra = [str(tag_only[c])] if tag_only else []
        extra += [str(examples[c]) if c in examples else ""] if any(examples.values()) else []
        table.add_row(str(c), cname, role, *(str(counts[n][c]) for n in m.splits), *extra)
    table.add_section()
    table.add_row("", "masked images", "", *(str(c["masked"]) for c in per_split.values()))
    if any(c["tag_only"] for c in per_split.values()):
        table.add_row("", "tag-only images", "", *(str(c["tag_only"]) for c in per_split.values()))
    table.add_row("", "all images", "", *(str(len(items)) for items in m.splits.values()))
    return table


def identifiability_table(m: Manifest, rows: int = 5) -> Table | None:
    """The novel-class pairs whose tags differ in the fewest training images (split's warning flags those below
    identify.SEPARATING_SHARE); None where no two classes share a tag."""
    pairs = m.source.get("identifiability") or []
    if not pairs:
        return None
    table = Table(title="Can the tags name the novel classes? (training images; weakest pairs)",
                  caption=f"separating: images tagged with one of the two and not the other; flagged below "
                          f"{SEPARATING_SHARE:.0%} of the rarer class's images")
    for col in ("novel class", "other class", "tagged", "both", "separating", ""):
        table.add_column(col, justify="left" if col in ("novel class", "other class", "") else "right")
    for p in pairs[:rows]:
        table.add_row(p["novel"], p["other"], f"{p['tagged'][0]} / {p['tagged'][1]}", str(p["together"]),
                      str(p["separating"]), "[red]confusable[/]" if p["share"] < SEPARATING_SHARE else "")
    return table


def metrics_table(result: dict) -> Table:
    """Per-class IoU, accuracy (recall) and precision of an evaluation (what run_evaluate returns), then its means:
    a novel class predicted far beyond its objects shows as high recall and low precision."""
    table = Table(title=f"{result['split']}: {result['images']} images (%)")
    for col, justify in (("class", "left"), ("type", "left"), ("IoU", "right"), ("Acc", "right"),
                         ("Precision", "right")):
        table.add_column(col, justify=justify)
    for name, r in result["classes"].items():
        kind = "[orange3]novel[/]" if r["type"] == "novel" else "base"
        table.add_row(name, kind, figure(r["IoU"]), figure(r["Acc"]), figure(r.get("Precision")))
    table.add_section()
    for key, label in (("mIoU", "mIoU (all)"), ("base_mIoU", "base mIoU"), ("novel_mIoU", "[bold]novel mIoU[/]"),
                       ("hIoU", "harmonic mean"), ("pAcc", "pixel accuracy"), ("mAcc", "mean accuracy"),
                       ("novel_precision", "novel mean precision")):
        table.add_row(label, "", figure(result.get(key)), "", "")
    return table


def print_evaluation(console: Console, result: dict) -> None:
    """The metrics table, then where the files are: as evaluate and the demo show an evaluation."""
    run_dir = Path(result["run_dir"])
    console.print(metrics_table(result))
    console.print(f"Results: [bold]{run_dir / 'metrics.json'}[/] and plots in {run_dir / 'plots'}")


def pseudolabel_tables(report: dict) -> list[Table]:
    """What run_pseudolabel reports: the tag check, then (benchmark mode) the scores against the full masks."""
    check = report["tag_check"]
    table = Table(title=f"pseudo-labels vs image tags, {report['images']} training images (%)",
                  caption="found: % of its tagged images with pixels of it; predicted: % of its untagged images "
                          "where the model predicted it (the tag filter refused it); coverage: % of its tagged images' "
                          "unknown pixels")
    confusable = any("tags_cannot_separate" in r for r in check["per_class"].values())
    columns = ("novel class", "tagged", "found", "untagged", "predicted", "coverage", "mean score")
    for col in (*columns, "tags cannot separate it from") if confusable else columns:
        table.add_column(col, justify="right" if col in columns[1:] else "left")
    for name, r in check["per_class"].items():
        row = [name, str(r["tagged_images"]), figure(r["found_pct"]), str(r["untagged_images"]),
               figure(r["untagged_predicted_pct"]), figure(r["coverage_pct"]),
               "-" if r["mean_score"] is None else f"{r['mean_score']:.3f}"]
        table.add_row(*row, *([", ".join(r.get("tags_cannot_separate", []))] if confusable else []))
    table.add_section()
    table.add_row("all unknown pixels", "", "", "", "", figure(check["labelled_pct"]), "", *([""] if confusable else []))
    tables = [table]
    if report.get("novel_mIoU") is not None:
        table = Table(title="pseudo-labels vs full masks, training images (%)")
        for col in ("novel class", "IoU", "precision"):
            table.add_column(col, justify="left" if col == "novel class" else "right")
        for name, iou in report["novel_IoU"].items():
            table.add_row(name, figure(iou), figure(report["precision"][name]))
        table.add_section()
        table.add_row("novel mIoU", figure(report["novel_mIoU"]), "")
        table.add_row("coverage of novel pixels", figure(report["coverage"]), "")
        tables.append(table)
    if "by_source" in report:
        tables.append(source_table(report["by_source"]))
    return tables


def source_table(by_source: dict) -> Table:
    """The tag check (and, in benchmark mode, the novel mIoU) of masked and tag-only images apart."""
    scored = all("novel_mIoU" in r for r in by_source.values())
    table = Table(title="masked and tag-only training images apart (%; found and predicted: mean over novel classes)")
    columns = ("images", "count", "found", "predicted", "unknown pixels labelled", *(("novel mIoU",) if scored else ()))
    for col in columns:
        table.add_column(col, justify="left" if col == "images" else "right")
    for kind, r in by_source.items():
        per_class = r["tag_check"]["per_class"].values()
        mean = lambda key: figure(sum(v) / len(v) if (v := [x[key] for x in per_class if x[key] is not None])  # noqa
                                  else None)
        table.add_row(kind.replace("_", "-"), str(r["images"]), mean("found_pct"), mean("untagged_predicted_pct"),
                      figure(r["tag_check"]["labelled_pct"]), *((figure(r["novel_mIoU"]),) if scored else ()))
    return table


def demo_table(novel: list[str], first: dict, second: dict, report: dict) -> Table:
    """The demo's figures: both evaluations and the pseudo-labels' novel mIoU."""
    table = Table(title=f"weakshot demo: novel classes {', '.join(novel)} learnt from tags (%, val)")
    for col in ("stage", "mIoU", "base mIoU", "novel mIoU", "hIoU"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    for name, r in (("SimFormer (train)", first), ("after pseudolabel + retrain", second)):
        table.add_row(name, *(f"{r[k]:.1f}" for k in ("mIoU", "base_mIoU", "novel_mIoU", "hIoU")))
    table.add_row("pseudo-labels (training images)", "", "", f"{report['novel_mIoU']:.1f}", "")
    return table
