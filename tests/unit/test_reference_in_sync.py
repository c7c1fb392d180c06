"""README.md's ExoModel reference is generated from the CRD (scripts/gen-reference.py)."""

import importlib.util
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_generator():
    spec = importlib.util.spec_from_file_location(
        "gen_reference", REPO_ROOT / "scripts" / "gen-reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_reference = load_generator()


def test_readme_reference_matches_the_crd(capsys):
    code = gen_reference.main(["--check"])
    assert code == 0, capsys.readouterr().err


def test_check_fails_when_the_crd_changes(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# title\n\n{gen_reference.START_MARKER}\n{gen_reference.END_MARKER}\n\nkept\n"
    )
    crd = tmp_path / "crd.yaml"
    crd.write_text(gen_reference.CRD_PATH.read_text())
    assert gen_reference.main(["--readme", str(readme), "--crd", str(crd)]) == 0
    assert gen_reference.main(["--readme", str(readme), "--crd", str(crd), "--check"]) == 0

    crd.write_text(crd.read_text().replace("Runtime pods.", "Runtime pods, renamed."))
    assert gen_reference.main(["--readme", str(readme), "--crd", str(crd), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err


def test_generation_touches_only_the_text_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        f"before\n{gen_reference.START_MARKER}\nstale text\n{gen_reference.END_MARKER}\nafter\n"
    )
    gen_reference.main(["--readme", str(readme)])
    text = readme.read_text()
    assert text.startswith(f"before\n{gen_reference.START_MARKER}\n")
    assert text.endswith(f"{gen_reference.END_MARKER}\nafter\n")
    assert "stale text" not in text


def test_every_field_of_the_schema_is_documented():
    _, schema = gen_reference.load_schema(gen_reference.CRD_PATH)
    block = gen_reference.render_reference()
    for root in ("spec", "status"):
        for path, _field in gen_reference.walk(schema["properties"][root], root):
            assert f"| `{path}` |" in block, f"{path} is missing from the reference"
    # Validation messages reach the reader, not just the apiserver.
    assert "exactly one of spec.source.url, spec.source.huggingFace, spec.source.pvc" in block


@pytest.mark.parametrize(
    "readme_text", ["no markers at all\n", "<!-- exomodel-reference:start -->\n"]
)
def test_readme_without_both_markers_is_a_clear_error(tmp_path, capsys, readme_text):
    readme = tmp_path / "README.md"
    readme.write_text(readme_text)
    assert gen_reference.main(["--readme", str(readme)]) == 2
    assert "must hold exactly one" in capsys.readouterr().err
