"""What can be checked of the Dockerfile without a Docker engine: its base image is the official Ray
image of the Ray version pyproject.toml pins, it installs the project and names nothing else, its
build context leaves data and virtualenvs out, and the manifests run the image it documents."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = (REPO / "Dockerfile").read_text()
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(
        r"\\\n\s*", " ", "\n".join(line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#"))
    )
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", text, re.M)]


def _arg_defaults() -> dict[str, str]:
    defaults = {}
    for instruction, args in _instructions():
        if instruction == "ARG" and "=" in args:
            name, value = args.split("=", 1)
            defaults.setdefault(name, value)
    return defaults


def _base_image(**build_args: str) -> str:
    (from_args,) = [args for instruction, args in _instructions() if instruction == "FROM"]
    values = {**_arg_defaults(), **build_args}
    return re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], from_args.split()[0])


def _ray_pin() -> str:
    (ray,) = [d for d in PROJECT["dependencies"] if d.startswith("ray[")]
    return ray.split("==")[1]


def test_base_image_is_the_official_ray_image_of_the_pinned_version():
    assert _base_image() == f"rayproject/ray:{_ray_pin()}-py311-cpu"
    assert _base_image(RAY_FLAVOR="gpu") == f"rayproject/ray:{_ray_pin()}-py311-gpu"
    assert _base_image(RAY_FLAVOR="cu121") == f"rayproject/ray:{_ray_pin()}-py311-cu121"
    # the build itself asserts the image's Ray is RAY_VERSION
    assert "ray.__version__ == '${RAY_VERSION}'" in DOCKERFILE


def test_pip_installs_only_the_project():
    installs = [args for instruction, args in _instructions() if instruction == "RUN" and "pip install" in args]
    assert installs, "the Dockerfile installs nothing"
    for run in installs:
        for command in run.split("&&"):
            if not command.strip().startswith("pip install"):
                continue
            words = shlex.split(command)
            named, skip = [], False
            for word in words[2:]:
                if skip:
                    skip = False
                elif word.startswith("-"):
                    skip = word in ("--extra-index-url", "--index-url", "-i")
                elif not word.startswith("${index"):
                    named.append(word)
            assert named and all(re.fullmatch(r"\.(\[[^\]]*\])?", w) for w in named), f"pip install names {named}"


def test_build_context_leaves_data_and_environments_out():
    ignored = (REPO / ".dockerignore").read_text().split()
    for path in (".venv/", ".git/", "prepared/", "runs/"):
        assert path in ignored


def test_manifests_run_the_images_the_dockerfile_documents():
    documented = set(re.findall(r"docker build .*?-t (\S+) \.", DOCKERFILE))
    assert documented == {f"emokp-ray:{PROJECT['version']}-cpu", f"emokp-ray:{PROJECT['version']}-gpu"}
    images = []
    for manifest in (REPO / "jobs" / "k8s").glob("*.yaml"):
        for doc in yaml.safe_load_all(manifest.read_text()):
            text = yaml.safe_dump(doc)
            images += re.findall(r"\bimage: (\S+)", text)
    assert images
    for image in images:
        assert image.rsplit("/", 1)[-1] in documented, image  # REGISTRY/ prefix allowed
