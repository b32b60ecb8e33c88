"""The KubeRay manifests (jobs/k8s/) and runtime envs (jobs/runtime_env*.yaml) hold what KubeRay,
Ray Jobs and Ray Serve require, agree with each other and with the code: the RayJob's entrypoint is
a valid `jobs/train.py` command, the RayService embeds serve/config.yaml (plus the Kubernetes
overrides) and serves the runs the RayJob writes, on the volume both mount."""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path, PurePosixPath

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "jobs" / "k8s"
IMAGE_ROOT = PurePosixPath("/home/ray/emokp-ray")  # the Dockerfile's WORKDIR


def _load(path: Path, name: str):
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ray_pin() -> str:
    text = (REPO / "pyproject.toml").read_text()
    return re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', text).group(1)


def _manifest(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


@pytest.fixture(scope="module")
def render():
    return _load(K8S / "render.py", "emokp_k8s_render")


def _pod_specs(cluster_spec: dict) -> list[tuple[str, dict]]:
    head = cluster_spec["headGroupSpec"]
    return [("head", head)] + [(g["groupName"], g) for g in cluster_spec["workerGroupSpecs"]]


def _check_cluster_spec(spec: dict) -> None:
    """The fields KubeRay requires of a RayCluster spec (RayJob.rayClusterSpec, RayService.rayClusterConfig)."""
    assert spec["rayVersion"] == _ray_pin()
    assert spec["workerGroupSpecs"], "no worker group"
    for name, group in _pod_specs(spec):
        params = group["rayStartParams"]
        assert isinstance(params, dict) and all(isinstance(v, str) for v in params.values()), (
            f"{name}: rayStartParams values must be strings (KubeRay's map[string]string)"
        )
        pod = group["template"]["spec"]
        containers = pod["containers"]
        assert containers and all(c["image"] and c["name"] for c in containers), name
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for c in containers:
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{name}: mount {mount['name']} has no volume"
        if name != "head":
            assert isinstance(group["groupName"], str) and group["groupName"]
            counts = [group[k] for k in ("minReplicas", "replicas", "maxReplicas")]
            assert all(isinstance(n, int) for n in counts) and counts == sorted(counts), f"{name}: {counts}"
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"  # Jobs/Serve reach the head


def _mounts(spec: dict) -> set[str]:
    return {
        m["mountPath"]
        for _, g in _pod_specs(spec)
        for c in g["template"]["spec"]["containers"]
        for m in c.get("volumeMounts", [])
    }


def _claims(spec: dict) -> set[str]:
    return {
        v["persistentVolumeClaim"]["claimName"]
        for _, g in _pod_specs(spec)
        for v in g["template"]["spec"].get("volumes", [])
        if "persistentVolumeClaim" in v
    }


def test_every_manifest_names_its_api_kind_and_name():
    files = sorted(K8S.glob("*.yaml"))
    assert {f.name for f in files} >= {"rayjob-train.yaml", "rayservice.yaml", "storage.yaml"}
    for file in files:
        if file.name == "serve-overrides.yaml":
            continue  # not a Kubernetes object: render.py's input
        for doc in yaml.safe_load_all(file.read_text()):
            assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], file.name


def test_rayjob_runs_a_valid_train_command_on_gpu_workers():
    job = _manifest("rayjob-train.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    _check_cluster_spec(spec["rayClusterSpec"])
    gpu_groups = [
        g
        for g in spec["rayClusterSpec"]["workerGroupSpecs"]
        if all(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1 for c in g["template"]["spec"]["containers"])
    ]
    assert gpu_groups, "no worker group with nvidia.com/gpu limits"
    assert all(
        "nvidia.com/gpu" in c["resources"]["requests"] for g in gpu_groups for c in g["template"]["spec"]["containers"]
    )
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)

    # The entrypoint is a command the job and `emokp train` accept, with one worker per GPU.
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python" and PurePosixPath(argv[1]).parent == IMAGE_ROOT / "jobs"
    assert (REPO / PurePosixPath(argv[1]).relative_to(IMAGE_ROOT)).is_file()
    train = _load(REPO / "jobs" / "train.py", "emokp_job_train_manifest")
    args, rest = train.build_parser().parse_known_args(argv[2:])
    from emokp_ray.cli import build_parser

    flags = build_parser().parse_args(["train", "keypoints", "--data", "D", "--out", "O", *rest])
    gpus = sum(g["replicas"] for g in gpu_groups)
    assert flags.workers == gpus and flags.use_gpu is True
    runs = train.plan_runs(args.task, args.out, args.data, args.keypoints_data, args.emotion_data)
    for _, data, out in runs:  # everything the job reads and writes is on the shared volume
        assert any(PurePosixPath(p).is_relative_to(m) for p in (data, out) for m in _mounts(spec["rayClusterSpec"]))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Serve's own pydantic fields
