"""Where the samples come from: a folder with one subfolder per class, or a CSV of path,label[,group].

Both return parallel lists (paths, labels) with labels as strings; `resolve_classes` then fixes the
class order, which is what maps a label to the model's output index.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from imgcls.data.decode import IMAGE_EXTENSIONS
from imgcls.errors import UserError
from imgcls.io import read_csv_rows

SPLIT_NAMES = {"train", "val", "valid", "validation", "test"}


@dataclass
class FolderListing:
    """What a class-folder tree holds: the images by class, and every entry left out, with why."""
    paths: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)   # class folders with no image
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why): images or links not used
    other_files: list[str] = field(default_factory=list)  # files without an image extension (labels.csv, notes)

    def skipped_summary(self, limit: int = 3) -> str:
        """'5 entries are not used: 'a.png' (an image directly in ..., not in a class folder), ...'."""
        shown = ", ".join(f"'{p}' ({why})" for p, why in self.skipped[:limit])
        more = f" and {len(self.skipped) - limit} more" if len(self.skipped) > limit else ""
        return f"{len(self.skipped)} entr{'y is' if len(self.skipped) == 1 else 'ies are'} not used: {shown}{more}"


def list_class_folder(root: str | os.PathLike) -> FolderListing:
    """The images of ``root/<class>/...`` (any depth, links to folders followed once, hidden entries
    skipped silently), sorted by class then path; anything else is listed in ``skipped``."""
    root = Path(root)
    out = FolderListing()
    class_dirs = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():  # follows a link to a folder
            class_dirs.append(entry)
        elif entry.is_symlink() and not entry.exists():
            out.skipped.append((str(entry), "a broken link"))
        elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
            out.skipped.append((str(entry), "an image outside any class folder"))
        else:
            out.other_files.append(str(entry))
    for class_dir in class_dirs:
        found = images_under(class_dir, out)
        if not found:
            out.empty_classes.append(class_dir.name)
        out.paths += [str(class_dir / rel) for rel in found]
        out.labels += [class_dir.name] * len(found)
    return out


def scan_folder(root: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Image paths under `root/<class>/...` (any depth) and, for each, its class folder name.

    Paths are `root` joined with the relative path, sorted by class then path so the order is the
    same on every machine. Hidden files and folders (".name") and files without an image extension
    are skipped; links to folders are followed (each real folder once); images that are not used
    (directly in `root`, behind a broken link or a link loop) are named in one warning.
    """
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() == ".csv":
            raise UserError(f"image folder '{root}' is a CSV file, not a folder; pass it as data.csv "
                            "(or data.val_csv) instead.")
        raise UserError(f"image folder '{root}' is a file, not a folder; pass the folder that holds one "
                        "subfolder per class.")
    if not root.is_dir():
        raise UserError(f"image folder '{root}' does not exist; check the path (it should hold one subfolder per class).")
    names = {d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")}
    if not names:
        raise UserError(f"image folder '{root}' has no class subfolders; put the images of each class in their own subfolder.")
    if "train" in names and names <= SPLIT_NAMES:
        raise UserError(
            f"image folder '{root}' holds split folders ({', '.join(sorted(names))}), not classes; "
            f"point the training data at '{root / 'train'}' and the validation data at its sibling."
        )
    listing = list_class_folder(root)
    for name in listing.empty_classes:
        warnings.warn(f"class folder '{root / name}' holds no images ({', '.join(IMAGE_EXTENSIONS)}); it is ignored.",
                      stacklevel=2)
    if listing.skipped:
        warnings.warn(f"in '{root}', {listing.skipped_summary()}.", stacklevel=2)
    if not listing.paths:
        raise UserError(f"image folder '{root}' has class subfolders but no images with extension {', '.join(IMAGE_EXTENSIONS)}.")
    return listing.paths, listing.labels


def images_under(folder: Path, out: FolderListing) -> list[str]:
    """Relative POSIX paths of the image files below `folder`, sorted; hidden entries skipped silently,
    links to folders followed unless they lead back to a folder already walked (a loop)."""
    found = []
    seen = {os.path.realpath(folder)}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            real = os.path.realpath(os.path.join(dirpath, d))
            if real in seen:
                out.skipped.append((os.path.join(dirpath, d), "a link to a folder already listed (a loop or a duplicate)"))
                continue
            seen.add(real)
            keep.append(d)
        dirnames[:] = keep  # prunes the walk in place
        rel_dir = Path(dirpath).relative_to(folder)
        for name in filenames:
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            if not os.path.exists(full):
                out.skipped.append((full, "a broken link"))
            elif name.lower().endswith(IMAGE_EXTENSIONS):
                found.append((rel_dir / name).as_posix())
            else:
                out.other_files.append(full)
    return sorted(found)


def read_csv(
    csv_path: str | os.PathLike,
    path_column: str = "path",
    label_column: str = "label",
    group_column: str | None = None,
    with_columns: bool = False,
    empty_labels: bool = False,
    label_key: str = "data.label_column",
):
    """Read (paths, labels, groups) from a CSV with a header row; groups is None without `group_column`.
    With ``with_columns`` a fourth value maps every other column's name to its cells. ``empty_labels``
    accepts an empty label cell (multi-label: an image with no label). ``label_key`` is the config key
    that chose ``label_column`` (task.target, a head's label...), named when the column is missing.

    Relative paths are taken relative to the CSV's own folder (so the CSV and its images can move
    together); absolute paths are kept. Cells are read as strings with surrounding spaces removed.
    """
    csv_path = Path(csv_path)
    header, rows = read_csv_rows(csv_path)
    if not header:
        raise UserError(f"CSV file '{csv_path}' is empty; it needs a header row such as 'path,label'.")
    wanted = {"data.path_column": path_column, "data.label_column": label_column}
    if group_column is not None:
        wanted["data.group_column"] = group_column
    for key, column in wanted.items():
        if column not in header:
            raise UserError(
                f"CSV file '{csv_path}' has no column '{column}' (columns: {', '.join(header)}); "
                f"set {label_key if key == 'data.label_column' else key} to one of them."
            )
    index = {key: header.index(column) for key, column in wanted.items()}
    other = [i for i in range(len(header)) if i not in index.values()]
    base = csv_path.parent
    paths, labels, groups = [], [], []
    others: dict[str, list[str]] = {header[i]: [] for i in other}
    for line_no, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        cells = {}
        for key, i in index.items():
            value = row[i].strip() if i < len(row) else ""
            if not value and not (empty_labels and key == "data.label_column"):
                raise UserError(f"CSV file '{csv_path}' line {line_no} has an empty '{wanted[key]}' cell; fill it or remove the line.")
            cells[key] = value
        paths.append(str(base / cells["data.path_column"]))  # an absolute path replaces `base`
        labels.append(cells["data.label_column"])
        if group_column is not None:
            groups.append(cells["data.group_column"])
        for i in other:
            others[header[i]].append(row[i].strip() if i < len(row) else "")
    if not paths:
        raise UserError(f"CSV file '{csv_path}' has a header but no rows; add one row per image.")
    out = (paths, labels, (groups if group_column is not None else None))
    return (*out, others) if with_columns else out


def check_class_list(names, key: str = "data.classes") -> list[str]:
    """A class list given in the config (``data.classes``, ``task.heads.<head>.classes``) as strings; one
    UserError naming ``key`` when a name repeats (its outputs, metrics and CSV columns would collide, and
    the classes it adds could never occur) or is blank. The one validation for every class list."""
    names = [str(c) for c in names]
    if any(not c.strip() for c in names):
        raise UserError(f"config key '{key}' has an empty class name; give every class a name.")
    duplicates = sorted({c for c in names if names.count(c) > 1})
    if duplicates:
        raise UserError(f"config key '{key}' repeats {', '.join(repr(c) for c in duplicates)}; list each class "
                        "once.")
    return names


def resolve_classes(labels: list[str], explicit: list[str] | None = None, key: str = "data.classes") -> list[str]:
    """The class order: `explicit` if given, else numeric order when every label is an integer, else alphabetical."""
    present = set(labels)
    if explicit is not None:
        explicit = check_class_list(explicit, key)
        unknown = sorted(present - set(explicit))
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
            noun = "label {} is" if len(unknown) == 1 else "labels {} are"
            raise UserError(
                f"{noun.format(shown)} not in the class list ({', '.join(explicit)}); add to data.classes or fix the labels."
            )
        return explicit
    if all(_is_int(c) for c in present):
        return sorted(present, key=lambda c: (int(c), c))  # "2" before "10"; "2" and "02" stay distinct
    return sorted(present)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
