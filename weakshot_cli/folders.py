"""Output folders: the one place that decides where a command may write and what it may replace or remove.

A command *claims* a folder: a new or empty one becomes its own, and a marker file (``.weakshot``) names the
command; a folder the same command made earlier is recognised by that marker (or, for folders made before
markers existed, by the files that command always writes and nothing else); anything else is refused. Files are
replaced or removed only inside a folder the command owns, and only through this module."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from weakshot_cli import __version__
from weakshot_cli.errors import UserError
from weakshot_cli.io import TMP_SUFFIX, write_json

MARKER = ".weakshot"

# Per command: what it writes at the top of its folder, and the entry a folder it made before markers existed always
# has. Such a folder is recognised when it holds that entry and nothing but these.
WRITES: dict[str, tuple[frozenset[str], str]] = {
    "split": (frozenset({"weakshot.json", "labels", "full"}), "weakshot.json"),
    "pseudolabel": (frozenset({"weakshot.json", "pseudolabel.json", ".pseudolabel-state.json", "labels", "stats",
                               "coco.json", "review"}),
                    ".pseudolabel-state.json"),
    "train": (frozenset({"config.json", "log.txt", "metrics.jsonl", "results.json", "weights", "plots"}),
              "config.json"),
    "evaluate": (frozenset({"metrics.json", "plots"}), "metrics.json"),
    "predict": (frozenset({"labels", "overlays", "predictions.json"}), "labels"),
    "demo": (frozenset({"synthetic", "dataset", "dataset-pl", "runs"}), "synthetic"),
    "review": (frozenset({"index.html", "data.js", "thumbs", "large"}), "index.html"),
}
WRITES["retrain"] = WRITES["train"]
COMMAND_OF = {"train": "weakshot train", "retrain": "weakshot retrain", "split": "weakshot split",
              "pseudolabel": "weakshot pseudolabel", "evaluate": "weakshot evaluate", "predict": "weakshot predict",
              "demo": "weakshot demo", "review": "weakshot review"}


def owner(folder: Path) -> str | None:
    """The command that made ``folder``: its marker's, else the command whose pre-marker layout it has, else None."""
    marker = folder / MARKER
    if marker.is_file() and not marker.is_symlink():
        try:
            command = json.loads(marker.read_text(encoding="utf-8")).get("command")
        except (OSError, ValueError, AttributeError):
            return None
        return command if command in WRITES else None
    entries = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    for command, (writes, always) in WRITES.items():
        if always in entries and entries <= writes | {p for p in entries if p.startswith(".") and
                                                      p.endswith(TMP_SUFFIX)}:
            if command == "split" and _manifest_command(folder) == "pseudolabel":
                return "pseudolabel"
            return command
    return None


def _manifest_command(folder: Path) -> object:
    try:
        return json.loads((folder / "weakshot.json").read_text(encoding="utf-8"))["source"].get("command")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _is_empty(folder: Path) -> bool:
    return folder.is_dir() and not any(folder.iterdir())


def mark(folder: Path, command: str) -> None:
    """Make ``folder`` (and its parents) and record that ``command`` owns it; a folder made here goes again if the
    marker cannot be written."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        write_json(folder / MARKER, {"command": command, "version": __version__})
    except UserError:
        _remove_empty(made)
        raise


def _remove_empty(folders: Iterable[Path]) -> None:
    """Remove these folders (innermost first) where they are empty; one something else wrote into stays."""
    for p in folders:
        with suppress(OSError):
            p.rmdir()


def owned_by(folder: Path, command: str) -> bool:
    """Whether ``command`` made ``folder`` (train and retrain folders made before markers look alike)."""
    made_by = owner(folder)
    return made_by == command or (made_by is not None and not (folder / MARKER).exists()
                                  and WRITES[made_by] is WRITES[command])


def claim(folder: Path, command: str, option: str = "-o", mark_new: bool = True) -> bool:
    """Take ``folder`` for ``command``: True for a new (or empty) folder, then marked as the command's own unless
    ``mark_new`` is false (a dataset staged elsewhere is marked when it moves in); False for one the command made
    earlier, which it may resume or redo. Anything else is refused with a one-line error naming the folder."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise UserError(f"output path exists and is not a folder; choose another {option}", folder)
    if not folder.exists() or _is_empty(folder):
        if mark_new:
            mark(folder, command)
        return True
    if not owned_by(folder, command):
        made_by = owner(folder)
        if made_by is None:
            raise UserError(f"folder is not empty and was not made by {COMMAND_OF[command]}; nothing in it is "
                            f"touched: choose a new or empty {option}", folder)
        raise UserError(f"holds the output of {COMMAND_OF[made_by]}, not of {COMMAND_OF[command]}; choose another "
                        f"{option}", folder)
    return False


def claim_file(path: Path, exist_ok: bool, made_by_us: Callable[[Path], bool], option: str = "-o") -> None:
    """Take a single output file (an export): a new path, or with ``exist_ok`` one that ``made_by_us`` recognises;
    anything else is refused and left as it is."""
    if not (path.exists() or path.is_symlink()):
        return
    if not exist_ok:
        raise UserError(f"already exists; pass --exist-ok to replace it, or choose another {option}", path)
    if path.is_symlink() or not path.is_file() or not made_by_us(path):
        raise UserError(f"exists and is not a model weakshot exported; nothing is replaced: choose another {option}",
                        path)


