"""Every field of every worker request with a value of the wrong type (a real worker process): one `error` event
per request, whose message names the field and says what it must be, in words a Slicer user can act on (no
Python exception text); the worker answers the next request. Requests without fields ignore what they are given."""

from __future__ import annotations

import math

import pytest
from test_reliability_worker import worker  # noqa: F401 - the fixture: a real worker process

TEXT = ("model", "preset", "device", "sampler", "precision", "output_dir", "name", "image", "mask")
WHOLE = ("num", "count", "seed", "steps", "batch_size", "preview_every", "resample")
FIELDS = {
    "generate": ("num", "seed", "batch_size", "steps", "preview_every", "sampler", "precision", "device",
                 "output_dir", "name", "model", "preset"),
    "synthesize": ("model", "inputs", "seed", "sampler", "steps", "preview_every", "output_dir", "name", "precision",
                   "device"),
    "inpaint": ("model", "image", "mask", "seed", "steps", "resample", "preview_every", "output_dir", "name"),
    "vary": ("model", "image", "strength", "count", "seed", "steps", "sampler", "output_dir", "name"),
    "download": ("model",),
    "load_model": ("model", "device", "preset"),
}  # fmt: skip
BASE = {
    "generate": {"model": "demo_phantom_64", "num": 1, "steps": 1},
    "synthesize": {"model": "demo_phantom_synthesize_32", "inputs": {"t2": "t2.nii.gz"}},
    "inpaint": {"model": "demo_phantom_inpaint_32", "image": "i.nii.gz", "mask": "m.nii.gz"},
    "vary": {"model": "demo_phantom_64", "image": "i.nii.gz"},
    "download": {"model": "demo_phantom_64"},
    "load_model": {"model": "demo_phantom_64"},
}
# What Python says when an exception's text reaches the user.
PYTHON_TEXT = ("object, not", "Errno", "Traceback", "NoneType", "TypeError", "has no attribute", "not subscriptable",
               "unhashable", "invalid literal", "object is not")  # fmt: skip


def wrong_values(field: str) -> list:
    if field in TEXT:
        return [5, 1.5, True, [1], {"a": 1}]
    if field == "inputs":
        return [5, "t2.nii.gz", [1], {}, {"t2": 5}, {"t2": None}, {"t2": ["a"]}]
    if field == "strength":
        return ["half", None, True, [0.5], {"a": 1}, 0, -0.5, 1.5, math.inf, math.nan]
    values = ["many", True, [1], {"a": 1}, 1.5, -1, 2**64, math.inf]
    return values if field == "steps" else [*values, None]  # steps null: the default


CASES = [(kind, field, value) for kind, fields in FIELDS.items() for field in fields for value in wrong_values(field)]


def answer(worker, request):  # noqa: F811
    worker.send(request)
    events = []
    while True:
        event = worker.next()
        events.append(event)
        if event.get("id") == request["id"] and event["event"] in ("error", "done", "loaded", "downloaded"):
            return events


def assert_one_clear_error(events, field):
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1 and events[-1] is errors[0], events
    message = errors[0]["message"]
    assert f"'{field}'" in message, message
    assert not any(text in message for text in PYTHON_TEXT), message


def test_every_field_of_the_wrong_type_is_one_clear_error_and_the_worker_lives_on(worker):  # noqa: F811
    seen = set()
    for number, (kind, field, value) in enumerate(CASES):
        request = {**BASE[kind], "type": kind, "id": f"r{number}", field: value}
        assert_one_clear_error(answer(worker, request), field)
        seen.add(kind)
    assert seen == set(FIELDS)
    worker.send({"type": "ping", "id": "alive"})
    assert worker.next() == {"event": "pong", "id": "alive"}


def test_an_output_dir_that_is_a_file_or_under_a_file_is_refused_in_words(worker, tmp_path):  # noqa: F811
    existing = tmp_path / "results.nii.gz"
    existing.write_bytes(b"precious")
    for number, folder in enumerate((existing, existing / "inside")):
        for kind in ("generate", "vary"):
            request = {**BASE[kind], "type": kind, "id": f"o{kind}{number}", "output_dir": str(folder)}
            if kind == "vary":
                request["image"] = str(existing)
            assert_one_clear_error(answer(worker, request), "output_dir")
            worker.send({"type": "ping", "id": "alive"})
            assert worker.next() == {"event": "pong", "id": "alive"}
    assert existing.read_bytes() == b"precious"


def test_a_folder_or_a_missing_file_as_input_is_refused_in_words(worker, tmp_path):  # noqa: F811
    for number, (field, path) in enumerate((("image", tmp_path), ("image", tmp_path / "missing.nii.gz"))):
        request = {**BASE["vary"], "type": "vary", "id": f"i{number}", field: str(path), "output_dir": str(tmp_path)}
        events = answer(worker, request)
        errors = [e for e in events if e["event"] == "error"]
        assert len(errors) == 1, events
        assert str(path) in errors[0]["message"] and not any(t in errors[0]["message"] for t in PYTHON_TEXT), errors
    worker.send({"type": "ping", "id": "alive"})
    assert worker.next() == {"event": "pong", "id": "alive"}


@pytest.mark.parametrize("kind", ["ping", "info", "list_models"])
def test_requests_without_fields_ignore_what_they_are_given(worker, kind):  # noqa: F811
    worker.send({"type": kind, "id": "x", "model": 5, "seed": [1], "output_dir": {"a": 1}})
    event = worker.next()
    assert event["event"] == {"ping": "pong", "info": "info", "list_models": "models"}[kind], event