def test_rayservice_embeds_the_serve_config_and_autoscales(render):
    service = _manifest("rayservice.yaml")
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    spec = service["spec"]
    assert isinstance(spec["serveConfigV2"], str)
    cluster = spec["rayClusterConfig"]
    _check_cluster_spec(cluster)
    assert cluster["enableInTreeAutoscaling"] is True
    assert any(g["maxReplicas"] > g["minReplicas"] for g in cluster["workerGroupSpecs"])

    embedded = yaml.safe_load(spec["serveConfigV2"])
    assert embedded == render.serve_config(), "rayservice.yaml is out of date: run python jobs/k8s/render.py"
    assert (
        render.render((K8S / "rayservice.yaml").read_text(), render.serve_config())
        == (K8S / "rayservice.yaml").read_text()
    )

    # Serve accepts it, the app builder accepts its args, and the proxy listens beyond loopback.
    from ray.serve.schema import ServeDeploySchema

    from emokp_ray.serving.schemas import AppArgs

    ServeDeploySchema.model_validate(embedded)
    assert embedded["http_options"]["host"] == "0.0.0.0"
    for app in embedded["applications"]:
        AppArgs(**app["args"])


def test_rayservice_serves_the_runs_the_rayjob_writes(render):
    service = _manifest("rayservice.yaml")["spec"]
    job = _manifest("rayjob-train.yaml")["spec"]
    train = _load(REPO / "jobs" / "train.py", "emokp_job_train_manifest2")
    args, _ = train.build_parser().parse_known_args(shlex.split(job["entrypoint"])[2:])
    trained = {
        task: out
        for task, _, out in train.plan_runs(args.task, args.out, args.data, args.keypoints_data, args.emotion_data)
    }
    served = yaml.safe_load(service["serveConfigV2"])["applications"][0]["args"]
    assert {k: served[k] for k in trained} == trained
    storage = {
        d["metadata"]["name"]
        for d in yaml.safe_load_all((K8S / "storage.yaml").read_text())
        if d["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in d["spec"]["accessModes"]
    }
    assert _claims(service["rayClusterConfig"]) == _claims(job["rayClusterSpec"]) == storage
    assert _mounts(service["rayClusterConfig"]) == _mounts(job["rayClusterSpec"]) - {"/dev/shm"}


def test_overrides_merge_by_name_and_refuse_unknown_names(render, tmp_path):
    base = {
        "http_options": {"host": "127.0.0.1", "port": 8000},
        "applications": [
            {"name": "a", "args": {"x": 1, "y": 2}, "deployments": [{"name": "D", "n": 1}, {"name": "E"}]}
        ],
    }
    merged = render.merge(
        base,
        {
            "http_options": {"host": "0.0.0.0"},
            "applications": [{"name": "a", "args": {"y": 3}, "deployments": [{"name": "E", "n": 5}]}],
        },
    )
    assert merged == {
        "http_options": {"host": "0.0.0.0", "port": 8000},
        "applications": [
            {"name": "a", "args": {"x": 1, "y": 3}, "deployments": [{"name": "D", "n": 1}, {"name": "E", "n": 5}]}
        ],
    }
    assert base["http_options"]["host"] == "127.0.0.1"  # the input is not modified
    with pytest.raises(ValueError, match="typo"):
        render.merge(base, {"applications": [{"name": "typo"}]})
    manifest = "spec:\n  serveConfigV2: |\n    old: 1\n\n  rayClusterConfig:\n    x: 1\n"
    text = render.render(manifest, {"new": [1, 2]})
    assert yaml.safe_load(text) == {
        "spec": {"serveConfigV2": render.HEADER + "new:\n- 1\n- 2\n", "rayClusterConfig": {"x": 1}}
    }


def test_runtime_envs_are_valid_and_the_pip_one_lists_the_project_dependencies():
    from ray.runtime_env import RuntimeEnv

    image_env = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
    pip_env = yaml.safe_load((REPO / "jobs" / "runtime_env.pip.yaml").read_text())
    for env in (image_env, pip_env):
        RuntimeEnv(**env)  # Ray's own validation of the keys and their types
        assert "/.venv/" in env["excludes"] and "/prepared/" in env["excludes"]
    assert "pip" not in image_env and "working_dir" not in image_env  # --working-dir gives it; no installs
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert pip_env["pip"]["packages"] == [d for d in deps if not d.startswith("ray")]


def test_network_policy_keeps_the_dashboard_and_jobs_api_inside():
    # Ray's dashboard port is its unauthenticated Jobs API: no rule open to everyone may include it
    # (or any Ray port but Serve's); it is reachable from Ray pods, the operator and labelled clients.
    (policy,) = list(yaml.safe_load_all((K8S / "networkpolicy.yaml").read_text()))
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    ray_pods = {"ray.io/is-ray-node": "yes"}
    assert policy["spec"]["podSelector"]["matchLabels"] == ray_pods
    serve_ports = {
        p["containerPort"]
        for _, g in _pod_specs(_manifest("rayservice.yaml")["spec"]["rayClusterConfig"])
        for c in g["template"]["spec"]["containers"]
        for p in c.get("ports", [])
        if p.get("name") == "serve"
    }
    dashboard_allowed_from = []
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        if not rule.get("from"):
            assert ports and ports <= serve_ports == {8000}, f"a rule open to all allows {ports}"
            continue
        assert all(peer.get("podSelector", {}).get("matchLabels") for peer in rule["from"]), rule  # never "any pod"
        if not ports or 8265 in ports:
            dashboard_allowed_from += [peer["podSelector"]["matchLabels"] for peer in rule["from"]]
    assert (
        ray_pods in dashboard_allowed_from and {"app.kubernetes.io/name": "kuberay-operator"} in dashboard_allowed_from
    )
    assert "networkpolicy.yaml" in (REPO / "README.md").read_text()


def test_rayservice_pods_start_serve_on_the_fast_path_init_ray_sets_locally():
    # Serve reads these when its processes start, so every pod sets them (head: controller and a
    # proxy; workers: replicas and their proxies), the same values as a local cluster gets.
    from emokp_ray.ray_utils import SERVE_FAST_PATH_ENV

    for name, pod in _pod_specs(_manifest("rayservice.yaml")["spec"]["rayClusterConfig"]):
        env = {e["name"]: e["value"] for c in pod["template"]["spec"]["containers"] for e in c.get("env", [])}
        assert {k: env.get(k) for k in SERVE_FAST_PATH_ENV} == SERVE_FAST_PATH_ENV, name


def _nginx_directives(text: str) -> dict[str, str]:
    """`name value;` lines of an nginx config -> {name: value} (the last one wins; blocks ignored)."""
    found = {}
    for line in text.splitlines():
        match = re.match(r"\s*([a-z_]+)\s+([^;{]+);", line.split("#", 1)[0])
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


def test_ingress_has_the_front_proxy_limits_of_the_nginx_site():
    # Issue 31: the limits of serve/nginx/emokp.conf (the site tests/test_serve.py runs in front of
    # Serve) at the cluster's edge: ingress-nginx annotations and its controller's ConfigMap.
    site = _nginx_directives((REPO / "serve" / "nginx" / "emokp.conf").read_text())
    ingress, controller = list(yaml.safe_load_all((K8S / "ingress.yaml").read_text()))
    assert ingress["kind"] == "Ingress" and controller["kind"] == "ConfigMap"
    notes = {k.removeprefix("nginx.ingress.kubernetes.io/"): v for k, v in ingress["metadata"]["annotations"].items()}
    seconds = lambda value: value.removesuffix("s")  # noqa: E731
    assert notes["proxy-body-size"] == site["client_max_body_size"]
    assert notes["client-body-buffer-size"] == site["client_body_buffer_size"]
    assert notes["proxy-request-buffering"] == site["proxy_request_buffering"] == "on"
    assert notes["proxy-buffering"] == site["proxy_buffering"] == "on"
    for name in ("connect", "send", "read"):
        assert notes[f"proxy-{name}-timeout"] == seconds(site[f"proxy_{name}_timeout"])
    data = controller["data"]
    assert data["client-header-buffer-size"] == site["client_header_buffer_size"]
    assert data["large-client-header-buffers"] == site["large_client_header_buffers"]
    assert data["client-header-timeout"] == seconds(site["client_header_timeout"])
    assert data["client-body-timeout"] == seconds(site["client_body_timeout"])
    # The body limit is Serve's own (serve/config.yaml), and the Ingress routes to the Service
    # KubeRay creates for the RayService, on its Serve port.
    max_body = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())["applications"][0]["args"]["max_body_bytes"]
    assert int(site["client_max_body_size"].removesuffix("m")) * 1024 * 1024 == max_body
    service = _manifest("rayservice.yaml")["metadata"]["name"] + "-serve-svc"
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": service, "port": {"number": 8000}}