def remove_own(folder: Path, command: str, paths: Iterable[Path]) -> None:
    """Remove ``paths`` (files inside ``folder``, which ``command`` must own), then the folders they leave empty."""
    if not owned_by(folder, command):
        raise UserError(f"will not remove files from a folder {COMMAND_OF[command]} did not make", folder)
    root = folder.resolve()
    for path in paths:
        path = Path(os.path.normpath(root / Path(path).resolve().relative_to(root)))
        if path.is_symlink() or not path.is_file():
            continue
        path.unlink()
        for parent in path.parents:
            if parent == root or not parent.is_relative_to(root) or any(parent.iterdir()):
                break
            parent.rmdir()


def remove_interrupted_writes(folder: Path) -> None:
    """Delete the temporary files that atomic writes into ``folder`` left when a kill interrupted them."""
    for tmp in folder.glob(f".*{TMP_SUFFIX}"):
        tmp.unlink()


def check_run_name(name: str) -> None:
    """A run name is one folder under <project>/<stage>: '../../x' or 'a/b' would write elsewhere."""
    if name in (".", "..") or any(sep and sep in name for sep in ("/", os.sep, os.altsep)):
        raise UserError(f"--name {name!r}: a run name must be a single folder name (no path separators, "
                        "not '.' or '..')")


def new_run_dir(project: Path, stage: str, name: str | None, exist_ok: bool) -> Path:
    """runs/<stage>/<name>, auto-incremented (train, train2, ...) unless --name is given; --exist-ok reuses a
    run folder of the same stage, never a folder the tool did not make."""
    base = project / stage
    if name:
        check_run_name(name)
    name = name or stage
    candidate = base / name
    if candidate.exists() and not _is_empty(candidate):
        if exist_ok or name != stage:
            if not exist_ok and candidate.is_dir():
                raise UserError("run folder already exists; pass --exist-ok or choose another --name", candidate)
            claim(candidate, stage, "--name")
            return candidate
        n = 2
        while (base / f"{name}{n}").exists():
            n += 1
        candidate = base / f"{name}{n}"
    claim(candidate, stage, "--name")
    return candidate


def run_stage(run_dir: Path) -> str:
    """The stage whose run ``run_dir`` is (train or retrain): its marker's, else the folder above it."""
    return owner(run_dir) if (run_dir / MARKER).exists() else run_dir.parent.name


@contextmanager
def provisional_run_dir(project: Path, stage: str, name: str | None, exist_ok: bool,
                        keep: Callable[[Path], bool] = lambda run_dir: False, ddp: object = None) -> Iterator[Path]:
    """A new run folder that disappears again, with the parents made for it, if the block raises an error
    (bad input found mid-run, a full disk) and ``keep(run_dir)`` is false: a failed run leaves nothing behind.
    Ctrl-C keeps what is there. Under torchrun (``ddp``: engine.distributed.Dist) the first process makes the
    folder and every process gets its path, or its error."""
    main = ddp is None or ddp.main
    made = [p for p in (project / stage, *(project / stage).parents) if not p.exists()]

    def claim_run_dir() -> str:
        try:
            return str(new_run_dir(project, stage, name, exist_ok))
        except Exception:
            _remove_empty(made)
            raise

    run_dir = Path(claim_run_dir() if ddp is None else ddp.on_main(claim_run_dir))
    fresh = main and {p.name for p in run_dir.iterdir()} == {MARKER}
    try:
        yield run_dir
    except Exception:
        if fresh and not keep(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        if main:
            _remove_empty(made)
        raise


@contextmanager
def staging_folder(out: Path) -> Iterator[Path]:
    """A hidden folder beside ``out`` to build a dataset in; gone afterwards, whatever happens."""
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=parent))
    except OSError as e:
        raise UserError(f"cannot write the output folder ({e.strerror})", out) from None
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def commit(staging: Path, out: Path, command: str, replaced: set[Path], last: str) -> None:
    """Move staged files into ``out``, removing only ``replaced`` (the old output's own files): a staged file that
    would land on anything else is refused before anything moves. The old ``last`` file (the manifest) goes first
    and the new one last, so a crash never leaves a valid-looking dataset with missing or mixed labels. Ctrl-C
    waits until the renames (a moment) are done."""
    root = out.resolve()
    for src in _staged(staging, last):
        target = root / src.relative_to(staging)
        if (target.exists() or target.is_symlink()) and target not in replaced:
            raise UserError("would overwrite a file this dataset did not make; move it away or choose another -o",
                            out / src.relative_to(staging))
    with _uninterruptible():
        if replaced:
            remove_own(out, command, sorted(replaced, key=lambda p: p.name != last))
        mark(out, command)
        for src in _staged(staging, last):
            target = root / src.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            src.replace(target)


def _staged(staging: Path, last: str) -> Iterator[Path]:
    """The staged files, the top-level ``last`` after all others; walked, not listed: a dataset stages 100k labels."""
    def walk(folder: Path) -> Iterator[Path]:
        with os.scandir(folder) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    yield from walk(Path(e.path))
                elif e.is_file() and not (folder == staging and e.name == last):
                    yield Path(e.path)
    yield from walk(staging)
    if (staging / last).is_file():
        yield staging / last


@contextlib.contextmanager
def _uninterruptible() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
