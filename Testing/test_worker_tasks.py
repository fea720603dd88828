"""The worker's synthesize, inpaint and vary requests (``python -m wdmcore.worker``, a real process, the bundled
demo models): progress from the start, previews of the whole output in the input's grid, results as complete
NIfTI files in that grid, the library's errors as error events, and cancel within a step."""

from __future__ import annotations

import numpy as np
import pytest
from test_reliability_worker import worker  # noqa: F401 - the fixture: a real worker process

from wdmcore.data.contrasts import paired_phantom
from wdmcore.volumes.reading import load_volume
from wdmcore.worker import write_nifti

SIZE = 32
AFFINE = np.array(
    [[0.9, -0.3, 0.1, -14.0], [0.25, 1.1, 0.0, 20.0], [0.0, 0.2, 1.4, -7.5], [0.0, 0.0, 0.0, 1.0]]
)  # oblique, anisotropic


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    contrasts, lesion = paired_phantom(SIZE, 2, 0)
    paths = {name: str(write_nifti(folder / f"{name}.nii.gz", array, AFFINE)) for name, array in contrasts.items()}
    paths["mask"] = str(write_nifti(folder / "mask.nii.gz", lesion.astype(np.float32), AFFINE))
    paths["empty"] = str(write_nifti(folder / "empty.nii.gz", np.zeros((SIZE,) * 3), AFFINE))
    paths["full"] = str(write_nifti(folder / "full.nii.gz", np.ones((SIZE,) * 3), AFFINE))
    in_air = np.zeros((SIZE,) * 3, dtype=np.float32)
    in_air[:3, :3, :3] = 1  # a corner of the cube: background of the phantom
    paths["in_air"] = str(write_nifti(folder / "in_air.nii.gz", in_air, AFFINE))
    shifted = AFFINE.copy()
    shifted[:3, 3] += 3.0
    paths["flair_shifted"] = str(write_nifti(folder / "flair_shifted.nii.gz", contrasts["flair"], shifted))
    return paths


def run(worker, request, *, until=("done", "error", "cancelled")):  # noqa: F811
    """Send ``request`` and collect its events until one of ``until``."""
    worker.send(request)
    events = []
    while True:
        event = worker.next()
        events.append(event)
        if event["event"] in until and event.get("id") == request.get("id"):
            return events


def of(events, kind):
    return [e for e in events if e["event"] == kind]


def test_synthesize_reports_from_the_start_and_writes_the_result_in_the_input_grid(worker, files, tmp_path):  # noqa: F811
    inputs = {name: files[name] for name in ("t2", "flair", "pd")}
    out = tmp_path / "out"  # apart from the worker's cache folder (tmp_path/cache), which conversions may fill
    out.mkdir()
    request = {"type": "synthesize", "id": "s1", "model": "demo_phantom_synthesize_32", "inputs": inputs,
               "seed": 3, "sampler": "ddim", "steps": 2, "preview_every": 1, "output_dir": str(out),
               "name": "t1 synth"}  # fmt: skip
    events = run(worker, request)
    assert events[-1]["event"] == "done", events[-1]
    progress = of(events, "progress")
    assert progress[0]["done"] == 0 and progress[0]["task"] == "synthesize"
    assert progress[-1]["done"] == progress[-1]["total"] and progress[-1]["step"] == 2
    previews = of(events, "preview")
    assert len(previews) == 2 and np.load(previews[-1]["path"]).shape == (SIZE,) * 3
    np.testing.assert_allclose(previews[-1]["affine"], AFFINE, atol=1e-5)
    (result,) = of(events, "result")
    assert result["path"].endswith("t1_synth.nii.gz") and result["seed"] == 3 and result["shape"] == [SIZE] * 3
    assert result["meta"]["output"]["name"] == "t1" and list(result["meta"]["inputs"]) == ["t2", "flair", "pd"]
    array, affine = load_volume(result["path"])
    np.testing.assert_allclose(affine, AFFINE, atol=1e-5)
    np.testing.assert_allclose(array, np.load(previews[-1]["path"]), atol=1e-6)  # the last preview is the result
    assert sorted(p.name for p in out.iterdir()) == ["preview.npy", "t1_synth.nii.gz"]  # no partial files


def test_inpaint_keeps_every_voxel_outside_the_mask(worker, files, tmp_path):  # noqa: F811
    request = {"type": "inpaint", "id": "i1", "model": "demo_phantom_inpaint_32", "image": files["t1"],
               "mask": files["mask"], "seed": 0, "preview_every": 1, "output_dir": str(tmp_path)}  # fmt: skip
    events = run(worker, request)
    assert events[-1]["event"] == "done", events[-1]
    image, _ = load_volume(files["t1"])
    inside = load_volume(files["mask"])[0] > 0.5
    result, affine = load_volume(of(events, "result")[0]["path"])
    np.testing.assert_allclose(affine, AFFINE, atol=1e-5)
    np.testing.assert_array_equal(result[~inside], image[~inside].astype(np.float32))
    assert not np.array_equal(result[inside], image[inside])
    preview = np.load(of(events, "preview")[-1]["path"])  # the whole output: the input outside the mask
    np.testing.assert_array_equal(preview[~inside], image[~inside].astype(np.float32))


