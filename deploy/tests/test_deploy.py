"""deploy/ (issue 16): the Kubernetes manifests and the Helm chart.

Run by scripts/test with its tools pinned by hash in .tools/:

- the chart is linted and rendered by Helm's own engine (helm-python-sdk
  binds Helm's Go SDK; no helm binary installs from the registries here),
  and deploy/kubernetes/*.yaml must equal its rendering with the defaults;
- every object, plain or rendered (with several value sets), is validated
  against the official Kubernetes JSON schemas, strict (unknown fields
  refused), for the oldest and newest Kubernetes the chart supports
  (kubernetes-validate bundles them);
- the restricted Pod Security fields, the NetworkPolicy's ports and the
  secret handling are asserted field by field, and each assertion is shown
  to bite: removing any one field (runAsNonRoot, ...) is reported;
- deploy/Dockerfile is linted with hadolint.

    PYTHONPATH=.tools/deploy-check-... python3 -m unittest discover -s deploy/tests -v
"""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import helm_python as helm  # noqa: E402
import kubernetes_validate  # noqa: E402
import yaml  # noqa: E402

import deploy_common as common  # noqa: E402

# The chart's kubeVersion floor and the newest schemas bundled.
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
# Value sets the chart must render into valid, restricted objects.
VARIANTS = {
    "defaults": {},
    "plain": common.PLAIN_VALUES,
    "no-autoscaling": {"autoscaling": {"enabled": False}, "replicas": 3},
    "digest-and-peers": {
        "image": {"digest": "sha256:" + "ab" * 32},
        "admin": {"probeHost": "api.example.com"},
        "networkPolicy": {
            "ingressFrom": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}
            ],
            "databaseTo": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
            "redisTo": [{"podSelector": {"matchLabels": {"app": "redis"}}}],
            "extraEgress": [
                {"ports": [{"protocol": "TCP", "port": 443}], "to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}
            ],
        },
    },
    "secret": {
        "secret": {
            "create": True,
            "masterKey": "00" * 32,
            "redisUrl": "redis://:pw@redis:6379/",
            "databaseUrl": "postgres://bulkhead:pw@db:5432/bulkhead",
        }
    },
    "files": {"app": {"manifest": "[app]\nname = \"x\"\n", "files": {"bulkhead.toml.minisig": "sig"}}},
}

# Pod volume kinds the restricted profile allows.
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
    "persistentVolumeClaim", "projected", "secret",
}
# Egress the node needs: DNS, PostgreSQL, Redis (T17).
ALLOWED_EGRESS = {("UDP", 53), ("TCP", 53), ("TCP", 5432), ("TCP", 6379)}


def of_kind(objects, kind):
    return [o for o in objects if o.get("kind") == kind]


