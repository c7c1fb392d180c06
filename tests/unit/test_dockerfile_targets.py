"""The Dockerfile's runtime (CPU) and runtime-cuda targets stay twins; every final stage is lean.

runtime-cuda cannot be built on a machine without NVIDIA's images, so this check is what keeps
it from rotting: same packages installed the same way (only MLX's build differs: CPU or CUDA),
same user, entrypoint, ports and env.
"""

import os
import re
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
FINAL_TARGETS = ("runtime", "runtime-cuda", "operator")
COMPILERS = ("build-essential", "gcc", "g++", "cmake", "clang", "-dev ", "-dev\n")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        values = self.all(keyword)
        assert len(values) == 1, f"stage {self.name}: expected one {keyword}, found {values}"
        return values[0]


def parse(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARG defaults and the stages by name, with continuation lines joined."""
    lines, pending = [], ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#") and not pending:
            continue
        if raw.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line:
            lines.append(line)
    global_args, stages, current = {}, {}, None
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), " ".join(args.split())
        if keyword == "FROM":
            base, _, name = args.partition(" AS ")
            current = stages[name.strip()] = Stage(name.strip(), base.strip())
        elif current is None and keyword == "ARG":
            key, _, default = args.partition("=")
            global_args[key] = default
        else:
            current.instructions.append((keyword, args))
    return global_args, stages


GLOBAL_ARGS, STAGES = parse(DOCKERFILE.read_text())


PROJECT_INSTALL = re.compile(r'"exo-operator\[([a-z0-9,-]+)\]"')
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


def project_install(stage: Stage) -> tuple[str, set[str]]:
    """The RUN of a stage that installs exo-operator[...]: its text without the extras, and them."""
    runs = [r for r in stage.all("RUN") if PROJECT_INSTALL.search(r)]
    assert len(runs) == 1, f"stage {stage.name}: one RUN must install exo-operator[...]"
    extras = set(PROJECT_INSTALL.search(runs[0]).group(1).split(","))
    return PROJECT_INSTALL.sub('"exo-operator[EXTRAS]"', runs[0]), extras


def staged_extras(targets: str) -> set[str]:
    """The extras scripts/images.sh stages wheels for when it builds `targets`."""
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "images.sh"), "extras"],
        env={**os.environ, "IMAGE_TARGETS": targets},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return set(result.stdout.strip().split(","))


def ancestry(name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    chain = [STAGES[name]]
    while chain[-1].base in STAGES:
        chain.append(STAGES[chain[-1].base])
    return chain


def test_the_three_targets_exist():
    assert set(FINAL_TARGETS) <= set(STAGES)


def test_base_image_defaults_to_the_public_debian_image():
    # CI passes the locally made base; users get the public one.
    assert GLOBAL_ARGS["BASE_IMAGE"] == "debian:bookworm-slim"
    assert STAGES["python"].base == "${BASE_IMAGE}"


def test_cuda_stages_build_on_devel_and_run_on_runtime_of_one_cuda_version():
    assert GLOBAL_ARGS["CUDA_BUILD_IMAGE"] == "nvidia/cuda:${CUDA_VERSION}-devel-ubuntu22.04"
    assert GLOBAL_ARGS["CUDA_RUN_IMAGE"] == "nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu22.04"
    assert re.fullmatch(r"12\.\d+\.\d+", GLOBAL_ARGS["CUDA_VERSION"])
    assert STAGES["runtime-cuda-venv"].base == "${CUDA_BUILD_IMAGE}"
    assert STAGES["runtime-cuda"].base == "${CUDA_RUN_IMAGE}"


def test_both_runtimes_install_the_same_packages_the_same_way_but_for_mlxs_build():
    cpu, cpu_extras = project_install(STAGES["runtime-venv"])
    cuda, cuda_extras = project_install(STAGES["runtime-cuda-venv"])
    assert cpu == cuda
    assert "--no-index" in cpu, "images install only the staged wheels, never from an index"
    assert cpu_extras == {"runtime", "mlx"}
    assert cuda_extras == {"runtime", "mlx-cuda"}


def test_the_operator_image_installs_only_the_operator():
    _, extras = project_install(STAGES["operator-venv"])
    assert extras == {"operator"}


def test_mlx_cuda_extra_is_the_mlx_extra_with_mlxs_cuda_build():
    # Same mlx-lm and converter packages; MLX itself from its CUDA 12 build instead of its CPU one.
    def split(extra):
        mlx = [d for d in EXTRAS[extra] if re.match(r"mlx\[", d)]
        assert len(mlx) == 1, f"the {extra} extra must name mlx[...] once: {EXTRAS[extra]}"
        return mlx[0], sorted(set(EXTRAS[extra]) - set(mlx))

    cpu_mlx, cpu_rest = split("mlx")
    cuda_mlx, cuda_rest = split("mlx-cuda")
    assert cpu_rest == cuda_rest
    assert cpu_mlx.startswith("mlx[cpu]") and cuda_mlx.startswith("mlx[cuda12]")
    assert cpu_mlx.removeprefix("mlx[cpu]") == cuda_mlx.removeprefix("mlx[cuda12]")
    assert any(d.startswith("mlx-lm") for d in cpu_rest), "mlx-lm lists mlx only on macOS"


def image_extras(target: str) -> set[str]:
    """The extras in a final target's venv: those of the stages it copies from."""
    extras = set()
    for copy in STAGES[target].all("COPY"):
        extras |= project_install(STAGES[copy.split()[0].removeprefix("--from=")])[1]
    return extras


@pytest.mark.parametrize(
    "targets", ["runtime operator", "runtime runtime-cuda operator", "runtime-cuda"]
)
def test_images_sh_stages_the_wheels_of_every_extra_the_targets_install(targets):
    # The builds install with --no-index: a wheel images.sh did not stage fails the build.
    installed = set().union(*(image_extras(t) for t in targets.split()))
    assert installed <= staged_extras(targets)


def test_cuda_llama_cpp_is_compiled_for_the_named_gpu_architectures():
    cmake_args = next(e for e in STAGES["runtime-cuda-venv"].all("ENV") if "CMAKE_ARGS" in e)
    assert "-DGGML_CUDA=ON" in cmake_args
    assert "-DCMAKE_CUDA_ARCHITECTURES=80;86;89;90" in cmake_args
    # The CPU code in the CUDA build must run on any node, not only the build machine's CPU.
    assert "-DGGML_NATIVE=OFF" in cmake_args


def test_cuda_llama_cpp_is_the_version_the_project_pins():
    # The CUDA build compiles the sdist that images.sh stages for pyproject's pin; the CPU wheel
    # comes from the wheelhouse, built for the same version.
    pins = [d for d in EXTRAS["runtime"] if "llama" in d]
    assert len(pins) == 1 and pins[0].startswith("llama-cpp-python=="), pins
    version = pins[0].removeprefix("llama-cpp-python==")
    wheelhouse = (REPO_ROOT / "scripts" / "wheelhouse.sh").read_text()
    assert f"LLAMA_CPP_PYTHON_VERSION:-{version}}}" in wheelhouse


@pytest.mark.parametrize(
    "keyword", ["USER", "ENTRYPOINT", "CMD", "EXPOSE", "WORKDIR", "ENV"], ids=str.lower
)
def test_runtime_and_runtime_cuda_agree_on(keyword):
    assert STAGES["runtime"].all(keyword) == STAGES["runtime-cuda"].all(keyword)


def test_runtime_and_runtime_cuda_create_the_same_user():
    def useradd(stage):
        return re.search(r"useradd [^&]*", " ".join(stage.all("RUN"))).group(0).strip()

    assert useradd(STAGES["runtime"]) == useradd(STAGES["runtime-cuda"])


@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_final_stage_runs_as_a_numeric_non_root_user(target):
    user = STAGES[target].one("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{target}: USER {user} must be a numeric non-root uid"


@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_final_stage_carries_oci_labels(target):
    labels = " ".join(STAGES[target].all("LABEL"))
    for key in ("title", "description", "licenses", "version", "revision"):
        assert f"org.opencontainers.image.{key}=" in labels, f"{target} lacks the {key} label"


@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_final_stage_has_no_compiler(target):
    # A final stage inherits what its FROM stages installed: check the whole chain.
    for stage in ancestry(target):
        for run in stage.all("RUN"):
            installs = " ".join(re.findall(r"apt-get install[^&]*", run)) + "\n"
            for compiler in COMPILERS:
                assert compiler not in installs, f"{target} (via {stage.name}) installs {compiler}"
    copies = STAGES[target].all("COPY")
    assert all(c.startswith("--from=") for c in copies), f"{target} copies only built stages"


@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_no_stage_trusts_a_build_machine_ca(target):
    for stage in ancestry(target):
        for keyword, args in stage.instructions:
            assert "ca-certificates.crt" not in args and "SSL_CERT" not in args, (
                f"{stage.name}: {keyword} {args}"
            )


def test_chart_defaults_name_the_images_that_images_sh_builds():
    # `helm install` with no values must find the images that scripts/images.sh built and loaded.
    refs = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "images.sh"), "refs"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    chart = REPO_ROOT / "charts" / "exo-operator"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    app_version = yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"]
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert app_version == pyproject["project"]["version"]
    assert sorted(refs) == sorted(
        f"{values[key]['repository']}:{values[key]['tag'] or app_version}"
        for key in ("image", "runtimeImage")
    )
