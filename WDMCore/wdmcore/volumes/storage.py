"""Where a volume file keeps its voxel bytes, read from its header without decoding them.

The readers in :mod:`wdmcore.volumes.reading` hold what a header claims (voxel count x bytes per voxel) against
what the file really holds before they let nibabel or SimpleITK allocate the array. For that they need to know
where the voxel data starts and how it is encoded; NIfTI headers say it through nibabel, NRRD and MetaImage
headers are short text that is parsed here (only the fields that locate the data).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# How much of a file may be header text; a NRRD or MetaImage header longer than this is not looked through.
MAX_TEXT_HEADER_BYTES = 1 << 20

RAW, DEFLATE, TEXT, HEX = "raw", "deflate", "text", "hex"
# bzip2 is left out: SimpleITK's NRRD reader is built without it and says so itself.
_NRRD_ENCODINGS = {
    "raw": RAW,
    "gz": DEFLATE,
    "gzip": DEFLATE,
    "txt": TEXT,
    "text": TEXT,
    "ascii": TEXT,
    "hex": HEX,
}


@dataclass(frozen=True)
class VoxelStorage:
    """Where the voxel bytes of a volume are.

    ``offset`` is the first byte of the voxel data: in ``data_file`` for raw and text data, in the decompressed
    stream for compressed data (whose compressed stream starts at ``stream_start`` of ``data_file``).
    ``at_end``: the data are the last bytes of the (decompressed) file, wherever the header ends.
    """

    data_file: Path
    encoding: str = RAW
    offset: int = 0
    stream_start: int = 0
    at_end: bool = False


def nifti_storage(path: Path, vox_offset: int, gzipped: bool) -> VoxelStorage:
    """A single-file NIfTI: the voxels follow the header at ``vox_offset`` (of the decompressed file)."""
    return VoxelStorage(path, DEFLATE if gzipped else RAW, offset=int(vox_offset))


def _read_text_header(path: Path) -> tuple[list[bytes], int | None]:
    """The lines of a text header up to the first blank line, and the byte at which the data after that blank
    line start (None when no blank line ends the header within what is read: a detached header)."""
    with open(path, "rb") as f:
        head = f.read(MAX_TEXT_HEADER_BYTES)
    lines, pos = [], 0
    while pos < len(head):
        end = head.find(b"\n", pos)
        if end < 0:
            lines.append(head[pos:])
            break
        line = head[pos:end].rstrip(b"\r")
        pos = end + 1
        if not line.strip():
            return lines, pos
        lines.append(line)
    return lines, None


def _detached(header_path: Path, name: str) -> Path | None:
    """The data file a detached header names, or None for lists and numbered patterns (not checked)."""
    name = name.strip()
    if not name or name.upper() == "LIST" or "%" in name or " " in name:
        return None
    data = Path(name)
    return data if data.is_absolute() else header_path.parent / data


def nrrd_storage(path: Path) -> VoxelStorage | None:
    """The storage of a NRRD file (.nrrd with its data attached, or .nhdr naming a data file); None when the
    header cannot be understood here (SimpleITK then reads it unchecked against the file's size)."""
    lines, data_start = _read_text_header(path)
    if not lines or not lines[0].startswith(b"NRRD"):
        return None
    fields: dict[str, str] = {}
    for raw_line in lines[1:]:
        line = raw_line.decode("latin-1")
        if line.startswith("#") or ":=" in line or ": " not in line:
            continue
        key, value = line.split(": ", 1)
        fields[key.strip().lower().replace(" ", "")] = value.strip()
    encoding = _NRRD_ENCODINGS.get(fields.get("encoding", "raw").lower())
    if encoding is None:
        return None
    try:
        line_skip = int(fields.get("lineskip", "0"))
        byte_skip = int(fields.get("byteskip", "0"))
    except ValueError:
        return None
    name = fields.get("datafile")
    if name is None:
        if data_start is None:
            return None  # attached data, but the header's end was not found
        data_file, stream_start = path, data_start
    else:
        data_file = _detached(path, name)
        if data_file is None:
            return None
        stream_start = 0
    if line_skip:
        return None  # the data start after a number of text lines: not located here
    if encoding == RAW:
        if byte_skip == -1:
            return VoxelStorage(data_file, RAW, offset=stream_start, at_end=True)
        return VoxelStorage(data_file, RAW, offset=stream_start + max(byte_skip, 0))
    if byte_skip == -1:
        return VoxelStorage(data_file, encoding, offset=0, stream_start=stream_start, at_end=True)
    return VoxelStorage(data_file, encoding, offset=max(byte_skip, 0), stream_start=stream_start)


def metaimage_storage(path: Path) -> VoxelStorage | None:
    """The storage of a MetaImage file (.mha with ``ElementDataFile = LOCAL``, or .mhd naming a data file);
    None when the header cannot be understood here."""
    fields: dict[str, str] = {}
    data_start = None
    with open(path, "rb") as f:
        head = f.read(MAX_TEXT_HEADER_BYTES)
    pos = 0
    while pos < len(head):
        end = head.find(b"\n", pos)
        line = (head[pos:] if end < 0 else head[pos:end]).decode("latin-1").strip()
        pos = len(head) if end < 0 else end + 1
        if "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        fields[key.lower()] = value
        if key.lower() == "elementdatafile":  # the last field of the header; the data follow
            data_start = pos
            break
    if data_start is None:
        return None
    compressed = fields.get("compresseddata", "false").lower() == "true"
    encoding = DEFLATE if compressed else RAW
    try:
        header_size = int(fields.get("headersize", "0"))
    except ValueError:
        return None
    name = fields["elementdatafile"]
    if name.upper() == "LOCAL":
        data_file, start = path, data_start
    else:
        data_file = _detached(path, name)
        if data_file is None:
            return None
        start = 0
    if header_size == -1:
        return VoxelStorage(
            data_file, encoding, offset=start if encoding == RAW else 0, stream_start=start, at_end=True
        )
    if encoding == RAW:
        return VoxelStorage(data_file, RAW, offset=start + max(header_size, 0))
    return VoxelStorage(data_file, DEFLATE, offset=0, stream_start=start + max(header_size, 0))