def one(objects, kind):
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_containers(spec):
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def restricted_problems(deployment):
    """Why the Deployment's pods break the restricted Pod Security profile,
    or our stricter rule that each field is set on the pod and on every
    container (so a field dropped anywhere is caught, even where the other
    level would still cover it). Empty when none."""
    problems = []
    spec = deployment["spec"]["template"]["spec"]
    pod = spec.get("securityContext") or {}
    if pod.get("runAsNonRoot") is not True:
        problems.append("pod: runAsNonRoot is not true")
    if pod.get("runAsUser", 0) == 0:
        problems.append("pod: runAsUser is unset or 0 (root)")
    if (pod.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("pod: seccompProfile is not RuntimeDefault")
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(f"pod: {flag} is on")
    if spec.get("automountServiceAccountToken") is not False:
        problems.append("pod: automountServiceAccountToken is not false (T17)")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {sorted(kinds)} is not allowed")
    for c in pod_containers(spec):
        name = c.get("name")
        sc = c.get("securityContext") or {}
        if sc.get("runAsNonRoot") is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod.get("runAsUser", 0)) == 0:
            problems.append(f"{name}: runs as root")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem is not true")
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        caps = sc.get("capabilities") or {}
        if caps.get("drop") != ["ALL"]:
            problems.append(f"{name}: capabilities do not drop ALL")
        if caps.get("add"):
            problems.append(f"{name}: adds capabilities {caps['add']}")
        if (sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: seccompProfile is not RuntimeDefault")
        for port in c.get("ports") or []:
            if "hostPort" in port:
                problems.append(f"{name}: hostPort {port['hostPort']}")
        resources = c.get("resources") or {}
        for bound in ("requests", "limits"):
            for what in ("cpu", "memory"):
                if what not in (resources.get(bound) or {}):
                    problems.append(f"{name}: no {bound}.{what} (T01, T04)")
    main = [c for c in spec.get("containers") or [] if c.get("name") == "bulkhead"]
    if len(main) != 1:
        problems.append("no container named bulkhead")
    else:
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            command = ((main[0].get(probe) or {}).get("exec") or {}).get("command") or []
            if not any(re.search(r"/(healthz|readyz)$", str(part)) for part in command):
                problems.append(f"bulkhead: {probe} does not ask /healthz or /readyz")
        if not (main[0].get("lifecycle") or {}).get("preStop"):
            problems.append("bulkhead: no preStop (graceful termination)")
    if not spec.get("terminationGracePeriodSeconds"):
        problems.append("pod: no terminationGracePeriodSeconds")
    return problems


def secret_problems(deployment):
    """How the master key, URLs and TLS key could leak: through the
    environment, to the server's view of the Secret volume, or a writable
    Secret mount (T14, T15). Empty when none."""
    problems = []
    spec = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    secret_volumes = {n for n, v in volumes.items() if "secret" in v}
    for c in pod_containers(spec):
        name = c.get("name")
        if c.get("envFrom"):
            problems.append(f"{name}: envFrom copies a whole object into the environment")
        for var in c.get("env") or []:
            if "valueFrom" in var:
                problems.append(f"{name}: env {var['name']} comes from an object, not a file")
            value = str(var.get("value", ""))
            if "://" in value or re.fullmatch(r"[0-9a-fA-F]{64}", value):
                problems.append(f"{name}: env {var['name']} holds a URL or key")
        for mount in c.get("volumeMounts") or []:
            if mount["name"] in secret_volumes:
                if name == "bulkhead":
                    problems.append(f"{name}: the server mounts Secret volume {mount['name']}")
                if mount.get("readOnly") is not True:
                    problems.append(f"{name}: Secret volume {mount['name']} is writable")
        key_file = [v.get("value") for v in c.get("env") or [] if v["name"] == "BULKHEAD_MASTER_KEY_FILE"]
        if key_file != ["/run/bulkhead/secrets/master.key"]:
            problems.append(f"{name}: BULKHEAD_MASTER_KEY_FILE is {key_file}, not the in-memory copy")
        runs = [m for m in c.get("volumeMounts") or [] if m["mountPath"] == "/run/bulkhead"]
        if len(runs) != 1 or (volumes.get(runs[0]["name"], {}).get("emptyDir") or {}).get("medium") != "Memory":
            problems.append(f"{name}: /run/bulkhead is not the in-memory volume")
        elif name == "bulkhead" and runs[0].get("readOnly") is not True:
            problems.append(f"{name}: /run/bulkhead is writable to the server")
    for n in secret_volumes:
        mode = volumes[n]["secret"].get("defaultMode", 0o644)
        if mode & 0o007:
            problems.append(f"Secret volume {n}: others may read it (mode {mode:o})")
    return problems


def network_policy_problems(policy, gateway_port, extra_egress=frozenset()):
    """Where the NetworkPolicy lets more in than the gateway port, or more
    out than DNS, PostgreSQL, Redis and `extra_egress` ((protocol, port)
    pairs the values add on purpose, T17). Empty when none."""
    problems = []
    spec = policy["spec"]
    if sorted(spec.get("policyTypes") or []) != ["Egress", "Ingress"]:
        problems.append(f"policyTypes {spec.get('policyTypes')}: both directions must be closed")
    selector = (spec.get("podSelector") or {}).get("matchLabels") or {}
    if selector.get("app.kubernetes.io/name") != "bulkhead":
        problems.append("podSelector does not select the bulkhead pods")
    ingress = spec.get("ingress") or []
    if not ingress:
        problems.append("no ingress rule: the gateway is unreachable")
    for i, rule in enumerate(ingress):
        ports = rule.get("ports") or []
        if not ports:
            problems.append(f"ingress[{i}] has no ports: every port is open")
        for p in ports:
            if (p.get("protocol", "TCP"), p.get("port")) != ("TCP", gateway_port) or "endPort" in p:
                problems.append(f"ingress[{i}] opens {p}, not only TCP {gateway_port}")
    egress = spec.get("egress") or []
    opened = set()
    for i, rule in enumerate(egress):
        ports = rule.get("ports") or []
        if not ports:
            problems.append(f"egress[{i}] has no ports: every port is open")
        for p in ports:
            if "endPort" in p:
                problems.append(f"egress[{i}] opens a range {p}")
            opened.add((p.get("protocol", "TCP"), p.get("port")))
    allowed = ALLOWED_EGRESS | set(extra_egress)
    if not opened <= allowed:
        problems.append(f"egress opens {sorted(opened - allowed)} beyond DNS, PostgreSQL and Redis")
    for needed in ((("TCP", 5432),), (("TCP", 6379),), (("UDP", 53),)):
        if not set(needed) <= opened:
            problems.append(f"egress does not reach {needed[0]}")
    return problems


def validate(testcase, obj, where):
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            testcase.fail(f"{where}: {obj.get('kind')} {obj['metadata'].get('name')} on {version}: {e}")


class Chart(unittest.TestCase):
    def test_helm_lint_is_clean(self):
        for variant, values in VARIANTS.items():
            with self.subTest(variant=variant):
                report = helm.lint(str(common.CHART), values, strict=True, namespace=common.NAMESPACE)
                self.assertEqual(report["errors"], [], report)
                # Severity 1 is INFO ("icon is recommended"); 2 and up are
                # warnings and errors.
                serious = [m for m in report["messages"] if m["severity"] >= 2]
                self.assertEqual(serious, [], report)

    def test_values_are_checked_against_the_values_schema(self):
        for bad in ({"imag": {}}, {"port": 80}, {"securityContext": {"runAsUser": 0}},
                    {"image": {"digest": "latest"}}):
            with self.subTest(values=bad), self.assertRaises(helm.HelmError):
                common.render(bad)

    def test_every_rendering_matches_the_kubernetes_schemas(self):
        for variant, values in VARIANTS.items():
            objects = common.render(values)
            self.assertGreaterEqual(len(objects), 5, variant)
            for obj in objects:
                validate(self, obj, f"chart ({variant})")

    def test_t05_t17_every_rendering_runs_restricted(self):
        for variant, values in VARIANTS.items():
            with self.subTest(variant=variant):
                objects = common.render(values)
                deployment = one(objects, "Deployment")
                self.assertEqual(restricted_problems(deployment), [])
                self.assertEqual(secret_problems(deployment), [])
                extra = {
                    (p.get("protocol", "TCP"), p["port"])
                    for rule in values.get("networkPolicy", {}).get("extraEgress", [])
                    for p in rule["ports"]
                }
                self.assertEqual(network_policy_problems(one(objects, "NetworkPolicy"), 8443, extra), [])

    def test_variants_change_what_they_should(self):
        plain = common.render(common.PLAIN_VALUES)
        self.assertEqual(
            one(plain, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted"
        )
        self.assertEqual(of_kind(common.render({}), "Namespace"), [])
        fixed = common.render(VARIANTS["no-autoscaling"])
        self.assertEqual(of_kind(fixed, "HorizontalPodAutoscaler"), [])
        self.assertEqual(one(fixed, "Deployment")["spec"]["replicas"], 3)
        # With the HPA on, the Deployment leaves the count to it.
        self.assertNotIn("replicas", one(plain, "Deployment")["spec"])
        pinned = one(common.render(VARIANTS["digest-and-peers"]), "Deployment")
        images = {c["image"] for c in pod_containers(pinned["spec"]["template"]["spec"])}
        self.assertEqual(images, {"registry.example.com/bulkhead@sha256:" + "ab" * 32})
        secret = one(common.render(VARIANTS["secret"]), "Secret")
        self.assertEqual(set(secret["stringData"]), {"master.key", "redis-url", "database-url"})
        self.assertEqual(of_kind(common.render({}), "Secret"), [])
        with self.assertRaises(helm.HelmError):
            common.render({"secret": {"create": True}})  # no key: refused, not rendered empty
        files = one(common.render(VARIANTS["files"]), "ConfigMap")["data"]
        self.assertEqual(files["bulkhead.toml.minisig"].strip(), "sig")


class PlainManifests(unittest.TestCase):
    def test_they_are_the_chart_rendered_with_its_defaults(self):
        def keyed(objects):
            return {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objects}

        plain, rendered = keyed(common.plain()), keyed(common.render(common.PLAIN_VALUES))
        self.assertEqual(sorted(plain), sorted(rendered),
                         "deploy/kubernetes/ is stale: run deploy/tests/render_plain.py")
        for key, obj in rendered.items():
            self.assertEqual(plain[key], obj, f"{key} differs: run deploy/tests/render_plain.py")
        names = {p.name for p in common.PLAIN.glob("*.yaml")}
        expected = {common.plain_file_name(t) for t, text in common.render_texts(common.PLAIN_VALUES).items()
                    if common.documents(text)}
        self.assertEqual(names, expected)

    def test_every_object_matches_the_kubernetes_schemas(self):
        objects = common.plain()
        self.assertEqual(
            sorted(o["kind"] for o in objects),
            sorted(["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Namespace",
                    "NetworkPolicy", "PodDisruptionBudget", "Service", "ServiceAccount"]),
        )
        for obj in objects:
            validate(self, obj, "deploy/kubernetes")
        validate(self, one(common.documents(common.SECRET_TEMPLATE.read_text()), "Secret"), "secret template")

    def test_t05_namespace_enforces_the_restricted_profile(self):
        labels = one(common.plain(), "Namespace")["metadata"]["labels"]
        for mode in ("enforce", "audit", "warn"):
            self.assertEqual(labels.get(f"pod-security.kubernetes.io/{mode}"), "restricted", mode)
        for obj in common.plain():
            if obj["kind"] != "Namespace":
                self.assertEqual(obj["metadata"]["namespace"], common.NAMESPACE)

    def test_t05_t17_the_deployment_runs_restricted(self):
        deployment = one(common.plain(), "Deployment")
        self.assertEqual(restricted_problems(deployment), [])
        spec = deployment["spec"]["template"]["spec"]
        main = [c for c in spec["containers"] if c["name"] == "bulkhead"][0]
        # The probes reach the admin listener on loopback, which the pod
        # never exposes; the gateway is the only container port.
        self.assertEqual([p["containerPort"] for p in main["ports"]], [8443])
        self.assertIn("--admin-listen", main["args"])
        self.assertTrue(main["args"][main["args"].index("--admin-listen") + 1].startswith("127.0.0.1:"))
        self.assertEqual(main["args"][:2], ["serve", "/var/lib/bulkhead/app"])
        self.assertEqual(main["args"][main["args"].index("--env") + 1], "prod")

    def test_t14_t15_secrets_are_files_never_environment(self):
        deployment = one(common.plain(), "Deployment")
        self.assertEqual(secret_problems(deployment), [])
        template = one(common.documents(common.SECRET_TEMPLATE.read_text()), "Secret")
        self.assertEqual(set(template["stringData"]), {"master.key", "redis-url", "database-url"})
        # The placeholder is no master key (32 bytes or 64 hex digits):
        # applied unchanged, the pods refuse to start.
        key = template["stringData"]["master.key"].strip()
        self.assertFalse(len(key.encode()) == 32 or re.fullmatch(r"[0-9a-fA-F]{64}", key), key)
        manifest = one(common.plain(), "ConfigMap")["data"]["bulkhead.toml"]
        self.assertNotRegex(manifest, r"(?m)^\s*(database_url|redis_url)\s*=", "a URL belongs in the Secret")
        self.assertIn('redis_url_file = "/run/bulkhead/secrets/redis-url"', manifest)

    def test_t17_network_policy_admits_the_gateway_and_reaches_only_dns_postgres_redis(self):
        objects = common.plain()
        self.assertEqual(network_policy_problems(one(objects, "NetworkPolicy"), 8443), [])
        service = one(objects, "Service")
        self.assertEqual([(p["protocol"], p["targetPort"]) for p in service["spec"]["ports"]], [("TCP", "https")])

    def test_the_hpa_scales_the_deployment(self):
        objects = common.plain()
        hpa, deployment = one(objects, "HorizontalPodAutoscaler"), one(objects, "Deployment")
        self.assertEqual(hpa["spec"]["scaleTargetRef"],
                         {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]})
        self.assertGreaterEqual(hpa["spec"]["minReplicas"], 2)
        pdb = one(objects, "PodDisruptionBudget")
        self.assertEqual(pdb["spec"]["selector"], deployment["spec"]["selector"])
        self.assertEqual(pdb["spec"]["maxUnavailable"], 1)


class TheChecksBite(unittest.TestCase):
    """Each assertion above fails when the manifest drops what it checks."""

    def deployment(self):
        return copy.deepcopy(one(common.plain(), "Deployment"))

    def test_t05_dropping_any_restricted_field_is_reported(self):
        def pod(d):
            return d["spec"]["template"]["spec"]

        def main(d):
            return pod(d)["containers"][0]

        def init(d):
            return pod(d)["initContainers"][0]

        mutations = {
            "pod runAsNonRoot": lambda d: pod(d)["securityContext"].pop("runAsNonRoot"),
            "container runAsNonRoot": lambda d: main(d)["securityContext"].pop("runAsNonRoot"),
            "init runAsNonRoot": lambda d: init(d)["securityContext"].pop("runAsNonRoot"),
            "runAsUser 0": lambda d: main(d)["securityContext"].update(runAsUser=0),
            "readOnlyRootFilesystem": lambda d: main(d)["securityContext"].pop("readOnlyRootFilesystem"),
            "allowPrivilegeEscalation": lambda d: init(d)["securityContext"].update(allowPrivilegeEscalation=True),
            "drop ALL": lambda d: main(d)["securityContext"]["capabilities"].pop("drop"),
            "add NET_ADMIN": lambda d: main(d)["securityContext"]["capabilities"].update(add=["NET_ADMIN"]),
            "pod seccomp": lambda d: pod(d)["securityContext"].pop("seccompProfile"),
            "container seccomp": lambda d: init(d)["securityContext"].update(seccompProfile={"type": "Unconfined"}),
            "privileged": lambda d: main(d)["securityContext"].update(privileged=True),
            "hostNetwork": lambda d: pod(d).update(hostNetwork=True),
            "hostPath": lambda d: pod(d)["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
            "token automount": lambda d: pod(d).pop("automountServiceAccountToken"),
            "limits": lambda d: main(d)["resources"].pop("limits"),
            "requests": lambda d: init(d)["resources"].pop("requests"),
            "readiness probe": lambda d: main(d).pop("readinessProbe"),
            "liveness probe": lambda d: main(d).pop("livenessProbe"),
            "preStop": lambda d: main(d).pop("lifecycle"),
        }
        self.assertEqual(restricted_problems(self.deployment()), [])
        for what, mutate in mutations.items():
            with self.subTest(dropped=what):
                d = self.deployment()
                mutate(d)
                self.assertNotEqual(restricted_problems(d), [], f"{what} went unnoticed")

    def test_t14_leaking_a_secret_is_reported(self):
        def containers(d):
            return pod_containers(d["spec"]["template"]["spec"])

        def server(d):
            return d["spec"]["template"]["spec"]["containers"][0]

        mutations = {
            "key in env": lambda d: server(d)["env"].append(
                {"name": "BULKHEAD_MASTER_KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "master.key"}}}),
            "URL in env": lambda d: server(d)["env"].append({"name": "BULKHEAD_REDIS_URL", "value": "redis://:pw@r/"}),
            "envFrom": lambda d: server(d).update(envFrom=[{"secretRef": {"name": "bulkhead-secrets"}}]),
            "server mounts the Secret": lambda d: server(d)["volumeMounts"].append(
                {"name": "secrets", "mountPath": "/etc/bulkhead/secrets", "readOnly": True}),
            "key file on disk": lambda d: server(d)["env"][0].update(value="/var/lib/bulkhead/master.key"),
            "world-readable Secret": lambda d: d["spec"]["template"]["spec"]["volumes"][-1]["secret"].update(
                defaultMode=0o444),
            "writable run": lambda d: server(d)["volumeMounts"][1].pop("readOnly"),
            "run on disk": lambda d: d["spec"]["template"]["spec"]["volumes"][1]["emptyDir"].pop("medium"),
        }
        self.assertEqual(secret_problems(self.deployment()), [])
        self.assertEqual(len(containers(self.deployment())), 2)
        for what, mutate in mutations.items():
            with self.subTest(leak=what):
                d = self.deployment()
                mutate(d)
                self.assertNotEqual(secret_problems(d), [], f"{what} went unnoticed")

    def test_t17_opening_the_network_policy_is_reported(self):
        base = one(common.plain(), "NetworkPolicy")

        def mutated(change):
            policy = copy.deepcopy(base)
            change(policy["spec"])
            return policy

        mutations = {
            "admin port in": lambda s: s["ingress"][0]["ports"].append({"protocol": "TCP", "port": 9901}),
            "all ports in": lambda s: s["ingress"][0].pop("ports"),
            "egress anywhere": lambda s: s["egress"].append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}),
            "egress 443": lambda s: s["egress"][1]["ports"].append({"protocol": "TCP", "port": 443}),
            "egress range": lambda s: s["egress"][1]["ports"][0].update(endPort=6000),
            "egress open": lambda s: s.update(policyTypes=["Ingress"]),
            "no Redis": lambda s: s["egress"].pop(2),
        }
        self.assertEqual(network_policy_problems(base, 8443), [])
        for what, change in mutations.items():
            with self.subTest(opened=what):
                self.assertNotEqual(network_policy_problems(mutated(change), 8443), [], f"{what} went unnoticed")

    def test_the_schemas_refuse_a_misspelt_field(self):
        d = one(common.plain(), "Deployment")
        bad = copy.deepcopy(d)
        sc = bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]
        sc["runAsNonroot"] = sc.pop("runAsNonRoot")
        with self.assertRaises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[-1], strict=True)
        bad = copy.deepcopy(d)
        bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "https"
        with self.assertRaises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[0], strict=True)


