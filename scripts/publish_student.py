"""Bundle a distilled student of a bundled demo model: copy it into wdmcore/assets/ and record it in models.json.

    PYTHONPATH=WDMCore python scripts/publish_student.py runs/p64/student_4calls.safetensors \
        --quality benchmarks/results/bench_distill_quality_demo_phantom_64_4step.json

A student is bundled only when `benchmarks/bench_distill_quality.py` passed it (the record's ``student_passes``
all true, for this very file's card), its teacher is the bundled catalogue model its card names (the teacher's
SHA-256 in the card matches the catalogue's), and the file is at most 10 MB. The catalogue entry is the teacher's
entry with the student's name, description, digest and size, and a card that adds the student's ``distilled``
record (which the Slicer panel reads for its *Fast* preset) and how it was distilled.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

from train_demo_model import PACKAGE, _catalogue_text  # this folder is on the path when run as a script

from wdmcore.models.checkpoints import read_model_file

MAX_BYTES = 10 * 2**20


def student_entry(teacher_entry: dict, card: dict, data: bytes, quality: dict) -> dict:
    distilled = card["distilled"]
    training = card.get("training") or {}
    name = card["name"]
    entry = json.loads(json.dumps(teacher_entry))  # a deep copy: the teacher's license, preset, format ...
    entry.update(
        name=name,
        description=f"{teacher_entry['name']} distilled to {distilled['calls']} DDIM calls (wdm distill): the "
        f"same synthetic phantoms in a fraction of the time. Not a medical model.",
        source={"kind": "bundled", "path": f"assets/{name}.safetensors"},
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        approx_size_bytes=len(data),
    )
    entry_card = dict(teacher_entry.get("card") or {})
    entry_card["distilled"] = distilled
    entry_card["training"] = {
        "distillation": f"{distilled['teacher_calls']} -> {distilled['calls']} calls, "
        f"{training.get('steps_per_round')} steps per round, batch {training.get('batch_size')}, "
        f"AdamW lr {training.get('lr')}, EMA {training.get('ema_rate')}",
        "data": training.get("data"),
        "quality": quality.get("command"),
        "teacher_training": (teacher_entry.get("card") or {}).get("training"),
    }
    entry["card"] = entry_card
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("student", type=Path, help="the student's model file (wdm distill's OUT/student_<N>calls)")
    parser.add_argument("--quality", type=Path, required=True, help="bench_distill_quality.py's JSON record")
    args = parser.parse_args()

    _tensors, card = read_model_file(args.student)
    distilled = card.get("distilled")
    if not distilled:
        parser.error(f"{args.student} is not a distilled student (its card has no 'distilled' entry)")
    quality = json.loads(args.quality.read_text(encoding="utf-8"))
    if (quality.get("student") or {}).get("distilled") != distilled:
        parser.error(f"{args.quality} measured another student (its 'distilled' record differs from this file's)")
    failed = [key for key, ok in (quality.get("student_passes") or {}).items() if not ok]
    if failed or not quality.get("student_passes"):
        parser.error(f"the student did not pass its quality measures ({', '.join(failed) or 'none recorded'})")
    data = args.student.read_bytes()
    if len(data) > MAX_BYTES:
        parser.error(f"{args.student} has {len(data)} bytes; a bundled model is at most {MAX_BYTES}")

    catalogue_path = PACKAGE / "hub" / "models.json"
    catalogue = json.loads(catalogue_path.read_text(encoding="utf-8"))
    entries = {entry["name"]: entry for entry in catalogue["models"]}
    teacher_entry = entries.get(distilled["teacher"])
    if teacher_entry is None or (teacher_entry.get("source") or {}).get("kind") != "bundled":
        parser.error(f"the teacher {distilled['teacher']!r} is not a bundled catalogue model")
    if teacher_entry["sha256"] != distilled["teacher_sha256"]:
        parser.error(f"the student was distilled from another {distilled['teacher']} (its SHA-256 differs)")

    entry = student_entry(teacher_entry, card, data, quality)
    target = PACKAGE / "assets" / f"{entry['name']}.safetensors"
    shutil.copyfile(args.student, target)
    if entry["name"] in entries:
        catalogue["models"] = [entry if e["name"] == entry["name"] else e for e in catalogue["models"]]
    else:
        position = catalogue["models"].index(teacher_entry) + 1
        catalogue["models"].insert(position, entry)
    catalogue_path.write_text(_catalogue_text(catalogue), encoding="utf-8")
    print(f"bundled {target} ({len(data)} bytes) as {entry['name']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
