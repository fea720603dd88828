"""Reading volume files into (array, affine) pairs.

Every reader returns the voxel array in NIfTI index order (i, j, k) and a 4x4 voxel-to-RAS affine, whatever
the file format. NIfTI files are read with nibabel (exactly what ``get_fdata`` gives, no reorientation);
NRRD/MetaImage files with SimpleITK, whose (k, j, i) arrays are transposed and whose LPS geometry is turned
into RAS. Both libraries are imported only when a file needs them.

Before either library allocates an array, the header's claim (voxel count x bytes per voxel) is held against
what the file holds (compressed data are decompressed chunk by chunk and counted, so nothing beyond what the
file really holds is ever kept) and against the memory the machine has free: a 4 KB file whose header claims
1024^3 voxels is refused at once, not after gigabytes were allocated. Complex-valued voxels are refused: a
model of real images would silently lose their imaginary part.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, InputShapeError
from .storage import DEFLATE, HEX, RAW, TEXT, VoxelStorage, metaimage_storage, nifti_storage, nrrd_storage

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def volume_suffix(path: str | Path) -> str | None:
    """The volume suffix of ``path`` (``.nii.gz``, ``.nrrd``, ...) or None if it is not a volume file."""
    name = Path(path).name.lower()
    for suffix in (".nii.gz",) + tuple(s for s in VOLUME_SUFFIXES if s != ".nii.gz"):
        if name.endswith(suffix):
            return suffix
    return None


def strip_volume_suffix(name: str) -> str:
    suffix = volume_suffix(name)
    return name[: -len(suffix)] if suffix else name


@dataclass(frozen=True)
class VolumeHeader:
    """Geometry of a volume file, read without decoding the voxels."""

    path: Path
    shape: tuple[int, ...]
    affine: np.ndarray
    voxel_type: str = ""  # what the header says a value is, e.g. "float32" or "complex of 32-bit float"
    bytes_per_value: int = 0  # bytes of one element of ``shape`` as stored (0: unknown)
    complex_values: bool = False
    storage: VoxelStorage | None = None  # where the voxel bytes are (None: not located, not checked)

    @property
    def spacing(self) -> tuple[float, ...]:
        return affine_spacing(self.affine)

    @property
    def value_count(self) -> int:
        return int(np.prod(self.shape, dtype=object))

    @property
    def claimed_bytes(self) -> int:
        """The bytes of voxel data the header claims (0 when the voxel type is unknown)."""
        return self.value_count * self.bytes_per_value


def affine_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size along i, j, k (mm): the lengths of the affine's first three columns."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def _need_nibabel():
    try:
        import nibabel
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DataError(
            "reading NIfTI files needs nibabel; install it with `pip install nibabel` (or `pip install wdmcore[io]`)"
        ) from exc
    return nibabel


def _need_sitk():
    try:
        import SimpleITK
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DataError(
            "reading NRRD/MetaImage/DICOM files needs SimpleITK; install it with `pip install SimpleITK` "
            "(or `pip install wdmcore[io]`)"
        ) from exc
    return SimpleITK


def sitk_affine(image) -> np.ndarray:
    """Voxel-to-RAS affine of a 3-D SimpleITK image (or file reader), for its array as (i, j, k)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing[None, :]
    lps[:3, 3] = origin
    return _LPS_TO_RAS @ lps


def read_header(path: str | Path) -> VolumeHeader:
    """Shape and affine of a volume file. Raises :class:`DataError` if the file cannot be read."""
    path = Path(path)
    suffix = volume_suffix(path)
    if suffix is None:
        raise DataError(f"{path}: not a volume file; supported endings are {', '.join(VOLUME_SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path or rerun discovery")
    try:
        if suffix in NIFTI_SUFFIXES:
            nib = _need_nibabel()
            img = nib.load(str(path))
            dtype = np.dtype(img.header.get_data_dtype())
            return VolumeHeader(
                path,
                tuple(int(n) for n in img.shape),
                np.asarray(img.affine, np.float64),
                voxel_type=str(dtype),
                bytes_per_value=dtype.itemsize,
                complex_values=dtype.kind == "c",
                # The image's own header copy forgets the offset; the data proxy keeps the file's.
                storage=nifti_storage(path, int(getattr(img.dataobj, "offset", 0)), suffix == ".nii.gz"),
            )
        sitk = _need_sitk()
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        shape = tuple(int(n) for n in reader.GetSize())
        if reader.GetNumberOfComponents() > 1:
            shape = shape + (int(reader.GetNumberOfComponents()),)
        affine = sitk_affine(reader) if reader.GetDimension() == 3 else np.eye(4)
        voxel_type = sitk.GetPixelIDValueAsString(reader.GetPixelID())  # "32-bit float", "complex of 64-bit float"
        bits = re.search(r"(\d+)-bit", voxel_type)
        storage = nrrd_storage(path) if suffix in (".nrrd", ".nhdr") else metaimage_storage(path)
        return VolumeHeader(
            path,
            shape,
            affine,
            voxel_type=voxel_type,
            bytes_per_value=int(bits.group(1)) // 8 if bits else 0,
            complex_values="complex" in voxel_type,
            storage=storage,
        )
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot read the file header ({type(exc).__name__}: {exc})") from exc


