#!/usr/bin/env python
"""Start and stop a multi-node Ray cluster on this one machine, by the process ids it started.

Why: testing multi-node behaviour (a lost node, pretend GPUs, job submission) needs real,
separate ``ray start`` nodes, and stopping them must never touch any other Ray on the machine
(``ray stop`` would kill every Ray process of the user, including the embedded Rays of tests).

Each node is one ``ray start --block`` process started in its own session. ``--block`` makes that
process own the node: SIGTERM to it shuts the node's raylet, workers and agents down. The state
file records every pid (with its start time, so a reused pid is never signalled); ``stop`` signals
those pids and then their descendants, nothing else. ``kill-node`` SIGKILLs one node's whole
process tree, which is what a lost machine looks like to the rest of the cluster.

Usage::

    python cluster/local_cluster.py start --state /tmp/gs-cluster \\
        --worker cpus=2 --worker cpus=2,gpus=2,my_resource=1
    gradsweep submit spec.yaml --address "$(python cluster/local_cluster.py address --state /tmp/gs-cluster)"
    python cluster/local_cluster.py kill-node worker-1 --state /tmp/gs-cluster
    python cluster/local_cluster.py stop --state /tmp/gs-cluster

The head has no task CPUs (``--num-cpus=0``): it runs the GCS, the dashboard (the job server)
and the job drivers only, as recommended for real clusters. ``gpus=N`` on a worker declares N
pretend GPUs: Ray schedules and assigns them (``CUDA_VISIBLE_DEVICES``) without any hardware.
Ports are allocated from ``--base-port`` in fixed blocks so two clusters (or a cluster and an
embedded ``ray.init()``) do not collide; pick another base port for a second cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

STATE_FILE = "cluster.json"
# Ports, relative to --base-port. Head: GCS, dashboard, client server. Node i (head = 0) gets
# the block NODE_BLOCK + i * NODE_STRIDE for its own servers, and WORKER_BLOCK + i * WORKER_STRIDE
# .. + WORKER_STRIDE - 1 for its worker processes.
HEAD_PORTS = {"port": 0, "dashboard-port": 1, "ray-client-server-port": 2}
NODE_PORTS = {
    "node-manager-port": 0,
    "object-manager-port": 1,
    "dashboard-agent-listen-port": 2,
    "dashboard-agent-grpc-port": 3,
    "runtime-env-agent-port": 4,
    "metrics-export-port": 5,
}
NODE_BLOCK, NODE_STRIDE = 10, 10
WORKER_BLOCK, WORKER_STRIDE = 200, 100
MAX_NODES = 8  # keeps a cluster inside base-port .. base-port + 999
DEFAULT_OBJECT_STORE = 100 * 1024 * 1024  # per node; Ray's default (30% of RAM) is far too big here


class ClusterError(RuntimeError):
    """A local cluster could not be started, found or stopped."""


# --------------------------------------------------------------------------------- node specs


def parse_node_spec(text: str) -> dict[str, Any]:
    """``"cpus=2,gpus=2,memory=1e9,my_res=1"`` -> ``{"cpus": 2, "gpus": 2, "memory": ..., "resources": {...}}``.

    ``cpus``, ``gpus``, ``memory`` and ``object_store_memory`` are Ray's built-in resources; any
    other key is a custom resource (``--resources``). Amounts must be non-negative numbers.
    """
    spec: dict[str, Any] = {"cpus": 1, "gpus": 0, "resources": {}}
    if not text.strip():
        return spec
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ClusterError(f"--worker {text!r}: expected key=value items such as 'cpus=2,gpus=1', got {item!r}")
        try:
            amount = float(value)
        except ValueError:
            raise ClusterError(f"--worker {text!r}: {key} must be a number, got {value.strip()!r}") from None
        if amount < 0:
            raise ClusterError(f"--worker {text!r}: {key} must be >= 0, got {amount:g}")
        if key in ("cpus", "gpus"):
            if amount != int(amount):
                raise ClusterError(f"--worker {text!r}: {key} must be a whole number, got {amount:g}")
            spec[key] = int(amount)
        elif key in ("memory", "object_store_memory"):
            spec[key] = int(amount)
        else:
            spec["resources"][key] = amount
    return spec


def node_command(
    ray: str, name: str, index: int, spec: dict[str, Any], *, base_port: int, temp_dir: str, head_address: str | None
) -> list[str]:
    """The ``ray start --block`` command line of node ``index`` (0 is the head)."""
    cmd = [ray, "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
    if head_address is None:
        cmd += ["--head", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}"]
        cmd += [f"--{flag}={base_port + off}" for flag, off in HEAD_PORTS.items()]
    else:
        cmd += [f"--address={head_address}"]
    node_base = base_port + NODE_BLOCK + index * NODE_STRIDE
    cmd += [f"--{flag}={node_base + off}" for flag, off in NODE_PORTS.items()]
    low = base_port + WORKER_BLOCK + index * WORKER_STRIDE
    cmd += [f"--min-worker-port={low}", f"--max-worker-port={low + WORKER_STRIDE - 1}"]
    cmd += [f"--num-cpus={spec['cpus']}", f"--num-gpus={spec['gpus']}"]
    cmd += [f"--object-store-memory={spec.get('object_store_memory', DEFAULT_OBJECT_STORE)}"]
    if "memory" in spec:
        cmd += [f"--memory={spec['memory']}"]
    # A label resource per node lets tests and users pin work to one node by name.
    resources = {f"node:{name}": 1.0, **spec["resources"]}
    cmd += [f"--resources={json.dumps(resources)}"]
    return cmd


# ------------------------------------------------------------------------------- processes


def _psutil() -> Any:
    """psutil, which Ray vendors (``ray/thirdparty_files``) when it is not installed on its own."""
    try:
        import psutil
    except ImportError:
        import ray  # noqa: F401  (puts ray's thirdparty_files on sys.path)
        import psutil
    return psutil


def _process_identity(pid: int) -> float | None:
    """The start time of ``pid`` (to tell it from a later process that reuses the pid), or None."""
    psutil = _psutil()

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _tree(pid: int, created: float | None) -> list[Any]:
    """``pid`` and all its descendants, if ``pid`` is still the process we started."""
    psutil = _psutil()

    try:
        proc = psutil.Process(pid)
        if created is not None and abs(proc.create_time() - created) > 1e-3:
            return []
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def _signal_tree(node: dict[str, Any], sig: int) -> list[Any]:
    psutil = _psutil()

    procs = _tree(node["pid"], node.get("created"))
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass
    return procs


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def local_token() -> str | None:
    """The Ray auth token this machine would use: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def ensure_local_token() -> str:
    """The token of :func:`local_token`, created (random, mode 600) where Ray looks for it when missing.

    Why: a cluster without token authentication runs code for anyone who reaches its ports, and
    on a shared machine that is every local user; so ``start`` turns it on by default, as
    ``ray.init()`` does, and needs a token to do so.
    """
    token = local_token()
    if token:
        return token
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # an empty file, or one made meanwhile by another process
        token = path.read_text().strip()
        if not token:
            raise ClusterError(f"{path} is empty: remove it, or put a token in it") from None
        return token
    with os.fdopen(fd, "w") as out:
        out.write(token)
    return token


