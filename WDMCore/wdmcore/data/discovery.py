"""Finding the volumes of a dataset: BraTS 2023, LIDC-IDRI (preprocessed), any folder, or a list file."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, DataError
from ..vocabulary import BRATS_SEQUENCES
from ..volumes.reading import VOLUME_SUFFIXES, strip_volume_suffix, volume_suffix

log = logging.getLogger(__name__)

FORMATS = ("auto", "brats", "lidc", "folder", "list")
# The name older versions gave the "folder" layout; run configurations written then still say it.
OLD_LAYOUT_NAMES = {"general": "folder"}
LIDC_FILENAMES = ("processed.nii.gz", "processed.nii")


@dataclass(frozen=True)
class Case:
    """One training volume: an identifier, its file and the layout it was found in.

    ``format`` is "brats", "lidc" or "folder" (any folder of volumes); ``sequence`` is the BraTS
    sequence (t1n, t1c, t2w, t2f) for BraTS cases and None otherwise.
    """

    id: str
    path: Path
    format: str = "folder"
    sequence: str | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.path,)


def _visible_files(root: Path):
    """All files below ``root``, sorted, ignoring hidden files and folders."""
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file():
            yield path


def _brats_sequence(path: Path) -> str | None:
    """The BraTS sequence of a file named like ``BraTS-GLI-00000-000-t1n.nii.gz``, else None."""
    stem = strip_volume_suffix(path.name)
    if volume_suffix(path) not in (".nii", ".nii.gz") or "-" not in stem:
        return None
    seq = stem.rsplit("-", 1)[1].lower()
    return seq if seq in BRATS_SEQUENCES else None


# Image formats found beside volumes that wdm does not read, and what to do with such a file.
_TO_NIFTI = "convert it to NIfTI (.nii.gz) to use it"
UNREAD_IMAGE_FORMATS = {
    ".mgz": f"a FreeSurfer MGZ volume, which wdm does not read; {_TO_NIFTI} (e.g. `mri_convert X.mgz X.nii.gz`)",
    ".mgh": f"a FreeSurfer MGH volume, which wdm does not read; {_TO_NIFTI} (e.g. `mri_convert X.mgh X.nii.gz`)",
    ".img": f"an Analyze image, which wdm does not read; {_TO_NIFTI}",
    ".hdr": f"an Analyze header, which wdm does not read; {_TO_NIFTI}",
    ".mnc": f"a MINC volume, which wdm does not read; {_TO_NIFTI} (e.g. `mnc2nii`)",
    ".dcm": "a DICOM file; convert CT series with `wdm preprocess-lidc`, other series to NIfTI (e.g. dcm2niix)",
    ".npy": f"a NumPy array without voxel geometry; {_TO_NIFTI} with its affine",
    ".npz": f"NumPy arrays without voxel geometry; {_TO_NIFTI} with its affine",
    ".nii.bz2": "a bzip2-compressed NIfTI file, which wdm does not read; recompress it as .nii.gz",
    ".nii.zst": "a zstd-compressed NIfTI file, which wdm does not read; recompress it as .nii.gz",
    ".gipl": f"a GIPL volume, which wdm does not read; {_TO_NIFTI}",
    ".vtk": f"a VTK file, which wdm does not read as a volume; {_TO_NIFTI}",
}


def files_passed_over(root: str | Path) -> tuple[list[tuple[Path, str]], dict[str, int]]:
    """What discovery does not read below a dataset folder: (image files in another format, each with what to do
    about it; how many other files there are, by ending). Hidden files and folders are left out, as discovery
    leaves them out."""
    root = Path(root)
    if not root.is_dir():
        return [], {}
    images: list[tuple[Path, str]] = []
    others: dict[str, int] = {}
    for f in _visible_files(root):
        if volume_suffix(f) is not None:
            continue
        name = f.name.lower()
        suffix = next((s for s in UNREAD_IMAGE_FORMATS if name.endswith(s)), None)
        if suffix is not None:
            images.append((f, UNREAD_IMAGE_FORMATS[suffix]))
        else:
            ending = f.suffix.lower() or "(no ending)"
            others[ending] = others.get(ending, 0) + 1
    return images, dict(sorted(others.items(), key=lambda kv: (-kv[1], kv[0])))


def _looks_like_brats(files: list[Path]) -> bool:
    return any(_brats_sequence(f) is not None for f in files)


def _looks_like_lidc(files: list[Path]) -> bool:
    return any(f.name.lower() in LIDC_FILENAMES for f in files)


def _discover_brats(root: Path, files: list[Path], sequence: str) -> list[Case]:
    if sequence not in BRATS_SEQUENCES:
        raise ConfigError(f"unknown BraTS sequence {sequence!r}; choose one of {', '.join(BRATS_SEQUENCES)}")
    folders: dict[Path, dict[str, Path]] = {}
    for f in files:
        seq = _brats_sequence(f)
        if seq is not None:
            folders.setdefault(f.parent, {})[seq] = f
    cases = []
    for folder, seqs in sorted(folders.items()):
        if sequence not in seqs:
            log.warning(
                "%s: BraTS case folder has no -%s file (found %s); skipped",
                folder,
                sequence,
                ", ".join(sorted(seqs)),
            )
            continue
        cases.append(Case(id=folder.name, path=seqs[sequence], format="brats", sequence=sequence))
    if not cases:
        raise DataError(
            f"{root}: BraTS layout found but no case has a -{sequence}.nii.gz file; "
            f"pick another sequence (one of {', '.join(BRATS_SEQUENCES)})"
        )
    return cases


def _discover_lidc(root: Path, files: list[Path]) -> list[Case]:
    cases = []
    for f in files:
        if f.name.lower() in LIDC_FILENAMES:
            rel = f.parent.relative_to(root)
            case_id = "/".join(rel.parts) if rel.parts else f.parent.name
            cases.append(Case(id=case_id, path=f, format="lidc"))
    if not cases:
        raise DataError(
            f"{root}: no processed.nii.gz files found (LIDC layout); run `wdm preprocess-lidc` on the "
            "DICOM folder first, or use format='folder'"
        )
    return cases


def _discover_folder(root: Path, files: list[Path]) -> list[Case]:
    cases = []
    for f in files:
        if volume_suffix(f) is None:
            continue
        rel = f.relative_to(root)
        case_id = "/".join(rel.parts[:-1] + (strip_volume_suffix(rel.name),))
        cases.append(Case(id=case_id, path=f, format="folder"))
    return cases


def _read_list_file(list_file: Path) -> list[Case]:
    cases = []
    missing = []
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(
            f"{list_file} is not a text file; a list file holds one volume path per line (or give a folder)."
        ) from None
    for lineno, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry).expanduser()
        if not path.is_absolute():
            path = (list_file.parent / path).resolve()
        if not path.is_file():
            missing.append(f"line {lineno}: {entry}")
            continue
        if volume_suffix(path) is None:
            raise DataError(
                f"{list_file}: line {lineno} ({entry}) is not a volume file; "
                f"list only files ending in {', '.join(VOLUME_SUFFIXES)}"
            )
        fmt = "brats" if _brats_sequence(path) else "lidc" if path.name.lower() in LIDC_FILENAMES else "folder"
        cases.append(Case(id=strip_volume_suffix(path.name), path=path, format=fmt, sequence=_brats_sequence(path)))
    if missing:
        raise DataError(
            f"{list_file}: {len(missing)} listed file(s) do not exist ({'; '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}); fix the paths (relative paths are read from the list "
            "file's folder)"
        )
    # Disambiguate identical ids (e.g. many processed.nii.gz) with the parent folder names.
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        cases = [
            Case(id=f"{c.path.parent.name}/{c.id}", path=c.path, format=c.format, sequence=c.sequence) for c in cases
        ]
    return cases


def detect_format(path: str | Path) -> str:
    """The layout of ``path``: "list" for a list file, "brats", "lidc" or "folder" for a folder."""
    path = Path(path)
    if path.is_file():
        return "folder" if volume_suffix(path) else "list"
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder; check the dataset path")
    files = list(_visible_files(path))
    if _looks_like_brats(files):
        return "brats"
    if _looks_like_lidc(files):
        return "lidc"
    return "folder"


def discover(path: str | Path, format: str = "auto", sequence: str = "t1n") -> list[Case]:
    """Find the cases of a dataset.

    ``path`` is a folder (searched recursively, hidden entries ignored), a list file (one volume path per
    line; blank lines and lines starting with ``#`` are ignored; relative paths are relative to the list
    file) or a single volume file. ``format``:

    * ``"brats"``: BraTS 2023 case folders holding ``<case>-t1n/-t1c/-t2w/-t2f.nii.gz``; one case per folder,
      the file of ``sequence`` (t1n by default); folders without it are skipped with a logged warning.
    * ``"lidc"``: LIDC-IDRI case folders holding one ``processed.nii.gz`` (written by ``wdm preprocess-lidc``
      or the released script); the case id is the folder path relative to ``path``.
    * ``"folder"``: every .nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd file below ``path``.
    * ``"list"``: ``path`` is a list file.
    * ``"auto"``: a list file if ``path`` is a file that is not a volume; otherwise BraTS if any file is named
      like a BraTS sequence, LIDC if any file is named processed.nii(.gz), else folder.

    ``"general"``, the old name of ``"folder"``, is still accepted.

    Cases are sorted by path. Raises :class:`DataError` when nothing is found.
    """
    format = OLD_LAYOUT_NAMES.get(format, format)
    if format not in FORMATS:
        raise ConfigError(f"unknown dataset format {format!r}; choose one of {', '.join(FORMATS)}")
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; check the dataset path")
    if path.is_file():
        unread = next((why for s, why in UNREAD_IMAGE_FORMATS.items() if path.name.lower().endswith(s)), None)
        if unread is not None:
            raise DataError(f"{path}: is {unread}")
        if volume_suffix(path) is not None and format != "list":
            fmt = "brats" if _brats_sequence(path) else "folder"
            return [Case(id=strip_volume_suffix(path.name), path=path, format=fmt, sequence=_brats_sequence(path))]
        if format not in ("auto", "list"):
            raise ConfigError(f"{path} is a file; format={format!r} needs a folder (use format='list')")
        cases = _read_list_file(path)
        if not cases:
            raise DataError(f"{path}: the list file names no volumes; add one path per line")
        return cases

    if format == "list":
        raise ConfigError(f"{path} is a folder; format='list' needs a list file")
    files = list(_visible_files(path))
    fmt = format
    if fmt == "auto":
        fmt = "brats" if _looks_like_brats(files) else "lidc" if _looks_like_lidc(files) else "folder"
    if fmt == "brats":
        cases = _discover_brats(path, files, sequence)
    elif fmt == "lidc":
        cases = _discover_lidc(path, files)
    else:
        cases = _discover_folder(path, files)
    if not cases:
        raise DataError(
            f"{path}: no volumes found (looked recursively for files ending in "
            f"{', '.join(VOLUME_SUFFIXES)}); "
            "point to the dataset folder or a list file"
        )
    log.info("%s: found %d %s case(s)", path, len(cases), fmt)
    return cases