def check_3d(shape: tuple[int, ...], path: str | Path) -> tuple[int, int, int]:
    """The 3-D shape, after dropping trailing singleton axes; raises :class:`InputShapeError` otherwise."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) > 3:
        raise InputShapeError(
            f"{path}: is a {len(dims)}-D image (shape {tuple(shape)}); only single 3-D volumes can be used. "
            "Split it into 3-D volumes (one file per time point or channel) first"
        )
    if len(dims) < 3 or min(dims) == 1:
        raise InputShapeError(
            f"{path}: is a 2-D image (shape {tuple(shape)}); the models need 3-D volumes. "
            "Remove it from the folder or list"
        )
    return int(dims[0]), int(dims[1]), int(dims[2])


MIN_AXIS_VOXELS = 8  # fewer voxels along an axis than this is not a volume a 3-D model can learn from
MAX_VOXELS = 1 << 30  # a header claiming more (e.g. 10000^3) is damaged or not a single medical volume


def check_usable_header(header: VolumeHeader, path: str | Path) -> tuple[int, int, int]:
    """The 3-D shape of a volume whose header can be trained on; :class:`DataError` saying why not otherwise.

    The one header check shared by training (files that fail it never count, not even for the ``fit`` spacing)
    and ``wdm summarize``: a single 3-D volume, at least 8 voxels per axis, at most 2^30 voxels, and an affine
    that is finite with non-zero spacing and an invertible orientation, real voxel values, and a file that holds
    at least as many bytes as the header claims (compressed data are counted when the voxels are read)."""
    check_real_values(header)
    shape = check_3d(header.shape, path)
    if min(shape) < MIN_AXIS_VOXELS:
        raise InputShapeError(
            f"{path}: is only {'x'.join(map(str, shape))} voxels; a volume needs at least {MIN_AXIS_VOXELS} "
            "voxels along every axis. Remove it from the folder or list"
        )
    if int(np.prod(shape, dtype=np.float64)) > MAX_VOXELS:
        raise DataError(
            f"{path}: its header claims {'x'.join(map(str, shape))} voxels, more than the {MAX_VOXELS} a volume "
            "may have; the file is damaged or not a single medical volume. Remove it"
        )
    affine = np.asarray(header.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise DataError(f"{path}: its affine (voxel-to-world matrix) holds NaN or infinite values; fix the header")
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if np.any(spacing < 1e-6) or abs(np.linalg.det(affine[:3, :3])) < 1e-12 * float(np.prod(spacing)):
        raise DataError(
            f"{path}: its voxel spacing {tuple(round(float(s), 6) for s in spacing)} mm has a zero, or its "
            "orientation is singular; fix the header (pixdim / spacing) or remove it"
        )
    check_voxel_bytes(header, None, count_compressed=False)
    return shape


def check_real_values(header: VolumeHeader) -> None:
    """Refuse complex-valued voxels: every model here learns real images, and a cast would drop the imaginary
    part without a word."""
    if header.complex_values:
        raise DataError(
            f"{header.path}: holds complex-valued voxels ({header.voxel_type}); the models learn real-valued "
            "images. Save the magnitude (or the real part) as a real volume and use that file"
        )


# Deflate (gzip, zlib) never expands data more than this: its longest match, 258 bytes, costs at least 2 bits.
MAX_DEFLATE_RATIO = 1032
_STREAM_CHUNK = 1 << 18  # compressed bytes read at a time
_OUTPUT_CHUNK = 1 << 22  # decompressed bytes produced at a time


def _human(nbytes: int) -> str:
    """Bytes for a message: exact below 10 MB (a truncated file differs from its claim by a few bytes)."""
    if nbytes < 10 << 20:
        return f"{nbytes:,} bytes"
    return f"{nbytes / (1 << 30):.1f} GB" if nbytes >= 1 << 30 else f"{nbytes / (1 << 20):.1f} MB"


def _claim(header: VolumeHeader) -> str:
    return (
        f"its header claims {'x'.join(map(str, header.shape))} voxels of {header.voxel_type} "
        f"({_human(header.claimed_bytes)})"
    )


def available_memory_bytes() -> int | None:
    """Memory this process may still take (bytes): the kernel's MemAvailable, lowered to the room left under a
    cgroup memory limit (containers, batch jobs); the free physical pages where /proc is missing; None when
    nothing says."""
    found: list[int] = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < (1 << 60):  # "max" or a huge number: no limit
            found.append(max(int(limit) - usage, 0))
        break
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            return None
    return min(found)


def _decompressed_bytes(storage: VoxelStorage, needed: int, keep: bool = False) -> tuple[int, str, bytes | None]:
    """(bytes the compressed stream of ``storage`` decompresses to, counted up to a little past ``needed`` and
    no further; how it ended: "complete", "truncated" (the file ends inside the stream), "damaged" or "more";
    with ``keep`` the decompressed bytes, else None).

    Decompresses chunk by chunk, so what is kept grows only with what the file really holds, never with what its
    header claims; concatenated gzip members are followed. The trailer of the stream is read too when the claim
    is met, so that a file cut by a few bytes is found."""

    def decompressor():
        return zlib.decompressobj(wbits=47)  # gzip or zlib, told by the stream's own header

    seen, kept = 0, []

    def result(ending: str) -> tuple[int, str, bytes | None]:
        return seen, ending, b"".join(kept) if keep else None

    with open(storage.data_file, "rb") as f:
        f.seek(storage.stream_start)
        stream, pending = decompressor(), b""
        try:
            while True:
                if stream.eof:
                    pending = stream.unused_data or f.read(_STREAM_CHUNK)
                    if not pending.strip(b"\0"):
                        return result("complete")  # the end of the file, or padding after the last member
                    stream = decompressor()
                elif not pending:
                    pending = f.read(_STREAM_CHUNK)
                    if not pending:
                        return result("truncated")
                if seen > needed + _OUTPUT_CHUNK:
                    return result("more")  # the file holds more than the claim: enough, stop decompressing
                chunk = stream.decompress(pending, _OUTPUT_CHUNK)
                seen += len(chunk)
                if keep:
                    kept.append(chunk)
                pending = stream.unconsumed_tail
        except (zlib.error, OSError):
            return result("damaged")


def check_voxel_bytes(
    header: VolumeHeader, out_itemsize: int | None, *, count_compressed: bool = True, keep_decompressed: bool = False
) -> bytes | None:
    """Refuse a volume before its array is allocated when the file cannot hold what its header claims, or when
    reading it (as values of ``out_itemsize`` bytes) would not fit in the memory left.

    Raw data are compared with the file's size from the data's offset; compressed data are decompressed chunk
    by chunk and counted until the claim is reached or the stream ends (with ``count_compressed=False`` only
    the deflate bound is applied, which reads nothing). Headers whose data could not be located are checked
    against memory only. With ``keep_decompressed`` the decompressed file (header and voxels) of a compressed
    volume is returned, so that it is not decompressed a second time; None otherwise."""
    claimed = header.claimed_bytes
    storage = header.storage
    compressed = storage is not None and storage.encoding == DEFLATE
    if claimed == 0 or storage is None:
        pass
    elif not storage.data_file.is_file():
        raise DataError(f"{header.path}: its data file {storage.data_file} is missing; put it beside the header")
    elif storage.encoding in (RAW, TEXT, HEX):
        # Text holds at least one character per value, hex two per byte.
        on_disk = {RAW: claimed, TEXT: header.value_count, HEX: 2 * claimed}[storage.encoding]
        size = storage.data_file.stat().st_size
        held = size if storage.at_end else size - storage.offset
        if held < on_disk:
            raise DataError(
                f"{header.path}: {_claim(header)}, but the file holds only {_human(max(held, 0))} of voxel data; "
                "the file is truncated or its header is wrong. Export it again or remove it"
            )
    elif storage.encoding == DEFLATE:
        packed = storage.data_file.stat().st_size - storage.stream_start
        if claimed + storage.offset > MAX_DEFLATE_RATIO * packed + 4096:
            raise DataError(
                f"{header.path}: {_claim(header)}, but the file holds only {_human(max(packed, 0))} of "
                f"compressed data, which cannot decompress to more than {_human(MAX_DEFLATE_RATIO * packed)}; "
                "the file is truncated or its header is wrong. Export it again or remove it"
            )
    if out_itemsize is not None:
        # The stored values and the array they are converted to are in memory together for a moment (and the
        # decompressed file, when it is kept for the reader).
        needed = claimed * (2 if keep_decompressed and compressed else 1) + header.value_count * out_itemsize
        free = available_memory_bytes()
        if free is not None and needed > free:
            raise DataError(
                f"{header.path}: {_claim(header)}; reading it needs about {_human(needed)} of memory, but only "
                f"{_human(free)} is free. Free memory, or crop/downsample the volume first"
            )
    if not (count_compressed and claimed and compressed):
        return None
    needed = claimed + (0 if storage.at_end else storage.offset)
    held, ending, data = _decompressed_bytes(storage, needed, keep=keep_decompressed)
    if held < needed or ending in ("truncated", "damaged"):
        held_voxels = _human(max(held - storage.offset, 0))
        holds = {
            "damaged": f"its compressed data are damaged after {held_voxels} of voxels",
            "truncated": f"the file ends inside its compressed data (after {held_voxels} of voxels)",
        }.get(ending, f"its compressed data hold only {held_voxels} of voxels")
        raise DataError(
            f"{header.path}: {_claim(header)}, but {holds}; the file is truncated or its header is wrong. "
            "Export it again or remove it"
        )
    return data


def check_usable_voxels(data: np.ndarray) -> None:
    """Content that can be trained on: finite numbers, not one constant value (e.g. all zeros)."""
    finite = np.isfinite(data)
    if not finite.all():
        raise DataError(f"{int((~finite).sum())} voxel(s) are NaN or infinite; fix the file or remove it")
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise DataError(f"every voxel has the value {lo:g}: the volume is constant and carries no image; remove it")


def reason_without_path(reason: str, path: str | Path) -> str:
    """A message without a leading "PATH: ", for listings that already show the path."""
    prefix = f"{path}: "
    return reason[len(prefix) :] if reason.startswith(prefix) else reason


def load_volume(path: str | Path, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3-D volume file: (array in (i, j, k) order as ``dtype``, 4x4 voxel-to-RAS affine).

    NIfTI: the array is nibabel's ``get_fdata`` (scaling applied, no reorientation), as the released
    preprocessing reads it. Raises :class:`DataError` for unreadable files and :class:`InputShapeError`
    for images that are not 3-D.
    """
    path = Path(path)
    header = read_header(path)
    check_real_values(header)
    shape = check_3d(header.shape, path)
    suffix = volume_suffix(path)
    # A .nii.gz is decompressed once: the counted stream is what nibabel reads.
    decompressed = check_voxel_bytes(header, np.dtype(dtype).itemsize, keep_decompressed=suffix == ".nii.gz")
    try:
        if suffix in NIFTI_SUFFIXES:
            nib = _need_nibabel()
            img = nib.load(str(path))
            if decompressed is not None:
                img = type(img).from_bytes(decompressed)
                del decompressed
            data = np.asarray(img.get_fdata(dtype=dtype))
            affine = np.asarray(img.affine, dtype=np.float64)
        else:
            sitk = _need_sitk()
            image = sitk.ReadImage(str(path))
            data = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(dtype, copy=False)
            affine = sitk_affine(image)
    except Exception as exc:
        raise DataError(f"{path}: cannot read the voxel data ({type(exc).__name__}: {exc})") from exc
    data = data.reshape(shape)
    if not np.all(np.isfinite(data)):
        raise DataError(f"{path}: contains NaN or infinite values; fix or remove the file")
    return data, affine
