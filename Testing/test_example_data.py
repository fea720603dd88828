"""`wdm example-data DIR`: example inputs for every task with their geometry, a README.txt of commands, no
overwriting; and every documented task command on the bundled demo models runs on those files as written."""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

import wdmcore
from wdmcore.cli.main import build_parser, main
from wdmcore.data.phantoms import phantom_affine
from wdmcore.tasks.examples import EXAMPLE_COMMANDS, EXAMPLE_FILES
from wdmcore.volumes.reading import load_volume

DOCS = Path(__file__).resolve().parents[1] / "docs" / "tasks.md"
ALL_COMMANDS = [c for task in EXAMPLE_COMMANDS.values() for c in task]
# Few network calls, to keep the test short (the last --steps on a command line wins).
FAST = {"synthesize": ["--steps", "2"], "vary": ["--steps", "3"]}
FAST_INPAINT = {"demo_phantom_inpaint_32": ["--steps", "1"], "demo_phantom_64": ["--steps", "2", "--resample", "1"]}


def documented_demo_commands(text: str) -> list[str]:
    """The task commands on the bundled demo models in a page's code blocks (comments dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            if re.match(r"wdm (synthesize|inpaint|vary) ", line) and "--model demo_" in line:
                commands.append(" ".join(line.split()))
    return commands


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run") / "wdm_examples"
    assert main(["example-data", str(folder)]) == 0
    return folder


def test_example_data_writes_every_tasks_inputs_with_geometry_and_a_readme(examples):
    assert sorted(p.name for p in examples.iterdir()) == sorted([*EXAMPLE_FILES, "README.txt"])
    readme = (examples / "README.txt").read_text(encoding="utf-8")
    assert all(command in readme for command in ALL_COMMANDS)
    # Synthesis: exactly the inputs the bundled synthesis model's card names, on its grid (32^3 of 7.5 mm).
    synth = wdmcore.load_model("demo_phantom_synthesize_32")
    for name in synth.input_names:
        array, affine = load_volume(examples / f"{name}.nii.gz")
        assert array.shape == (32, 32, 32) and np.allclose(affine, phantom_affine(32), atol=1e-4)
        assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), synth.card["spacing_mm"])
    # Inpainting: a mask inside the head of t1, on its grid; vary/RePaint: a head on demo_phantom_64's grid.
    t1, t1_affine = load_volume(examples / "t1.nii.gz")
    lesion, lesion_affine = load_volume(examples / "lesion.nii.gz")
    assert np.allclose(lesion_affine, t1_affine) and set(np.unique(lesion)) == {0.0, 1.0}
    assert t1[lesion > 0].min() > 0.3  # brain or blob tissue, not air
    head, head_affine = load_volume(examples / "head.nii.gz")
    head_lesion, _ = load_volume(examples / "head_lesion.nii.gz")
    assert head.shape == (64, 64, 64) and np.allclose(head_affine, phantom_affine(64), atol=1e-4)
    assert head[head_lesion > 0].min() > 0.3


def test_example_data_refuses_to_overwrite_without_the_option(examples, capsys):
    before = {p.name: p.read_bytes() for p in examples.iterdir()}
    (examples / "t2.nii.gz").write_bytes(b"mine")
    assert main(["example-data", str(examples)]) == 2
    err = capsys.readouterr().err
    assert "already exist" in err and "--overwrite" in err
    assert (examples / "t2.nii.gz").read_bytes() == b"mine"  # nothing was written
    assert main(["example-data", str(examples), "--overwrite"]) == 0
    assert {p.name: p.read_bytes() for p in examples.iterdir()} == before
    not_a_folder = examples / "README.txt"
    assert main(["example-data", str(not_a_folder)]) == 2 and "is a file" in capsys.readouterr().err


def test_the_documented_commands_are_the_example_commands():
    documented = documented_demo_commands(DOCS.read_text(encoding="utf-8"))
    assert documented and set(documented) == set(ALL_COMMANDS), documented
    # Each task command's --help ends with its examples.
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for task, commands in EXAMPLE_COMMANDS.items():
        assert all(c in sub.choices[task].format_help() for c in commands), task


def test_every_documented_command_runs_on_the_example_data(examples, monkeypatch):
    monkeypatch.chdir(examples)
    for command in ALL_COMMANDS:
        argv = shlex.split(command)[1:]
        model = argv[argv.index("--model") + 1]
        fast = FAST_INPAINT[model] if argv[0] == "inpaint" else FAST[argv[0]]
        assert main([*argv, *fast, "--device", "cpu", "--progress", "none"]) == 0, command
        out = argv[argv.index("--out") + 1]
        first_input = argv[argv.index("--image") + 1] if "--image" in argv else argv[argv.index("--t2") + 1]
        array, affine = load_volume(out)
        reference, reference_affine = load_volume(first_input)
        assert array.shape == reference.shape and np.allclose(affine, reference_affine, atol=1e-4), command
        assert np.isfinite(array).all() and Path(out.replace(".nii.gz", ".json")).is_file()
