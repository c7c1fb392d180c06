"""The engine selector: a model's format picks its engine; bad paths fail with a clear message."""

import json
import sys
from pathlib import Path

import pytest
from exo_runtime import selector
from exo_runtime.engine import EngineOptions, ModelLoadError
from exo_runtime.selector import load_engine, select_engine


def make_gguf(path: Path) -> Path:
    path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 16)
    return path


def make_mlx_folder(path: Path, *, weights: bool = True) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
    if weights:
        (path / "model.safetensors").write_bytes(b"\x00" * 8)
    return path


def test_gguf_file_goes_to_llamacpp(tmp_path):
    assert select_engine(str(make_gguf(tmp_path / "m.gguf"))) == "llamacpp"


def test_gguf_is_recognised_by_its_header_not_its_name(tmp_path):
    assert select_engine(str(make_gguf(tmp_path / "model.bin"))) == "llamacpp"


def test_folder_with_config_and_safetensors_goes_to_mlx(tmp_path):
    assert select_engine(str(make_mlx_folder(tmp_path / "m"))) == "mlx"


@pytest.mark.parametrize(
    ("make", "engine"),
    [(lambda p: make_gguf(p / "m.gguf"), "llamacpp"), (lambda p: make_mlx_folder(p / "m"), "mlx")],
)
def test_explicit_engine_matching_the_format_wins(tmp_path, make, engine):
    assert select_engine(str(make(tmp_path)), engine) == engine


@pytest.mark.parametrize(
    ("setup", "engine", "message"),
    [
        (lambda p: p / "missing.gguf", "auto", "does not exist"),
        (lambda p: make_gguf(p / "m.gguf"), "mlx", "engine 'mlx' cannot load"),
        (lambda p: make_mlx_folder(p / "m"), "llamacpp", "engine 'llamacpp' cannot load"),
        (lambda p: make_gguf(p / "m.gguf"), "vllm", "unknown engine 'vllm'"),
        (lambda p: p, "auto", "without config.json"),
        (lambda p: make_mlx_folder(p / "m", weights=False), "auto", "no *.safetensors"),
        (lambda p: make_gguf(p / "m.gguf").parent, "auto", "give the .gguf file itself"),
    ],
    ids=[
        "missing-path",
        "mlx-for-gguf",
        "llamacpp-for-folder",
        "unknown-engine",
        "folder-without-config",
        "config-without-weights",
        "folder-of-gguf",
    ],
)
def test_unloadable_choice_names_the_path_and_the_fix(tmp_path, setup, engine, message):
    path = setup(tmp_path)
    with pytest.raises(ModelLoadError) as err:
        select_engine(str(path), engine)
    assert message in str(err.value)
    if engine != "vllm":
        assert str(path) in str(err.value)


def test_file_that_is_not_gguf_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00{}")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        select_engine(str(path))


def test_missing_engine_package_names_the_pip_extra(tmp_path, monkeypatch):
    # A missing package cannot be caused for real inside the test's own venv: hide the module.
    monkeypatch.setitem(sys.modules, "exo_runtime.engines.mlx", None)
    with pytest.raises(ModelLoadError, match=r"exo-operator\[mlx\]"):
        load_engine(str(make_mlx_folder(tmp_path / "m")), "auto", EngineOptions())


def test_load_engine_calls_the_selected_modules_load(tmp_path, monkeypatch):
    # The real engines load real models in tests/runtime and tests/mlx; here only the dispatch.
    calls = []

    class FakeModule:
        @staticmethod
        def load(path, options, progress):
            calls.append((path, options, progress))
            return "engine"

    monkeypatch.setattr(selector.importlib, "import_module", lambda name: FakeModule)
    model = str(make_gguf(tmp_path / "m.gguf"))
    assert load_engine(model, "auto", EngineOptions(threads=2)) == "engine"
    assert calls == [(model, EngineOptions(threads=2), None)]
