"""The Dockerfile, checked statically (no Docker engine here): stages, user, entrypoint, image name."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.chart.helm import CHART, REPO, containers, render

DOCKERFILE = REPO / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert m, line
            stages.append(Stage(base=m.group(1), name=m.group(2) or str(len(stages))))
        elif not stages:
            assert instruction == "ARG", f"only ARG may precede FROM: {line}"
            name, _, default = rest.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append((instruction, rest))
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse(DOCKERFILE)


def test_multi_stage_slim_python(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    args, stages = dockerfile
    assert [s.name for s in stages] == ["build", "runtime"]
    for stage in stages:
        assert stage.base == "python:${PYTHON_VERSION}-slim-bookworm"
    assert args["PYTHON_VERSION"] == "3.11"
    runtime = stages[-1]
    assert runtime.args("COPY") == ["--from=build /opt/kubeobs /opt/kubeobs"]
    # no compilers or package installs in the final image; the build stage installs binary wheels only
    runtime_runs = " ".join(runtime.args("RUN"))
    assert not re.search(r"apt-get|apk |gcc|build-essential|pip install", runtime_runs)
    build_runs = " ".join(stages[0].args("RUN"))
    assert "--only-binary=:all:" in build_runs and "apt-get" not in build_runs
    assert "import uvloop, orjson" in build_runs


def test_runs_as_non_root(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    (user,) = stages[-1].args("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    assert f"--uid {uid}" in " ".join(stages[-1].args("RUN"))
    # the chart runs the image as that same user
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["collector"]["securityContext"]["runAsUser"] == int(uid)
    assert values["dns"]["securityContext"]["runAsUser"] == int(uid)


def test_entrypoint_runs_both_components(
    dockerfile: tuple[dict[str, str], list[Stage]], tmp_path: Path
) -> None:
    """The chart's args after the image's ENTRYPOINT form valid commands of the installed `kubeobs`."""
    _, stages = dockerfile
    (entrypoint,) = stages[-1].args("ENTRYPOINT")
    (cmd,) = stages[-1].args("CMD")
    argv0 = json.loads(entrypoint)  # exec form
    assert argv0 == ["kubeobs"] and json.loads(cmd) == ["--help"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kubeobs"] == "kubeobs.cli:main"
    rendered = render()
    files = {
        "/etc/kubeobs/collector.yaml": rendered.get("ConfigMap", "-collector")["data"]["collector.yaml"],
        "/etc/kubeobs/dns.yaml": rendered.get("ConfigMap", "-dns")["data"]["dns.yaml"],
    }
    # the collector checks its whole config; the DNS server's config is checked in test_render
    for workload, check, expect in (
        (rendered.get("DaemonSet"), ["--check-config"], "config ok"),
        (rendered.get("Deployment"), ["--help"], "usage: kubeobs dns"),
    ):
        (main,) = containers(workload, init=False)
        args = list(main["args"])
        for i, arg in enumerate(args):
            if arg in files:
                local = tmp_path / Path(arg).name
                local.write_text(files[arg])
                args[i] = str(local)
        command = [sys.executable, "-m", "kubeobs", *args, *check]
        env = {"NODE_NAME": "node-a", "PATH": "/usr/bin:/bin"}
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
        assert result.returncode == 0, f"{shlex.join(command)}: {result.stdout}{result.stderr}"
        assert expect in result.stdout


def test_image_matches_the_chart_and_the_package(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    args, stages = dockerfile
    version = args["VERSION"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == version == project["version"]
    assert values["image"]["tag"] == ""  # defaults to appVersion
    labels = " ".join(stages[-1].args("LABEL"))
    assert f'org.opencontainers.image.ref.name="{values["image"]["repository"]}:${{VERSION}}"' in labels
    assert f"docker build -t {values['image']['repository']}:{version} ." in DOCKERFILE.read_text()


def test_dockerignore_keeps_what_the_build_copies(dockerfile: tuple[dict[str, str], list[Stage]]) -> None:
    _, stages = dockerfile
    copied = {
        src
        for stage in stages
        for arg in stage.args("COPY")
        if not arg.startswith("--from")
        for src in arg.split()[:-1]
    }
    assert copied == {"pyproject.toml", "README.md", "collector", "dnsserver", "kubeobs"}
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # everything else (tests, charts, .git, ...) stays out of the context
    for src in copied:
        assert f"!{src}" in ignore or f"!{src}/" in ignore, src