class Dockerfile(unittest.TestCase):
    def hadolint(self):
        tools = os.environ.get("DEPLOY_TOOLS_DIR")
        path = Path(tools, "bin", "hadolint") if tools else None
        found = str(path) if path and path.exists() else shutil.which("hadolint")
        self.assertIsNotNone(found, "hadolint is not installed (scripts/test installs it into .tools/)")
        return found

    def test_hadolint_finds_nothing(self):
        result = subprocess.run(
            [self.hadolint(), "--no-color", "--failure-threshold", "info", "--format", "json",
             str(common.DOCKERFILE)],
            capture_output=True, text=True, check=False,
        )
        findings = json.loads(result.stdout or "[]")
        self.assertEqual(findings, [], result.stdout + result.stderr)
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_hadolint_bites(self):
        bad = common.DOCKERFILE.read_text().replace("USER 65532:65532", "USER root")
        result = subprocess.run(
            [self.hadolint(), "--no-color", "--failure-threshold", "info", "-"],
            input=bad, capture_output=True, text=True, check=False,
        )
        self.assertNotEqual(result.returncode, 0, "a Dockerfile ending as root passed hadolint")
        self.assertIn("DL3002", result.stdout)

    def test_the_image_runs_as_the_chart_user_on_a_slim_base(self):
        text = common.DOCKERFILE.read_text()
        stages = re.split(r"(?m)^FROM ", text)
        final = stages[-1]
        self.assertRegex(final.splitlines()[0], r"debian:\$\{DEBIAN_RELEASE\}-slim")
        users = re.findall(r"(?m)^USER (\S+)", final)
        self.assertEqual(users, ["65532:65532"])
        values = yaml.safe_load((common.CHART / "values.yaml").read_text())
        self.assertEqual(values["securityContext"]["runAsUser"], 65532)
        self.assertIn("cargo build --release --locked", text)
        # curl: the probes; sh and cp: the init container.
        self.assertIn("curl", final)


if __name__ == "__main__":
    unittest.main()
