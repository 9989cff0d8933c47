"""Tests of infra/: the routing derived from infra/routes.toml and the deploy manifests.

Every routing artefact (Istio VirtualService, Gateway API HTTPRoute, nginx, the AWS SAM HTTP
API) is read back with a small evaluator of its own matching rules and must send every probe
path to the function `RouteTable.match` names. Manifests validate offline: core Kubernetes
kinds with kubernetes-validate, CRDs and compose against the schemas in infra/schemas/.
"""

from __future__ import annotations

import functools
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from bradax_cli.routes import RouteTable
from common.settings import VERSION, ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
SCHEMAS = INFRA / "schemas"
KNATIVE = INFRA / "knative"
COMPOSE = INFRA / "compose"
K8S_VERSION = "1.30.0"
NAMESPACE = "bradax"
LOCAL_GATEWAY = "knative-local-gateway.istio-system.svc.cluster.local"
SECRET_SETTINGS = (
    "DATABASE_URL",
    "REDIS_URL",
    "JWT_SECRET_KEY",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
)
# What each function needs from the secrets: auth_token signs tokens, llm_invoke and metrics
# verify them; only llm_invoke calls the upstream and only health probes it.
NEEDS = {
    "auth_token": {"DATABASE_URL", "REDIS_URL", "JWT_SECRET_KEY"},
    "llm_invoke": {
        "DATABASE_URL",
        "REDIS_URL",
        "JWT_SECRET_KEY",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "GEMINI_API_KEY",
    },
    "health": {"DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY"},
    "metrics": {"DATABASE_URL", "REDIS_URL", "JWT_SECRET_KEY"},
}
SPEC_CIPHERS = "ECDHE-RSA-AES256-GCM-SHA512:DHE-RSA-AES256-GCM-SHA512:ECDHE-RSA-AES256-GCM-SHA384"
TABLE = RouteTable.load()

Manifest = dict[str, Any]
Evaluator = Callable[[str], str | None]


# -- helpers -----------------------------------------------------------------------------------


def _docs(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _one(path: Path) -> Manifest:
    (doc,) = _docs(path)
    return doc


def _schema_errors(schema_file: str, doc: Manifest) -> list[str]:
    schema = json.loads((SCHEMAS / schema_file).read_text(encoding="utf-8"))
    validator_cls = jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft202012Validator
    )
    errors = validator_cls(schema).iter_errors(doc)
    return [f"{'/'.join(map(str, err.absolute_path))}: {err.message}" for err in errors]


@functools.cache
def _generate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bradax_infra_generate", INFRA / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _service_name(function: str) -> str:
    return function.replace("_", "-")


@functools.cache
def _knative_services() -> dict[str, Manifest]:
    """function -> its Knative Service manifest."""
    found: dict[str, Manifest] = {}
    for path in sorted((KNATIVE / "services").glob("*.yaml")):
        for doc in _docs(path):
            found[doc["metadata"]["labels"]["app.kubernetes.io/component"]] = doc
    return found


@functools.cache
def _host_owners() -> dict[str, str]:
    """cluster-local host -> function, as Knative serves each Service."""
    return {
        f"{doc['metadata']['name']}.{doc['metadata']['namespace']}.svc.cluster.local": function
        for function, doc in _knative_services().items()
    }


def _container(doc: Manifest) -> Manifest:
    container: Manifest
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    return container


def _secret_env(env: Iterable[Manifest]) -> dict[str, tuple[str, str]]:
    return {
        item["name"]: (
            item["valueFrom"]["secretKeyRef"]["name"],
            item["valueFrom"]["secretKeyRef"]["key"],
        )
        for item in env
        if "valueFrom" in item and "secretKeyRef" in item["valueFrom"]
    }


def _secret_keys() -> set[tuple[str, str]]:
    return {
        (doc["metadata"]["name"], key)
        for doc in _docs(KNATIVE / "secrets" / "secrets.template.yaml")
        for key in doc.get("stringData", {})
    }


@functools.cache
def _compose() -> Manifest:
    return _one(COMPOSE / "docker-compose.yml")


