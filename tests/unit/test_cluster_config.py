"""cluster.yaml and docs/kuberay-rayjob.yaml, checked offline.

cluster.yaml goes through Ray's own validator twice: as written, and after the steps `ray up`
takes before it first calls AWS (``prepare_config``: defaults merged, setup commands merged,
docker checked, per-type worker bounds filled; then the AWS provider's resource fill-out, fed a
recorded ``describe_instance_types`` answer instead of EC2). Then the promises docs/cluster.md
makes: dashboard on loopback, token auth on every ``ray start`` with the token on every node,
the project installed and prepared on every node, GPU workers that scale from zero.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from unittest import mock

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
RAYJOB_YAML = ROOT / "docs" / "kuberay-rayjob.yaml"

# What EC2's describe_instance_types says about the two instance types (trimmed to the fields
# Ray reads): g5.2xlarge = 8 vCPU, 32 GiB, 1x NVIDIA A10G.
EC2_INSTANCE_TYPES = [
    {
        "InstanceType": "m5.2xlarge",
        "VCpuInfo": {"DefaultVCpus": 8},
        "MemoryInfo": {"SizeInMiB": 32768},
    },
    {
        "InstanceType": "g5.2xlarge",
        "VCpuInfo": {"DefaultVCpus": 8},
        "MemoryInfo": {"SizeInMiB": 32768},
        "GpuInfo": {
            "Gpus": [
                {
                    "Name": "A10G",
                    "Manufacturer": "NVIDIA",
                    "Count": 1,
                    "MemoryInfo": {"SizeInMiB": 24576},
                }
            ]
        },
    },
]


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture
def prepared(raw) -> dict:
    """The config as `ray up` holds it after prepare_config (before any AWS call)."""
    return prepare_config(copy.deepcopy(raw))


def ray_start(command: str) -> tuple[dict[str, str], dict[str, str | bool]]:
    """(environment assignments, flags) of the `ray start` in a shell command line."""
    for part in re.split(r";|&&|\|\|", command):
        words = shlex.split(part)
        env = {}
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            key, _, value = words.pop(0).partition("=")
            env[key] = value
        if words[:2] == ["ray", "start"]:
            flags: dict[str, str | bool] = {}
            for word in words[2:]:
                key, sep, value = word.partition("=")
                flags[key] = value if sep else True
            return env, flags
    raise AssertionError(f"no `ray start` in {command!r}")


def start_commands(config: dict, kind: str) -> list[str]:
    found = [c for c in config[f"{kind}_start_ray_commands"] if "ray start" in c]
    assert found, f"{kind}_start_ray_commands never starts Ray"
    return found


def all_commands(config: dict) -> list[str]:
    keys = [k for k in config if k.endswith("_commands")]
    return [c for k in keys for c in config[k]]


def worker_types(config: dict) -> dict[str, dict]:
    head = config["head_node_type"]
    return {k: v for k, v in config["available_node_types"].items() if k != head}


# --------------------------------------------------------------------------- Ray's validator


def test_rays_schema_accepts_the_file_as_written(raw):
    validate_config(copy.deepcopy(raw))


def test_rays_validator_accepts_it_after_the_steps_ray_up_takes(raw):
    pytest.importorskip("boto3")  # the AWS provider module imports it (so does `ray up`)
    from ray.autoscaler._private.aws import node_provider as aws_node_provider
    from ray.autoscaler._private.providers import _get_node_provider_cls

    config = prepare_config(copy.deepcopy(raw))
    provider_cls = _get_node_provider_cls(config["provider"])
    with mock.patch.object(
        aws_node_provider, "list_ec2_instances", return_value=EC2_INSTANCE_TYPES
    ) as describe:
        config = provider_cls.fillout_available_node_types_resources(config)
    describe.assert_called_once_with("us-west-2", None)
    validate_config(config)

    types = config["available_node_types"]
    # The file's values win over the detected ones: the head stays GPU-free.
    assert types["head"]["resources"] == {"CPU": 8, "GPU": 0}
    gpu = types["gpu_g5"]["resources"]
    assert gpu["GPU"] == 1 and gpu["CPU"] == 8 and gpu["accelerator_type:A10G"] == 1
    assert gpu["memory"] > 16 * 2**30  # detected by Ray from the instance type


def test_an_instance_type_the_region_lacks_is_reported(raw):
    pytest.importorskip("boto3")
    from ray.autoscaler._private.aws import node_provider as aws_node_provider
    from ray.autoscaler._private.providers import _get_node_provider_cls

    config = prepare_config(copy.deepcopy(raw))
    config["available_node_types"]["gpu_g5"]["node_config"]["InstanceType"] = "g5.2xlarg"
    provider_cls = _get_node_provider_cls(config["provider"])
    with (
        mock.patch.object(aws_node_provider, "list_ec2_instances", return_value=EC2_INSTANCE_TYPES),
        pytest.raises(ValueError, match=re.escape("g5.2xlarg is not available")),
    ):
        provider_cls.fillout_available_node_types_resources(config)


def _set_gpu(config, key, value):
    config["available_node_types"]["gpu_g5"][key] = value


@pytest.mark.parametrize(
    ("breakage", "error", "message"),
    [
        (
            lambda c: c.update(max_worker=4),
            jsonschema.ValidationError,
            "'max_worker' was unexpected",
        ),
        (
            lambda c: c.update(max_workers="4"),
            jsonschema.ValidationError,
            "is not of type 'integer'",
        ),
        (
            lambda c: c.update(setup_commands="pip install x"),
            jsonschema.ValidationError,
            "not of type",
        ),
        (
            lambda c: _set_gpu(c, "resources", {"CPU": 8, "GPU": 0.5}),
            jsonschema.ValidationError,
            "is not of type 'integer'",
        ),
        (
            lambda c: _set_gpu(c, "node_cfg", {}),
            jsonschema.ValidationError,
            "'node_cfg' was unexpected",
        ),
        (lambda c: c.update(head_node_type="cpu_head"), ValueError, "must be one of"),
        (
            lambda c: _set_gpu(c, "min_workers", 5),
            ValueError,
            "smaller than the sum of `min_workers`",
        ),
    ],
    ids=[
        "unknown-top-level-key",
        "max_workers-as-string",
        "commands-as-string",
        "fractional-gpu-resource",
        "unknown-node-type-key",
        "head-type-not-defined",
        "min-workers-over-cap",
    ],
)
def test_rays_validator_rejects_a_broken_config(raw, breakage, error, message):
    config = copy.deepcopy(raw)
    breakage(config)
    with pytest.raises(error, match=re.escape(message)):
        # As written first: prepare_config itself trips over some breakages (a string where
        # a command list belongs) with a TypeError before Ray's validator sees them.
        validate_config(copy.deepcopy(config))
        validate_config(prepare_config(config))


# --------------------------------------------------------------------------- promises


def test_dashboard_is_bound_to_loopback_only(prepared):
    for command in start_commands(prepared, "head"):
        _, flags = ray_start(command)
        assert flags.get("--dashboard-host") == "127.0.0.1"
        # Without this the head starts no autoscaler and the GPU group never scales up.
        assert flags.get("--autoscaling-config") == "~/ray_bootstrap_config.yaml"
    assert not any("0.0.0.0" in c for c in all_commands(prepared))


def test_token_auth_is_on_in_every_ray_start(prepared):
    starts = start_commands(prepared, "head") + start_commands(prepared, "worker")
    for command in starts:
        env, flags = ray_start(command)
        assert env.get("RAY_AUTH_MODE") == "token", command
        assert flags.get("--metrics-export-port") == "8080", command
    for command in start_commands(prepared, "worker"):
        assert ray_start(command)[1].get("--address") == "$RAY_HEAD_IP:6379"
    assert "RAY_AUTH_MODE=disabled" not in CLUSTER_YAML.read_text()


def test_the_laptops_token_reaches_every_node(prepared):
    # The launcher does not distribute tokens (no auth_token handling in ray.autoscaler), so
    # the file travels as a file mount and is linked where `ray start` looks for it.
    mounts = prepared["file_mounts"]
    remote = next(r for r, local in mounts.items() if local == "~/.ray/auth_token")
    for kind in ("head", "worker"):
        links = []
        for command in prepared[f"{kind}_setup_commands"]:
            for part in command.split("&&"):
                words = shlex.split(part)
                if words[:2] == ["ln", "-sf"]:
                    links.append(tuple(words[2:]))
        assert (remote, "~/.ray/auth_token") in links, kind


def test_every_node_installs_and_prepares_the_project(prepared):
    local = prepared["file_mounts"]["~/orchestrator"]
    project = (ROOT / local).resolve()  # `ray up` runs from the repository root
    assert project == ROOT
    assert 'name = "embedding-orchestrator"' in (project / "pyproject.toml").read_text()
    assert "/data" in prepared["rsync_exclude"] and "/.venv" in prepared["rsync_exclude"]
    assert "data" not in prepared["rsync_exclude"]  # would also drop orchestrator/data/

    for kind in ("head", "worker"):
        commands = prepared[f"{kind}_setup_commands"]
        installs = [shlex.split(c) for c in commands if c.startswith("pip install")]
        assert any("-e" in words and "$HOME/orchestrator[s3]" in words for words in installs), kind
        assert not any("constraints" in c for c in commands), "CPU torch pin on a GPU node"
        assert "cd ~/orchestrator && python -m orchestrator prepare" in commands, kind
    # A per-type worker_setup_commands would replace the global ones on that type.
    assert not any("worker_setup_commands" in t for t in worker_types(prepared).values())


def test_gpu_workers_scale_from_zero_and_training_stays_off_the_head(prepared):
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get("GPU") == 0 and head["resources"]["CPU"] > 0
    assert head["max_workers"] == 0
    gpu_types = worker_types(prepared)
    assert gpu_types
    for name, node in gpu_types.items():
        assert node["min_workers"] == 0, name
        assert node["max_workers"] >= 1, name
        assert node["resources"]["GPU"] >= 1, name
        assert node["node_config"]["InstanceType"].startswith(("g5.", "p4d.", "p5."))
        assert node["node_config"]["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] >= 200
        # Workers read and write S3 with their own role (Ray gives one only to the head).
        assert "IamInstanceProfile" in node["node_config"], name
    assert sum(n["max_workers"] for n in gpu_types.values()) <= prepared["max_workers"]


def test_cluster_runs_the_laptops_ray(prepared):
    image = prepared["docker"]["image"]
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3\d+-(gpu|cu\d+)", image)
    assert match, image
    assert match[1] == ray.__version__, "bump the image (and the pin) with the local Ray"
    pins = {c for c in prepared["setup_commands"] if f"=={ray.__version__}" in c}
    assert pins, "setup_commands should pin Ray to the image's version"


# --------------------------------------------------------------------------- KubeRay


@pytest.fixture(scope="module")
def rayjob() -> dict:
    documents = list(yaml.safe_load_all(RAYJOB_YAML.read_text()))
    assert len(documents) == 1  # no Secret with a token in the repository
    return documents[0]


def _walk(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def test_rayjob_runs_the_orchestrator(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    words = shlex.split(rayjob["spec"]["entrypoint"])
    start = words.index("python")
    assert words[start : start + 5] == [
        "python",
        "-m",
        "orchestrator",
        "run",
        "experiments/quickstart.yaml",
    ]
    assert (ROOT / "experiments" / "quickstart.yaml").is_file()
    assert any(w.startswith("storage.uri=s3://") for w in words)  # outputs outlive the cluster


def test_rayjob_keeps_the_dashboard_private_and_token_protected(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    exposed = [v for _, v in _walk(rayjob) if v in ("LoadBalancer", "NodePort")]
    assert not exposed
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["rayVersion"] == ray.__version__


def test_rayjob_gpu_group_scales_from_zero(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    (group,) = cluster["workerGroupSpecs"]
    assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1
    (container,) = group["template"]["spec"]["containers"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
