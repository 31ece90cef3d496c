"""The files in cluster/ are valid for the tools that read them, and agree with gradsweep.

They cannot all be run here (no cloud, no Kubernetes, no Slurm), so each is parsed and checked
against what its tool requires: the Ray cluster launcher's own JSON schema (shipped inside the
ray package), a JSON schema of the RayJob written below from KubeRay's API reference (KubeRay's
CRD is not installed here), ``bash -n`` and shellcheck for the batch script, which also runs end
to end with stand-ins for Slurm's ``srun``/``scontrol``; every recipe must turn on Ray's token
authentication, and the specs and entrypoints they name must be ones gradsweep accepts.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml

from gradsweep.spec import load_spec

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"


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


def test_aws_launcher_turns_on_token_authentication_on_every_node() -> None:
    """The dashboard listens on 0.0.0.0: every node must require the token of the `ray up` machine."""
    config = yaml.safe_load((CLUSTER / "ray-cluster-aws.yaml").read_text())
    # the `ray up` machine's token file goes to Ray's default token path on every node
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [cmd for cmd in config[key] if "ray start" in cmd]
        assert starts and all("RAY_AUTH_MODE=token ray start" in cmd for cmd in starts), (key, starts)
    # shells on the nodes (ray exec / attach) use it too
    assert any("export RAY_AUTH_MODE=token" in cmd for cmd in config["setup_commands"])


# The RayJob fields this project relies on, as KubeRay's API reference documents them (ray.io/v1,
# KubeRay 1.6: RayJobSpec, RayClusterSpec with authOptions, HeadGroupSpec, WorkerGroupSpec).
# Unknown fields are refused, as `kubectl apply` does with strict field validation, so a misspelt
# or misplaced key fails here and not on the cluster. Pod templates are Kubernetes' PodTemplateSpec:
# only the parts checked below (containers with a name and an image, env, volumes) are described.
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_CONTAINER = {
    "type": "object",
    "required": ["name", "image"],
    "properties": {"name": {"type": "string"}, "image": {"type": "string"},
                   "env": {"type": "array", "items": {"type": "object", "required": ["name"]}},
                   "ports": {"type": "array", "items": {"type": "object", "required": ["containerPort"],
                             "properties": {"containerPort": {"type": "integer"}, "name": {"type": "string"}}}},
                   "resources": {"type": "object", "additionalProperties": False,
                                 "properties": {"requests": {"type": "object"}, "limits": {"type": "object"}}},
                   "volumeMounts": {"type": "array", "items": {"type": "object", "required": ["name", "mountPath"]}}},
}
_POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {"metadata": {"type": "object"},
                   "spec": {"type": "object", "required": ["containers"],
                            "properties": {"containers": {"type": "array", "minItems": 1, "items": _CONTAINER},
                                           "volumes": {"type": "array", "items": {"type": "object", "required": ["name"]}},
                                           "serviceAccountName": {"type": "string"},
                                           "tolerations": {"type": "array"}}}},
}
_GROUP_COMMON = {"rayStartParams": _STR_MAP, "template": _POD_TEMPLATE}
RAYJOB_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["entrypoint", "rayClusterSpec"],
            "properties": {
                "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                "backoffLimit": {"type": "integer", "minimum": 0},
                "clusterSelector": _STR_MAP,
                "deletionStrategy": {"type": "object"},
                "entrypoint": {"type": "string", "minLength": 1},
                "entrypointNumCpus": {"type": "number"},
                "entrypointNumGpus": {"type": "number"},
                "entrypointResources": {"type": "string"},
                "jobId": {"type": "string"},
                "managedBy": {"type": "string"},
                "metadata": _STR_MAP,
                "runtimeEnvYAML": {"type": "string"},
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
                "submitterConfig": {"type": "object"},
                "submitterPodTemplate": _POD_TEMPLATE,
                "suspend": {"type": "boolean"},
                "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                "rayClusterSpec": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["headGroupSpec"],
                    "properties": {
                        "authOptions": {"type": "object", "additionalProperties": False,
                                        "properties": {"mode": {"enum": ["disabled", "token"]},
                                                       "secretName": {"type": "string", "minLength": 1},
                                                       "enableK8sTokenAuth": {"type": "boolean"}}},
                        "autoscalerOptions": {"type": "object"},
                        "enableInTreeAutoscaling": {"type": "boolean"},
                        "gcsFaultToleranceOptions": {"type": "object"},
                        "headServiceAnnotations": _STR_MAP,
                        "managedBy": {"type": "string"},
                        "rayVersion": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
                        "suspend": {"type": "boolean"},
                        "headGroupSpec": {
                            "type": "object", "additionalProperties": False, "required": ["template"],
                            "properties": {**_GROUP_COMMON, "enableIngress": {"type": "boolean"},
                                           "headService": {"type": "object"}, "serviceType": {"type": "string"}},
                        },
                        "workerGroupSpecs": {"type": "array", "items": {
                            "type": "object", "additionalProperties": False, "required": ["groupName", "template"],
                            "properties": {**_GROUP_COMMON, "groupName": {"type": "string", "minLength": 1},
                                           "replicas": {"type": "integer", "minimum": 0},
                                           "minReplicas": {"type": "integer", "minimum": 0},
                                           "maxReplicas": {"type": "integer", "minimum": 0},
                                           "idleTimeoutSeconds": {"type": "integer"},
                                           "numOfHosts": {"type": "integer", "minimum": 1},
                                           "scaleStrategy": {"type": "object"}, "suspend": {"type": "boolean"}},
                        }},
                    },
                },
            },
        },
    },
}


def _rayjob() -> dict:
    docs = [d for d in yaml.safe_load_all((CLUSTER / "kuberay" / "rayjob.yaml").read_text()) if d is not None]
    # only the RayJob: an embedded ConfigMap would replace the user's own spec on `kubectl apply`
    assert [d["kind"] for d in docs] == ["RayJob"]
    return docs[0]


def _readme_kubectl_command(verb: str) -> list[str]:
    """The README's ``kubectl create VERB ...`` line (Kubernetes section), as argv."""
    readme = (CLUSTER / "README.md").read_text()
    lines = [line for line in readme.splitlines() if line.startswith(f"kubectl create {verb} ")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].split("|")[0])