def _compose_functions() -> dict[str, tuple[str, Manifest]]:
    """function -> (compose service name, service) for services built with a FUNCTION arg."""
    found: dict[str, tuple[str, Manifest]] = {}
    for name, service in _compose()["services"].items():
        build = service.get("build") or {}
        if build.get("target") == "function":
            found[build["args"]["FUNCTION"]] = (name, service)
    return found


def _probe_paths() -> list[str]:
    """Each rule's path, below it, beside it, and paths nobody serves."""
    paths = {"/", "/healthz", "/v2/x", "/metricsx", "/api", "/api/v1", "/api/v1/", "/x/v1"}
    paths |= {"/api/v1/auth/token", "/v1/chat/completions", "/health/detailed", "/V1/models"}
    for rule in TABLE.rules:
        paths |= {rule.path, rule.path + "/x", rule.path + "x", rule.path + "/"}
    return sorted(paths)


def _mismatches(
    evaluate: Evaluator, skip: Callable[[str], bool] = lambda path: False
) -> dict[str, tuple[str | None, str | None]]:
    return {
        path: (evaluate(path), TABLE.match(path))
        for path in _probe_paths()
        if not skip(path) and evaluate(path) != TABLE.match(path)
    }


# -- the route table itself --------------------------------------------------------------------


def test_route_table_sends_the_spec_paths_to_their_functions() -> None:
    """The table routes the spec's endpoints, and nothing else, to the expected functions."""
    expected = {
        "/api/v1/auth/token": "auth_token",
        "/api/v1/auth": "auth_token",
        "/.well-known/jwks.json": "auth_token",
        "/api/v1/llm/invoke": "llm_invoke",
        "/v1/chat/completions": "llm_invoke",
        "/v1": "llm_invoke",
        "/health": "health",
        "/health/detailed": "health",
        "/ready": "health",
        "/live": "health",
        "/metrics": "metrics",
        "/prometheus": "metrics",
        "/": None,
        "/healthz": None,
        "/v2/x": None,
        "/metricsx": None,
        "/metrics/x": None,
        "/v1x": None,
        "/ready/x": None,
    }
    assert {path: TABLE.match(path) for path in expected} == expected


def test_prefix_rules_do_not_match_longer_names() -> None:
    """A prefix "/p" never matches "/px": prefixes are whole path segments."""
    for rule in (r for r in TABLE.rules if r.kind == "prefix"):
        assert not rule.matches(rule.path + "x"), rule
        assert TABLE.match(rule.path + "x") != rule.function, rule


def test_probe_paths_cover_every_function_and_unrouted_paths() -> None:
    """The probe set reaches every function and includes paths no function serves."""
    destinations = {TABLE.match(path) for path in _probe_paths()}
    assert destinations == {*TABLE.functions, None}


# -- generated files ---------------------------------------------------------------------------


def test_generated_files_are_up_to_date() -> None:
    """The committed Istio, Gateway API, nginx and SAM files equal what generate.py writes."""
    outputs: dict[Path, str] = _generate().render_all(TABLE)
    assert len(outputs) == 4
    stale = [str(p.relative_to(REPO)) for p, text in outputs.items() if p.read_text() != text]
    assert stale == [], "run: python infra/generate.py"


def test_generator_follows_a_changed_table(tmp_path: Path) -> None:
    """A new rule in routes.toml shows up in every generated routing artefact."""
    table_file = tmp_path / "routes.toml"
    table_file.write_text(
        (INFRA / "routes.toml").read_text()
        + '\n[functions.audit]\nsource = "functions/audit/main.py"\ntarget = "audit"\n'
        + 'paths = [{ prefix = "/api/v1/audit" }]\n'
    )
    gen = _generate()
    table = RouteTable.load(table_file)
    istio = json.dumps(gen.istio_virtualservice(table))
    assert '"prefix": "/api/v1/audit/"' in istio
    assert "audit.bradax.svc.cluster.local" in istio
    assert '"value": "/api/v1/audit"' in json.dumps(gen.gateway_api(table))
    assert "location /api/v1/audit/ {" in gen.nginx_locations(table)
    assert "/api/v1/audit/{proxy+}" in json.dumps(gen.sam_template(table))