def test_vary_writes_one_file_per_seed(worker, files, tmp_path):  # noqa: F811
    request = {"type": "vary", "id": "v1", "model": "demo_phantom_64", "image": files["t1"], "strength": 0.1,
               "steps": 10, "count": 2, "seed": 7, "output_dir": str(tmp_path), "name": "t1 var",
               "sampler": "unipc"}  # fmt: skip
    events = run(worker, request)
    assert events[-1]["event"] == "done", events[-1]
    assert all(r["meta"]["sampler"] == "unipc" for r in of(events, "result"))  # the sampler asked for
    results = of(events, "result")
    assert [r["seed"] for r in results] == [7, 8] and [r["index"] for r in results] == [0, 1]
    assert [r["path"].rsplit("/", 1)[-1] for r in results] == ["t1_var_1.nii.gz", "t1_var_2.nii.gz"]
    fractions = [e["fraction"] for e in of(events, "progress")]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    for r in results:
        np.testing.assert_allclose(load_volume(r["path"])[1], AFFINE, atol=1e-5)


def test_warnings_reach_the_parent_as_warning_events(worker, files, tmp_path):  # noqa: F811
    request = {"type": "inpaint", "id": "w1", "model": "demo_phantom_inpaint_32", "image": files["t1"],
               "mask": files["in_air"], "output_dir": str(tmp_path)}  # fmt: skip
    events = run(worker, request)
    assert events[-1]["event"] == "done", events[-1]
    warnings = {e["kind"]: e for e in of(events, "warning")}
    assert sorted(warnings) == ["domain", "mask-in-background"] and all(e["id"] == "w1" for e in warnings.values())
    # The demo model is a phantom model, and these ~1 mm voxels are not its 7.5 mm ones.
    assert "demonstration model trained on synthetic phantoms" in warnings["domain"]["message"]
    assert "the model's 7.5 mm" in warnings["domain"]["message"]
    assert "lies in the image's background" in warnings["mask-in-background"]["message"]


ERRORS = [
    ({"type": "synthesize", "model": "demo_phantom_inpaint_32", "inputs": {"t2": "T2", "flair": "FLAIR", "pd": "PD"}},
     "ConfigError", "task is 'inpaint', not 'synthesize'"),
    ({"type": "synthesize", "model": "demo_phantom_synthesize_32",
      "inputs": {"t2": "T2", "flair": "SHIFTED", "pd": "PD"}}, "InputShapeError", "different geometry"),
    ({"type": "inpaint", "model": "demo_phantom_inpaint_32", "image": "T1", "mask": "EMPTY"}, "DataError", "empty"),
    ({"type": "inpaint", "model": "demo_phantom_inpaint_32", "image": "T1", "mask": "FULL"}, "DataError",
     "covers the whole volume"),
    ({"type": "inpaint", "model": "demo_phantom_inpaint_32", "mask": "FULL"}, "BadRequest", "needs 'image'"),
    ({"type": "synthesize", "model": "demo_phantom_synthesize_32", "inputs": ["T2"]}, "BadRequest", "'inputs'"),
    ({"type": "vary", "model": "demo_phantom_64", "image": "T1", "strength": 1.5}, "BadRequest",
     "'strength' must be a number in (0, 1], got 1.5"),
]  # fmt: skip
NAMES = {"T1": "t1", "T2": "t2", "FLAIR": "flair", "PD": "pd", "SHIFTED": "flair_shifted", "EMPTY": "empty",
         "FULL": "full"}  # fmt: skip


def test_errors_are_error_events_and_the_worker_lives_on(worker, files, tmp_path):  # noqa: F811
    def resolve(value):
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        return files[NAMES[value]] if isinstance(value, str) and value in NAMES else value

    for fields, kind, message in ERRORS:
        request = {**{k: resolve(v) for k, v in fields.items()}, "id": "e", "output_dir": str(tmp_path)}
        events = run(worker, request)
        error = events[-1]
        assert error["event"] == "error" and error["kind"] == kind and message in error["message"], (fields, error)
        assert error["detail"] and not of(events, "result") and not any(tmp_path.glob("*.nii.gz"))
        worker.send({"type": "ping", "id": "alive"})
        assert worker.next("pong") == {"event": "pong", "id": "alive"}


def test_cancel_stops_a_synthesis_within_a_step(worker, files, tmp_path):  # noqa: F811
    inputs = {name: files[name] for name in ("t2", "flair", "pd")}
    worker.send({"type": "synthesize", "id": "c1", "model": "demo_phantom_synthesize_32", "inputs": inputs,
                 "sampler": "ancestral", "steps": 1000, "output_dir": str(tmp_path)})  # fmt: skip
    while True:
        event = worker.next("progress", "error")
        assert event["event"] == "progress", event
        if event["step"] >= 2:
            break
    worker.send({"type": "cancel", "target": "c1"})
    events = []
    while not events or events[-1]["event"] not in ("cancelled", "done", "error"):
        events.append(worker.next())
    assert events[-1] == {"event": "cancelled", "id": "c1"}
    last = max([e["step"] for e in of(events, "progress")], default=event["step"])
    assert last < event["step"] + 10  # stopped within a step or so, long before the 1000th
    assert not any(tmp_path.glob("*.nii.gz"))