def test_kuberay_rayjob_passes_the_rayjob_schema() -> None:
    jsonschema.validate(_rayjob(), RAYJOB_SCHEMA)


def test_the_rayjob_schema_refuses_what_kubectl_would() -> None:
    """The schema is not a blank check: a misspelt field or a non-string ray start param fails it."""
    job = _rayjob()
    misspelt = {**job, "spec": {**job["spec"], "authOption": {"mode": "token"}}}
    with pytest.raises(jsonschema.ValidationError, match="authOption"):
        jsonschema.validate(misspelt, RAYJOB_SCHEMA)
    cluster = job["spec"]["rayClusterSpec"]
    head = {**cluster["headGroupSpec"], "rayStartParams": {"num-cpus": 0}}
    numeric = {**job, "spec": {**job["spec"], "rayClusterSpec": {**cluster, "headGroupSpec": head}}}
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'string'"):
        jsonschema.validate(numeric, RAYJOB_SCHEMA)


def test_kuberay_rayjob_keeps_cells_off_the_head_and_has_gpu_workers() -> None:
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    head_container = head["template"]["spec"]["containers"][0]
    assert head_container["image"].startswith("rayproject/ray:")
    assert {p["containerPort"] for p in head_container["ports"]} >= {6379, 8265}
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits.get("nvidia.com/gpu", 0) >= 1


def test_kuberay_rayjob_turns_on_token_authentication_with_the_readmes_secret() -> None:
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    auth = cluster["authOptions"]
    assert auth["mode"] == "token"
    ray_version = tuple(int(x) for x in cluster["rayVersion"].split("."))
    assert ray_version >= (2, 52, 0)  # the first Ray with token authentication
    # the README creates that Secret, with the key KubeRay reads, from the submitting machine's token
    argv = _readme_kubectl_command("secret")
    assert argv[:4] == ["kubectl", "create", "secret", "generic"] and argv[4] == auth["secretName"]
    assert "--from-file=auth_token=$HOME/.ray/auth_token" in argv