def test_generator_rejects_a_prefix_with_a_trailing_slash(tmp_path: Path) -> None:
    """A prefix written "/p/" is refused: Gateway API would also match "/p" with it."""
    table_file = tmp_path / "routes.toml"
    table_file.write_text(
        '[functions.x]\nsource = "functions/x/main.py"\ntarget = "x"\n'
        'paths = [{ prefix = "/x/" }]\n'
    )
    with pytest.raises(ValueError, match="trailing"):
        _generate().precedence(RouteTable.load(table_file))


def test_generate_check_passes_on_the_committed_files() -> None:
    """`python infra/generate.py --check` exits 0 on the committed files."""
    result = subprocess.run(
        [sys.executable, str(INFRA / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "")


# -- Istio -------------------------------------------------------------------------------------


@functools.cache
def _istio() -> Manifest:
    return _one(KNATIVE / "routing" / "istio.yaml")


def _istio_destination(path: str) -> str | None:
    """Istio: the first http route with a matching uri wins; exact and string-prefix."""
    owners = _host_owners()
    for route in _istio()["spec"]["http"]:
        for match in route["match"]:
            uri = match["uri"]
            if ("exact" in uri and path == uri["exact"]) or (
                "prefix" in uri and path.startswith(uri["prefix"])
            ):
                return owners[route["rewrite"]["authority"]]
    return None


def test_istio_routes_agree_with_route_table() -> None:
    """The VirtualService sends every probe path where RouteTable.match does."""
    assert _mismatches(_istio_destination) == {}


def test_istio_routes_rewrite_the_host_and_use_knative_local_gateway() -> None:
    """Each route rewrites the authority to a Knative Service's host and targets the gateway."""
    for route in _istio()["spec"]["http"]:
        assert route["rewrite"]["authority"] in _host_owners()
        assert route["route"] == [{"destination": {"host": LOCAL_GATEWAY, "port": {"number": 80}}}]
        streaming = _host_owners()[route["rewrite"]["authority"]] == "llm_invoke"
        assert route.get("timeout") == ("300s" if streaming else None)


def test_istio_virtualservice_validates() -> None:
    """The VirtualService's spec validates against the Istio CRD schema; its header is right."""
    doc = _istio()
    assert (doc["apiVersion"], doc["kind"]) == ("networking.istio.io/v1", "VirtualService")
    assert doc["metadata"]["namespace"] == NAMESPACE
    assert _schema_errors("networking.istio.io/virtualservice_v1.json", doc) == []


# -- Gateway API -------------------------------------------------------------------------------


@functools.cache
def _gateway_api() -> dict[tuple[str, str], Manifest]:
    return {
        (d["kind"], d["metadata"]["name"]): d
        for d in _docs(KNATIVE / "routing" / "gateway-api.yaml")
    }


def _gateway_destination(path: str) -> str | None:
    """Gateway API: Exact beats PathPrefix, the longest prefix wins; prefixes are segment-wise."""
    owners = _host_owners()
    candidates: list[tuple[int, int, str]] = []
    for rule in _gateway_api()[("HTTPRoute", "bradax")]["spec"]["rules"]:
        (rewrite,) = [f for f in rule["filters"] if f["type"] == "URLRewrite"]
        function = owners[rewrite["urlRewrite"]["hostname"]]
        for match in rule["matches"]:
            kind, value = match["path"]["type"], match["path"]["value"]
            base = value.rstrip("/")
            if kind == "Exact" and path == value:
                candidates.append((1, len(value), function))
            elif kind == "PathPrefix" and (not base or path == base or path.startswith(base + "/")):
                candidates.append((0, len(value), function))
    return max(candidates)[2] if candidates else None


def test_gateway_api_routes_agree_with_route_table() -> None:
    """The HTTPRoute sends every probe path where RouteTable.match does."""
    assert _mismatches(_gateway_destination) == {}


def test_gateway_api_backends_gateway_and_grant_fit_together() -> None:
    """Routes attach to the Gateway's listeners and reach the local gateway through a grant."""
    docs = _gateway_api()
    gateway = docs[("Gateway", "bradax")]
    listeners = {item["name"]: item for item in gateway["spec"]["listeners"]}
    assert (listeners["https"]["port"], listeners["https"]["tls"]["mode"]) == (443, "Terminate")
    route = docs[("HTTPRoute", "bradax")]
    assert route["spec"]["parentRefs"] == [{"name": "bradax", "sectionName": "https"}]
    for rule in route["spec"]["rules"]:
        assert rule["backendRefs"] == [
            {"name": "knative-local-gateway", "namespace": "istio-system", "port": 80}
        ]
    redirect = docs[("HTTPRoute", "bradax-https-redirect")]
    assert redirect["spec"]["parentRefs"] == [{"name": "bradax", "sectionName": "http"}]
    assert redirect["spec"]["rules"][0]["filters"][0]["requestRedirect"] == {
        "scheme": "https",
        "statusCode": 301,
    }
    grant = docs[("ReferenceGrant", "bradax-httproutes")]
    assert grant["apiVersion"] == "gateway.networking.k8s.io/v1beta1"
    assert grant["metadata"]["namespace"] == "istio-system"
    assert grant["spec"]["from"] == [
        {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": NAMESPACE}
    ]
    assert grant["spec"]["to"] == [
        {"group": "", "kind": "Service", "name": "knative-local-gateway"}
    ]


def test_gateway_api_manifests_validate() -> None:
    """The Gateway and both HTTPRoutes validate against the Gateway API v1 CRD schemas."""
    docs = _gateway_api()
    checked = 0
    for (kind, _), doc in docs.items():
        if kind == "Gateway":
            assert _schema_errors("gateway.networking.k8s.io/gateway_v1.json", doc) == []
            checked += 1
        elif kind == "HTTPRoute":
            assert _schema_errors("gateway.networking.k8s.io/httproute_v1.json", doc) == []
            checked += 1
    assert checked == 3


def test_crd_schemas_reject_a_misspelt_field() -> None:
    """The CRD schemas are strict enough to catch a typo (so passing them means something)."""
    route = json.loads(json.dumps(_istio()))
    route["spec"]["http"][0]["rewrite"]["authorty"] = "x"
    assert _schema_errors("networking.istio.io/virtualservice_v1.json", route) != []
    service = json.loads(json.dumps(_knative_services()["health"]))
    _container(service)["readinessProbe"]["httpGett"] = {"path": "/live"}
    assert _schema_errors("serving.knative.dev/service_v1.json", service) != []


# -- nginx -------------------------------------------------------------------------------------


def _nginx_text() -> str:
    return (COMPOSE / "nginx.conf").read_text(encoding="utf-8")


def _nginx_tokens_text() -> str:
    """nginx.conf with comments removed and quoted strings emptied (they may hold braces)."""
    out: list[str] = []
    text, i = _nginx_text(), 0
    while i < len(text):
        char = text[i]
        if char == "#":
            i = text.find("\n", i)
            i = len(text) if i < 0 else i
            continue
        if char in "'\"":
            i = text.index(char, i + 1) + 1
            out.append("''")
            continue
        out.append(char)
        i += 1
    return "".join(out)


@functools.cache
def _nginx_locations() -> list[tuple[bool, str, str]]:
    """(exact, path, body) of each location block."""
    pattern = re.compile(r"location\s+(=\s+)?(\S+)\s*\{([^{}]*)\}")
    return [(bool(m[1]), m[2], m[3]) for m in pattern.finditer(_nginx_tokens_text())]


@functools.cache
def _nginx_backend_owners() -> dict[str, str]:
    """ "host:port" -> function, from the compose services' FUNCTION build argument."""
    return {f"{name}:8080": function for function, (name, _) in _compose_functions().items()}


def _nginx_destination(path: str) -> str | None:
    """nginx: `location = /x` wins, else the longest matching prefix location."""
    locations = _nginx_locations()
    chosen = next((body for exact, loc, body in locations if exact and loc == path), None)
    if chosen is None:
        prefixes = [
            (len(loc), body) for exact, loc, body in locations if not exact and path.startswith(loc)
        ]
        chosen = max(prefixes)[1] if prefixes else None
    if chosen is None:
        return None
    backend = re.search(r"set \$bradax_backend (\S+);", chosen)
    return _nginx_backend_owners()[backend[1]] if backend else None


def test_nginx_routes_agree_with_route_table() -> None:
    """nginx sends every probe path where RouteTable.match does (the rest get its 404)."""
    assert _mismatches(_nginx_destination) == {}


def test_nginx_streams_llm_paths_and_only_those() -> None:
    """Locations of llm_invoke turn proxy buffering off with 300 s timeouts; others keep it."""
    owners = _nginx_backend_owners()
    seen = 0
    for _, _, body in _nginx_locations():
        backend = re.search(r"set \$bradax_backend (\S+);", body)
        if backend is None:
            continue
        streaming = owners[backend[1]] == "llm_invoke"
        assert ("proxy_buffering off;" in body) is streaming
        assert ("proxy_read_timeout 300s;" in body) is streaming
        seen += streaming
    assert seen == 4  # /api/v1/llm, /api/v1/llm/, /v1, /v1/


def test_nginx_tls_and_forwarding_follow_the_spec() -> None:
    """TLS 1.2/1.3 with the spec's ciphers on 443 (http2), 80 redirects, X-Forwarded-* set."""
    text = _nginx_text()
    assert "listen 443 ssl http2 default_server;" in text
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in text
    assert f"ssl_ciphers {SPEC_CIPHERS};" in text
    assert re.search(
        r"listen 80 default_server;\s+server_name _;\s+return 301 https://\$host\$request_uri;",
        text,
    )
    for header in (
        "proxy_set_header Host $host;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
    ):
        assert header in text


@pytest.mark.skipif(shutil.which("nginx") is None, reason="no nginx binary on this machine")
def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    """`nginx -t` accepts nginx.conf (certificate paths pointed at a throwaway pair)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bradax.test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "c.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    conf = (
        _nginx_text()
        .replace("/etc/nginx/ssl/bradax.crt", str(tmp_path / "c.crt"))
        .replace("/etc/nginx/ssl/bradax.key", str(tmp_path / "k.key"))
        .replace("pid /tmp/nginx.pid;", f"pid {tmp_path}/nginx.pid;")
    )
    if not Path("/etc/nginx/mime.types").exists():
        conf = conf.replace("include /etc/nginx/mime.types;", "")
    (tmp_path / "nginx.conf").write_text(conf)
    result = subprocess.run(
        [
            "nginx",
            "-t",
            "-q",
            "-c",
            str(tmp_path / "nginx.conf"),
            "-p",
            str(tmp_path),
            "-e",
            str(tmp_path / "error.log"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# -- Knative -----------------------------------------------------------------------------------


def test_one_knative_service_per_function() -> None:
    """Each function has one Knative Service, named after it, running its own image."""
    services = _knative_services()
    assert set(services) == set(TABLE.functions)
    for function, doc in services.items():
        assert doc["apiVersion"] == "serving.knative.dev/v1"
        assert doc["metadata"]["name"] == _service_name(function)
        assert doc["metadata"]["namespace"] == NAMESPACE
        image = _container(doc)["image"]
        repository, tag = image.rsplit(":", 1)
        assert (repository.rsplit("/", 1)[1], tag) == (f"bradax-{_service_name(function)}", VERSION)


def test_knative_services_validate() -> None:
    """Every Knative Service validates against the serving.knative.dev/v1 CRD schema."""
    for doc in _knative_services().values():
        assert _schema_errors("serving.knative.dev/service_v1.json", doc) == []


def test_knative_services_get_exactly_the_secrets_they_need() -> None:
    """llm_invoke gets OPENAI_API_KEY and the JWT key, auth_token no OPENAI_API_KEY, and so on."""
    existing = _secret_keys()
    for function, doc in _knative_services().items():
        refs = _secret_env(_container(doc)["env"])
        assert set(refs) == NEEDS[function], function
        assert set(refs.values()) <= existing, function


def test_knative_services_share_the_config_map_and_it_holds_settings_only() -> None:
    """Each service reads bradax-config, whose keys are all settings and none a secret."""
    config = _one(KNATIVE / "base" / "config.yaml")
    fields = {name.upper() for name in Settings.model_fields}
    assert set(config["data"]) <= fields - set(SECRET_SETTINGS)
    for doc in _knative_services().values():
        assert _container(doc)["envFrom"] == [{"configMapRef": {"name": "bradax-config"}}]


def test_knative_services_have_the_spec_resources_and_scaling() -> None:
    """Requests 512Mi/500m, limits 1Gi/1000m; min <= max scale; target <= concurrency."""
    for function, doc in _knative_services().items():
        assert _container(doc)["resources"] == {
            "requests": {"memory": "512Mi", "cpu": "500m"},
            "limits": {"memory": "1Gi", "cpu": "1000m"},
        }
        template = doc["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        low = int(annotations["autoscaling.knative.dev/min-scale"])
        high = int(annotations["autoscaling.knative.dev/max-scale"])
        target = int(annotations["autoscaling.knative.dev/target"])
        assert 1 <= low <= high, function
        assert 0 < target <= template["spec"]["containerConcurrency"], function
        assert annotations["autoscaling.knative.dev/metric"] == "concurrency"


def test_knative_services_are_cluster_local() -> None:
    """Services are reachable only through the path routes, on their cluster-local host."""
    for doc in _knative_services().values():
        assert doc["metadata"]["labels"]["networking.knative.dev/visibility"] == "cluster-local"


def test_knative_probes_hit_the_functions_own_paths_or_its_port() -> None:
    """httpGet probes use a path the same function serves; the others use the serving port."""
    kinds: dict[str, str] = {}
    for function, doc in _knative_services().items():
        container = _container(doc)
        port = container["ports"][0]["containerPort"]
        for probe in (container["readinessProbe"], container["livenessProbe"]):
            if "httpGet" in probe:
                assert TABLE.match(probe["httpGet"]["path"]) == function
                kinds[function] = "http " + probe["httpGet"]["path"]
            else:
                assert probe["tcpSocket"]["port"] == port
                kinds[function] = "tcp"
    assert kinds == {
        "auth_token": "http /.well-known/jwks.json",
        "llm_invoke": "tcp",
        "health": "http /live",
        "metrics": "tcp",
    }


def test_knative_containers_run_as_non_root() -> None:
    """Each container runs as the image's numeric non-root user without privilege escalation."""
    for doc in _knative_services().values():
        context = _container(doc)["securityContext"]
        assert (context["runAsNonRoot"], context["runAsUser"]) == (True, 10001)
        assert context["allowPrivilegeEscalation"] is False


def test_core_kubernetes_manifests_validate() -> None:
    """Namespace, ConfigMap, Secrets and the Job validate with kubernetes-validate (strict)."""
    files = [
        KNATIVE / "base" / "namespace.yaml",
        KNATIVE / "base" / "config.yaml",
        KNATIVE / "secrets" / "secrets.template.yaml",
        KNATIVE / "migrate" / "job.yaml",
    ]
    kinds = []
    for path in files:
        for doc in _docs(path):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            kinds.append(doc["kind"])
    assert sorted(kinds) == [
        "ConfigMap",
        "Job",
        "Namespace",
        "Secret",
        "Secret",
        "Secret",
        "Secret",
        "Secret",
    ]


def test_kubernetes_validate_rejects_a_misspelt_field() -> None:
    """Strict kubernetes-validate fails on an unknown field (so passing it means something)."""
    job = _one(KNATIVE / "migrate" / "job.yaml")
    job["spec"]["backofLimit"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_migrate_job_runs_bradax_migrate_with_only_the_database() -> None:
    """The Job runs `bradax migrate` from the migrate image with DATABASE_URL and nothing else."""
    job = _one(KNATIVE / "migrate" / "job.yaml")
    pod = job["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] + container["args"] == ["bradax", "migrate"]
    assert container["image"].endswith(f"/bradax-migrate:{VERSION}")
    assert _secret_env(container["env"]) == {
        "DATABASE_URL": ("postgres-secret", "connection-string")
    }
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"


def test_secret_template_placeholders_fail_closed() -> None:
    """The template's placeholders are rejected by the settings, so they cannot run a broker."""
    values = {
        (doc["metadata"]["name"], key): value
        for doc in _docs(KNATIVE / "secrets" / "secrets.template.yaml")
        for key, value in doc["stringData"].items()
    }
    assert set(values.values()) == {"CHANGE-ME"}
    for field, ref in (
        ("database_url", ("postgres-secret", "connection-string")),
        ("redis_url", ("redis-secret", "url")),
        ("jwt_secret_key", ("jwt-secret", "secret-key")),
    ):
        with pytest.raises(ConfigError, match=field.upper()):
            load_settings(**{field: values[ref]})


# -- compose -----------------------------------------------------------------------------------


def test_compose_file_validates() -> None:
    """docker-compose.yml validates against the compose specification's schema."""
    assert _schema_errors("compose-spec/compose-spec.json", _compose()) == []


def test_compose_builds_each_function_from_the_one_dockerfile() -> None:
    """One service per function, built from infra/docker/Dockerfile with its FUNCTION arg."""
    functions = _compose_functions()
    assert set(functions) == set(TABLE.functions)
    for function, (name, service) in functions.items():
        build = service["build"]
        assert name == _service_name(function)
        assert (COMPOSE / build["context"]).resolve() == REPO
        assert build["dockerfile"] == "infra/docker/Dockerfile"
        assert service["image"].startswith(f"bradax-{name}:")
        assert service["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }
        assert service["deploy"]["resources"] == {
            "limits": {"memory": "1G", "cpus": "1.0"},
            "reservations": {"memory": "512M", "cpus": "0.5"},
        }


def test_compose_functions_get_exactly_the_secrets_they_need() -> None:
    """Compose gives each function the same secrets as its Knative Service."""
    for function, (_, service) in _compose_functions().items():
        assert set(service["environment"]) & set(SECRET_SETTINGS) == NEEDS[function], function


def test_compose_passes_every_other_setting_through() -> None:
    """Every non-secret setting but HOST/PORT (fixed by the image) reaches every function."""
    fields = {name.upper() for name in Settings.model_fields}
    wanted = fields - set(SECRET_SETTINGS) - {"HOST", "PORT", "JWT_PRIVATE_KEY"}
    for function, (_, service) in _compose_functions().items():
        assert wanted <= set(service["environment"]), function
        assert not {"HOST", "PORT"} & set(service["environment"]), function


def test_compose_migrate_runs_once_before_the_functions() -> None:
    """The migrate service runs `bradax migrate` from the migrate target once postgres is up."""
    migrate = _compose()["services"]["migrate"]
    assert (migrate["build"]["target"], migrate["build"]["args"]["FUNCTION"]) == (
        "migrate",
        "health",
    )
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}


def test_compose_trusts_only_nginx_as_a_proxy() -> None:
    """TRUSTED_PROXIES is nginx's fixed address, inside the compose network's subnet."""
    compose = _compose()
    address = compose["services"]["nginx"]["networks"]["default"]["ipv4_address"]
    subnet = ipaddress.ip_network(compose["networks"]["default"]["ipam"]["config"][0]["subnet"])
    assert ipaddress.ip_address(address) in subnet
    for _, service in _compose_functions().values():
        assert service["environment"]["TRUSTED_PROXIES"] == f"{address}/32"


def test_env_example_names_every_setting_and_compose_variable() -> None:
    """.env.example names every Settings field and every ${VAR} docker-compose.yml reads."""
    text = (COMPOSE / ".env.example").read_text(encoding="utf-8")
    named = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))
    fields = {name.upper() for name in Settings.model_fields}
    assert fields - named == set()
    compose_text = (COMPOSE / "docker-compose.yml").read_text(encoding="utf-8")
    assert set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", compose_text)) - named == set()
    assert re.findall(
        r"^(?:JWT_SECRET_KEY|OPENAI_API_KEY|POSTGRES_PASSWORD)=(.*)$", text, flags=re.MULTILINE
    ) == ["", "", ""]


def test_prometheus_scrapes_the_metrics_function() -> None:
    """Prometheus scrapes /prometheus on the compose service that runs the metrics function."""
    config = _one(COMPOSE / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert TABLE.match(job["metrics_path"]) == "metrics"
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert _compose_functions()["metrics"][0] == host
    assert port == "8080"


# -- AWS Lambda (SAM) --------------------------------------------------------------------------


@functools.cache
def _sam() -> Manifest:
    return _one(INFRA / "lambda" / "template.yaml")


def _sam_destination(path: str) -> str | None:
    """HTTP API: an exact route wins, else the longest "/p/{proxy+}" (one or more segments)."""
    exact: dict[str, str] = {}
    greedy: list[tuple[int, str]] = []
    for resource in _sam()["Resources"].values():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        function = resource["Properties"]["Environment"]["Variables"]["FUNCTION"]
        for event in resource["Properties"]["Events"].values():
            route = event["Properties"]["Path"]
            if route.endswith("/{proxy+}"):
                base = route.removesuffix("{proxy+}")
                if path.startswith(base) and len(path) > len(base):
                    greedy.append((len(base), function))
            else:
                exact[route] = function
    if path in exact:
        return exact[path]
    return max(greedy)[1] if greedy else None


def test_sam_routes_agree_with_route_table() -> None:
    """The SAM HTTP API routes every probe path where RouteTable.match does (but "/p/")."""
    # "/p/" (a prefix plus a bare trailing slash) is left out: whether API Gateway's {proxy+}
    # matches an empty segment is not documented, and no function serves such a path anyway.
    prefixes = {rule.path + "/" for rule in TABLE.rules if rule.kind == "prefix"}
    assert _mismatches(_sam_destination, skip=prefixes.__contains__) == {}


def test_sam_functions_build_their_own_lambda_image() -> None:
    """Each Lambda is the Dockerfile's lambda target built with its own FUNCTION."""
    functions = {
        res["Metadata"]["DockerBuildArgs"]["FUNCTION"]: res
        for res in _sam()["Resources"].values()
        if res["Type"] == "AWS::Serverless::Function"
    }
    assert set(functions) == set(TABLE.functions)
    for function, resource in functions.items():
        assert resource["Metadata"]["DockerBuildTarget"] == "lambda"
        assert resource["Properties"]["Environment"]["Variables"]["FUNCTION"] == function
        assert resource["Properties"]["PackageType"] == "Image"


@pytest.mark.skipif(shutil.which("cfn-lint") is None, reason="cfn-lint is not installed")
def test_sam_template_passes_cfn_lint() -> None:
    """cfn-lint finds nothing to report in infra/lambda/template.yaml."""
    cfn_lint = shutil.which("cfn-lint")
    assert cfn_lint is not None
    result = subprocess.run(
        [cfn_lint, str(INFRA / "lambda" / "template.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# Run in a fresh interpreter: importing the functions sets process-wide settings and singletons.
LAMBDA_SCRIPT = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("lambda_handler", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)

def event(path):
    http = {"method": "GET", "path": path, "sourceIp": "203.0.113.7"}
    headers = {"host": "api.example", "x-forwarded-proto": "https"}
    return {"version": "2.0", "rawPath": path, "rawQueryString": "", "headers": headers,
            "requestContext": {"http": http}, "isBase64Encoded": False}

out = {}
for name, path in json.loads(sys.argv[2]).items():
    res = mod.handle(name.split(":")[0], event(path))
    out[name] = [res["statusCode"], res["headers"].get("content-type"), res["body"]]
print(json.dumps(out))
"""


def test_lambda_adapter_answers_like_the_containers() -> None:
    """Through the Lambda adapter each function answers its health-check path as expected."""
    probes: dict[str, tuple[str, int]] = _healthcheck().PROBES
    requests = {name: path for name, (path, _) in probes.items()} | {"health:404": "/nowhere"}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            LAMBDA_SCRIPT,
            str(INFRA / "lambda" / "handler.py"),
            json.dumps(requests),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=_function_env(),
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert {name: out[name][0] for name in probes} == {n: s for n, (_, s) in probes.items()}
    assert out["health"][1:] == ["application/json", '{"status":"alive"}']
    assert out["health:404"][:2] == [404, "application/json"]
    assert json.loads(out["health:404"][2])["error"]["code"] == "not_found"


def _function_env() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO),
        "DATABASE_URL": "postgresql://bradax:unused@127.0.0.1:9/bradax",
        "REDIS_URL": "redis://127.0.0.1:9/0",
        "JWT_SECRET_KEY": "x" * 40,
        "OPENAI_API_KEY": "sk-unused",
        "LOG_LEVEL": "WARNING",  # stdout carries the adapter's JSON answer only
    }


@functools.cache
def _healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bradax_healthcheck", INFRA / "docker" / "healthcheck.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