def _get_json(url: str, *, token: str | None = None, timeout: float = 5.0) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 (local URL)
        return json.loads(resp.read().decode())


def alive_nodes(dashboard_url: str, *, auth: str = "disabled") -> list[dict[str, Any]]:
    """The cluster's ALIVE nodes as the dashboard's state API lists them."""
    token = local_token() if auth == "token" else None
    data = _get_json(f"{dashboard_url}/api/v0/nodes?limit=1000&detail=1", token=token)
    nodes = data.get("data", {}).get("result", {}).get("result", [])
    return [n for n in nodes if n.get("state") == "ALIVE"]


# ------------------------------------------------------------------------------ the cluster


def _load_state(state_dir: Path) -> dict[str, Any]:
    path = state_dir / STATE_FILE
    if not path.exists():
        raise ClusterError(f"no local cluster recorded in {path} (start one with 'local_cluster.py start')")
    return json.loads(path.read_text())


def _save_state(state_dir: Path, state: dict[str, Any]) -> None:
    tmp = state_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(state_dir / STATE_FILE)


def start(
    state_dir: str | os.PathLike[str],
    workers: list[dict[str, Any]],
    *,
    base_port: int = 26400,
    head: dict[str, Any] | None = None,
    auth: str | None = None,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Start a head (no task CPUs by default) and one node per entry of ``workers``; wait until all are alive.

    Returns the state (also written to ``<state_dir>/cluster.json``): the GCS address, the
    dashboard URL (for ``gradsweep submit --address``) and every node's pid. On failure, the
    nodes already started are stopped before the error is raised.

    ``auth`` is Ray's ``RAY_AUTH_MODE`` for the nodes: ``token`` (the default; clients then need
    ``RAY_AUTH_MODE=token`` and the token of :func:`local_token`, created by
    :func:`ensure_local_token` when this machine has none) or ``disabled``.
    """
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    if (state_dir / STATE_FILE).exists():
        old = json.loads((state_dir / STATE_FILE).read_text())
        if any(_tree(n["pid"], n.get("created")) for n in old["nodes"]):
            raise ClusterError(f"a cluster recorded in {state_dir} is still running; stop it first")
    if len(workers) + 1 > MAX_NODES:
        raise ClusterError(f"at most {MAX_NODES - 1} worker nodes, got {len(workers)}")
    busy = [p for p in (base_port + off for off in HEAD_PORTS.values()) if not _port_free(p)]
    if busy:
        raise ClusterError(f"--base-port {base_port}: port(s) {busy} already in use; choose another base port")

    # Unix socket paths must stay short (about 107 bytes), so the temp dir is not under state_dir.
    temp_dir = tempfile.mkdtemp(prefix="gs-ray-")
    ray = str(Path(sys.executable).with_name("ray"))
    if not Path(ray).exists():
        ray = "ray"
    env = dict(os.environ)
    # Job entrypoints run `python ...` from the nodes' PATH: make that this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")  # nothing to drain locally
    # Several nodes starting at once on a few busy cores: give each raylet longer to register.
    env.setdefault("RAY_raylet_start_wait_time_s", str(int(max(timeout, 60))))
    env.pop("RAY_ADDRESS", None)
    if auth is None:
        auth = "token"
    if auth not in ("token", "disabled"):
        raise ClusterError(f"--auth: expected 'token' or 'disabled', got {auth!r}")
    if auth == "token":
        ensure_local_token()
    env["RAY_AUTH_MODE"] = auth

    gcs_address = f"127.0.0.1:{base_port + HEAD_PORTS['port']}"
    dashboard_url = f"http://127.0.0.1:{base_port + HEAD_PORTS['dashboard-port']}"
    state: dict[str, Any] = {
        "gcs_address": gcs_address,
        "dashboard_url": dashboard_url,
        "temp_dir": temp_dir,
        "base_port": base_port,
        "auth": auth,
        "nodes": [],
    }
    specs = [("head", head or {"cpus": 0, "gpus": 0, "resources": {}})]
    specs += [(f"worker-{i + 1}", w) for i, w in enumerate(workers)]
    try:
        for index, (name, spec) in enumerate(specs):
            cmd = node_command(
                ray, name, index, spec, base_port=base_port, temp_dir=temp_dir,
                head_address=None if index == 0 else gcs_address,
            )
            log = state_dir / f"{name}.log"
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=env, start_new_session=True,
                )
            state["nodes"].append(
                {"name": name, "pid": proc.pid, "created": _process_identity(proc.pid), "spec": spec,
                 "log": str(log), "command": cmd}
            )
            _save_state(state_dir, state)
            # One node at a time: nodes of one machine that start together race for their
            # registration with the GCS, and one of them times out on busy cores.
            _wait_for_nodes(state, expected=index + 1, timeout=timeout)
    except BaseException:
        stop(state_dir)
        raise
    return state


def _wait_for_nodes(state: dict[str, Any], *, expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        for node in state["nodes"]:
            if not _tree(node["pid"], node.get("created")):
                log = Path(node["log"])
                tail = log.read_text(errors="replace")[-3000:]
                raise ClusterError(f"'ray start' of {node['name']} exited; its log ({log}) ends:\n{tail}")
        try:
            if len(alive_nodes(state["dashboard_url"], auth=state["auth"])) >= expected:
                return
        except Exception as exc:  # the dashboard is not up yet
            last_error = exc
        time.sleep(0.5)
    raise ClusterError(f"{expected} node(s) not alive after {timeout:.0f}s (last error: {last_error}); "
                       f"see the logs in {Path(state['nodes'][0]['log']).parent}")


def kill_node(state_dir: str | os.PathLike[str], name: str) -> int:
    """SIGKILL node ``name``'s whole process tree, as if its machine was lost; returns how many processes."""
    state = _load_state(Path(state_dir))
    names = [n["name"] for n in state["nodes"]]
    if name not in names:
        raise ClusterError(f"no node {name!r} in this cluster; nodes: {', '.join(names)}")
    node = next(n for n in state["nodes"] if n["name"] == name)
    return len(_signal_tree(node, signal.SIGKILL))