def test_kuberay_runs_the_users_spec_from_the_configmap_the_readme_creates() -> None:
    job = _rayjob()
    head_spec = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volume = head_spec["volumes"][0]
    mount = next(m for m in head_spec["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:4] == ["python", "-m", "gradsweep.submit", "job"]
    assert argv[4] == f"{mount['mountPath']}/{volume['configMap']['items'][0]['path']}"
    assert "--results" in argv
    # `kubectl create configmap NAME --from-file=KEY=SPEC`: the name and key the RayJob mounts, and
    # a spec that exists and asks for GPUs (the workers have them)
    create = _readme_kubectl_command("configmap")
    assert create[3] == volume["configMap"]["name"]
    key, _, spec_path = next(a for a in create if a.startswith("--from-file=")).removeprefix("--from-file=").partition("=")
    assert key == volume["configMap"]["items"][0]["key"]
    sweep = load_spec(REPO / spec_path)
    assert len(sweep.cells) > 0 and sweep.resources.get("gpu", 0) > 0


def test_every_spec_the_recipes_name_exists_and_is_valid() -> None:
    files = [CLUSTER / "README.md", REPO / "docs" / "clusters.md", *CLUSTER.glob("*.yaml"),
             *CLUSTER.glob("kuberay/*.yaml"), *CLUSTER.glob("slurm/*")]
    named = {m for f in files for m in re.findall(r"\bspecs/[\w.-]+\.ya?ml\b", f.read_text())}
    assert named, "the recipes name no spec at all"
    for spec in sorted(named):
        assert (REPO / spec).is_file(), f"{spec} is named in cluster/ or docs/clusters.md but does not exist"
        assert len(load_spec(REPO / spec).cells) > 0


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
    scripts = [CLUSTER / "slurm" / "gradsweep.sbatch", REPO / "scripts" / "setup.sh"]
    result = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# Stand-ins for what a Slurm allocation provides. Each records its name, the Ray auth variables it
# saw and its arguments, one line per call (fields split by \x1f), in $STUB_LOG. The script starts
# worker sruns in the background, so a record is written whole by one printf (one short append)
# and records of concurrent calls cannot interleave.
_RECORD = ('record=$(printf "%s\\x1f" "$(basename "$0")" "${RAY_AUTH_MODE-}" "${RAY_AUTH_TOKEN-}" "$@"); '
           'printf "%s\\n" "$record" >> "$STUB_LOG"\n')
_STUBS = {
    # scontrol show hostnames LIST: a two-node allocation
    "scontrol": _RECORD + 'printf "gpu-node-1\\ngpu-node-2\\n"\n',
    # srun: `hostname --ip-address` answers the head's address; `ray start --block` would run
    # until the allocation ends, so it only records how it was asked to start
    "srun": _RECORD + 'case " $* " in *" hostname "*) echo "10.1.2.3 fe80::1";; esac\n',
    # ray: the token is made by the real `ray get-auth-token`; `ray status` says the head is up
    "ray": 'if [ "$1" = get-auth-token ]; then exec "$REAL_RAY" "$@"; fi\n' + _RECORD,
    # python: the node wait and the driver only record how they were called
    "python": _RECORD + 'cat > /dev/null\n',
}


def _dry_run_sbatch(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[list[str]], Path]:
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    bin_dir.mkdir()
    home.mkdir()
    for name, body in _STUBS.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    base = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "STUB_LOG": str(log),
            "REAL_RAY": str(Path(sys.executable).with_name("ray")),
            "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu-node-[1-2]",
            "SLURM_CPUS_PER_TASK": "16", "SLURM_GPUS_PER_TASK": "4"}
    result = subprocess.run(["bash", str(CLUSTER / "slurm" / "gradsweep.sbatch"), "specs/toy-raw.yaml", "/scratch/results"],
                            cwd=REPO, env={**base, **env}, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    calls = [line.split("\x1f")[:-1] for line in log.read_text().splitlines()]
    return result, calls, home


def test_slurm_script_dry_run_starts_every_node_with_its_cpus_and_the_token(tmp_path: Path) -> None:
    result, calls, home = _dry_run_sbatch(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # no token yet: the script made one, readable by the user only, and exported it
    token_file = home / ".ray" / "auth_token"
    token = token_file.read_text()
    assert len(token) >= 32 and token_file.stat().st_mode & 0o077 == 0
    for name, mode, seen_token, *_ in calls:
        if name != "scontrol":
            assert (mode, seen_token) == ("token", token), name
    starts = [args for name, _, _, *args in calls if name == "srun" and "ray" in args]
    assert len(starts) == 2  # one `ray start` per node
    head, worker = starts
    # since Slurm 22.05 a step gets --cpus-per-task only when srun is given it
    assert "--cpus-per-task=16" in head and "--cpus-per-task=16" in worker
    assert head[head.index("ray"):][:3] == ["ray", "start", "--head"] and "-w" in head and "gpu-node-1" in head
    assert "--num-cpus=15" in head and "--num-gpus=4" in head  # one CPU kept for the driver
    assert "--address=10.1.2.3:6379" in worker and "gpu-node-2" in worker and "--num-cpus=16" in worker
    driver = [args for name, _, _, *args in calls if name == "python" and args[:1] == ["-m"]]
    assert driver == [["-m", "gradsweep", "run", "specs/toy-raw.yaml", "--results", "/scratch/results",
                       "--address", "10.1.2.3:6379"]]


def test_slurm_script_dry_run_uses_a_token_given_in_the_environment(tmp_path: Path) -> None:
    result, calls, home = _dry_run_sbatch(tmp_path, RAY_AUTH_TOKEN="site-provided-token-0123456789abcdef")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (home / ".ray" / "auth_token").exists()
    seen = {(mode, tok) for name, mode, tok, *_ in calls if name == "srun"}
    assert seen == {("token", "site-provided-token-0123456789abcdef")}


def _local_cluster_module():
    sys.path.insert(0, str(CLUSTER))
    try:
        import local_cluster
    finally:
        sys.path.remove(str(CLUSTER))
    return local_cluster


def test_local_cluster_script_parses_node_specs_and_rejects_bad_ones() -> None:
    local_cluster = _local_cluster_module()
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


def test_local_cluster_makes_a_private_token_when_there_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local_cluster = _local_cluster_module()
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    token = local_cluster.ensure_local_token()
    token_file = tmp_path / ".ray" / "auth_token"
    assert token_file.read_text() == token and len(token) >= 32
    assert token_file.stat().st_mode & 0o077 == 0  # readable by this user only
    assert local_cluster.ensure_local_token() == token  # made once, then reused
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-the-environment")
    assert local_cluster.ensure_local_token() == "from-the-environment"


def test_local_cluster_requires_the_token_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real head started with the default settings refuses job API calls without this machine's token."""
    local_cluster = _local_cluster_module()
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no token yet: start makes one
    base = next(b for b in (random.randrange(33000, 60000, 1000) for _ in range(50))
                if all(local_cluster._port_free(p) for p in [b, b + 1, b + 2, *range(b + 10, b + 40)]))
    state_dir = tmp_path / "cluster"
    try:
        state = local_cluster.start(state_dir, [], base_port=base, timeout=180)
        assert state["auth"] == "token"
        token = (tmp_path / "home" / ".ray" / "auth_token").read_text()
        jobs = f"{state['dashboard_url']}/api/jobs/"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(jobs, timeout=30)
        assert refused.value.code == 401
        with pytest.raises(urllib.error.HTTPError) as wrong:
            wrong_token = {"Authorization": "Bearer not-the-token"}
            urllib.request.urlopen(urllib.request.Request(jobs, headers=wrong_token), timeout=30)
        assert wrong.value.code in (401, 403)
        assert local_cluster._get_json(jobs, token=token, timeout=30) == []
    finally:
        if (state_dir / local_cluster.STATE_FILE).exists():
            local_cluster.stop(state_dir)


def test_cluster_readme_names_every_file() -> None:
    readme = (CLUSTER / "README.md").read_text()
    for name in ("local_cluster.py", "ray-cluster-aws.yaml", "gradsweep.sbatch", "rayjob.yaml"):
        assert name in readme
    assert os.path.exists(CLUSTER.parent / "docs" / "clusters.md")
