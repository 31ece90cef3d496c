"""The files in cluster/ are valid for the tools that read them, and agree with gradsweep.

They cannot all be run here (no cloud, no Kubernetes, no Slurm), so each is parsed and checked
against what its tool requires: the Ray cluster launcher's own JSON schema, the KubeRay RayJob
fields, ``bash -n`` for the batch script; and the spec and entrypoints they name must be ones
gradsweep accepts.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gradsweep.spec import load_spec

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"


def test_aws_launcher_yaml_passes_rays_own_schema() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "ray-cluster-aws.yaml").read_text())
    validate_config(config)  # the schema `ray up` checks (ray/autoscaler/ray-schema.json)
    validate_config(prepare_config(config))  # and once merged with the AWS defaults
    assert config["head_node_type"] in config["available_node_types"]


def test_aws_launcher_keeps_cells_off_the_head_and_has_gpu_workers() -> None:
    config = yaml.safe_load((CLUSTER / "ray-cluster-aws.yaml").read_text())
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert any("--num-cpus=0" in cmd for cmd in config["head_start_ray_commands"])
    gpu_types = [t["node_config"]["InstanceType"] for name, t in config["available_node_types"].items()
                 if name != config["head_node_type"]]
    assert any(re.match(r"^(g\d|p\d)", t) for t in gpu_types), gpu_types
    assert "dashboard-host=0.0.0.0" in " ".join(config["head_start_ray_commands"])


def _rayjob() -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all((CLUSTER / "kuberay" / "rayjob.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"RayJob", "ConfigMap"}
    return kinds["RayJob"], kinds["ConfigMap"]


def test_kuberay_rayjob_has_the_fields_kuberay_requires() -> None:
    job, config_map = _rayjob()
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["entrypoint"]
    assert isinstance(spec["runtimeEnvYAML"], str) and isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    cluster = spec["rayClusterSpec"]
    assert re.match(r"^\d+\.\d+\.\d+$", cluster["rayVersion"])
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())  # KubeRay wants strings
    assert head["rayStartParams"]["num-cpus"] == "0"
    head_container = head["template"]["spec"]["containers"][0]
    assert head_container["image"].startswith("rayproject/ray:")
    assert {p["containerPort"] for p in head_container["ports"]} >= {6379, 8265}
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and "rayStartParams" in group
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits.get("nvidia.com/gpu", 0) >= 1
    # the ConfigMap the head mounts is the one defined here, with a spec gradsweep accepts
    volume = head["template"]["spec"]["volumes"][0]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    sweep = load_spec(config_map["data"]["spec.yaml"], source="rayjob ConfigMap")
    assert len(sweep.cells) > 0 and sweep.resources.get("gpu", 0) > 0


def test_kuberay_entrypoint_is_the_gradsweep_job_entrypoint() -> None:
    job, _ = _rayjob()
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:4] == ["python", "-m", "gradsweep.submit", "job"]
    mount = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]
    assert argv[4] == f"{mount['mountPath']}/spec.yaml"
    assert "--results" in argv


def test_slurm_script_is_valid_bash_with_sbatch_directives() -> None:
    script = CLUSTER / "slurm" / "gradsweep.sbatch"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = script.read_text()
    assert text.startswith("#!/bin/bash")
    directives = re.findall(r"^#SBATCH (--[a-z-]+)", text, flags=re.M)
    assert {"--nodes", "--ntasks-per-node", "--cpus-per-task"} <= set(directives)
    # every #SBATCH line comes before the first command (sbatch stops reading them there)
    first_command = next(i for i, line in enumerate(text.splitlines()) if line and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(text.splitlines()) if line.startswith("#SBATCH"))
    assert "ray start --head" in text and "--block" in text
    assert "python -m gradsweep run" in text and '--address "$ADDRESS"' in text


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_slurm_script_passes_shellcheck() -> None:
    result = subprocess.run(["shellcheck", "-S", "error", str(CLUSTER / "slurm" / "gradsweep.sbatch")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_local_cluster_script_parses_node_specs_and_rejects_bad_ones() -> None:
    sys.path.insert(0, str(CLUSTER))
    try:
        import local_cluster
    finally:
        sys.path.remove(str(CLUSTER))
    assert local_cluster.parse_node_spec("cpus=2,gpus=2,my_res=1") == {"cpus": 2, "gpus": 2, "resources": {"my_res": 1.0}}
    with pytest.raises(local_cluster.ClusterError, match="gpus must be a whole number"):
        local_cluster.parse_node_spec("gpus=0.5")
    with pytest.raises(local_cluster.ClusterError, match="cpus must be a number"):
        local_cluster.parse_node_spec("cpus=two")
    with pytest.raises(local_cluster.ClusterError, match="expected key=value"):
        local_cluster.parse_node_spec("cpus")
    # nodes of one cluster get disjoint ports
    spec = local_cluster.parse_node_spec("cpus=1")
    commands = [local_cluster.node_command("ray", f"n{i}", i, spec, base_port=30000, temp_dir="/tmp/x",
                                           head_address=None if i == 0 else "127.0.0.1:30000") for i in range(3)]
    ports = [int(a.split("=")[1]) for cmd in commands for a in cmd if re.match(r"--[a-z-]*port=\d+$", a)]
    assert len(ports) == len(set(ports))


def test_cluster_readme_names_every_file() -> None:
    readme = (CLUSTER / "README.md").read_text()
    for name in ("local_cluster.py", "ray-cluster-aws.yaml", "gradsweep.sbatch", "rayjob.yaml"):
        assert name in readme
    assert os.path.exists(CLUSTER.parent / "docs" / "clusters.md")