def stop(state_dir: str | os.PathLike[str], *, grace: float = 20.0) -> None:
    """Stop every node this cluster started: SIGTERM to each ``ray start --block``, then SIGKILL what is left.

    Only processes recorded in the state file and their descendants are signalled. Safe to call
    twice, and on a partly started or partly killed cluster.
    """
    psutil = _psutil()

    state_dir = Path(state_dir)
    if not (state_dir / STATE_FILE).exists():
        return
    state = _load_state(state_dir)
    # Collect the trees first: once a parent exits, its orphans can no longer be found from it.
    trees = {n["name"]: _tree(n["pid"], n.get("created")) for n in state["nodes"]}
    everyone = [p for procs in trees.values() for p in procs]
    for node in reversed(state["nodes"]):  # workers before the head
        for proc in trees[node["name"]][:1]:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
    _, alive = psutil.wait_procs(everyone, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    temp_dir = state.get("temp_dir")
    if temp_dir and Path(temp_dir).name.startswith("gs-ray-"):
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)
    (state_dir / STATE_FILE).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("start", help="start a head and worker nodes")
    p.add_argument("--state", required=True, help="folder for the state file and the nodes' logs")
    p.add_argument("--worker", action="append", default=[], metavar="SPEC",
                   help="one worker node, e.g. 'cpus=2' or 'cpus=2,gpus=2,my_res=1' (repeat for more nodes)")
    p.add_argument("--workers", type=int, default=None, help="N identical worker nodes of --worker-spec")
    p.add_argument("--worker-spec", default="cpus=1", help="the spec of each of --workers N nodes")
    p.add_argument("--base-port", type=int, default=26400, help="first of the ~1000 ports the cluster uses")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each node")
    p.add_argument("--auth", choices=("token", "disabled"), default=None,
                   help="Ray token authentication (default: token; ~/.ray/auth_token is created when missing)")
    for name, helptext in (("stop", "stop every node this cluster started"), ("address", "print the dashboard URL"),
                           ("status", "print the nodes and whether Ray sees them alive")):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("--state", required=True)
    k = sub.add_parser("kill-node", help="SIGKILL one node's processes (simulate a lost machine)")
    k.add_argument("name")
    k.add_argument("--state", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            workers = [parse_node_spec(w) for w in args.worker]
            workers += [parse_node_spec(args.worker_spec)] * (args.workers or 0)
            if not workers:
                workers = [parse_node_spec("cpus=1")]
            state = start(args.state, workers, base_port=args.base_port, auth=args.auth, timeout=args.timeout)
            print(f"started {len(state['nodes'])} nodes; submit with --address {state['dashboard_url']}")
            if state["auth"] == "token":
                print("token authentication is on: export RAY_AUTH_MODE=token before 'gradsweep submit'")
        elif args.command == "stop":
            stop(args.state)
        elif args.command == "address":
            print(_load_state(Path(args.state))["dashboard_url"])
        elif args.command == "kill-node":
            print(f"killed {kill_node(args.state, args.name)} processes of {args.name}")
        elif args.command == "status":
            state = _load_state(Path(args.state))
            alive = alive_nodes(state["dashboard_url"], auth=state.get("auth", "disabled"))
            print(f"{state['dashboard_url']}: {len(alive)} node(s) alive")
            for node in state["nodes"]:
                running = bool(_tree(node["pid"], node.get("created")))
                print(f"  {node['name']:<10} pid {node['pid']:<8} {'running' if running else 'gone'}  {node['spec']}")
    except ClusterError as exc:
        print(f"local_cluster: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
